"""ferkit: facial-expression recognition — prepare datasets, train, evaluate, predict.

Importing ``ferkit`` is cheap: TensorFlow, OpenCV and the detectors load only inside the
functions that need them.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "prepare": ("ferkit.data.prepare", "prepare"),
    "PrepareConfig": ("ferkit.data.prepare", "PrepareConfig"),
    "PreparedDataset": ("ferkit.data.dataset", "PreparedDataset"),
    "load_split": ("ferkit.data.dataset", "load_split"),
    "canonical_name": ("ferkit.classes", "canonical_name"),
    "EmotionRecognizer": ("ferkit.inference.recognizer", "EmotionRecognizer"),
    "results_to_dataframe": ("ferkit.inference.results", "results_to_dataframe"),
    "FaceResult": ("ferkit.inference.results", "FaceResult"),
    "ImageResult": ("ferkit.inference.results", "ImageResult"),
    "load_classifier": ("ferkit.inference.runtimes", "load_classifier"),
    "TrainConfig": ("ferkit.training.config", "TrainConfig"),
    "train": ("ferkit.training.trainer", "train"),
    "evaluate": ("ferkit.evaluation.evaluate", "evaluate"),
    "load_model": ("ferkit.models.folder", "load_model"),
    "CANONICAL_CLASSES": ("ferkit.classes", "CANONICAL_CLASSES"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attribute = _LAZY[name]
        return getattr(importlib.import_module(module_name), attribute)
    raise AttributeError(f"module 'ferkit' has no attribute {name!r}")
