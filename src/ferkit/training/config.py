"""Training settings (:class:`TrainConfig`), read from YAML and checked, and a run's
result."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from ferkit.models.config import AugmentConfig, ModelConfig
from ferkit.settings import check_choices, setting, typed_values

#: The training engines (see :mod:`ferkit.training.trainer`).
ENGINES = ("keras", "torch")


@dataclass
class TrainConfig:
    """Settings of one training run. Loaded from YAML, overridden by CLI flags, and
    written back resolved into the run folder."""

    data: str = setting("data/prepared/fer2013", "prepared dataset folder")
    train_split: str = setting("train", "split to train on")
    val_split: str = setting("val", "split to validate on (selects the best epoch)")
    model: dict[str, Any] = setting(  # noqa: RUF009  (a dataclasses.field, with help)
        default_factory=dict, help="ModelConfig fields (arch, widths, augment, ...)"
    )
    epochs: int = setting(60, "epochs")
    batch_size: int = setting(128, "batch size")
    learning_rate: float = setting(2e-3, "peak learning rate")
    optimizer: str = setting(
        "adamw", "adamw, or sgd with Nesterov momentum 0.9 (weight decay decoupled)",
        choices=("adamw", "sgd"),
    )  # fmt: skip
    weight_decay: float = setting(1e-4, "decoupled weight decay")
    warmup_epochs: int = setting(2, "epochs of linear warm-up from a tenth of the peak")
    schedule: str = setting("cosine", "learning-rate schedule", choices=("cosine", "constant"))
    label_smoothing: float = setting(0.1, "label smoothing")
    class_weighting: str = setting("none", "loss weights per class", choices=("none", "balanced"))
    sampling: str = setting(
        "shuffle", "batch sampling: shuffled, or equal draws per class",
        choices=("shuffle", "balanced"),
    )  # fmt: skip
    mixup_alpha: float = setting(0.0, "mixup's Beta(alpha, alpha); 0 disables it")
    soft_labels: bool = setting(False, "train on the dataset's soft labels (FER+ votes, teachers)")
    early_stopping_patience: int = setting(0, "epochs without val improvement; 0 disables it")
    fine_tune_epochs: int = setting(0, "vgg16 phase two: epochs with the top blocks unfrozen")
    fine_tune_blocks: int = setting(1, "vgg16 blocks to unfreeze")
    fine_tune_learning_rate: float = setting(1e-5, "vgg16 phase two learning rate")
    limit_train: int = setting(0, "train on a stratified subset of this many faces; 0: all")
    limit_val: int = setting(0, "validate on a stratified subset of this many faces; 0: all")
    distribute: str = setting(
        "none", "mirrored: all GPUs of this machine; multiworker: several machines (TF_CONFIG)",
        choices=("none", "mirrored", "multiworker"),
    )  # fmt: skip
    input_pipeline: str = setting(
        "auto", "tf.data (TensorFlow) or NumPy batches (any Keras backend; auto picks)",
        choices=("auto", "tf.data", "numpy"),
    )  # fmt: skip
    init_from: str | None = setting(
        None,
        "start from a model's weights and architecture (from its config.yaml; model settings "
        "given win): a .keras file, a run or bundle folder, an installed model's name, or "
        "'default' to fine-tune the shipped model; every layer is copied or the run is refused",
    )
    temperature_scaling: bool = setting(True, "fit a temperature on val for calibration")
    keep_epoch_checkpoints: bool = setting(
        False, "keep every epoch's model (checkpoints/epoch_NNN.keras, or .weights.npz for "
        "the torch engine), to select an epoch on other measures after training",
    )  # fmt: skip
    val_fraction: float = setting(0.1, "share of train held out when the data has no val split")
    engine: str = setting(
        "keras", "keras, or torch: ferkit_cnn on PyTorch for a GPU without TensorFlow; its "
        "run is finished into a Keras model with --finish", choices=ENGINES,
    )  # fmt: skip
    seed: int = setting(0, "seed of initialisation, shuffling and augmentation")

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
        values = typed_values(cls, values, str(path))
        if isinstance(values.get("model"), dict):
            model = typed_values(ModelConfig, values["model"], f"{path}: model")
            if isinstance(model.get("augment"), dict):
                where = f"{path}: model: augment"
                model["augment"] = typed_values(AugmentConfig, model["augment"], where)
            values["model"] = model
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.fine_tune_epochs

    def validate(self) -> None:
        check_choices(self)
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
