"""Training settings (:class:`TrainConfig`), read from YAML and checked, and a run's
result."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


@dataclass
class TrainConfig:
    """Settings of one training run. Loaded from YAML, overridden by CLI flags, and
    written back resolved into the run folder."""

    data: str = "data/prepared/fer2013"
    train_split: str = "train"
    val_split: str = "val"
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields
    epochs: int = 60
    batch_size: int = 128
    learning_rate: float = 2e-3
    optimizer: str = "adamw"  # adamw | sgd (Nesterov momentum 0.9); weight decay decoupled
    weight_decay: float = 1e-4
    warmup_epochs: int = 2
    schedule: str = "cosine"  # cosine | constant
    label_smoothing: float = 0.1
    class_weighting: str = "none"  # none | balanced
    sampling: str = "shuffle"  # shuffle | balanced (equal draws per class)
    mixup_alpha: float = 0.0  # 0 disables mixup
    soft_labels: bool = False  # train on FER+ vote distributions
    early_stopping_patience: int = 0  # epochs without val improvement; 0 disables
    fine_tune_epochs: int = 0  # vgg16 phase two: epochs with the top blocks unfrozen
    fine_tune_blocks: int = 1
    fine_tune_learning_rate: float = 1e-5
    limit_train: int = 0  # use a stratified subset of this many training faces; 0: all
    limit_val: int = 0
    distribute: str = "none"  # none | mirrored | multiworker
    input_pipeline: str = "auto"  # auto (tf.data on TensorFlow, else numpy) | tf.data | numpy
    init_from: str | None = None  # start from a model's weights: .keras file, run, "default"
    temperature_scaling: bool = True
    val_fraction: float = 0.1  # share of train carved out as val when the data has no val
    engine: str = "keras"  # keras | torch (ferkit_cnn on PyTorch; see ferkit.torch_train)
    seed: int = 0

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
        """Settings from a YAML file, with ``overrides`` (None: not given) on top.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not YAML, not a mapping, or unknown settings (naming the file).
        """
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected settings as 'name: value' lines")
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.fine_tune_epochs

    def validate(self) -> None:
        choices = {
            "schedule": ("cosine", "constant"),
            "class_weighting": ("none", "balanced"),
            "sampling": ("shuffle", "balanced"),
            "distribute": ("none", "mirrored", "multiworker"),
            "input_pipeline": ("auto", "tf.data", "numpy"),
            "optimizer": ("adamw", "sgd"),
            "engine": ("keras", "torch"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {getattr(self, name)!r}")
        if self.epochs < 1:
            raise ValueError("epochs must be at least 1")


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]


def yaml_ready(value: Any) -> Any:
    """Make dataclass dicts YAML-friendly (tuples to lists)."""
    if isinstance(value, dict):
        return {key: yaml_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [yaml_ready(item) for item in value]
    return value
