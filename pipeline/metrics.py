"""Classification metrics, in numpy only: what training scores each epoch and the report shows.

Everything is derived from one integer confusion matrix, so a split is streamed batch by batch
(`confusion_on`), `confusion_matrix` added up per batch, and `classification_report` called
once at the end without ever holding all predictions in memory. Below both the trainer and
the report, which share it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

EVAL_BATCH = 1000  # rows per forward pass when scoring a split


@contextlib.contextmanager
def inference() -> Iterator[None]:
    """Scoring and predicting run their products on one BLAS thread: on a shared machine
    OpenBLAS's threads wait on each other's cores (README, "Using the model": measured).
    One rule for `evaluate` and `predict`, so the two compute the same bits for the same
    batches."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    with threadpool_limits(1, user_api="blas"):
        yield


class Classifier(Protocol):
    def predict(self, x: np.ndarray) -> np.ndarray: ...  # (B, features) -> (B,) classes


class Split(Protocol):
    def epoch(self, epoch: int) -> Iterable[tuple[np.ndarray, np.ndarray]]: ...


def confusion_on(model: Classifier, split: Split, n_classes: int) -> np.ndarray:
    """(classes, classes) counts of (true, predicted) over one streamed pass of a split."""
    confusion = np.zeros((n_classes, n_classes), np.int64)
    with inference():  # the bits `predict` computes too
        for x, y in split.epoch(0):  # x (batch, features), y (batch, classes) one-hot
            confusion += confusion_matrix(y.argmax(axis=1), model.predict(x), n_classes)
    return confusion


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Count (true, predicted) label pairs: rows are the true class, columns the prediction.

    One `np.bincount` over the flattened pair index `y_true * n + y_pred` does the counting in a
    single vectorised pass; `minlength` keeps the shape fixed even when a class is absent.
    """
    if n_classes < 1:
        raise ValueError(f"n_classes must be at least 1, got {n_classes}")
    if y_true.ndim != 1 or y_pred.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(f"need equal-length 1-D labels, got {y_true.shape} and {y_pred.shape}")
    if not (np.issubdtype(y_true.dtype, np.integer) and np.issubdtype(y_pred.dtype, np.integer)):
        raise ValueError(f"labels must be integers, got {y_true.dtype} and {y_pred.dtype}")
    for labels in (y_true, y_pred):
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            raise ValueError(f"labels outside [0, {n_classes}), got {labels.min()}..{labels.max()}")
    pair = y_true.astype(np.int64) * n_classes + y_pred.astype(np.int64)  # (n_samples,)
    counts = np.bincount(pair, minlength=n_classes * n_classes)  # (n_classes * n_classes,)
    return counts.reshape(n_classes, n_classes).astype(np.int64)  # (n_classes, n_classes)


@dataclass(frozen=True, eq=False)
class ClassificationReport:
    """Per-class and overall scores derived from one confusion matrix.

    `eq=False` because dataclass equality would compare numpy arrays with `==`, whose truth value
    is ambiguous; the arrays are made read-only so that `frozen` means frozen all the way down.
    """

    accuracy: float
    precision: np.ndarray  # (n_classes,) float64
    recall: np.ndarray  # (n_classes,) float64
    f1: np.ndarray  # (n_classes,) float64
    support: np.ndarray  # (n_classes,) int64
    confusion: np.ndarray  # (n_classes, n_classes) int64

    def __post_init__(self) -> None:
        for array in (self.precision, self.recall, self.f1, self.support, self.confusion):
            array.flags.writeable = False

    @property
    def macro_precision(self) -> float:
        """Unweighted mean over classes, so rare digits count as much as common ones."""
        return float(self.precision.mean())

    @property
    def macro_recall(self) -> float:
        """Unweighted mean over classes, so rare digits count as much as common ones."""
        return float(self.recall.mean())

    @property
    def macro_f1(self) -> float:
        """Mean of the per-class F1 scores (not the F1 of the macro precision and recall)."""
        return float(self.f1.mean())

    def to_dict(self, class_names: Sequence[str]) -> dict[str, object]:
        """Plain Python types only, so the result goes straight into `json.dump`."""
        if len(class_names) != len(self.support):
            raise ValueError(f"need {len(self.support)} class names, got {len(class_names)}")
        per_class = [
            {
                "class": str(name),
                "precision": float(self.precision[i]),
                "recall": float(self.recall[i]),
                "f1": float(self.f1[i]),
                "support": int(self.support[i]),
            }
            for i, name in enumerate(class_names)
        ]
        return {
            "accuracy": self.accuracy,
            "per_class": per_class,
            "macro": {
                "precision": self.macro_precision,
                "recall": self.macro_recall,
                "f1": self.macro_f1,
            },
            "confusion_matrix": self.confusion.tolist(),
        }


def classification_report(confusion: np.ndarray) -> ClassificationReport:
    """Accuracy, per-class precision/recall/F1 and support from a confusion matrix.

    Zero-division convention: a class that is never predicted has precision 0.0, a class with no
    support (never the true label) has recall 0.0, and F1 is 0.0 when precision + recall == 0.
    These are the pessimistic choices: an undefined score never inflates a macro average. The
    divisions use `np.divide(..., where=...)` so no RuntimeWarning is emitted for empty classes.
    """
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1] or confusion.shape[0] == 0:
        raise ValueError(f"confusion matrix must be square and non-empty, got {confusion.shape}")
    if not np.issubdtype(confusion.dtype, np.integer):
        raise ValueError(f"confusion matrix must hold integer counts, got {confusion.dtype}")
    if (confusion < 0).any():
        raise ValueError("confusion matrix has negative counts")
    total = int(confusion.sum())
    if total == 0:
        raise ValueError("confusion matrix has no samples")

    counts = confusion.astype(np.int64)  # (n_classes, n_classes)
    tp = np.diag(counts).astype(np.float64)  # (n_classes,)
    support = counts.sum(axis=1)  # (n_classes,) row sums: samples whose true label is the class
    predicted = counts.sum(axis=0)  # (n_classes,) column sums: samples predicted as the class

    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)  # (n_classes,)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)  # (n_classes,)
    both = precision + recall  # (n_classes,)
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(tp), where=both > 0)

    return ClassificationReport(
        accuracy=float(tp.sum()) / total,
        precision=precision,
        recall=recall,
        f1=f1,
        support=support,
        confusion=counts,
    )
