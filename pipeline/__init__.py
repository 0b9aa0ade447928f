"""A streaming, pure-numpy training pipeline for MNIST-style images.

Data flow, one module per stage:
    sources/idx  (raw IDX files)  -> prepare/shards (HDF5 shards + manifest)
    loader       (mini-batches)   -> model/kernels  (the MLP and its step)
    train        (checkpoints)    -> evaluate       (metrics, plots, report)
"""

__version__ = "0.1.0"
