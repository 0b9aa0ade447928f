"""Checkpoint + data -> report: metrics, plots and the evaluation report."""
