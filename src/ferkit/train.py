"""``ferkit train``: train a model on a prepared dataset into a self-describing run folder.

A run folder holds everything needed to understand, resume and use the run::

    config.yaml        resolved settings (rebuilds the model and the data pipeline)
    labels.json        the class list, in output order
    history.csv        one row per completed epoch
    state.json         where the run is: last completed epoch, best score, patience
    checkpoints/last.keras   model + optimizer state after the last completed epoch
    checkpoints/best.keras   the model with the best validation score
    calibration.json   temperature fitted on validation, ECE before and after
    metrics.json       final validation metrics and training time

Each epoch's shuffling comes from ``seed + epoch`` and the optimizer state is saved every
epoch, so ``--resume`` continues exactly where a killed run stopped. Every file is written
atomically; the last checkpoint is first saved complete under a temporary name, then
``state.json`` records its SHA-256, then it replaces the previous one, so a kill or a full
disk at any moment leaves a run that resumes from its last complete epoch. Resuming checks
the checkpoint against ``state.json`` and refuses, with the fix, when they disagree.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ferkit.data import PreparedDataset, Split
from ferkit.outputs import MARKER, check_not_overlapping, locked, write_atomic, write_marker

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.yaml"
STATE_NAME = "state.json"
HISTORY_NAME = "history.csv"
LAST_CHECKPOINT = "checkpoints/last.keras"
LAST_RNG = "checkpoints/last_rng.json"
BEST_CHECKPOINT = "checkpoints/best.keras"


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


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, TensorFlow and Keras from one number."""
    import random

    import keras

    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of a class-stratified random subset of about ``size`` items."""
    if not size or size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = max(1, round(len(members) * size / len(labels)))
        chosen.append(rng.choice(members, min(take, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))


def _subset(split: Split, indices: np.ndarray) -> Split:
    return Split(
        name=split.name,
        images=split.images[indices],
        labels=split.labels[indices],
        paths=split.paths[indices],
        classes=split.classes,
        soft_labels=None if split.soft_labels is None else split.soft_labels[indices],
    )


def _targets(split: Split, soft: bool) -> np.ndarray:
    if soft:
        if split.soft_labels is None:
            raise ValueError(
                f"split {split.name!r} has no soft labels; prepare FER+ with --soft-labels"
            )
        return split.soft_labels.astype(np.float32)
    return split.one_hot()


def _backend() -> str:
    import keras

    return keras.backend.backend()


def _numpy_pipeline(config: TrainConfig) -> bool:
    """Whether the input comes as NumPy batches (always, on backends without tf.data)."""
    if _backend() != "tensorflow":
        if config.input_pipeline == "tf.data":
            raise ValueError(
                f"input_pipeline tf.data needs the TensorFlow backend, not {_backend()}"
            )
        return True
    return config.input_pipeline == "numpy"


def _epoch_order(split: Split, config: TrainConfig, epoch_seed: int) -> np.ndarray:
    """The face order of one epoch for the NumPy pipeline: a seeded permutation, or with
    balanced sampling equal draws per class (each class cycling through a shuffle)."""
    rng = np.random.default_rng(epoch_seed)
    if config.sampling != "balanced":
        return rng.permutation(len(split))
    steps = math.ceil(len(split) / config.batch_size)
    members = [np.flatnonzero(split.labels == label) for label in range(len(split.classes))]
    members = [rng.permutation(indices) for indices in members if len(indices)]
    draws = rng.integers(len(members), size=steps * config.batch_size)
    order = np.empty(len(draws), dtype=np.int64)
    for index, indices in enumerate(members):
        picks = np.flatnonzero(draws == index)
        order[picks] = indices[np.arange(len(picks)) % len(indices)]
    return order


def _array_batches(
    images: np.ndarray,
    targets: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    mixup_alpha: float = 0.0,
    seed: int = 0,
) -> Any:
    """A ``keras.utils.PyDataset`` of float32 batches in ``order``: the training input on
    backends without ``tf.data`` (JAX, PyTorch). Mixup, if on, is seeded per batch."""
    import keras

    class ArrayBatches(keras.utils.PyDataset):
        def __len__(self) -> int:
            return math.ceil(len(order) / batch_size)

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            chosen = order[index * batch_size : (index + 1) * batch_size]
            x = images[chosen].astype(np.float32)
            y = targets[chosen]
            if mixup_alpha > 0:
                rng = np.random.default_rng([seed, index])
                lam = rng.beta(mixup_alpha, mixup_alpha, size=len(chosen)).astype(np.float32)
                partner = rng.permutation(len(chosen))
                x = lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[partner]
                y = lam[:, None] * y + (1 - lam[:, None]) * y[partner]
            return x, y

    return ArrayBatches()


def make_train_dataset(split: Split, config: TrainConfig, epoch: int) -> tuple[Any, int]:
    """The training input for one epoch; shuffling is seeded by epoch.

    A ``tf.data`` pipeline on the TensorFlow backend, NumPy batches on the others.

    Returns:
        The dataset and the number of steps in the epoch.
    """
    targets = _targets(split, config.soft_labels)
    steps = math.ceil(len(split) / config.batch_size)
    epoch_seed = config.seed * 100_003 + epoch
    if _numpy_pipeline(config):
        order = _epoch_order(split, config, epoch_seed)
        batches = _array_batches(
            split.images, targets, order, config.batch_size, config.mixup_alpha, epoch_seed
        )
        return batches, steps

    import tensorflow as tf

    if config.sampling == "balanced":
        per_class = []
        for label in range(len(split.classes)):
            members = np.flatnonzero(split.labels == label)
            if len(members):
                part = tf.data.Dataset.from_tensor_slices((split.images[members], targets[members]))
                per_class.append(part.shuffle(len(members), seed=epoch_seed + label).repeat())
        dataset = tf.data.Dataset.sample_from_datasets(per_class, seed=epoch_seed).take(
            steps * config.batch_size
        )
    else:
        dataset = tf.data.Dataset.from_tensor_slices((split.images, targets))
        dataset = dataset.shuffle(len(split), seed=epoch_seed, reshuffle_each_iteration=False)
    dataset = dataset.batch(config.batch_size)
    dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), y))
    if config.mixup_alpha > 0:
        dataset = dataset.map(_mixup(config.mixup_alpha, epoch_seed))
    return dataset.prefetch(tf.data.AUTOTUNE), steps


def _mixup(alpha: float, seed: int):
    import tensorflow as tf

    def mix(images, targets):
        batch = tf.shape(images)[0]
        seeds = tf.random.experimental.stateless_split(
            tf.stack([seed, tf.cast(tf.reduce_sum(targets * 1000.0), tf.int32)]), 3
        )
        gamma_a = tf.random.stateless_gamma([batch], seed=seeds[0], alpha=alpha)
        gamma_b = tf.random.stateless_gamma([batch], seed=seeds[1], alpha=alpha)
        lam = gamma_a / (gamma_a + gamma_b)
        order = tf.argsort(tf.random.stateless_uniform([batch], seed=seeds[2]))
        lam_images = tf.reshape(lam, [-1, 1, 1, 1])
        lam_targets = tf.reshape(lam, [-1, 1])
        images = lam_images * images + (1 - lam_images) * tf.gather(images, order)
        targets = lam_targets * targets + (1 - lam_targets) * tf.gather(targets, order)
        return images, targets

    return mix


def make_eval_dataset(
    split: Split, batch_size: int, soft: bool = False, numpy: bool = False
) -> Any:
    """Validation batches in order: NumPy with ``numpy`` (see :func:`_numpy_pipeline`),
    else ``tf.data``."""
    targets = _targets(split, soft)
    if numpy:
        order = np.arange(len(split))
        return _array_batches(split.images, targets, order, batch_size)

    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((split.images, targets))
    return dataset.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(2)


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """``n / (k * count_c)`` for each class: rare classes weigh more."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    counts[counts == 0] = 1
    weights = len(labels) / (n_classes * counts)
    return {index: float(weight) for index, weight in enumerate(weights)}


def _learning_rate(config: TrainConfig, steps_per_epoch: int, phase: int) -> Any:
    import keras

    if phase == 2:
        return config.fine_tune_learning_rate
    if config.schedule == "constant":
        return config.learning_rate
    warmup = config.warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate / 10 if warmup else config.learning_rate,
        decay_steps=max(1, config.epochs * steps_per_epoch - warmup),
        alpha=0.01,
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def compile_model(model: Any, config: TrainConfig, steps_per_epoch: int, phase: int = 1) -> None:
    import keras

    learning_rate = _learning_rate(config, steps_per_epoch, phase)
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(
            learning_rate, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
        )
    else:
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=config.weight_decay)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=config.label_smoothing
        ),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


def _strategy(config: TrainConfig) -> Any:
    if _backend() != "tensorflow":
        if config.distribute != "none":
            raise ValueError(
                f"--distribute {config.distribute} needs the TensorFlow backend "
                f"(KERAS_BACKEND is {_backend()!r})"
            )
        return _SingleDevice()
    import tensorflow as tf

    if config.distribute == "mirrored":
        # Every GPU; without GPUs, every logical CPU device (one, unless configured).
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if config.distribute == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


class _SingleDevice:
    """The strategy stand-in on backends without ``tf.distribute``."""

    def scope(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def initialise_from(model: Any, source: str | os.PathLike[str]) -> dict[str, Any]:
    """Copy weights into ``model`` layer by layer from the model at ``source``.

    ``source`` is ``default`` (the bundled model, checksums verified), a run folder, a
    bundle folder or a ``.keras`` file (see :func:`ferkit.bundle.model_location`). A layer
    takes the weights of the source layer of the same name when every weight has
    the same shape; others keep their fresh initialisation (a classifier for another
    class list, say, or a changed width). Fine-tuning the shipped model on a new dataset
    is ``init_from: default``.

    Returns:
        What was copied: the source file, and the layers loaded and kept fresh.

    Raises:
        ValueError: fewer than half the layers matched (a different architecture).
    """
    from ferkit.bundle import load_model, model_location

    source = None if str(source) == "default" else source
    path = model_location(source)[1]
    donor = load_model(source).model
    donors = {layer.name: layer for layer in donor.layers}
    loaded, fresh = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        match = donors.get(layer.name)
        shapes = [tuple(weight.shape) for weight in layer.weights]
        if match is not None and [tuple(w.shape) for w in match.weights] == shapes:
            layer.set_weights(match.get_weights())
            loaded.append(layer.name)
        else:
            fresh.append(layer.name)
    if len(loaded) < len(fresh) or not loaded:
        raise ValueError(
            f"{path}: only {len(loaded)} of {len(loaded) + len(fresh)} layers of "
            f"{model.name!r} match the source model {donor.name!r} by name and weight "
            "shapes; init_from needs the same architecture"
        )
    logger.info("init_from %s: %d layers loaded, fresh: %s", path, len(loaded), fresh)
    return {"source": str(path), "loaded": loaded, "fresh": fresh}


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically: a kill never leaves half a state file."""
    write_atomic(path, json.dumps(value, indent=2) + "\n")


def _seed_variables(model: Any) -> list[Any]:
    """The random layers' generator states, in model order. Keras does not save them in a
    checkpoint, so resuming restores them from ``last_rng.json`` for identical
    augmentation and dropout."""
    return [variable for variable in model.variables if "seed_generator_state" in variable.path]


def _seed_states(model: Any) -> list[Any]:
    return [np.asarray(variable).tolist() for variable in _seed_variables(model)]


def _restore_seed_states(model: Any, states: list[Any] | None, path: Path) -> None:
    if states is None:  # runs written before the states moved into state.json
        if not path.exists():
            return
        states = json.loads(path.read_text())
    variables = _seed_variables(model)
    if len(states) != len(variables):
        logger.warning("%s: random-state count differs from the model's; not restored", path)
        return
    for variable, state in zip(variables, states, strict=True):
        variable.assign(np.asarray(state, dtype=variable.dtype))


def _append_history(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_history(path: Path, epochs: int) -> None:
    """Drop rows past the last epoch ``state.json`` records (a kill between the two writes)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    if len(lines) > epochs + 1:
        path.write_text("".join(lines[: epochs + 1]))


def read_history(run_dir: str | os.PathLike[str]) -> list[dict[str, float]]:
    """The run's per-epoch history as a list of rows (numbers as floats)."""
    path = Path(run_dir) / HISTORY_NAME
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def write_run_config(run_dir: Path, config: TrainConfig) -> None:
    """Write the run's resolved ``config.yaml``."""
    write_atomic(run_dir / CONFIG_NAME, yaml.safe_dump(_plain(asdict(config)), sort_keys=False))


def read_state(run_dir: Path) -> dict[str, Any]:
    """A run's ``state.json``, checked.

    Raises:
        FileNotFoundError: no state (no run in ``run_dir``).
        ValueError: the file is damaged (naming it, with the fix).
    """
    path = run_dir / STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir}: no {STATE_NAME}, so no run to resume; start one without --resume"
        )
    try:
        state = json.loads(path.read_text())
        valid = (
            isinstance(state, dict)
            and isinstance(state.get("epoch"), int)
            and state["epoch"] >= 0
            and isinstance(state.get("seconds", 0.0), int | float)
        )
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(
            f"{path}: damaged (not the state ferkit train writes); the run cannot be resumed. "
            f"Restore the file, or start the run again with --overwrite"
        )
    return state


def _pending(path: Path) -> Path:
    """Where a checkpoint is saved before it replaces ``path`` (Keras needs the suffix)."""
    return path.with_name(f".pending-{path.name}")


def save_atomic(save: Any, path: Path) -> None:
    """Save a checkpoint through a temporary name: the previous file stays whole until
    the new one is complete."""
    pending = _pending(path)
    try:
        save(pending)
        os.replace(pending, path)
    except BaseException:
        pending.unlink(missing_ok=True)
        raise


def commit_epoch(run_dir: Path, state: dict[str, Any], save_last: Any, last_name: str) -> None:
    """Save the last checkpoint and the state of a completed epoch, for both engines.

    The checkpoint is saved complete under a temporary name, ``state.json`` then records
    its SHA-256, and only then does it replace the previous checkpoint:
    :func:`verify_checkpoint` can tell which file belongs to the state whenever the
    process was killed.
    """
    from ferkit.bundle import sha256_file

    last = run_dir / last_name
    pending = _pending(last)
    try:
        save_last(pending)
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    state["checkpoint"] = {"file": last_name, "sha256": sha256_file(pending)}
    write_json(run_dir / STATE_NAME, state)
    os.replace(pending, last)


def verify_checkpoint(run_dir: Path, state: dict[str, Any], last_name: str) -> Path | None:
    """The checkpoint to resume from, checked against ``state.json``.

    Returns None for a run that has completed no epoch (it starts from its initial
    weights). Completes the rename of a checkpoint that was saved and recorded when the
    process was killed.

    Raises:
        ValueError: the checkpoint is missing or is not the one the state recorded
            (truncated, replaced, or from another run); the message says what to do.
    """
    from ferkit.bundle import sha256_file

    if state["epoch"] < 1:
        return None
    last = run_dir / last_name
    pending = _pending(last)
    expected = (state.get("checkpoint") or {}).get("sha256")
    restart = (
        f"restore it from a backup, or start the run again with 'ferkit train --out {run_dir} "
        "--overwrite' (same settings)"
    )
    if expected is None:  # a run written before checkpoints were recorded in the state
        if last.is_file():
            return last
        raise ValueError(
            f"{last}: missing, but {STATE_NAME} says {state['epoch']} epoch(s) were trained; "
            f"resuming would silently restart from random weights. {restart}"
        )
    if last.is_file() and sha256_file(last) == expected:
        pending.unlink(missing_ok=True)
        return last
    if pending.is_file() and sha256_file(pending) == expected:
        os.replace(pending, last)  # the process was killed between the state and the rename
        logger.info("%s: completed the interrupted save of the last checkpoint", last)
        return last
    what = "missing" if not last.is_file() else "not the checkpoint recorded in state.json"
    raise ValueError(
        f"{last}: {what} (epoch {state['epoch']}); it is truncated, replaced or from "
        f"another run, so the run cannot be resumed from it. {restart}"
    )


def check_resume_overrides(run_dir: str | os.PathLike[str], overrides: dict[str, Any]) -> None:
    """Refuse settings given with ``--resume`` that differ from the run's own.

    A resumed run continues with its ``config.yaml``; a changed setting would be
    silently ignored, or would break the learning-rate schedule halfway.

    Args:
        overrides: the settings given on the command line (None: not given); ``arch``
            and ``weights`` are compared with the run's model settings.

    Raises:
        ValueError: naming each differing setting and what to do instead.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_NAME).is_file():
        return
    saved = asdict(TrainConfig.from_yaml(run_dir / CONFIG_NAME))
    differing = {}
    for name, value in overrides.items():
        if value is None:
            continue
        current = saved[name] if name in saved else saved["model"].get(name)
        if name == "weights" and str(value).lower() == "none":
            value = None
        same = (
            Path(value).resolve() == Path(current).resolve()
            if name in ("data", "init_from") and current is not None
            else current == value
        )
        if not same:
            differing[name] = f"{name} {current!r} -> {value!r}"
    if not differing:
        return
    extend = (
        " --resume cannot extend a run: its learning-rate schedule was planned for its own "
        "epochs. To train longer, start a new run from this one's weights: ferkit train "
        f"--init-from {run_dir} --epochs N --out NEW_RUN"
        if "epochs" in differing
        else " Drop them, or start a new run with --out NEW_RUN."
    )
    raise ValueError(
        f"{run_dir}: --resume continues the run with its own settings (config.yaml), but "
        f"these differ: {', '.join(differing.values())}.{extend}"
    )


#: Files a run writes: what ``--overwrite`` removes, and nothing else.
RUN_FILES = (
    CONFIG_NAME, STATE_NAME, HISTORY_NAME, "labels.json", "calibration.json", "metrics.json",
    "init.json", "checksums.json", MARKER, LAST_CHECKPOINT, BEST_CHECKPOINT, LAST_RNG,
    "checkpoints/last.pt", "checkpoints/best.weights.npz",
)  # fmt: skip


def _is_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run that ``ferkit train`` wrote (its marker, or for
    older runs a state, a config and a class list that read back)."""
    from ferkit.outputs import written_by

    if written_by(run_dir) == "train":
        return True
    try:
        state = json.loads((run_dir / STATE_NAME).read_text())
        TrainConfig.from_yaml(run_dir / CONFIG_NAME)
        json.loads((run_dir / "labels.json").read_text())
    except (OSError, ValueError, TypeError):
        return False
    return isinstance(state, dict) and "epoch" in state


def _remove_run(run_dir: Path) -> None:
    for name in RUN_FILES:
        path = run_dir / name
        path.unlink(missing_ok=True)
        _pending(path).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # kept when it holds files of the user's
        (run_dir / "checkpoints").rmdir()


def record_epoch(run_dir: Path, state: dict[str, Any], row: dict[str, float]) -> bool:
    """Append an epoch's history row and advance the state (epoch, time, best score,
    patience); the caller saves checkpoints and the state. Returns whether val improved."""
    _append_history(run_dir / HISTORY_NAME, row)
    state["epoch"] = int(row["epoch"])
    state["seconds"] = state["seconds"] + row["seconds"]
    if state["best_score"] is None or row["val_accuracy"] > state["best_score"]:
        state.update(best_score=row["val_accuracy"], best_epoch=int(row["epoch"]), wait=0)
        return True
    state["wait"] += 1
    return False


def open_run(
    config: TrainConfig, run_dir: Path, resume: bool, overwrite: bool = False
) -> tuple[TrainConfig, dict[str, Any], TrainResult | None]:
    """Start or reopen a run folder: the config to use, the state, and the result of a run
    that has already finished (nothing left to do), for both training engines.

    Raises:
        FileExistsError: ``run_dir`` holds a run and neither ``resume`` nor
            ``overwrite`` is set.
        FileNotFoundError: resuming a folder without a run.
    """
    if resume and overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces it: choose one")
    if not resume:
        if (run_dir / STATE_NAME).exists() or (run_dir / CONFIG_NAME).exists():
            if not overwrite:
                raise FileExistsError(
                    f"{run_dir}: holds a run already; pass --resume to continue it, "
                    "--overwrite to replace it, or choose another --out"
                )
            if not _is_run(run_dir):
                raise FileExistsError(
                    f"{run_dir}: holds a config.yaml or state.json that 'ferkit train' did not "
                    "write; --overwrite replaces only a ferkit run. Choose another --out"
                )
            _remove_run(run_dir)  # only the run's own files: anything else stays
        elif run_dir.is_symlink() or (run_dir.is_dir() and any(run_dir.iterdir())):
            raise FileExistsError(
                f"{run_dir}: holds files but no ferkit run; train into a new or empty folder"
            )
        state = {
            "epoch": 0,
            "best_score": None,
            "best_epoch": None,
            "wait": 0,
            "seconds": 0.0,
            "finished": False,
        }
        check_not_overlapping(run_dir, [config.data])
        return config, state, None
    state = read_state(run_dir)
    config = TrainConfig.from_yaml(run_dir / CONFIG_NAME)
    _truncate_history(run_dir / HISTORY_NAME, state["epoch"])
    if state.get("finished"):
        logger.warning("%s: run already finished; nothing to resume", run_dir)
        return (
            config,
            state,
            TrainResult(run_dir, json.loads((run_dir / "metrics.json").read_text())),
        )
    return config, state, None


@contextlib.contextmanager
def removed_on_failure(run_dir: Path, resume: bool) -> Iterator[None]:
    """Undo a new run's folder when setting it up fails before its first epoch (a model
    that cannot be built, weights that cannot be loaded), so the same command can simply
    be run again; a resumed run's folder is never touched."""
    existed = run_dir.exists()
    try:
        yield
    except BaseException:
        if not resume:
            if not existed:
                shutil.rmtree(run_dir, ignore_errors=True)
            else:  # a folder the user made: take back only what the run wrote
                _remove_run(run_dir)
        raise


def carve_validation(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split ``split`` into (train, val), stratified and seeded: ``fraction`` of each class
    with at least two faces goes to val (at least one face of each such class).

    Raises:
        ValueError: no class has two faces, so nothing can be held out.
    """
    rng = np.random.default_rng(seed)
    held_out = []
    for label in np.unique(split.labels):
        members = np.flatnonzero(split.labels == label)
        if len(members) < 2:
            continue
        take = min(len(members) - 1, max(1, round(len(members) * fraction)))
        held_out.append(rng.choice(members, take, replace=False))
    if not held_out:
        raise ValueError(
            f"split {split.name!r} has no class with two faces, so no validation split can be "
            "carved from it; prepare more data"
        )
    val_indices = np.sort(np.concatenate(held_out))
    train_indices = np.setdiff1d(np.arange(len(split)), val_indices)
    return _subset(split, train_indices), _subset(split, val_indices)


def run_splits(
    config: TrainConfig, data: PreparedDataset, announce: bool = False
) -> tuple[Split, Split]:
    """The training and validation faces of a run, limited as configured.

    When the data has no ``val_split`` (a small folder that ``prepare`` could not split),
    ``val_fraction`` of the training faces is carved out as validation, seeded, the same
    way on every call (resume, finish, bundle).
    """
    train_split = data.split(config.train_split)
    if config.val_split in data.splits:
        val_split = data.split(config.val_split)
    elif config.val_fraction > 0:
        train_split, val_split = carve_validation(train_split, config.val_fraction, config.seed)
        if announce:
            logger.warning(
                "%s has no %r split: validating on %d faces (%g of each class, seed %d) "
                "carved from %r, which trains on the other %d",
                config.data, config.val_split, len(val_split), config.val_fraction,
                config.seed, config.train_split, len(train_split),
            )  # fmt: skip
    else:
        raise ValueError(
            f"{config.data}: no {config.val_split!r} split (it has {', '.join(data.splits)}); "
            "choose one with val_split, or set val_fraction to carve one from train"
        )
    train_split = _subset(
        train_split, stratified_subset(train_split.labels, config.limit_train, config.seed)
    )
    val_split = _subset(
        val_split, stratified_subset(val_split.labels, config.limit_val, config.seed)
    )
    return train_split, val_split


def load_run_data(
    config: TrainConfig, run_dir: Path, resume: bool, state: dict[str, Any]
) -> tuple[PreparedDataset, Split, Split, Any]:
    """Load the run's splits (limited as configured), resolve its model settings from the
    data, and write a new run's ``config.yaml``, ``labels.json`` and state."""
    from ferkit.model_config import ModelConfig

    data = PreparedDataset(config.data)
    train_split, val_split = run_splits(config, data, announce=not resume)
    image_shape = data.manifest["image_shape"]
    model_config = ModelConfig(
        **{
            **config.model,
            "n_classes": len(data.classes),
            "image_size": image_shape[0],
            "channels": image_shape[2],
            "seed": config.seed,
        }
    )
    config.model = _plain(asdict(model_config))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    if not resume:
        write_marker(run_dir, "train")
        write_run_config(run_dir, config)
        write_json(run_dir / "labels.json", data.classes)
        write_json(run_dir / STATE_NAME, state)
    return data, train_split, val_split, model_config


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    verbose: int | None = None,
    stop_after_epochs: int | None = None,
    time_budget: float | None = None,
) -> TrainResult:
    """Train (or resume) a run.

    Args:
        config: settings; ignored on resume in favour of the run's own ``config.yaml``.
        run_dir: the run folder to create, or to continue with ``resume``.
        resume: continue the run in ``run_dir`` from its last completed epoch.
        overwrite: replace the run in ``run_dir`` (only the run's own files are removed).
        verbose: 0 for no progress bar over each epoch's batches, 1 for one (default:
            one on a terminal); a line per epoch is printed either way.
        stop_after_epochs: end this call after that many epochs, as if the process had
            been killed (used to test resuming); the run stays resumable.
        time_budget: torch engine only: seconds to fit the run into (see
            :func:`ferkit.torch_train.train_torch`).

    Raises:
        FileExistsError: ``run_dir`` holds a run and ``resume`` is false.
        FileNotFoundError: resuming a folder without a run.
        ValueError: ``time_budget`` with the Keras engine; a checkpoint that does not
            match the run's state on resume.
        OutputLockedError: another process is training into ``run_dir``.
    """
    run_dir = Path(run_dir)
    with locked(run_dir):
        return _train(config, run_dir, resume, overwrite, verbose, stop_after_epochs, time_budget)


def _train(
    config: TrainConfig,
    run_dir: Path,
    resume: bool,
    overwrite: bool,
    verbose: int | None,
    stop_after_epochs: int | None,
    time_budget: float | None,
) -> TrainResult:
    engine = config.engine
    if resume and (run_dir / CONFIG_NAME).is_file():
        engine = TrainConfig.from_yaml(run_dir / CONFIG_NAME).engine
    if engine == "torch":
        from ferkit.torch_train import train_torch

        return train_torch(
            config,
            run_dir,
            resume=resume,
            overwrite=overwrite,
            stop_after_epochs=stop_after_epochs,
            time_budget=time_budget,
        )
    if time_budget is not None:
        raise ValueError("--time-budget needs --engine torch")

    from ferkit._tf import import_keras

    keras = import_keras()

    from ferkit.models import build_model, set_vgg16_trainable_blocks

    config, state, finished = open_run(config, run_dir, resume, overwrite)
    if finished is not None:
        return finished
    config.validate()
    seed_everything(config.seed)

    with removed_on_failure(run_dir, resume):
        data, train_split, val_split, model_config = load_run_data(config, run_dir, resume, state)
        steps_per_epoch = math.ceil(len(train_split) / config.batch_size)
        strategy = _strategy(config)
        with strategy.scope():
            checkpoint = verify_checkpoint(run_dir, state, LAST_CHECKPOINT) if resume else None
            if checkpoint is not None:
                model = _load_checkpoint(keras, checkpoint)
                _restore_seed_states(model, state.get("rng"), run_dir / LAST_RNG)
            else:
                model = build_model(model_config)
                if config.init_from:
                    write_json(run_dir / "init.json", initialise_from(model, config.init_from))
                phase = 2 if state["epoch"] >= config.epochs else 1
                compile_model(model, config, steps_per_epoch, phase)
    weights = (
        class_weights(train_split.labels, len(data.classes))
        if config.class_weighting == "balanced"
        else None
    )
    val_dataset = make_eval_dataset(
        val_split, config.batch_size, config.soft_labels, numpy=_numpy_pipeline(config)
    )
    show_bar = bool(verbose) if verbose is not None else sys.stderr.isatty()

    epochs_this_call = 0
    while state["epoch"] < config.total_epochs:
        epoch = state["epoch"]
        if epoch == config.epochs and config.fine_tune_epochs and model_config.arch == "vgg16":
            with strategy.scope():
                set_vgg16_trainable_blocks(model, config.fine_tune_blocks)
                compile_model(model, config, steps_per_epoch, phase=2)
            logger.info("phase two: top %d VGG16 block(s) unfrozen", config.fine_tune_blocks)
        train_dataset, steps = make_train_dataset(train_split, config, epoch)
        started = time.perf_counter()
        bar = _batch_bar(keras, steps, f"epoch {epoch + 1}/{config.total_epochs}", show_bar)
        logs = model.fit(
            train_dataset,
            validation_data=val_dataset,
            initial_epoch=epoch,
            epochs=epoch + 1,
            steps_per_epoch=steps,
            class_weight=weights,
            shuffle=False,  # the pipeline shuffles, seeded per epoch
            verbose=0,  # ferkit's own bar and line instead of Keras's "Epoch 1/1"
            callbacks=[bar],
        ).history
        seconds = time.perf_counter() - started
        print(
            f"epoch {epoch + 1}/{config.total_epochs} - {seconds:.1f}s - "
            + " - ".join(f"{key} {values[-1]:.4f}" for key, values in logs.items()),
            flush=True,
        )
        row = {"epoch": epoch + 1, **{key: float(values[-1]) for key, values in logs.items()}}
        row["learning_rate"] = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        row["seconds"] = round(seconds, 2)
        if record_epoch(run_dir, state, row):
            save_atomic(model.save, run_dir / BEST_CHECKPOINT)
        state["rng"] = _seed_states(model)
        commit_epoch(run_dir, state, model.save, LAST_CHECKPOINT)
        epochs_this_call += 1
        patience = config.early_stopping_patience
        if patience and state["wait"] >= patience and epoch + 1 < config.epochs:
            logger.info("early stopping: no val improvement for %d epochs", patience)
            state["epoch"] = max(state["epoch"], config.epochs)  # skip to fine-tuning, if any
            write_json(run_dir / STATE_NAME, state)
        stopping = stop_after_epochs is not None and epochs_this_call >= stop_after_epochs
        if stopping and state["epoch"] < config.total_epochs:
            return TrainResult(run_dir, {"interrupted_after_epoch": state["epoch"]})

    metrics = finish_run(run_dir, config, val_split, state)
    return TrainResult(run_dir, metrics)


def _load_checkpoint(keras: Any, path: Path) -> Any:
    try:
        return keras.models.load_model(path)
    except Exception as error:
        raise ValueError(
            f"{path}: cannot be loaded ({type(error).__name__}: {str(error)[:200]}); the "
            "file is damaged. Restore it, or start the run again with --overwrite"
        ) from None


def _batch_bar(keras: Any, steps: int, description: str, show: bool) -> Any:
    """A Keras callback drawing one epoch's progress over its batches (tqdm)."""
    from tqdm import tqdm

    class BatchBar(keras.callbacks.Callback):
        def on_train_begin(self, logs: Any = None) -> None:
            self.bar = tqdm(total=steps, desc=description, unit="batch", leave=False,
                            disable=not show)  # fmt: skip

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.bar.update(1)

        def on_train_end(self, logs: Any = None) -> None:
            self.bar.close()

    return BatchBar()


def finish_now(run_dir: str | os.PathLike[str]) -> TrainResult:
    """End a run early: calibrate its best checkpoint so far and write ``metrics.json``.

    For a run that has to stop before its last epoch (a deadline, a plateau). The metrics
    record how many of the planned epochs were trained.
    """
    from ferkit._tf import import_keras

    import_keras()
    run_dir = Path(run_dir)
    from ferkit.torch_train import ensure_keras_checkpoint

    if ensure_keras_checkpoint(run_dir):
        logger.info("%s: built %s from the torch engine's best weights", run_dir, BEST_CHECKPOINT)
    if not (run_dir / BEST_CHECKPOINT).is_file():
        raise FileNotFoundError(
            f"{run_dir}: no checkpoints/best.keras yet; train at least one epoch first"
        )
    config = TrainConfig.from_yaml(run_dir / CONFIG_NAME)
    state = read_state(run_dir)
    _, val_split = run_splits(config, PreparedDataset(config.data))
    metrics = finish_run(run_dir, config, val_split, state)
    if state["epoch"] < config.total_epochs:
        metrics["finished_early"] = f"after epoch {state['epoch']} of {config.total_epochs}"
        write_json(run_dir / "metrics.json", metrics)
    return TrainResult(run_dir, metrics)


def predict_logits(model: Any, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of a Keras model on ``uint8`` images, batched."""
    return np.asarray(model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0))


def finish_run(
    run_dir: Path, config: TrainConfig, val_split: Split, state: dict[str, Any]
) -> dict[str, Any]:
    """Calibrate the best model on validation and write ``metrics.json``."""
    import keras

    from ferkit.bundle import write_checksums
    from ferkit.calibration import expected_calibration_error, fit_temperature, softmax

    model = keras.models.load_model(run_dir / BEST_CHECKPOINT)
    logits = predict_logits(model, val_split.images)
    labels = val_split.labels
    temperature = fit_temperature(logits, labels) if config.temperature_scaling else 1.0
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits, temperature), labels)
    calibration = {
        "temperature": temperature,
        "ece_before": before,
        "ece_after": after,
        "split": config.val_split,
    }
    write_json(run_dir / "calibration.json", calibration)
    predictions = logits.argmax(axis=1)
    metrics = {
        "val_accuracy": float((predictions == labels).mean()),
        "val_faces": len(labels),
        "best_epoch": state["best_epoch"],
        "epochs_trained": state["epoch"],
        "training_seconds": round(state["seconds"], 1),
        "calibration": calibration,
        "parameters": int(model.count_params()),
    }
    if state.get("trained_on"):
        metrics["trained_on"] = state["trained_on"]
    write_json(run_dir / "metrics.json", metrics)
    write_checksums(run_dir, [BEST_CHECKPOINT, "labels.json", "calibration.json"])
    state["finished"] = True
    write_json(run_dir / STATE_NAME, state)
    return metrics


def _plain(value: Any) -> Any:
    """Make dataclass dicts YAML-friendly (tuples to lists)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
