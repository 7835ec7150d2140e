"""The Keras engine: ``ferkit train`` on Keras 3 (TensorFlow by default; JAX or PyTorch
through ``KERAS_BACKEND``)."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.data.dataset import Split
from ferkit.extras import import_keras
from ferkit.models.keras_nets import build_model, custom_layers, set_vgg16_trainable_blocks
from ferkit.training.config import TrainConfig, TrainResult
from ferkit.training.epochs import EpochLoop
from ferkit.training.finish import finish_run
from ferkit.training.run_folder import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    LAST_RNG,
    load_run_data,
    open_run,
    removed_on_failure,
    unloadable_checkpoint,
    verify_checkpoint,
    write_json,
)
from ferkit.training.sampling import (
    class_weights,
    epoch_order,
    epoch_seed,
    mix,
    mixup_pairs,
    split_targets,
)
from ferkit.training.schedule import learning_rate_at

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, TensorFlow and Keras from one number."""
    import random

    import keras

    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


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
    # Mixup is one implementation for both engines, on NumPy batches (sampling.mixup_pairs).
    return config.input_pipeline == "numpy" or config.mixup_alpha > 0


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
                lam, partner = mixup_pairs(len(chosen), mixup_alpha, seed, index)
                x, y = mix(x, lam, partner), mix(y, lam, partner)
            return x, y

    return ArrayBatches()


def make_train_dataset(split: Split, config: TrainConfig, epoch: int) -> tuple[Any, int]:
    """The training input for one epoch; shuffling is seeded by epoch.

    A ``tf.data`` pipeline on the TensorFlow backend, NumPy batches on the others.

    Returns:
        The dataset and the number of steps in the epoch.
    """
    targets = split_targets(split, config.soft_labels)
    steps = math.ceil(len(split) / config.batch_size)
    seed = epoch_seed(config.seed, epoch)
    if _numpy_pipeline(config):
        order = epoch_order(split, config, seed)
        batches = _array_batches(
            split.images, targets, order, config.batch_size, config.mixup_alpha, seed
        )
        return batches, steps

    import tensorflow as tf

    if config.sampling == "balanced":
        per_class = []
        for label in range(len(split.classes)):
            members = np.flatnonzero(split.labels == label)
            if len(members):
                part = tf.data.Dataset.from_tensor_slices((split.images[members], targets[members]))
                per_class.append(part.shuffle(len(members), seed=seed + label).repeat())
        dataset = tf.data.Dataset.sample_from_datasets(per_class, seed=seed).take(
            steps * config.batch_size
        )
    else:
        dataset = tf.data.Dataset.from_tensor_slices((split.images, targets))
        dataset = dataset.shuffle(len(split), seed=seed, reshuffle_each_iteration=False)
    dataset = dataset.batch(config.batch_size)
    dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), y))
    return dataset.prefetch(tf.data.AUTOTUNE), steps


def make_eval_dataset(
    split: Split, batch_size: int, soft: bool = False, numpy: bool = False
) -> Any:
    """Validation batches in order: NumPy with ``numpy`` (see :func:`_numpy_pipeline`),
    else ``tf.data``."""
    targets = split_targets(split, soft)
    if numpy:
        order = np.arange(len(split))
        return _array_batches(split.images, targets, order, batch_size)

    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((split.images, targets))
    return dataset.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(2)


def _learning_rate(config: TrainConfig, steps_per_epoch: int, phase: int) -> Any:
    if phase == 2:
        return config.fine_tune_learning_rate
    if config.schedule == "constant":
        return config.learning_rate
    return _warmup_cosine_class()(config, steps_per_epoch)


def _warmup_cosine_class() -> type:
    """The Keras schedule of :func:`ferkit.training.schedule.learning_rate_at`, registered
    so that a saved checkpoint's optimizer loads again on resume."""
    import keras

    name = "ferkit>WarmupCosine"
    if name in keras.saving.get_custom_objects():
        return keras.saving.get_custom_objects()[name]

    @keras.saving.register_keras_serializable(package="ferkit")
    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, config: TrainConfig | dict[str, Any], steps_per_epoch: int) -> None:
            if isinstance(config, dict):
                config = TrainConfig(**config)
            self.config, self.steps_per_epoch = config, steps_per_epoch

        def __call__(self, step: Any) -> Any:
            step = keras.ops.cast(step, "float32")
            return learning_rate_at(self.config, step, self.steps_per_epoch, keras.ops)

        def get_config(self) -> dict[str, Any]:
            schedule = ("learning_rate", "schedule", "warmup_epochs", "epochs")
            return {
                "config": {name: getattr(self.config, name) for name in schedule},
                "steps_per_epoch": self.steps_per_epoch,
            }

    return WarmupCosine


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
    # The optimizer's variables are made now, not by the first training step: a step that
    # makes variables is traced twice, which doubled the start of every run.
    optimizer.build(model.trainable_variables)


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
    bundle folder or a ``.keras`` file (see :func:`ferkit.models.folder.model_location`). Every
    layer with weights takes those of the source layer of the same name, with the same
    shapes; the one exception is the classifier (the last such layer) for another class
    list, which starts fresh. Anything else is a different architecture and is refused
    rather than trained half-initialised (a run takes the source's architecture from
    its ``config.yaml``: :mod:`ferkit.training.init_from`). Fine-tuning the shipped
    model on a new dataset is ``init_from: default``.

    Returns:
        What was copied: the source file, the layers loaded, the layers kept fresh (at
        most the classifier) and the source's layers with weights that were not used.

    Raises:
        ValueError: a layer other than the classifier cannot take the source's weights.
    """
    from ferkit.models.folder import load_model, model_location

    source = None if str(source) == "default" else source
    path = model_location(source)[1]
    donor = load_model(source).model
    donors = {layer.name: layer for layer in donor.layers}
    weighted = [layer for layer in model.layers if layer.weights]
    loaded, fresh = [], []
    for layer in weighted:
        match = donors.get(layer.name)
        shapes = [tuple(weight.shape) for weight in layer.weights]
        if match is not None and [tuple(w.shape) for w in match.weights] == shapes:
            loaded.append(layer.name)
        else:
            fresh.append(layer.name)
    # A classifier for another class list is the one layer that may start fresh.
    classifier = weighted[-1].name if weighted else None
    another_class_list = classifier in donors and classifier in fresh
    unused = [layer.name for layer in donor.layers if layer.weights and layer.name not in loaded]
    allowed = {classifier} if another_class_list else set()
    refused = [name for name in fresh if name not in allowed]
    dropped = [name for name in unused if name not in allowed]
    if refused or dropped:
        names = [*refused, *dropped]
        raise ValueError(
            f"{path}: the source model {donor.name!r} and {model.name!r} differ in "
            f"{len(names)} layers with weights ({len(refused)} of the {len(weighted)} of "
            f"{model.name!r} would start fresh, {len(dropped)} of the source's would be "
            f"dropped: {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}); "
            "init_from needs the same architecture: leave the model settings out to take "
            "the source's from its config.yaml, or give the source's own"
        )
    for name in loaded:
        model.get_layer(name).set_weights(donors[name].get_weights())
    logger.info(
        "init_from %s: %d layers loaded, fresh: %s, not used: %s", path, len(loaded), fresh, unused
    )
    return {"source": str(path), "loaded": loaded, "fresh": fresh, "unused": unused}


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


def train_keras(
    config: TrainConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    verbose: int | None = None,
    stop_after_epochs: int | None = None,
) -> TrainResult:
    """Train (or resume) a run with Keras; see :func:`ferkit.training.trainer.train`."""
    keras = import_keras()
    config, state, finished = open_run(config, run_dir, resume, overwrite)
    if finished is not None:
        return finished
    config.validate()
    seed_everything(config.seed)
    with removed_on_failure(run_dir, resume):
        run = _set_up(keras, config, run_dir, resume, state)
    loop = EpochLoop(run_dir, config, state, stop_after_epochs)
    show_bar = bool(verbose) if verbose is not None else sys.stderr.isatty()
    while loop.pending():
        _start_phase_two_if_due(run, loop.epoch)
        interrupted = loop.end_epoch(
            _fit_one_epoch(keras, run, loop.epoch, show_bar),
            run.model.save,
            BEST_CHECKPOINT,
            _saver_with_random_states(run.model, state),
            LAST_CHECKPOINT,
        )
        if interrupted is not None:
            return interrupted
    return TrainResult(run_dir, finish_run(run_dir, config, run.val_split, state))


@dataclass
class _KerasRun:
    """What the epochs of a Keras run need: its settings, data, model and strategy."""

    config: TrainConfig
    train_split: Split
    val_split: Split
    model: Any
    strategy: Any
    steps_per_epoch: int
    class_weight: dict[int, float] | None
    val_dataset: Any
    arch: str


def _set_up(
    keras: Any, config: TrainConfig, run_dir: Path, resume: bool, state: dict[str, Any]
) -> _KerasRun:
    """Load the run's data, then build its model (or load the last checkpoint)."""
    data, train_split, val_split, model_config = load_run_data(config, run_dir, resume, state)
    steps_per_epoch = math.ceil(len(train_split) / config.batch_size)
    strategy = _strategy(config)
    with strategy.scope():
        checkpoint = verify_checkpoint(run_dir, state, LAST_CHECKPOINT) if resume else None
        if checkpoint is not None:
            model = _load_checkpoint(keras, checkpoint, state)
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
    return _KerasRun(
        config, train_split, val_split, model, strategy, steps_per_epoch, weights,
        val_dataset, model_config.arch,
    )  # fmt: skip


def _start_phase_two_if_due(run: _KerasRun, epoch: int) -> None:
    """Unfreeze VGG16's top blocks at the first fine-tuning epoch."""
    config = run.config
    if epoch == config.epochs and config.fine_tune_epochs and run.arch == "vgg16":
        with run.strategy.scope():
            set_vgg16_trainable_blocks(run.model, config.fine_tune_blocks)
            compile_model(run.model, config, run.steps_per_epoch, phase=2)
        logger.info("phase two: top %d VGG16 block(s) unfrozen", config.fine_tune_blocks)


def _fit_one_epoch(keras: Any, run: _KerasRun, epoch: int, show_bar: bool) -> dict[str, float]:
    """Train one epoch and validate; returns its history row."""
    train_dataset, steps = make_train_dataset(run.train_split, run.config, epoch)
    started = time.perf_counter()
    bar = _batch_bar(keras, steps, f"epoch {epoch + 1}/{run.config.total_epochs}", show_bar)
    logs = run.model.fit(
        train_dataset,
        validation_data=run.val_dataset,
        initial_epoch=epoch,
        epochs=epoch + 1,
        steps_per_epoch=steps,
        class_weight=run.class_weight,
        shuffle=False,  # the pipeline shuffles, seeded per epoch
        verbose=0,  # ferkit's own bar and line instead of Keras's "Epoch 1/1"
        callbacks=[bar],
    ).history
    row = {"epoch": epoch + 1, **{key: float(values[-1]) for key, values in logs.items()}}
    rate = run.model.optimizer.learning_rate
    row["learning_rate"] = float(keras.ops.convert_to_numpy(rate))
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def _saver_with_random_states(model: Any, state: dict[str, Any]) -> Any:
    """Save the last checkpoint, keeping the random layers' states in ``state`` (Keras
    does not save them in the checkpoint)."""

    def save(path: Path) -> None:
        state["rng"] = _seed_states(model)
        model.save(path)

    return save


def _load_checkpoint(keras: Any, path: Path, state: dict[str, Any]) -> Any:
    """The model and optimizer of the last checkpoint (checked by :func:`verify_checkpoint`).

    ferkit's layers and learning-rate schedule are registered first: a fresh process
    (resuming after a crash) has not defined them, and Keras cannot rebuild the
    optimizer without them.
    """
    custom_layers()
    _warmup_cosine_class()
    try:
        return keras.models.load_model(path)
    except Exception as error:
        raise unloadable_checkpoint(path, state, error) from error


def _batch_bar(keras: Any, steps: int, description: str, show: bool) -> Any:
    """A Keras callback drawing one epoch's progress over its batches (tqdm)."""
    from ferkit.outputs import progress_bar

    class BatchBar(keras.callbacks.Callback):
        def on_train_begin(self, logs: Any = None) -> None:
            self.bar = progress_bar(total=steps, desc=description, unit="batch", leave=False,
                            disable=not show)  # fmt: skip

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.bar.update(1)

        def on_train_end(self, logs: Any = None) -> None:
            self.bar.close()

    return BatchBar()
