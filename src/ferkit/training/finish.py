"""Finishing a run: calibrate its best model on validation and write ``metrics.json``
(also for a run stopped early, and for a torch-engine run, whose Keras model is rebuilt
from its weights)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.data.dataset import PreparedDataset, Split
from ferkit.training.config import TrainConfig, TrainResult
from ferkit.training.run_folder import (
    BEST_CHECKPOINT,
    BEST_WEIGHTS,
    CONFIG_NAME,
    STATE_NAME,
    read_state,
    save_atomic,
    write_json,
)
from ferkit.training.sampling import run_splits

logger = logging.getLogger(__name__)


def finish_now(run_dir: str | os.PathLike[str]) -> TrainResult:
    """End a run early: calibrate its best checkpoint so far and write ``metrics.json``.

    For a run that has to stop before its last epoch (a deadline, a plateau). The metrics
    record how many of the planned epochs were trained.
    """
    from ferkit.extras import import_keras

    import_keras()
    run_dir = Path(run_dir)

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

    from ferkit.calibration import expected_calibration_error, fit_temperature, softmax
    from ferkit.models.folder import write_checksums
    from ferkit.models.keras_nets import custom_layers

    custom_layers()  # registered before loading a model that uses them
    # Without its optimizer: a process that did not train (``--finish``) has not
    # registered the training schedule the optimizer refers to.
    model = keras.models.load_model(run_dir / BEST_CHECKPOINT, compile=False)
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


def keras_model_from_run(run_dir: str | Path, weights: str | Path | None = None) -> Any:
    """Build the Keras model of a torch-engine run and load its best weights (or
    ``weights``: another of its ``.weights.npz`` files, such as a kept epoch's)."""
    from ferkit.models.keras_nets import (  # Keras: only after training
        ModelConfig,
        build_model,
        load_keras_weights,
    )

    run_dir = Path(run_dir)
    config = TrainConfig.from_yaml(run_dir / CONFIG_NAME)
    model = build_model(ModelConfig(**config.model))
    load_keras_weights(model, weights or run_dir / BEST_WEIGHTS)
    return model


def ensure_keras_checkpoint(run_dir: str | Path) -> bool:
    """Write ``checkpoints/best.keras`` of a torch-engine run from its best weights, if
    missing. Returns whether one was written."""
    run_dir = Path(run_dir)
    if (run_dir / BEST_CHECKPOINT).exists() or not (run_dir / BEST_WEIGHTS).exists():
        return False
    save_atomic(keras_model_from_run(run_dir).save, run_dir / BEST_CHECKPOINT)
    return True
