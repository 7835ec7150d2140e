"""The model that ships inside the package, and loading any model by path.

``ferkit bundle RUN_DIR`` copies a run's best model into ``ferkit/assets/default/``
(without optimizer state) with its class list, calibration, config, metrics, a model
card and SHA-256 checksums. :func:`load_model` loads that bundled model by default and
refuses it if a checksum does not match, so a damaged install fails loudly instead of
predicting nonsense.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.outputs import swap_into_place

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "default"
MODEL_FILE = "model.keras"
CHECKSUMS = "checksums.json"
BUNDLED_FILES = (MODEL_FILE, "labels.json", "calibration.json", "config.yaml", "metrics.json")
MAX_BUNDLE_BYTES = 20 * 1024 * 1024

logger = logging.getLogger(__name__)


class ChecksumError(RuntimeError):
    """A bundled file's content does not match its recorded checksum."""


class ModelLoadError(ValueError):
    """A model file cannot be loaded, or does not agree with its folder's metadata."""


class Classifier:
    """What every classifier runtime offers: calibrated probabilities for face crops.

    Subclasses (:class:`LoadedModel` for Keras, and the ONNX and TFLite runners in
    :mod:`ferkit.runtime`) set the attributes below and implement ``_run`` on one batch.
    """

    classes: list[str]
    temperature: float
    source: Path
    image_shape: tuple[int, int, int]

    def _run(self, faces: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def check_outputs(self, n_outputs: int | None) -> None:
        """Refuse a model whose number of outputs differs from its class list.

        Raises:
            ModelLoadError: naming the model file, both counts and the fix.
        """
        if n_outputs is not None and n_outputs != len(self.classes):
            raise ModelLoadError(
                f"{self.source}: the model has {n_outputs} outputs but labels.json beside it "
                f"names {len(self.classes)} classes ({', '.join(self.classes)}); keep each "
                "model with the labels.json of its own run"
            )

    def predict_logits(
        self, faces: np.ndarray, batch_size: int = 256, progress: bool = False
    ) -> np.ndarray:
        """Logits for ``uint8`` faces ``(N, H, W, C)``; ``progress`` shows a bar over
        the batches."""
        from tqdm import tqdm

        faces = np.asarray(faces)
        if len(faces) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        starts = range(0, len(faces), batch_size)
        bar = tqdm(
            starts,
            desc="classify",
            unit="batch",
            disable=not progress or len(starts) < 2,
            leave=False,
        )
        return np.concatenate(
            [self._run(faces[i : i + batch_size].astype(np.float32)) for i in bar]
        )

    def predict_proba(
        self, faces: np.ndarray, batch_size: int = 256, progress: bool = False
    ) -> np.ndarray:
        """Calibrated class probabilities (temperature-scaled softmax)."""
        from ferkit.calibration import softmax

        return softmax(self.predict_logits(faces, batch_size, progress), self.temperature)


@dataclass
class LoadedModel(Classifier):
    """A Keras model with what is needed to read its outputs."""

    model: Any
    classes: list[str]
    temperature: float
    source: Path
    image_shape: tuple[int, int, int]

    def _run(self, faces: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(faces))


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksums(folder: Path) -> None:
    """Check every file listed in ``checksums.json``.

    Raises:
        ChecksumError: a listed file is missing or differs (the fix offered depends on
            whether it is the model installed with ferkit or a folder of the user's).
    """
    folder = Path(folder)
    try:
        listed = json.loads((folder / CHECKSUMS).read_text())
        items = list(listed.items())
    except (ValueError, AttributeError) as error:
        raise ChecksumError(f"{folder / CHECKSUMS}: unreadable ({error})") from None
    installed = folder.resolve() == DEFAULT_MODEL_DIR.resolve()
    fix = (
        "reinstall ferkit (pip install --force-reinstall ferkit)"
        if installed
        else "restore the original file, or write the folder again with the command that made "
        "it ('ferkit bundle', 'ferkit export' or 'ferkit train')"
    )
    for name, expected in items:
        path = folder / name
        if not path.is_file():
            raise ChecksumError(f"{path}: missing, though {CHECKSUMS} lists it; {fix}")
        actual = sha256_file(path)
        if actual != expected:
            raise ChecksumError(
                f"{path}: checksum {actual[:12]}... does not match the recorded "
                f"{expected[:12]}...: the file is damaged or was replaced; {fix}"
            )


def verify_or_warn(folder: Path) -> None:
    """Verify a model folder's checksums, or warn that it has none and is unverified."""
    if (Path(folder) / CHECKSUMS).is_file():
        verify_checksums(Path(folder))
    else:
        logger.warning(
            "%s: no %s, so its files are loaded unverified (damage would go unnoticed)",
            folder,
            CHECKSUMS,
        )


def write_checksums(folder: Path, names: list[str] | None = None) -> None:
    """Record the SHA-256 of files of a model folder in its ``checksums.json``: the
    given ``names`` (paths relative to the folder), or every file directly inside it."""
    from ferkit.outputs import write_atomic

    folder = Path(folder)
    if names is None:
        names = [
            path.name
            for path in sorted(folder.iterdir())
            if path.is_file() and path.name != CHECKSUMS and not path.name.startswith(".")
        ]
    checksums = {name: sha256_file(folder / name) for name in names}
    write_atomic(folder / CHECKSUMS, json.dumps(checksums, indent=2) + "\n")


def bundled_model_available(folder: Path = DEFAULT_MODEL_DIR) -> bool:
    return (folder / MODEL_FILE).is_file() and (folder / CHECKSUMS).is_file()


def model_location(path: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """The folder and ``.keras`` file of the bundled model (``path=None``), a run folder
    (its best checkpoint), a bundle folder or a ``.keras`` file.

    Raises:
        FileNotFoundError: nothing loadable at ``path`` (or no bundled model installed).
    """
    if path is None:
        if not bundled_model_available(DEFAULT_MODEL_DIR):
            raise FileNotFoundError(
                f"{DEFAULT_MODEL_DIR}: no bundled model in this installation; pass a model "
                "path or reinstall ferkit"
            )
        return DEFAULT_MODEL_DIR, DEFAULT_MODEL_DIR / MODEL_FILE
    path = Path(path)
    if path.is_file():
        return path.parent, path
    if (path / MODEL_FILE).is_file():
        return path, path / MODEL_FILE
    if (path / "checkpoints" / "best.keras").is_file():
        return path, path / "checkpoints" / "best.keras"
    raise FileNotFoundError(
        f"{path}: no model found; give a run folder (with checkpoints/best.keras), a "
        "bundled-model folder (with model.keras) or a .keras file"
    )


def load_model(path: str | os.PathLike[str] | None = None, *, verify: bool = True) -> LoadedModel:
    """Load the bundled model (``path=None``), a run folder, a bundle folder or a
    ``.keras`` file.

    Raises:
        FileNotFoundError: nothing loadable at ``path`` (or no bundled model installed).
        ChecksumError: a bundled file does not match its checksum.
    """
    from ferkit._tf import import_keras

    keras = import_keras()

    import ferkit.models  # noqa: F401  (registers ferkit's custom layers)

    folder, model_path = model_location(path)
    if verify:
        verify_or_warn(folder)
    classes, temperature = read_metadata(folder)
    try:
        model = keras.models.load_model(model_path, compile=False)
    except Exception as error:
        raise ModelLoadError(
            f"{model_path}: not a loadable Keras model ({error_summary(error)}); the file is "
            "damaged or not a .keras file"
        ) from None
    loaded = LoadedModel(
        model=model,
        classes=classes,
        temperature=temperature,
        source=model_path,
        image_shape=tuple(int(d) for d in model.input_shape[1:]),
    )
    loaded.check_outputs(int(model.output_shape[-1]))
    return loaded


def error_summary(error: BaseException) -> str:
    """The type and first line of an exception's message, for one-line errors."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def read_metadata(folder: Path) -> tuple[list[str], float]:
    """The class list (``labels.json``) and temperature (``calibration.json``, else 1)
    of a model folder.

    Raises:
        FileNotFoundError: no ``labels.json``.
        ModelLoadError: either file is unreadable or malformed.
    """
    labels, calibration = folder / "labels.json", folder / "calibration.json"
    if not labels.is_file():
        raise FileNotFoundError(
            f"{folder}: no labels.json beside the model, so its outputs cannot be named; "
            "keep the model inside its run, bundle or export folder"
        )
    try:
        classes = json.loads(labels.read_text())
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ValueError("expected a JSON list of class names")
        if len(set(classes)) != len(classes) or not classes:
            raise ValueError("class names must be unique and at least one")
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{labels}: bad class list ({error})") from None
    temperature = 1.0
    if not calibration.is_file():
        logger.warning(
            "%s: no calibration.json beside the model, so its probabilities are not "
            "calibrated (temperature 1)",
            folder,
        )
        return list(classes), temperature
    try:
        temperature = float(json.loads(calibration.read_text())["temperature"])
        if not np.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be a positive number, not {temperature}")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(
            f'{calibration}: bad calibration ({error}); expected {{"temperature": T}} with T > 0'
        ) from None
    return list(classes), temperature


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

    import ferkit.models  # noqa: F401

    run_dir, dest = Path(run_dir), Path(dest)
    _check_replaceable_bundle(dest)
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
        _check_replaceable_bundle(dest)  # again: something may have appeared meanwhile
        swap_into_place(staging, dest)  # readable by all: an installed package must be
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def _check_replaceable_bundle(dest: Path) -> None:
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
    from sklearn.metrics import classification_report

    from ferkit.calibration import expected_calibration_error

    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    calibration = json.loads((run_dir / "calibration.json").read_text())
    probabilities = loaded.predict_proba(val_split.images)
    predictions = probabilities.argmax(axis=1)
    accuracy = float((predictions == val_split.labels).mean())
    report = classification_report(
        val_split.labels,
        predictions,
        labels=list(range(len(loaded.classes))),
        target_names=loaded.classes,
        output_dict=True,
        zero_division=0,
    )
    rows = "\n".join(
        f"| {name} | {report[name]['precision']:.3f} | {report[name]['recall']:.3f} | "
        f"{report[name]['f1-score']:.3f} | {int(report[name]['support'])} |"
        for name in loaded.classes
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
- Macro F1: {report["macro avg"]["f1-score"]:.3f}.

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
