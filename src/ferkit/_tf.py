"""Import TensorFlow quietly and only when needed (``ferkit --help`` never imports it),
and keep native libraries' start-up lines off the user's terminal."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Discard what native code writes to the process's standard error during the block
    (LiteRT's "Created TensorFlow Lite XNNPACK delegate" line when an interpreter is
    set up). Python's own ``sys.stderr`` is flushed first; ``FERKIT_VERBOSE=1`` keeps
    everything."""
    if os.environ.get("FERKIT_VERBOSE"):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no descriptor 2 (embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


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
