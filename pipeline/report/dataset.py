"""A shard set described for people: a summary of what it holds and a grid of sample images.

It lives beside the evaluation report because it is one: it presents a shard set, reading it
only through the manifest and the loader (the verified path every stage reads by), and draws
with the same Agg-canvas, atomically written PNGs as `plots`. `pipeline show` is its command.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data import Manifest
from pipeline.data.loader import Loader

GRID_BATCH = 4096  # rows read per step while looking for each class's first samples


@dataclass(frozen=True)
class DataSummary:
    name: str
    directory: Path
    identity: str
    source: str
    image_shape: list[int]
    classes: list[str]
    histograms: dict[str, list[int]]  # split -> samples per class
    shards: dict[str, int]  # split -> shard files

    @property
    def channels(self) -> int:
        return self.image_shape[2] if len(self.image_shape) == 3 else 1


def summarize(manifest: Manifest) -> DataSummary:
    """Everything the manifest says about the set, without reading a shard."""
    source: Any = manifest.raw.get("source", {})
    return DataSummary(
        name=manifest.name,
        directory=manifest.directory,
        identity=manifest.identity,
        source=str(source.get("spec", "?")) if isinstance(source, dict) else str(source),
        image_shape=list(manifest.image_shape),
        classes=list(manifest.classes),
        histograms={s: list(info.label_histogram) for s, info in manifest.splits.items()},
        shards={s: len(info.shards) for s, info in manifest.splits.items()},
    )


def first_per_class(manifest: Manifest, split: str, per_class: int) -> list[np.ndarray]:
    """The first `per_class` images of each class in file order, as (k, *image_shape) uint8.

    Reads the split in order and stops once every class present is filled, so a large set
    costs a few blocks, not a pass.
    """
    k = manifest.n_classes
    wanted = np.minimum(per_class, np.asarray(manifest.split(split).label_histogram))  # (k,)
    found: list[list[np.ndarray]] = [[] for _ in range(k)]
    batches = Loader(manifest, split, batch_size=GRID_BATCH).epoch(0)
    try:
        for x, y in batches:  # x (batch, features) float32, y (batch, classes) one-hot
            for row, label in zip(x, y.argmax(axis=1), strict=True):
                if len(found[label]) < wanted[label]:
                    # stored as pixel / 255 exactly: rint recovers the byte
                    found[label].append(np.rint(row * 255.0).astype(np.uint8))
            if all(len(f) >= w for f, w in zip(found, wanted, strict=True)):
                break
    finally:
        batches.close()  # stops the loader's reader thread
    shape = tuple(manifest.image_shape)
    return [np.array(f, np.uint8).reshape(len(f), *shape) for f in found]


def save_sample_grid(
    manifest: Manifest, path: Path, *, split: str = "train", per_class: int = 8
) -> None:
    """A PNG with one row per class: its name and its first `per_class` images of `split`."""
    from matplotlib.figure import Figure

    from pipeline.report.plots import _save_png

    samples = first_per_class(manifest, split, per_class)
    rows = len(samples)
    fig = Figure(figsize=(1.0 + 0.9 * per_class, 0.4 + 0.9 * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, per_class, squeeze=False)
    grey = len(manifest.image_shape) == 2
    for r, images in enumerate(samples):
        for c in range(per_class):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                ax.imshow(images[c], cmap="gray" if grey else None, vmin=0, vmax=255)
        axes[r][0].set_ylabel(manifest.classes[r], rotation=0, ha="right", va="center")
    fig.suptitle(f"{manifest.name} {split}: first {per_class} images per class")
    _save_png(fig, path)
