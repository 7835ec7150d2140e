"""The model card (``MODEL_CARD.md``) written into a bundled model folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ferkit.models.folder import LoadedModel


def accuracy_floor(accuracy: float) -> float:
    """The floor a bundle promises: its measured accuracy rounded down to a whole percent."""
    import math

    return math.floor(accuracy * 100) / 100


def _distillation_note(config: dict[str, Any]) -> str:
    """A card line on the training targets when the run trained on ``ferkit soft-labels``."""
    manifest = Path(config["data"]) / "manifest.json"
    if not config.get("soft_labels") or not manifest.is_file():
        return ""
    teachers = json.loads(manifest.read_text()).get("teacher_labels")
    if not teachers:
        return ""
    described = []
    for teacher in teachers["teachers"]:
        teacher_metrics = Path(teacher) / "metrics.json"
        if teacher_metrics.is_file():
            accuracy = json.loads(teacher_metrics.read_text())["val_accuracy"]
            described.append(f"`{teacher}` ({accuracy:.2%} on val)")
        else:
            described.append(f"`{teacher}`")
    return (
        f"\n- Targets (knowledge distillation, `ferkit soft-labels`): {teachers['label_weight']:g}"
        f" x the label + {1 - teachers['label_weight']:g} x the mean calibrated probabilities of"
        f" {len(described)} teacher model(s): {', '.join(described)}."
    )


def write_model_card(run_dir: str | os.PathLike[str], val_split: Any, loaded: LoadedModel) -> str:
    """A Markdown model card: data, config, per-class validation metrics, calibration,
    training time on this machine, and limitations."""
    import platform

    import yaml

    from ferkit.calibration import expected_calibration_error
    from ferkit.metrics import confusion_matrix, per_class_scores

    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    calibration = json.loads((run_dir / "calibration.json").read_text())
    probabilities = loaded.predict_proba(val_split.images)
    predictions = probabilities.argmax(axis=1)
    accuracy = float((predictions == val_split.labels).mean())
    scores = per_class_scores(confusion_matrix(val_split.labels, predictions, len(loaded.classes)))
    rows = "\n".join(
        f"| {name} | {scores['precision'][i]:.3f} | {scores['recall'][i]:.3f} | "
        f"{scores['f1'][i]:.3f} | {int(scores['support'][i])} |"
        for i, name in enumerate(loaded.classes)
    )
    hours = metrics["training_seconds"] / 3600
    lineage = ""
    if config.get("init_from"):
        parent = Path(config["init_from"]) / "metrics.json"
        lineage = f"\n- Started from the weights of `{config['init_from']}` (`init_from`)"
        if parent.is_file():
            parent_metrics = json.loads(parent.read_text())
            parent_hours = parent_metrics["training_seconds"] / 3600
            where = parent_metrics.get("trained_on")
            lineage += f", trained for {parent_metrics['epochs_trained']} epochs in " + (
                f"{parent_hours * 60:.1f} min on {where}"
                if where
                else f"{parent_hours:.1f} h: {hours + parent_hours:.1f} h in all"
            )
        lineage += "."
    targets = _distillation_note(config)
    if metrics.get("trained_on"):
        trained = f"{hours * 60:.1f} min on {metrics['trained_on']}"
    else:
        cpu = platform.processor() or platform.machine()
        trained = f"{hours:.1f} h on {os.cpu_count()} CPU cores ({cpu}), no GPU"
    optimizer = {"adamw": "AdamW", "sgd": "SGD with Nesterov momentum"}[
        config.get("optimizer", "adamw")
    ]
    return f"""# ferkit default model: {config["model"]["arch"]}

## Data
- Trained on FER2013 `{config["train_split"]}` (28,709 faces, 48x48 grayscale), model selected
  on FER2013 `{config["val_split"]}` (PublicTest, {len(val_split.labels):,} faces). The
  PrivateTest split was never used.{targets}
- Classes, in output order: {", ".join(loaded.classes)}.

## Results on FER2013 val (single model, no test-time augmentation)
- Accuracy: **{accuracy:.2%}** (best epoch {metrics["best_epoch"]} of {metrics["epochs_trained"]} trained{"; run ended " + metrics["finished_early"] + " planned, for time" if "finished_early" in metrics else ""}); the
  test suite holds the bundled model to a floor of {accuracy_floor(accuracy):.0%}.
- Macro F1: {float(scores["f1"].mean()):.3f}.

| class | precision | recall | F1 | support |
| --- | --- | --- | --- | --- |
{rows}

## Calibration
Temperature scaling fitted on val: T = {calibration["temperature"]:.3f}. Expected calibration
error (15 bins) {calibration["ece_before"]:.3f} before, {expected_calibration_error(probabilities, val_split.labels):.3f} after.
(Fitted and measured on the same split: a held-out split would give a less optimistic figure.)

## Training
- `{config["model"]["arch"]}`, {metrics["parameters"]:,} parameters; {config["epochs"]} epochs, batch
  {config["batch_size"]}, {optimizer} (lr {config["learning_rate"]}, weight decay {config["weight_decay"]}),
  {config["schedule"]} schedule, label smoothing {config["label_smoothing"]}, augmentation
  {config["model"]["augment"]}; seed {config["seed"]}.
- Training time: {trained}.{lineage}
- Reproduce: see `config.yaml` beside this card and the README.

## Limitations
- Input is a 48x48 grayscale face crop, as in FER2013: colour and fine detail are lost,
  and accuracy depends on the face detector and alignment in front of the model.
- FER2013 was scraped from web searches: posed and exaggerated expressions, mostly
  frontal faces, a skew towards young adults and lighter skin, and noisy labels (human
  accuracy on it is about 65%). Expect lower accuracy on spontaneous expressions,
  profile views, children, older people and under-represented groups.
- `disgust` has only 436 training faces: its recall is the least reliable.
- Expressions are not emotions: the model reports what a face shows, not what a person feels.
"""
