"""``ferkit bundle RUN_DIR``: copy a finished run's best model into a model folder
(``ferkit/assets/default/`` by default), without optimizer state, with its class list,
calibration, config, metrics, a model card and SHA-256 checksums."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ferkit.models.folder import (
    BUNDLED_FILES,
    CHECKSUMS,
    DEFAULT_MODEL_DIR,
    MODEL_FILE,
    bundled_model_available,
    write_checksums,
)
from ferkit.outputs import swap_into_place

MAX_BUNDLE_BYTES = 20 * 1024 * 1024

#: ``--default-runtime onnx-int8`` (or ``tflite-int8``) needs that int8 file within this
#: of float32 on the val split.
INT8_TOLERANCE = 0.003
#: The runtimes a bundle may name as its default (``ferkit bundle --default-runtime``).
DEFAULT_RUNTIMES = ("onnx", "onnx-int8", "tflite-int8")


def bundle_run(
    run_dir: str | os.PathLike[str],
    dest: str | os.PathLike[str] = DEFAULT_MODEL_DIR,
    model_card: str | None = None,
    extra_metrics: dict[str, Any] | None = None,
) -> Path:
    """Copy a finished run's best model into a bundle folder with checksums.

    ``extra_metrics`` are merged into the bundle's ``metrics.json`` (for example the
    accuracy floor the bundled model promises).

    Returns:
        The bundle folder.

    Raises:
        FileNotFoundError: the run has no best checkpoint or no metrics (unfinished).
        ValueError: the model file would exceed the 20 MB budget.
        FileExistsError: ``dest`` holds something other than an earlier bundle.
    """
    import keras

    from ferkit.models.keras_nets import custom_layers

    custom_layers()  # registered before loading the run's model

    run_dir, dest = Path(run_dir), Path(dest)
    check_replaceable_bundle(dest)
    for needed in ("checkpoints/best.keras", "metrics.json", "labels.json", "config.yaml"):
        if not (run_dir / needed).is_file():
            raise FileNotFoundError(f"{run_dir / needed}: missing; bundle only a finished run")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        model = keras.models.load_model(run_dir / "checkpoints" / "best.keras", compile=False)
        model.save(staging / MODEL_FILE)  # no optimizer state: a third of the size
        size = (staging / MODEL_FILE).stat().st_size
        if size > MAX_BUNDLE_BYTES:
            raise ValueError(
                f"{run_dir}: model is {size / 2**20:.1f} MB, over the 20 MB bundle budget"
            )
        for name in BUNDLED_FILES[1:]:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, staging / name)
        if extra_metrics:
            metrics = json.loads((staging / "metrics.json").read_text())
            (staging / "metrics.json").write_text(
                json.dumps({**metrics, **extra_metrics}, indent=2) + "\n"
            )
        if (run_dir / "history.csv").is_file():
            shutil.copy2(run_dir / "history.csv", staging / "history.csv")
        if model_card is not None:
            (staging / "MODEL_CARD.md").write_text(model_card)
        write_checksums(staging)
        check_replaceable_bundle(dest)  # again: something may have appeared meanwhile
        swap_into_place(staging, dest)  # readable by all: an installed package must be
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def check_replaceable_bundle(dest: Path) -> None:
    """A bundle replaces only an earlier bundle (its model file and checksums), never a
    folder of the user's.

    Raises:
        FileExistsError: ``dest`` holds anything else.
    """
    if not dest.exists():
        return
    if not dest.is_dir():
        raise FileExistsError(f"--dest {dest} is a file; give a folder path")
    if any(dest.iterdir()) and not bundled_model_available(dest):
        raise FileExistsError(
            f"--dest {dest} holds files but no bundled model (model.keras and "
            f"{CHECKSUMS}); a bundle replaces only an earlier bundle. Choose another --dest"
        )


def is_bundle(folder: str | os.PathLike[str]) -> bool:
    """A bundle folder (model file and checksums, no training checkpoints), not a run."""
    folder = Path(folder)
    return bundled_model_available(folder) and not (folder / "checkpoints").is_dir()


def add_evaluations_to_bundle(
    bundle: str | os.PathLike[str], evaluations: list[dict[str, Any]]
) -> Path:
    """Record ``ferkit evaluate`` figures in an existing bundle, leaving its model alone.

    Each evaluation (as :mod:`ferkit.cli.models` reads it from an evaluate folder: name, faces,
    accuracy, ..., and optionally ``robustness`` and ``votes``) replaces one of the same
    name in ``metrics.json`` or is added; the model card's further-evaluation sections
    are written again, before its "## Training" section (at its end without one). The
    bundle's checksums are verified first, and only the two changed files are hashed
    again. The bundle is rewritten whole, in a staging copy swapped into place.

    Raises:
        FileNotFoundError: ``bundle`` is not a bundle (model file, checksums, metrics).
        ChecksumError: a file of the bundle differs from its checksum.
    """
    from ferkit.models.folder import sha256_file, verify_checksums
    from ferkit.release.model_card import evaluations_section

    bundle = Path(bundle)
    if not bundled_model_available(bundle) or not (bundle / "metrics.json").is_file():
        raise FileNotFoundError(
            f"{bundle}: not a model bundle ({MODEL_FILE}, {CHECKSUMS} and metrics.json); give "
            "a folder written by 'ferkit bundle'"
        )
    verify_checksums(bundle)  # never re-sign a damaged bundle
    staging = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.tmp-", dir=bundle.parent))
    try:
        copy = staging / bundle.name
        shutil.copytree(bundle, copy)
        metrics = json.loads((copy / "metrics.json").read_text())
        named = {entry["name"]: entry for entry in metrics.get("evaluations", [])}
        named.update({entry["name"]: entry for entry in evaluations})
        metrics["evaluations"] = list(named.values())
        (copy / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        changed = ["metrics.json"]
        card_path = copy / "MODEL_CARD.md"
        if card_path.is_file():
            card = card_path.read_text()
            training = card.find("\n## Training")
            training = len(card) if training < 0 else training
            start = card.find("\n## Further evaluations")
            start = training if start < 0 or start > training else start
            section = evaluations_section(metrics["evaluations"])
            card_path.write_text(card[:start].rstrip("\n") + "\n" + section + card[training:])
            changed.append("MODEL_CARD.md")
        checksums = json.loads((copy / CHECKSUMS).read_text())
        checksums.update({name: sha256_file(copy / name) for name in changed})
        (copy / CHECKSUMS).write_text(json.dumps(checksums, indent=2) + "\n")
        swap_into_place(copy, bundle)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return bundle


def set_default_runtime(bundle_dir: str | os.PathLike[str], runtime: str) -> None:
    """Make ``runtime`` the one ``predict`` uses for this bundle unless ``--backend``
    says otherwise (``default_runtime`` in its ``metrics.json``; checksums renewed).

    The model card's "Runtimes" section says which file runs by default.

    Raises:
        ValueError: ``runtime`` is not one of :data:`DEFAULT_RUNTIMES`, or its file is
            missing; an int8 runtime was asked for, but its file's val accuracy (``runtimes`` in
            ``metrics.json``, from :func:`ferkit.release.export.add_runtimes_to_bundle`)
            is more than :data:`INT8_TOLERANCE` under float32's, or was not measured.
    """
    from ferkit.models.folder import RUNTIME_FILES

    bundle_dir = Path(bundle_dir)
    if runtime not in DEFAULT_RUNTIMES:
        raise ValueError(f"default runtime {runtime!r}: choose one of {DEFAULT_RUNTIMES}")
    if not (bundle_dir / RUNTIME_FILES[runtime]).is_file():
        raise ValueError(
            f"{bundle_dir}: no {RUNTIME_FILES[runtime]}; bundle the run again to make it"
        )
    metrics_path = bundle_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    if runtime != "onnx":
        int8_file = RUNTIME_FILES[runtime]
        runtimes = metrics.get("runtimes", {})
        try:
            float32 = runtimes["model.onnx"]["val_accuracy"]
            int8 = runtimes[int8_file]["val_accuracy"]
        except KeyError:
            raise ValueError(
                f"{bundle_dir}: no val accuracy of model.onnx and {int8_file} in "
                "metrics.json; bundle the run again"
            ) from None
        if int8 < float32 - INT8_TOLERANCE:
            raise ValueError(
                f"{bundle_dir}: {int8_file} scores {int8:.2%} on val against float32's "
                f"{float32:.2%}, more than {INT8_TOLERANCE * 100:.1f} points under; float32 "
                f"stays the default (--backend {runtime} still runs it), so bundle without "
                "--default-runtime"
            )
    metrics["default_runtime"] = runtime
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    card = bundle_dir / "MODEL_CARD.md"
    if card.is_file() and "runtimes" in metrics:
        from ferkit.release.export import runtimes_section

        text = card.read_text().split("\n## Runtimes\n")[0].rstrip("\n")
        card.write_text(text + "\n\n" + runtimes_section(metrics["runtimes"], runtime))
    write_checksums(bundle_dir)
