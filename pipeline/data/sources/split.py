"""A validation split carved from train: deterministic, stratified, with no random numbers.

Within each class, in file order, floor(fraction * count + 0.5) samples (at most count - 1)
go to val, evenly spread: the k-th of m val samples of a class of n is its member number
floor((2k + 1) * n / (2m)). No generator is involved, so the split is the same on every
machine and numpy version, and the same train split always gives the same val split (hence
the same shard set identity). Both parts keep file order.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pipeline.data.sources.base import RawDataset, RawSplit
from pipeline.errors import ConfigError


def val_mask(labels: np.ndarray, fraction: float, n_classes: int) -> np.ndarray:
    """(n,) bool: which train samples go to val."""
    mask = np.zeros(len(labels), bool)
    for c in range(n_classes):
        members = np.flatnonzero(labels == c)  # (count,) positions of class c, in file order
        n = len(members)
        m = min(int(fraction * n + 0.5), n - 1) if n > 1 else 0  # keep one to train on
        if m:
            k = np.arange(m)
            mask[members[(2 * k + 1) * n // (2 * m)]] = True
    return mask


def check_fraction(fraction: float) -> float:
    """A val fraction in (0, 1): nan and inf are not."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError("must lie strictly between 0 and 1", param="val_fraction", value=fraction)
    return fraction


def carve_val(raw: RawDataset, fraction: float) -> RawDataset:
    """`raw` with a "val" split taken from its train split (`fraction` of each class)."""
    check_fraction(fraction)
    if "val" in raw.splits:
        raise ConfigError(
            "the source already has a val split", param="val_fraction", value=fraction
        )
    train = raw.splits["train"]
    mask = val_mask(train.labels, fraction, len(raw.classes))
    if not mask.any():
        raise ConfigError(
            f"takes no sample of the {len(train.labels)} train images",
            param="val_fraction",
            value=fraction,
        )
    splits = {
        "train": RawSplit(train.images[~mask], train.labels[~mask]),
        "val": RawSplit(train.images[mask], train.labels[mask]),
        **{k: v for k, v in raw.splits.items() if k != "train"},
    }
    return replace(raw, splits=splits, val_fraction=fraction)
