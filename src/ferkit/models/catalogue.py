"""The models installed with ferkit, described: ``ferkit models`` and
:func:`describe_models`.

Every installed model is a bundle folder under the package's ``assets`` (see
:func:`ferkit.models.folder.installed_models`); its ``labels.json``, ``metrics.json`` and
``config.yaml`` say what it predicts and how well it scored where it was chosen, and the
``evaluations`` its bundle recorded say how it did elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ferkit.models.folder import RUNTIME_FILES, installed_models, read_metadata


def describe_model(name: str, folder: Path) -> dict[str, Any]:
    """What one model folder holds: classes, parameters, size on disk, runtimes, and its
    validation figures (accuracy, calibration error, the data it was selected on)."""
    classes, temperature = read_metadata(folder)
    metrics = _read_json(folder / "metrics.json")
    calibration = metrics.get("calibration") or _read_json(folder / "calibration.json")
    data = _config_value(folder / "config.yaml", "data")
    files = [path for path in folder.iterdir() if path.is_file()]
    return {
        "name": name,
        "folder": str(folder),
        "classes": classes,
        "parameters": metrics.get("parameters"),
        "size_mb": round(sum(path.stat().st_size for path in files) / 2**20, 2),
        "runtimes": [
            runtime for runtime, file in RUNTIME_FILES.items() if (folder / file).is_file()
        ],
        "temperature": temperature,
        "selected_on": metrics.get("selected_on") or (Path(data).name if data else None),
        "val_accuracy": metrics.get("val_accuracy_bundled", metrics.get("val_accuracy")),
        "val_accuracy_floor": metrics.get("val_accuracy_floor"),
        "val_faces": metrics.get("val_faces"),
        "ece_after": calibration.get("ece_after"),
        "evaluations": metrics.get("evaluations", []),
        "model_card": str(folder / "MODEL_CARD.md")
        if (folder / "MODEL_CARD.md").is_file()
        else None,
    }


def describe_models() -> list[dict[str, Any]]:
    """:func:`describe_model` for every installed model, the default first."""
    return [describe_model(name, folder) for name, folder in installed_models().items()]


def format_models(models: list[dict[str, Any]]) -> str:
    """The installed models as a plain-text table, then each model's further
    evaluations and where its model card is."""
    header = ("model", "classes", "parameters", "size", "val accuracy", "ECE", "selected on")
    rows = [
        (
            model["name"],
            f"{len(model['classes'])}",
            f"{model['parameters'] / 1e6:.2f} M" if model["parameters"] else "?",
            f"{model['size_mb']:.1f} MB",
            f"{model['val_accuracy']:.2%}" if model["val_accuracy"] is not None else "?",
            f"{model['ece_after']:.3f}" if model["ece_after"] is not None else "?",
            f"{model['selected_on'] or '?'} ({model['val_faces'] or '?'} faces)",
        )
        for model in models
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    for model in models:
        lines.append("")
        lines.append(f"{model['name']}: {', '.join(model['classes'])}")
        lines.append(
            f"  runtimes: {', '.join(model['runtimes'])}; temperature {model['temperature']:.3f}"
        )
        for evaluation in model["evaluations"]:
            lines.append(
                f"  {evaluation['name']}: accuracy {evaluation['accuracy']:.2%}, macro F1 "
                f"{evaluation['macro_f1']:.3f}, ECE {evaluation['ece']:.3f} "
                f"({evaluation['faces']} faces)"
            )
            if "robustness" in evaluation:
                mean = evaluation["robustness"]["mean"]
                lines.append(
                    f"    under {len(evaluation['robustness']['shifts'])} image shifts, 3 "
                    "severities each: mean accuracy "
                    f"{mean['accuracy']:.2%}, ECE {mean['ece']:.3f}"
                )
            if "votes" in evaluation:
                lines.append(
                    f"    against the vote pluralities of {evaluation['votes'].get('name', '--votes')}: "
                    f"{evaluation['votes']['accuracy']:.2%}"
                )
        if model["model_card"]:
            lines.append(f"  model card: {model['model_card']}")
    return "\n".join(lines)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _config_value(path: Path, key: str) -> Any:
    import yaml

    try:
        value = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return value.get(key) if isinstance(value, dict) else None
