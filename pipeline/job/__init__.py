"""The job orchestrator, above every stage it runs: `flow` (find or prepare the set -> train ->
evaluate -> gate, for `run --run-dir` and `--runs` alike) and `schedule` (one trigger of the
scheduled mode: the flow, then the outcome, promotion and pruning)."""
