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
