"""Presets: named, documented sets of TrainConfig values. Any explicit option overrides them,
and the run's config records the resolved values (with the preset's name beside them).

    original  the TrainConfig defaults: 784-500-10 sigmoid, MSE, plain SGD lr 0.1, batch 3,
              N(0, 0.01) init, 10 epochs in file order (MNIST: 96.56% with seed 0)
    fast      the most accuracy in about half a minute of training on two cores:
              784-512-512-10 ReLU, He init, input dropout 0.1, dropout 0.2, softmax
              cross-entropy, SGD momentum 0.9 at lr 0.2 with a cosine schedule, batch 256,
              12 shuffled epochs (784-800-800-10 at batch 128 gains ~0.1 point for twice the
              time; 10 epochs lose ~0.1 point)
    best      the most accuracy in about ten minutes: 784-1024-1024-10 ReLU, input dropout
              0.1, dropout 0.3, max-norm 3.5, momentum 0.9 at lr 0.1, cosine, batch 128,
              60 shuffled epochs, ~7.3 s each (Srivastava et al. 2014's levers: 30 epochs
              reached 98.72%, 60 98.82%, 90 98.86%; their 0.2/0.5 dropout 98.60% after 40)
The figures each reaches are measured by `scripts/bench_recipes.py --accuracy` (README).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from pipeline.config import TrainConfig
from pipeline.errors import ConfigError

_MODERN: dict[str, Any] = {
    "activation": "relu",
    "loss": "cross_entropy",
    "init": "he",
    "optimizer": "momentum",
    "momentum": 0.9,
    "schedule": "cosine",
    "batch_size": 128,
    "shuffle": True,
}

PRESETS: dict[str, dict[str, Any]] = {
    "original": {},
    "fast": {
        **_MODERN,
        "hidden": (512, 512),
        "input_dropout": 0.1,
        "dropout": 0.2,
        "batch_size": 256,
        "lr": 0.2,
        "epochs": 12,
    },
    "best": {
        **_MODERN,
        "hidden": (1024, 1024),
        "input_dropout": 0.1,
        "dropout": 0.3,
        "max_norm": 3.5,
        "lr": 0.1,
        "epochs": 60,
    },
}


def resolve(preset: str, **options: Any) -> TrainConfig:
    """The preset's values, then every option that is not None on top; checked."""
    if preset not in PRESETS:
        raise ConfigError(f"one of {', '.join(PRESETS)}", param="preset", value=preset)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    assert not unknown, unknown  # callers pass TrainConfig's own field names
    chosen = {k: v for k, v in options.items() if v is not None}
    if "hidden" in chosen:
        chosen["hidden"] = tuple(chosen["hidden"])
    config = TrainConfig(**{**PRESETS[preset], **chosen, "preset": preset})
    config.check()
    return config
