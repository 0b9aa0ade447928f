"""The training step: one interface, two implementations (`pipeline.training.step` chooses).

    loss_sum = step.steps(x, y, lrs, batch_size, loss_sum)  # consecutive batches, one rate each
    saved = step.state();  step.load_state(saved)            # what a checkpoint keeps

`SparseStep` (sparse_step.py) is the original recipe's compiled SGD kernel: one hidden layer,
sigmoid, MSE, plain SGD at a constant rate, one process; exact (the tests hold it to
`Network.backprop` + `update`) and several times faster on mostly-zero images at batch 3.
`GeneralStep` (general_step.py) is every other recipe: any depth, activation, loss, dropout
and optimizer, data-parallel over MPI. Both add each batch's loss to `loss_sum` in order, so
a running sum threaded through many calls does not depend on how the batches were split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class StepState:
    """What a step carries from one batch to the next, besides the weights."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # the optimizer's buffers
    step_count: int = 0  # optimizer steps taken (Adam's bias correction counts them)
    dropout_counter: int = 0  # words the dropout generator has drawn


Rows = np.ndarray  # (N, n) rows of a batch, or of many consecutive batches


class Step(Protocol):
    def steps(
        self, x: Rows, y: Rows, lrs: Sequence[float], batch_size: int, loss_sum: float
    ) -> float:
        """One update per rate in lrs, over consecutive batches of x (N, n_0), y (N, n_L) (the
        last may be smaller); returns loss_sum plus each batch's summed loss, added in order."""
        ...

    def state(self) -> StepState: ...

    def load_state(self, state: StepState) -> None:
        """Continue from `state` (ValueError naming what does not fit)."""
        ...
