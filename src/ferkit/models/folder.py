"""The model folder: its file names, checksums, metadata (class list, temperature) and
loading, for the model that ships inside the package and any run, bundle or export
folder.

:func:`load_model` loads the bundled model by default and refuses it if a checksum does
not match, so a damaged install fails loudly instead of predicting nonsense. Every
classifier runtime (Keras here, ONNX Runtime and LiteRT in
:mod:`ferkit.inference.runtimes`) is a :class:`Classifier`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"


DEFAULT_MODEL_DIR = ASSETS_DIR / "default"


MODEL_FILE = "model.keras"


CHECKSUMS = "checksums.json"


BUNDLED_FILES = (MODEL_FILE, "labels.json", "calibration.json", "config.yaml", "metrics.json")


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

    def check_faces(self, faces: np.ndarray) -> None:
        """Refuse what no runtime can classify: another shape than the model's input
        (a runtime's own error would not say what to pass) or non-finite pixels (they
        come out as NaN probabilities).

        Raises:
            ValueError: saying what to pass.
        """
        height, width, channels = self.image_shape
        wanted = f"(N, {height}, {width}, {channels}) uint8 face crops"
        if faces.ndim == 3 and tuple(faces.shape) == tuple(self.image_shape):
            raise ValueError(
                f"{self.source.name} takes {wanted}, not one face without its batch axis; "
                "pass face[None]"
            )
        if faces.ndim != 4 or tuple(faces.shape[1:]) != tuple(self.image_shape):
            got = (
                f"faces of {'x'.join(map(str, faces.shape[1:]))}"
                if faces.ndim == 4
                else f"an array of shape {faces.shape}"
            )
            raise ValueError(
                f"{self.source.name} takes {wanted}, not {got}; cut crops with "
                "EmotionRecognizer.crop_faces, or resize each face with "
                f"ferkit.images.resize_face(face, {height}, {channels})"
            )
        kind = faces.dtype.kind
        if kind not in "uif" or (kind == "f" and not np.isfinite(faces).all()):
            what = "NaN or infinite pixels" if kind == "f" else f"{faces.dtype} values"
            raise ValueError(
                f"{self.source.name} takes {wanted}, not faces of {what}; pass pixels 0..255"
            )

    def predict_logits(
        self, faces: np.ndarray, batch_size: int = 256, progress: bool = False
    ) -> np.ndarray:
        """Logits for ``uint8`` faces ``(N, H, W, C)``; ``progress`` shows a bar over
        the batches.

        Raises:
            ValueError: the faces are not of the model's input shape, or hold NaN or
                infinite values (see :meth:`check_faces`).
        """
        from ferkit.outputs import progress_bar

        faces = np.asarray(faces)
        if faces.ndim and len(faces) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        self.check_faces(faces)
        starts = range(0, len(faces), batch_size)
        bar = progress_bar(
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
    installed = folder.resolve().parent == ASSETS_DIR.resolve()
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


def installed_models() -> dict[str, Path]:
    """The models installed with ferkit, by name (``default`` first, then the others in
    alphabetical order): each folder of the package's assets that holds a model and its
    ``labels.json``."""
    found = {}
    for folder in sorted(ASSETS_DIR.iterdir()) if ASSETS_DIR.is_dir() else []:
        has_model = any((folder / name).is_file() for name in (MODEL_FILE, ONNX_FILE))
        if has_model and (folder / "labels.json").is_file():
            found[folder.name] = folder
    return dict(sorted(found.items(), key=lambda item: (item[0] != "default", item[0])))


def resolve_model(
    model: str | os.PathLike[str] | None,
) -> Path | None:
    """Where ``model`` is: ``None`` or ``"default"`` is the bundled default model
    (``None``), the name of another installed model (``"ferplus"``) is its folder, and
    anything else is a path.

    Only a ``str`` names an installed model; a :class:`~pathlib.Path` is always a path.
    A name wins over a folder of the same name in the working directory (a warning says
    so; write ``./ferplus`` for the folder).

    Raises:
        FileNotFoundError: a bare name that is neither installed nor a path (the message
            lists the installed models).
    """
    if model is None:
        return None
    if isinstance(model, str) and not model.strip():
        raise FileNotFoundError("an empty model name; give an installed model's name or a path")
    if isinstance(model, str) and "/" not in model and os.sep not in model:
        installed = installed_models()
        if model in installed or model == "default":
            if Path(model).exists():
                logger.warning(
                    "%r is the installed model of that name, not ./%s; write ./%s for the "
                    "file or folder",
                    model,
                    model,
                    model,
                )
            return None if model == "default" else installed[model]
        if not Path(model).exists() and "." not in model:
            raise FileNotFoundError(
                f"{model}: no installed model of that name and no such file or folder; "
                f"installed models: {', '.join(installed) or 'none'} ('ferkit models' lists "
                "them)"
            )
    return Path(model)


def model_location(path: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """The folder and ``.keras`` file of the bundled model (``path=None`` or
    ``"default"``), another installed model by name (``"ferplus"``), a run folder (its
    best checkpoint), a bundle folder or a ``.keras`` file.

    Raises:
        FileNotFoundError: nothing loadable at ``path`` (or no bundled model installed).
    """
    path = resolve_model(path)
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
    """Load the bundled model (``path=None``), another installed model by name
    (``"ferplus"``; see :func:`installed_models`), a run folder, a bundle folder or a
    ``.keras`` file.

    Raises:
        FileNotFoundError: nothing loadable at ``path`` (or no bundled model installed).
        ChecksumError: a bundled file does not match its checksum.
    """
    from ferkit.extras import import_keras

    keras = import_keras()

    from ferkit.models.keras_nets import custom_layers

    custom_layers()  # registered before loading a model that uses them

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


ONNX_FILE = "model.onnx"


ONNX_INT8_FILE = "model.int8.onnx"


TFLITE_FILE = "model.tflite"


TFLITE_INT8_FILE = "model.int8.tflite"


#: Each classifier runtime and the file a model folder needs for it.
RUNTIME_FILES = {
    "keras": MODEL_FILE,
    "onnx": ONNX_FILE,
    "onnx-int8": ONNX_INT8_FILE,
    "tflite": TFLITE_FILE,
    "tflite-int8": TFLITE_INT8_FILE,
}
