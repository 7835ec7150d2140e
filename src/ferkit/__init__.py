"""ferkit: facial-expression recognition — prepare datasets, train, evaluate, predict.

Importing ``ferkit`` is cheap: TensorFlow, OpenCV and the detectors load only inside the
functions that need them.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "prepare": ("ferkit.prepare", "prepare"),
    "PrepareConfig": ("ferkit.prepare", "PrepareConfig"),
    "PreparedDataset": ("ferkit.data", "PreparedDataset"),
    "load_split": ("ferkit.data", "load_split"),
    "canonical_name": ("ferkit.classes", "canonical_name"),
    "EmotionRecognizer": ("ferkit.recognize", "EmotionRecognizer"),
    "results_to_dataframe": ("ferkit.recognize", "results_to_dataframe"),
    "load_model": ("ferkit.bundle", "load_model"),
    "CANONICAL_CLASSES": ("ferkit.classes", "CANONICAL_CLASSES"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attribute = _LAZY[name]
        return getattr(importlib.import_module(module_name), attribute)
    raise AttributeError(f"module 'ferkit' has no attribute {name!r}")
