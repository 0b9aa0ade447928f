"""Batches -> model -> checkpoints: the step a run takes, the training loop, checkpoints."""
