"""The predict stage: batches of inputs in, one record per input out, in one streamed pass.

    predict(model, batches) -> Prediction per batch: names, labels (B,), probabilities (B, C)
    Tally                     the accuracy over the labelled inputs (targets >= 0)
    rows(...)                 one output record per input: every class's probability, or the top K

Nothing is held beyond the batch at hand; the writers (`write_csv`, `write_jsonl`) stream too.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from pipeline.deploy.inputs import Batch
from pipeline.deploy.model import Model
from pipeline.metrics import EVAL_BATCH, inference

BATCH = EVAL_BATCH  # rows per forward pass: evaluate's, so the bits are evaluate's


@dataclass(frozen=True)
class Prediction:
    batch: Batch
    labels: np.ndarray  # (B,) int64 predicted class
    probabilities: np.ndarray  # (B, classes) float32


@dataclass
class Tally:
    labelled: int = 0
    correct: int = 0
    inputs: int = 0
    beyond: int = 0  # labels past the model's classes (a source naming none): no accuracy

    def add(self, p: Prediction) -> None:
        known = p.batch.targets >= 0
        self.inputs += len(p.labels)
        self.labelled += int(known.sum())
        self.correct += int((p.labels[known] == p.batch.targets[known]).sum())
        self.beyond += int((p.batch.targets >= p.probabilities.shape[1]).sum())

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled and not self.beyond else None


def predict(model: Model, batches: Iterable[Batch]) -> Iterator[Prediction]:
    """The batches' predictions, in order, under evaluate's BLAS rule (`network.inference`)."""
    with inference():
        for batch in batches:
            labels, probabilities = model.forward(batch.pixels)
            yield Prediction(batch, labels, probabilities)


def rows(p: Prediction, classes: Sequence[str], top: int | None) -> Iterator[dict[str, Any]]:
    """One record per input: input, label, class, then each class's probability (p_<class>)
    or, with `top`, the K likeliest as (class, probability) pairs, likeliest first."""
    order = np.argsort(-p.probabilities, axis=1, kind="stable")[:, :top] if top else None
    for i, name in enumerate(p.batch.names):
        label = int(p.labels[i])
        record: dict[str, Any] = {"input": name, "label": label, "class": classes[label]}
        probs = p.probabilities[i].tolist()
        if order is None:
            record["probabilities"] = dict(zip(classes, probs, strict=True))
        else:
            record["top"] = [(classes[k], probs[k]) for k in order[i].tolist()]
        yield record


def csv_header(classes: Sequence[str], top: int | None) -> list[str]:
    if top:
        return ["input", "label", "class"] + [f"{w}{k}" for k in range(1, top + 1) for w in "cp"]
    return ["input", "label", "class"] + [f"p_{c}" for c in classes]


def write_csv(stream: TextIO, records: Iterable[dict[str, Any]]) -> None:
    out = csv.writer(stream, lineterminator="\n")
    for r in records:
        probs = r["probabilities"].values() if "probabilities" in r else sum(r["top"], ())
        out.writerow([r["input"], r["label"], r["class"], *probs])


def write_jsonl(stream: TextIO, records: Iterable[dict[str, Any]]) -> None:
    for r in records:
        stream.write(json.dumps(r) + "\n")
