"""A streaming, pure-numpy training pipeline for MNIST-style images.

The data flow, one subpackage per stage:
    data/      raw sources (IDX, embedded MNIST) -> HDF5 shards + manifest -> mini-batches
    nn/        the network: its equations and the compiled kernel of the original recipe
    training/  config, the training loop, checkpoints (batches -> model -> checkpoint)
    report/    metrics, plots and the evaluation report (checkpoint -> report)
    cli/       the typer commands: options in, library calls, one-line errors out
"""

__version__ = "0.1.0"
