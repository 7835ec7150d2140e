"""Import TensorFlow quietly and only when needed (``ferkit --help`` never imports it)."""

from __future__ import annotations

import os
from types import ModuleType


def import_tensorflow() -> ModuleType:
    """Import and return ``tensorflow`` with its C++ start-up chatter silenced."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf

    return tf


def import_keras() -> ModuleType:
    """Import and return ``keras`` on its configured backend.

    TensorFlow unless ``KERAS_BACKEND`` names another (``jax`` or ``torch``, say, on a
    GPU machine without TensorFlow); only the TensorFlow backend imports TensorFlow.
    """
    if os.environ.setdefault("KERAS_BACKEND", "tensorflow") == "tensorflow":
        import_tensorflow()
    import keras

    return keras
