"""The run's configuration: one frozen dataclass, saved in run.json and in every checkpoint."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from pipeline.errors import ConfigError

META = "pipeline"  # the metadata key of each field's FieldMeta
# the largest network this project builds (weights and biases): a config beyond it is refused,
# and so is a checkpoint file that claims more (before it is read whole)
MAX_PARAMETERS = 1 << 26
T = TypeVar("T")


@dataclass(frozen=True)
class FieldMeta:
    """What a TrainConfig field is, beside its type and default: the CLI's options and help,
    `runs`' recipe and the resume rules are read from these."""

    help: str | None  # the option's help; None: not an option (fixed)
    choices: tuple[str, ...]  # the values it may take (TrainConfig.check); (): any
    recipe: bool  # shapes the weights: part of the recipe (a scheduled run's id)
    resumable: bool  # a resumed run may change it: the epochs run so far stay valid
    original_only: bool  # off its default, the arithmetic is not the original recipe's


def setting(
    default: T,
    help: str | None,
    *,
    choices: tuple[str, ...] = (),
    recipe: bool = True,
    resumable: bool = False,
    original_only: bool = False,
) -> T:
    """A TrainConfig field: its default, and its FieldMeta."""
    meta = FieldMeta(help, choices, recipe, resumable, original_only)
    return field(default=default, metadata={META: meta})


def field_metas() -> dict[str, FieldMeta]:
    """Every TrainConfig field's FieldMeta, in field order (the order of `--help`)."""
    return {f.name: f.metadata[META] for f in fields(TrainConfig)}


def option_help() -> dict[str, str]:
    """The fields offered as command-line options, with their help, in field order."""
    return {name: spec.help for name, spec in field_metas().items() if spec.help is not None}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run. The defaults are the original recipe."""

    hidden: tuple[int, ...] = setting((500,), "Hidden layer size; repeat for more layers.")
    epochs: int = setting(10, "Epochs to train.", resumable=True)
    batch_size: int = setting(3, "Mini-batch size.")
    lr: float = setting(0.1, "Peak learning rate (positive).")
    seed: int = setting(0, "Seed of the initial weights (and of shuffling).")
    shuffle: bool = setting(
        False, "Shuffle each epoch; off trains in file order, as the original recipe."
    )
    init_std: float = setting(0.01, "Std of the normal init.")
    dtype: str = setting("float32", None, choices=("float32", "float64"))
    checkpoint_every: int = setting(  # steps between mid-epoch checkpoints
        0, "Also checkpoint every N steps (0: at epoch ends only).", recipe=False, resumable=True
    )
    # ---- the recipe (pipeline.training.presets names sets of these); defaults: the original
    preset: str = setting(  # the name the values started from; the values below decide
        "original", "Named recipe (original, fast, best); any option given overrides its values."
    )
    activation: str = setting(
        "sigmoid",
        "Hidden units: sigmoid, tanh, relu.",
        choices=("sigmoid", "tanh", "relu"),
        original_only=True,
    )
    loss: str = setting(  # mse: sum |a - y|^2 / 2 per sample
        "mse",
        "Loss: mse or cross_entropy (softmax).",
        choices=("mse", "cross_entropy"),
        original_only=True,
    )
    init: str = setting(
        "normal",
        "Weight init: normal (N(0, --init-std)), he, xavier.",
        choices=("normal", "he", "xavier"),
        original_only=True,
    )
    optimizer: str = setting(
        "sgd",
        "Optimizer: sgd, momentum, nesterov, adam, adamw.",
        choices=("sgd", "momentum", "nesterov", "adam", "adamw"),
        original_only=True,
    )
    momentum: float = setting(0.9, "Momentum (momentum, nesterov), in [0, 1).")
    beta1: float = setting(0.9, "Adam's beta1.")
    beta2: float = setting(0.999, "Adam's beta2.")
    eps: float = setting(1e-8, "Adam's epsilon.")
    weight_decay: float = setting(  # of the weights, not the biases
        0.0, "Weight decay of the weights (decoupled under adamw).", original_only=True
    )
    schedule: str = setting(
        "constant",
        "LR schedule: constant, step, cosine.",
        choices=("constant", "step", "cosine"),
        original_only=True,
    )
    warmup_epochs: float = setting(  # may be a fraction
        0.0, "Linear LR warmup, in epochs.", original_only=True
    )
    step_epochs: int = setting(10, "Step schedule: epochs between decays.")
    step_gamma: float = setting(0.1, "Step schedule: the decay factor.")
    dropout: float = setting(  # inverted dropout
        0.0, "Dropout of hidden units, in [0, 1).", original_only=True
    )
    input_dropout: float = setting(0.0, "Dropout of input pixels, in [0, 1).", original_only=True)
    max_norm: float = setting(  # each unit's incoming weight vector kept within it
        0.0, "Max norm of each unit's incoming weights (0: off).", original_only=True
    )
    patience: int = setting(
        0,
        "With a val split: stop after N epochs without a better val accuracy.",
        resumable=True,
    )

    # the fields a resumed run may change, and those not part of the recipe: read from the
    # Specs once the class is made (below it); unannotated, so not fields
    RESUMABLE = frozenset[str]()
    NOT_RECIPE = frozenset[str]()

    @property
    def is_original(self) -> bool:
        """The original recipe's arithmetic (sigmoid, MSE, plain SGD at a constant rate): with
        one hidden layer in one process it trains through its compiled kernel (SparseStep)."""
        return all(
            getattr(self, f.name) == f.default
            for f in fields(self)
            if f.metadata[META].original_only
        )

    def check(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("must be a positive finite number", param="lr", value=self.lr)
        for param in ("epochs", "batch_size"):
            if getattr(self, param) < 1:
                raise ConfigError("must be at least 1", param=param, value=getattr(self, param))
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(
                "each hidden size must be at least 1", param="hidden", value=list(self.hidden)
            )
        for param in ("seed", "checkpoint_every"):
            if getattr(self, param) < 0:
                raise ConfigError("must be 0 or more", param=param, value=getattr(self, param))
        if not (math.isfinite(self.init_std) and self.init_std > 0):
            raise ConfigError(
                "must be a positive finite number", param="init_std", value=self.init_std
            )
        for param, spec in field_metas().items():
            if spec.choices and getattr(self, param) not in spec.choices:
                raise ConfigError(
                    f"one of {', '.join(spec.choices)}", param=param, value=getattr(self, param)
                )
        for param in ("dropout", "input_dropout", "momentum", "beta1", "beta2"):
            value = getattr(self, param)
            if not (math.isfinite(value) and 0 <= value < 1):
                raise ConfigError("must be in [0, 1)", param=param, value=value)
        for param in ("eps", "weight_decay", "warmup_epochs", "max_norm", "step_gamma"):
            value = getattr(self, param)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError("must be 0 or a positive finite number", param=param, value=value)
        for param in ("step_epochs", "patience"):
            if getattr(self, param) < (1 if param == "step_epochs" else 0):
                raise ConfigError("out of range", param=param, value=getattr(self, param))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_json(cls, doc: object) -> TrainConfig:
        """A saved config, each value of its field's type and in range (ValueError if not:
        run.json and checkpoints are files, and their values size arrays)."""
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in doc:
                continue  # a field added since: its default is what the run used
            value, kind = doc[f.name], type(f.default)
            if kind is tuple:  # hidden: a list of ints
                ok = isinstance(value, list) and all(type(v) is int for v in value)
                value = tuple(value) if ok else value
            elif kind is float:
                ok = type(value) in (int, float)
                value = float(value) if ok else value
            else:
                ok = type(value) is kind
            if not ok:
                raise ValueError(f"{f.name} {str(value)[:40]!r} is not a {kind.__name__}")
            values[f.name] = value
        config = cls(**values)
        try:
            config.check()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return config


TrainConfig.RESUMABLE = frozenset(name for name, spec in field_metas().items() if spec.resumable)
TrainConfig.NOT_RECIPE = frozenset(name for name, spec in field_metas().items() if not spec.recipe)
