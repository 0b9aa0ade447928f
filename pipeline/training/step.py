"""Which training step a run takes: the one place a config becomes a `pipeline.nn.step.Step`.

The original recipe's compiled kernel where it is exact and faster (one hidden layer, sigmoid,
MSE, plain SGD at a constant rate, one process); the general step for everything else, MPI
included. `check_batch` (called by `train` before anything is written) refuses a batch too
small to split among the ranks.
"""

from __future__ import annotations

import numpy as np

from pipeline.communicator import Comm
from pipeline.config import TrainConfig
from pipeline.errors import ConfigError
from pipeline.nn.general_step import GeneralStep, StepSettings
from pipeline.nn.network import Network
from pipeline.nn.optimizers import OptimizerSettings
from pipeline.nn.step import Step

MIN_ROWS_PER_RANK = 16  # below this a step is all message and no arithmetic


def make_step(config: TrainConfig, network: Network, comm: Comm) -> Step:
    """The step that trains `network` (updated in place) by `config` on `comm`'s ranks."""
    if config.is_original and len(network.weights) == 2 and comm.size == 1:
        from pipeline.nn.sparse_step import SparseStep  # numba: compiled only when training

        return SparseStep(network)
    c = config
    optimizer = OptimizerSettings(c.optimizer, c.momentum, c.beta1, c.beta2, c.eps, c.weight_decay)
    settings = StepSettings(c.activation, c.loss, c.dropout, c.input_dropout, c.max_norm, optimizer)
    # the dropout generator's key: from the seed, apart from the init's and the loader's
    key = int(np.random.default_rng([c.seed, 1]).integers(2**63))
    return GeneralStep(network, settings, batch_size=c.batch_size, dropout_key=key, comm=comm)


def check_batch(batch_size: int, comm: Comm) -> None:
    """Refuse a batch too small to split: the original recipe (batch 3) stays one process."""
    if comm.size > 1 and batch_size < MIN_ROWS_PER_RANK * comm.size:
        raise ConfigError(
            f"too small to split among {comm.size} ranks (data-parallel training needs at "
            f"least {MIN_ROWS_PER_RANK} rows per rank, {MIN_ROWS_PER_RANK * comm.size} here); "
            "run the original recipe (batch 3) in one process",
            param="batch_size",
            value=batch_size,
        )
