"""Batches -> model -> checkpoints: the run's config, the training loop, checkpoints."""
