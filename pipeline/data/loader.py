"""Streaming mini-batches from a shard set: bounded memory, prefetched, exactly resumable.

An epoch is a sequence of the split's samples: file order, or (with shuffling) the shards in
an order drawn from (seed, epoch) and each shard's rows permuted by (seed, epoch, shard).
With `world_size` consumers, rank r takes the r-th contiguous part of that sequence. A
background thread reads it in chunk-aligned blocks of rows into a small bounded queue;
batches are sliced from the blocks in memory, so HDF5 is never asked for a single sample.

Memory is bounded by (prefetch + 1) blocks, or when shuffling by the few shards those blocks
are drawn from (the consumer gathers the permuted rows, overlapping the next read): it does
not grow with the dataset.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import cast

import numpy as np

from pipeline.data.integrity import check_opened
from pipeline.data.manifest import Manifest, ShardInfo
from pipeline.data.shards import open_shard, read_rows
from pipeline.errors import ConfigError, ShardSetError

Batch = tuple[np.ndarray, np.ndarray]  # x (batch, features) float32, y (batch, classes) float32
# what the reader hands over: x, y and the rows to take from them, in order (None: all)
_Block = tuple[np.ndarray, np.ndarray, np.ndarray | None]
BLOCK_CHUNKS = 16  # a block is this many HDF5 chunks (4096 rows at the default layout)


@dataclass(frozen=True)
class LoaderState:
    """Where an iteration stands: plain values, saved in checkpoints to resume exactly."""

    epoch: int
    batches: int  # batches already consumed in this epoch
    seed: int
    batch_size: int
    shuffle: bool
    manifest_sha256: str  # the data's identity (its content; see manifest)
    # what, beside the content, decides the sample order: shuffled epochs permute whole
    # shards, so their sizes matter; file order is the same in any layout
    order: str = "file order"


@dataclass(frozen=True)
class _Segment:
    shard: ShardInfo
    index: int  # the shard's position in the manifest (seeds its permutation)
    start: int  # rows [start, stop) of the shard's epoch order
    stop: int


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_DONE = object()


class Loader:
    """Mini-batches of one split. `epoch(e)` is a generator over epoch e's batches."""

    def __init__(
        self,
        manifest: Manifest,
        split: str,
        *,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        locking: bool = True,
        prefetch: int = 2,
    ) -> None:
        info = manifest.split(split)
        if info.samples == 0:
            raise ShardSetError(f"{manifest.directory}: split {split!r} is empty (0 samples)")
        unverified = [s.file for s in info.shards if s.file not in manifest.verified]
        assert not unverified, f"shards never verified (open the set with open_set): {unverified}"
        if batch_size < 1:
            raise ConfigError("must be at least 1", param="batch_size", value=batch_size)
        if prefetch < 1:  # a Queue of maxsize 0 would be unbounded
            raise ConfigError("must be at least 1", param="prefetch", value=prefetch)
        if seed < 0:
            raise ConfigError("must be non-negative", param="seed", value=seed)
        if not 0 <= rank < world_size:
            raise ConfigError(f"must lie in [0, world_size={world_size})", param="rank", value=rank)
        if world_size > info.samples:
            raise ConfigError(
                f"more consumers than the {info.samples} samples of {split!r}",
                param="world_size",
                value=world_size,
            )
        self.manifest, self.split, self.shards = manifest, split, info.shards
        self.batch_size, self.shuffle, self.seed, self.drop_last = (
            batch_size,
            shuffle,
            seed,
            drop_last,
        )
        self.locking, self.prefetch = locking, prefetch
        self.block_rows = BLOCK_CHUNKS * manifest.chunk_rows
        # this rank's part of every epoch: positions [lo, hi) of the epoch's sequence
        self.lo = info.samples * rank // world_size
        self.hi = info.samples * (rank + 1) // world_size
        n = self.hi - self.lo
        self.batches_per_epoch = n // batch_size if drop_last else -(-n // batch_size)

    def __len__(self) -> int:
        return self.batches_per_epoch

    @property
    def samples(self) -> int:
        """Samples one epoch yields on this rank."""
        n = self.hi - self.lo
        return n - n % self.batch_size if self.drop_last else n

    def state(self, epoch: int, batches: int) -> LoaderState:
        order = "file order"
        if self.shuffle:
            sizes = ",".join(str(s.samples) for s in self.shards).encode()
            order = f"shuffled shards of sizes {hashlib.sha256(sizes).hexdigest()[:16]}"
        return LoaderState(
            epoch, batches, self.seed, self.batch_size, self.shuffle, self.manifest.identity, order
        )

    def check_state(self, state: LoaderState, epoch: int, batches: int) -> None:
        """Refuse a saved state this loader would not have produced at (epoch, batches)."""
        mine = self.state(epoch, batches)
        if mine != state:
            raise ConfigError(f"saved loader state {state} does not fit this loader's {mine}")

    def resume(self, state: LoaderState) -> Generator[Batch]:
        """The rest of the epoch a saved state stopped in, exactly as it would have come."""
        self.check_state(state, state.epoch, state.batches)
        return self.epoch(state.epoch, start_batch=state.batches)

    # --- the epoch's order ---------------------------------------------------------------

    def _shard_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.shards)))
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        return [int(i) for i in order]

    def _permutation(self, epoch: int, index: int) -> np.ndarray:
        rows = self.shards[index].samples
        return np.random.default_rng([self.seed, epoch, index]).permutation(rows)

    def _segments(self, epoch: int, start_batch: int) -> list[_Segment]:
        """The parts of shards that batches start_batch.. of this rank's epoch come from."""
        first = self.lo + start_batch * self.batch_size
        last = self.lo + self.samples
        segments, offset = [], 0
        for index in self._shard_order(epoch):
            rows = self.shards[index].samples
            a, b = max(first, offset) - offset, min(last, offset + rows) - offset
            if a < b:
                segments.append(_Segment(self.shards[index], index, a, b))
            offset += rows
        return segments

    # --- reading (background thread) -----------------------------------------------------

    def _blocks(self, epoch: int, segment: _Segment) -> Iterator[_Block]:
        path = self.manifest.path(segment.shard)
        with open_shard(path, locking=self.locking) as f:
            check_opened(self.manifest, segment.shard, f)  # the very file open_set verified
            if not self.shuffle:
                start = segment.start
                while start < segment.stop:
                    # end at a block boundary, so every read covers whole chunks
                    stop = min(segment.stop, (start // self.block_rows + 1) * self.block_rows)
                    yield (*read_rows(f, path, start, stop), None)
                    start = stop
                return
            # shuffled: read the whole shard in one read (blocks then a concatenation would
            # hold it twice), then hand out permuted blocks of it; the consumer gathers the
            # rows, so the gather overlaps the reading of the next shard
            x, y = read_rows(f, path, 0, segment.shard.samples)  # (rows, features), (rows, classes)
        order = self._permutation(epoch, segment.index)[segment.start : segment.stop]
        for s in range(0, len(order), self.block_rows):
            yield x, y, order[s : s + self.block_rows]

    def _produce(
        self, epoch: int, segments: list[_Segment], q: queue.Queue[object], stop: threading.Event
    ) -> None:
        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for segment in segments:
                for block in self._blocks(epoch, segment):
                    if not put(block):
                        return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(_Failure(exc))

    # --- batching (consumer) -------------------------------------------------------------

    def epoch(self, epoch: int, *, start_batch: int = 0, group: int = 1) -> Generator[Batch]:
        """Yield (x, y) batches of `epoch`, from batch `start_batch` on.

        With `group` > 1 an item holds up to `group` consecutive batches back to back
        (rows a multiple of the batch size, but for the epoch's last partial batch): the
        same rows in the same order, for a consumer that steps through many batches in one
        call. Closing the generator early (or an exception in the consumer) stops and joins
        the reader thread, which closes its file. Bad arguments are refused here, at the
        call; the reader thread starts at the first item.
        """
        if epoch < 0:
            raise ConfigError("must be non-negative", param="epoch", value=epoch)
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ConfigError(
                f"the epoch has {self.batches_per_epoch} batches",
                param="start_batch",
                value=start_batch,
            )
        if group < 1:
            raise ConfigError("must be at least 1", param="group", value=group)
        return self._epoch(epoch, start_batch, group)

    def _epoch(self, epoch: int, start_batch: int, group: int) -> Generator[Batch]:
        q: queue.Queue[object] = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        reader = threading.Thread(
            target=self._produce,
            args=(epoch, self._segments(epoch, start_batch), q, stop),
            name=f"shard-reader-{self.split}",
            daemon=True,
        )
        reader.start()
        try:
            yield from self._batches(q, group)
        finally:
            stop.set()
            reader.join()

    def _batches(self, q: queue.Queue[object], group: int) -> Generator[Batch]:
        size = self.batch_size
        carry: Batch | None = None  # rows left over from the previous block, fewer than size
        while (item := q.get()) is not _DONE:
            if isinstance(item, _Failure):
                raise item.exc
            x, y, rows = cast(_Block, item)
            if rows is not None:
                x, y = x[rows], y[rows]  # (block, features), (block, classes)
            start = 0
            if carry is not None:  # one batch across the block boundary: a small copy
                start = min(size - len(carry[0]), len(x))
                carry = (
                    np.concatenate([carry[0], x[:start]]),
                    np.concatenate([carry[1], y[:start]]),
                )
                if len(carry[0]) < size:
                    continue
                yield carry
                carry = None
            end = start + (len(x) - start) // size * size
            for i in range(start, end, size * group):  # views, no copies
                stop = min(i + size * group, end)
                yield x[i:stop], y[i:stop]
            if end < len(x):
                carry = (x[end:], y[end:])
        if carry is not None:
            yield carry  # the last partial batch (drop_last already trimmed the sequence)
