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
    mean = "the mean calibrated probabilities of"
    weights = teachers.get("teacher_weights") or [1.0] * len(described)
    votes_weight = teachers.get("votes_weight")
    votes_weight = 1.0 if votes_weight is None else votes_weight  # older manifests: 1
    if teachers.get("votes") and votes_weight > 0:
        described.append(f"the votes of `{teachers['votes']}`")
        weights = [*weights, votes_weight]
    if len(set(weights)) > 1:
        total = sum(weights)
        described = [f"{w / total:.2g} x {d}" for w, d in zip(weights, described, strict=True)]
        mean = "a weighted mean of the calibrated probabilities of"
    return (
        f"\n- Targets (knowledge distillation, `ferkit soft-labels`): {teachers['label_weight']:g}"
        f" x the label + {1 - teachers['label_weight']:g} x {mean}"
        f" {len(described)} teacher model(s): {', '.join(described)}."
    )


def dataset_title(manifest: dict[str, Any]) -> str:
    """A prepared dataset's usual name, from its manifest: ``FER+`` for Microsoft's
    layout, ``FER2013`` for the CSV or a folder of that name, else the source folder's
    name."""
    if manifest.get("format") == "ferplus":
        return "FER+"
    source = Path(str(manifest.get("source", "")))
    if manifest.get("format") == "fer2013-csv" or source.name.lower().startswith("fer2013"):
        return "FER2013"
    return source.name or "the prepared dataset"


def _run_manifest(config: dict[str, Any]) -> dict[str, Any]:
    """The manifest of the data a run trained on (following a ``ferkit soft-labels``
    copy back to the dataset it was made from)."""
    manifest_path = Path(config["data"]) / "manifest.json"
    if not manifest_path.is_file():
        return {}
    manifest = json.loads(manifest_path.read_text())
    origin = (manifest.get("teacher_labels") or {}).get("source")
    if origin and (Path(origin) / "manifest.json").is_file():
        return {
            **json.loads((Path(origin) / "manifest.json").read_text()),
            "splits": manifest.get("splits", {}),
        }
    return manifest


def selected_on(run_dir: str | os.PathLike[str]) -> str:
    """Which split of which dataset a run's model was chosen on, e.g. ``FER2013 val``."""
    import yaml

    config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    manifest = _run_manifest(config)
    title = dataset_title(manifest)
    if title == "FER+":  # its figures depend on the labelling rule: name it
        mode = manifest.get("settings", {}).get("ferplus_mode", "plurality")
        return f"{title} {config['val_split']}, {mode} labels"
    return f"{title} {config['val_split']}"


def _data_section(config: dict[str, Any], val_faces: int, classes: list[str]) -> tuple[str, str]:
    """The card's data paragraph and its dataset-specific limitation line."""
    manifest = _run_manifest(config)
    title = dataset_title(manifest)
    splits = manifest.get("splits", {})
    train = splits.get(config["train_split"], {})
    per_class = train.get("per_class", {})
    count = f"{train['count']:,} faces" if "count" in train else "faces"
    soft = config.get("soft_labels")
    if title == "FER+":
        mode = manifest.get("settings", {}).get("ferplus_mode", "plurality")
        described = (
            f"Trained on FER+ `{config['train_split']}` ({count}: FER2013's training faces, "
            "48x48 grayscale, each labelled by ten annotators"
            + ("; the target of each face is its annotators' vote distribution over the "
               "eight expressions" if soft else "")
            + f"), model selected on FER+ `{config['val_split']}` ({val_faces:,} faces, "
            f"{mode} labels). FER+'s test split was never used."
        )  # fmt: skip
    elif title == "FER2013" and manifest.get("format") == "fer2013-csv":
        described = (
            f"Trained on FER2013 `{config['train_split']}` ({count}, 48x48 grayscale), model "
            f"selected on FER2013 `{config['val_split']}` (PublicTest, {val_faces:,} faces). "
            "The PrivateTest split was never used."
        )
    else:
        described = (
            f"Trained on {title} `{config['train_split']}` ({count}), model selected on "
            f"`{config['val_split']}` ({val_faces:,} faces)."
        )
    rarest = ""
    if per_class:  # the rarest class, and any other with under 1% of the training faces
        total = sum(per_class.values())
        rare = sorted(
            (
                name
                for name, n in per_class.items()
                if n < 0.01 * total or n == min(per_class.values())
            ),
            key=per_class.get,
        )
        listed = " and ".join(f"`{name}` ({per_class[name]:,})" for name in rare)
        rarest = (
            f"\n- {listed} {'has' if len(rare) == 1 else 'have'} the fewest training faces: "
            f"{'its' if len(rare) == 1 else 'their'} recall is the least reliable."
        )
    return described, rarest


def robustness_table(summary: dict[str, Any]) -> str:
    """A Markdown table of a robustness summary (:func:`ferkit.evaluation.robustness.summary`): one row per shift, the clean and mean rows."""
    lines = [
        "| shift | severity 1 | severity 2 | severity 3 | mean |",
        "| --- | --- | --- | --- | --- |",
        f"| none (clean faces) | | | | {summary['clean']['accuracy']:.2%} |",
    ]
    for name, row in summary["shifts"].items():
        cells = " | ".join(
            f"{accuracy:.2%} ({level})"
            for accuracy, level in zip(row["accuracy"], row["levels"], strict=True)
        )
        lines.append(f"| {name} | {cells} | {row['mean']:.2%} |")
    lines.append(f"| **mean over all shifts** | | | | **{summary['mean']['accuracy']:.2%}** |")
    return "\n".join(lines)


def evaluations_section(evaluations: list[dict[str, Any]]) -> str:
    """The card's "Further evaluations" table, robustness tables and agreement with
    second labels, for figures read from ``ferkit evaluate`` folders (empty without any)."""
    if not evaluations:
        return ""
    return (
        "\n## Further evaluations (`ferkit evaluate`, single model, no test-time augmentation)\n\n| data | faces | accuracy | balanced accuracy | macro F1 | ECE |\n| --- | --- | --- | --- | --- | --- |\n"
        + "\n".join(
            f"| {e['name']} | {e['faces']:,} | {e['accuracy']:.2%} | {e['balanced_accuracy']:.2%} | {e['macro_f1']:.3f} | {e['ece']:.3f} |"
            for e in evaluations
        )
        + "\n"
        + _robustness_section(evaluations)
    )


def _robustness_section(evaluations: list[dict[str, Any]]) -> str:
    """The card's robustness tables (``ferkit evaluate --corruptions``) and agreement
    with second labels (``--votes``), for the evaluations that have them."""
    text = ""
    for evaluation in evaluations:
        if "votes" in evaluation:
            votes = evaluation["votes"]
            text += (
                f"\nOn {evaluation['name']}, against the plurality of the votes of "
                f"{votes.get('name', 'a second labelling')} for the same faces "
                f"({votes.get('faces_scored', votes['faces_matched']):,} faces matched by their "
                f"pixels, ties left out): {votes['accuracy']:.2%}.\n"
            )
        if "robustness" in evaluation:
            summary = evaluation["robustness"]
            text += (
                f"\n## Robustness ({evaluation['name']}, `ferkit evaluate --corruptions`)\n\n"
                "Accuracy on the same faces after each shift, at three severities:\n\n"
                + robustness_table(summary)
                + f"\n\nExpected calibration error: {summary['clean']['ece']:.3f} on the clean "
                f"faces, {summary['mean']['ece']:.3f} on average under the shifts. The label "
                f"stays the clean face's on {summary['mean']['agreement']:.1%} of shifted faces.\n"
            )
    return text


def write_model_card(
    run_dir: str | os.PathLike[str],
    val_split: Any,
    loaded: LoadedModel,
    name: str = "default",
    evaluations: list[dict[str, Any]] | None = None,
) -> str:
    """A Markdown model card: data, config, per-class validation metrics, calibration,
    further evaluations (from ``ferkit evaluate``), training time and hardware, and
    limitations."""
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
        from ferkit.models.folder import DEFAULT_MODEL_DIR, resolve_model

        try:
            parent_path = resolve_model(str(config["init_from"])) or DEFAULT_MODEL_DIR
        except FileNotFoundError:  # the parent run is gone: its figures are left out
            parent_path = Path(str(config["init_from"]))
        parent = (parent_path if parent_path.is_dir() else parent_path.parent) / "metrics.json"
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
    data, rarest = _data_section(config, len(val_split.labels), loaded.classes)
    selected = selected_on(run_dir)
    further = evaluations_section(evaluations or [])
    usage = (
        ""
        if name == "default"
        else f'\nUse it with `--model {name}` in any command, or `EmotionRecognizer(model="{name}")`.\n'
    )
    return f"""# ferkit model `{name}`: {config["model"]["arch"]}
{usage}
## Data
- {data}{targets}
- Classes, in output order: {", ".join(loaded.classes)}.

## Results on {selected} (single model, no test-time augmentation)
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
{further}
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
- FER2013's faces were scraped from web searches: posed and exaggerated expressions,
  mostly frontal faces, a skew towards young adults and lighter skin. Its own labels are
  noisy (human accuracy on it is about 65%); FER+'s ten votes a face are cleaner but still
  disagree on many faces. Expect lower accuracy on spontaneous expressions, profile
  views, children, older people and under-represented groups.{rarest}
- Expressions are not emotions: the model reports what a face shows, not what a person feels.
"""
