"""Experiment trackers: listeners on the job's event stream (pipeline.events) that record a
run where a team already looks. Each is optional; nothing else in the pipeline imports one.

    mlflow.py   MlflowTracker: params, tags, per-epoch metrics, test metrics, artifacts
"""
