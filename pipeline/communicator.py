"""The communicator: what data-parallel training over MPI needs, below every stage that uses it.

N ranks (started by `mpiexec`, `srun` or an MPI Operator) each read the same epoch in the same
order and take their contiguous share of every GLOBAL batch of `batch_size` rows, so the
samples of a step do not depend on N. Each rank's gradients are scaled by its share of the
batch, packed into one flat buffer in the run's dtype, summed in place with a single
`Allreduce`, and every rank then applies the identical update: the result is the
single-process mean gradient up to the order of floating-point sums. mpi4py is imported only
when MPI is asked for or the process was started by an MPI launcher (`pip install .[mpi]`).

The summed buffer also carries the batch's summed loss and a stop flag, so the loss logged by
every rank is the global one and a SIGTERM (or SIGINT) that reaches any rank stops every rank
after the SAME step, at no extra message: a signal cannot interrupt a rank waiting inside
`Allreduce`, so the handler only raises the flag (`request_stop`) and the step raises `Stopped`
on all ranks together. Rank 0 is the only writer of the run; a rank that fails on its own
stops cleanly and then aborts the job (`abort`), so no rank waits forever for one that is gone.

Before the first collective step of a command (`train`, `run`, `evaluate`) every rank must
hold the same arguments: `agree` compares a digest of each rank's resolved config and data
identity, and on a difference every rank refuses together (rank 0 names what differs; no
abort is needed, as no rank is left waiting): ranks given different recipes would train
silently wrong, and ranks given different epochs would leave one waiting forever.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Protocol

import numpy as np

from pipeline.errors import ConfigError

MODES = ("auto", "mpi", "off")
EXTRA_HINT = "pip install 'mnist-pipeline[mpi]' (mpi4py and an MPI)"
# set by MPI launchers in every rank's environment: MPICH/hydra, Intel MPI and Slurm's PMI
# (PMI_SIZE), Open MPI (OMPI_COMM_WORLD_SIZE); PMIx (srun --mpi=pmix) only names the rank
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
_RANK_ONLY_VARS = ("PMIX_RANK",)


class Comm(Protocol):
    """What training needs of a communicator; `Local` is the one-process case."""

    rank: int
    size: int

    def allreduce_sum(self, buf: np.ndarray) -> None: ...  # in place, every rank gets the sum
    def barrier(self) -> None: ...
    def broadcast(self, obj: Any) -> Any: ...  # rank 0's object, on every rank
    def allgather(self, obj: Any) -> list[Any]: ...  # every rank's object, in rank order
    def abort(self, code: int) -> None: ...  # ends every rank of the job


class Local:
    """One process: every collective is the identity."""

    rank, size = 0, 1

    def allreduce_sum(self, buf: np.ndarray) -> None:
        pass

    def barrier(self) -> None:
        pass

    def broadcast(self, obj: Any) -> Any:
        return obj

    def allgather(self, obj: Any) -> list[Any]:
        return [obj]

    def abort(self, code: int) -> None:
        raise SystemExit(code)


LOCAL = Local()


class MPIComm:
    """mpi4py's COMM_WORLD; buffers go by their memory (no pickling), objects by pickle only
    for small plain values (positions and digests) between the ranks of one job."""

    def __init__(self) -> None:
        from mpi4py import MPI

        self._mpi = MPI
        self._comm = MPI.COMM_WORLD
        self.rank: int = self._comm.Get_rank()
        self.size: int = self._comm.Get_size()

    def allreduce_sum(self, buf: np.ndarray) -> None:
        assert buf.flags.c_contiguous
        self._comm.Allreduce(self._mpi.IN_PLACE, buf, op=self._mpi.SUM)

    def barrier(self) -> None:
        self._comm.Barrier()

    def broadcast(self, obj: Any) -> Any:
        return self._comm.bcast(obj, root=0)

    def allgather(self, obj: Any) -> list[Any]:
        return list(self._comm.allgather(obj))

    def abort(self, code: int) -> None:
        self._comm.Abort(code)


class Stopped(KeyboardInterrupt):
    """Every rank saw a stop request in the same step's sum: the job ends without an abort."""


class Refused(Exception):
    """A rank > 0's side of a refusal every rank reached together (`agree`): rank 0 raises
    `error` itself and says it; this rank ends with the same outcome, quietly."""

    def __init__(self, error: ConfigError) -> None:
        super().__init__(str(error))
        self.error = error


_stop = {"requested": False, "agreed": False}  # agreed: every rank ends together, no abort


def request_stop(signum: int, frame: object) -> None:
    """Signal handler under MPI: stop at the next step's sum (see the module docstring)."""
    _stop["requested"] = True


def stop_agreed() -> bool:
    """Every rank is ending together (a stop in the same step, or a refusal by `agree`)."""
    return _stop["agreed"]


def agree(comm: Comm, claims: dict[str, Any]) -> None:
    """Every rank must hold the same `claims` (parameter -> value: the resolved config, the data
    identity...) before the first collective step. One small message when they agree (a sha256
    per rank); otherwise every rank refuses together: rank 0 raises a ConfigError naming the
    first parameter that differs and the ranks' values, the others raise `Refused` with it."""
    if comm.size == 1:
        return
    text = {name: json.dumps(value, sort_keys=True, default=str) for name, value in claims.items()}
    mine = hashlib.sha256(json.dumps(text, sort_keys=True).encode()).hexdigest()
    if len(set(comm.allgather(mine))) == 1:
        return
    every = comm.allgather(text)  # (size,) of {name: value as JSON}: small, once
    rank, name = next(
        (rank, name)
        for rank, theirs in enumerate(every)
        for name in [*every[0], *theirs]
        if every[0].get(name) != theirs.get(name)
    )
    error = ConfigError(
        f"rank {rank} has {_shown(every[rank].get(name))}; every rank must be started with "
        "the same arguments and data",
        param=name,
        value=_shown(every[0].get(name)),
    )
    _stop["agreed"] = True  # no rank waits for another: the job ends without an abort
    if comm.rank == 0:
        raise error
    raise Refused(error)


def _shown(text: str | None) -> str:
    """A claim's value as a message shows it: a string bare, anything else as JSON."""
    if text is None:
        return "none"
    value = json.loads(text)
    return value if isinstance(value, str) else text


def launched_by_mpi(environ: dict[str, str] | None = None) -> bool:
    """Whether an MPI launcher started this process as one of several ranks."""
    env = os.environ if environ is None else environ
    for var in _SIZE_VARS:
        if var in env:
            try:
                return int(env[var]) > 1
            except ValueError:
                return False
    return any(var in env for var in _RANK_ONLY_VARS)


def check_mode(mode: str) -> str:
    """One of MODES."""
    if mode not in MODES:
        raise ConfigError("auto, mpi or off", param="distributed", value=mode)
    return mode


def connect(mode: str) -> Comm:
    """The communicator for `--distributed MODE`: off (one process), mpi (always MPI), auto
    (MPI when a launcher started several ranks, else one process without importing mpi4py)."""
    if check_mode(mode) == "off" or (mode == "auto" and not launched_by_mpi()):
        return LOCAL
    try:
        return MPIComm()
    except (ImportError, RuntimeError) as exc:  # no mpi4py, or it finds no MPI library
        raise ConfigError(
            f"MPI is not available ({str(exc).splitlines()[0]}): {EXTRA_HINT}",
            param="distributed",
            value=mode,
        ) from None


def rows_of_rank(rows: int, rank: int, size: int) -> slice:
    """This rank's contiguous rows of a global batch: sizes differ by at most one."""
    base, extra = divmod(rows, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class GradientSum:
    """One flat buffer (all gradients, the loss, the stop flag) reused every step: one
    Allreduce."""

    def __init__(self, shapes: list[tuple[int, ...]], dtype: np.dtype[Any]) -> None:
        self.shapes = shapes
        self.sizes = [int(np.prod(s)) for s in shapes]
        self.buf = np.empty(sum(self.sizes) + 2, dtype=dtype)  # (params + 2,)

    def __call__(
        self, comm: Comm, grads: list[np.ndarray], loss: float, weight: float
    ) -> tuple[list[np.ndarray], float]:
        """Sum `weight * grads` and `loss` over the ranks; returns views of the sums. With
        weight = (this rank's rows) / (global rows) and grads averaged over this rank's rows,
        the sum is the global batch's mean gradient. Raises `Stopped` on every rank, before
        the update, when any rank was asked to stop."""
        out, offset = [], 0
        for grad, size, shape in zip(grads, self.sizes, self.shapes, strict=True):
            view = self.buf[offset : offset + size]
            np.multiply(grad.reshape(-1), weight, out=view, casting="same_kind")
            out.append(view.reshape(shape))
            offset += size
        self.buf[-2:] = loss, _stop["requested"]
        comm.allreduce_sum(self.buf)
        if self.buf[-1]:
            _stop["agreed"] = True
            raise Stopped
        return out, float(self.buf[-2])


def digest(arrays: list[np.ndarray]) -> str:
    """sha256 of the arrays' bytes: ranks compare their weights without sending them."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()
