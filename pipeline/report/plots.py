"""PNG figures for the evaluation report.

Figures are built from `matplotlib.figure.Figure` with an explicit Agg canvas instead of pyplot:
there is no global figure registry to leak memory across calls and no display is ever needed, so
the same code runs on a headless training box and inside tests.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.fsutil import atomic_path


def _save_png(fig: Figure, path: Path) -> None:
    """Render with the Agg canvas into `fsutil.atomic_path`.

    The PNG is written to a temporary sibling and renamed over `path` only once complete, so a
    run killed mid-render leaves the previous PNG or none, never a truncated one.
    """
    FigureCanvasAgg(fig)  # the constructor installs itself as fig.canvas
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def save_confusion_heatmap(
    confusion: np.ndarray, class_names: Sequence[str], path: Path, *, title: str
) -> None:
    """Heatmap coloured by row-normalised counts, annotated with the raw counts.

    Colouring by the fraction of each true class keeps rare classes as visible as common ones,
    while the printed counts keep the absolute numbers; a true class with no samples stays blank.
    """
    n = len(class_names)
    if confusion.shape != (n, n):
        raise ValueError(f"confusion shape {confusion.shape} does not match {n} class names")
    counts = confusion.astype(np.int64)  # (n_classes, n_classes)
    support = counts.sum(axis=1, keepdims=True)  # (n_classes, 1)
    fraction = np.divide(
        counts, support, out=np.zeros(counts.shape, dtype=np.float64), where=support > 0
    )  # (n_classes, n_classes)

    side = max(4.0, 0.6 * n + 2.0)
    fig = Figure(figsize=(side + 1.0, side), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of true class")
    for i in range(n):
        for j in range(n):
            colour = "white" if fraction[i, j] > 0.5 else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour, fontsize=8)
    ax.set_xticks(range(n), labels=list(class_names))
    ax.set_yticks(range(n), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save_png(fig, path)


def save_learning_curves(
    epochs: Sequence[int],
    train_loss: Sequence[float],
    test_accuracy: Sequence[float],
    path: Path,
    *,
    label: str = "test accuracy",
) -> None:
    """Train loss and test accuracy per epoch, side by side.

    `test_accuracy` is a fraction in [0, 1] (as `ClassificationReport.accuracy` gives it) and is
    drawn in percent. Markers keep a single-epoch run visible, where a line alone would be empty,
    and `min_n_ticks=1` stops the tick locator falling back to fractional epochs.
    """
    if not len(epochs) == len(train_loss) == len(test_accuracy) > 0:
        raise ValueError(
            f"need equal non-empty series, got {len(epochs)}, {len(train_loss)}, "
            f"{len(test_accuracy)}"
        )
    accuracy = np.asarray(test_accuracy, dtype=np.float64)  # (n_epochs,)
    if (accuracy < 0.0).any() or (accuracy > 1.0).any():
        raise ValueError("test_accuracy must be fractions in [0, 1]")

    fig = Figure(figsize=(10.0, 4.0), dpi=100, layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, train_loss, marker="o")
    loss_ax.set_title("train loss")
    loss_ax.set_ylabel("loss")
    acc_ax.plot(epochs, 100.0 * accuracy, marker="o", color="tab:green")
    acc_ax.set_title(label)  # "val accuracy" when the run was scored on a val split
    acc_ax.set_ylabel("accuracy (%)")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(True, alpha=0.3)
    _save_png(fig, path)
