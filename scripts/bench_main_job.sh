#!/usr/bin/env bash
# The README's main-job command, timed in a fresh clone of this repository with an empty kernel
# cache (as on a new machine; pip's own cache is whatever this machine has), then run again.
#     flock /work/bench.lock bash scripts/bench_main_job.sh
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/clone"
cd "$work/clone"
export XDG_CACHE_HOME="$work/cache"  # an empty numba cache: the first run compiles the kernel
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
started=$(date +%s.%N)
python3 -m venv .venv && .venv/bin/pip install -q . && .venv/bin/pipeline run --run-dir runs/mnist >"$work/out"
ended=$(date +%s.%N)
tail -n 1 "$work/out"
echo "main job in a fresh clone, install included: $(echo "$ended - $started" | bc) s"
.venv/bin/python - <<'PY'
import json, statistics
seconds = [json.loads(line)["seconds"] for line in open("runs/mnist/metrics.jsonl")]
print("epoch seconds:", seconds)
print(f"first epoch minus the median of the others (the kernel's compile): "
      f"{seconds[0] - statistics.median(seconds[1:]):.1f} s")
PY
started=$(date +%s.%N)
.venv/bin/pipeline run --run-dir runs/mnist >"$work/out"
ended=$(date +%s.%N)
echo "again (up to date: $(grep -c 'up to date' "$work/out") line): $(echo "$ended - $started" | bc) s"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
