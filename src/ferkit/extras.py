"""Optional libraries, imported quietly and only when needed (``ferkit --help`` never
imports TensorFlow), with the install command when one is missing; and native
libraries' start-up lines kept off the user's terminal."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Discard what native code writes to the process's standard error during the block
    (LiteRT's "Created TensorFlow Lite XNNPACK delegate" line when an interpreter is
    set up). Python's own ``sys.stderr`` is flushed first; ``FERKIT_VERBOSE=1`` keeps
    everything. Threads take turns, so that each restores the real descriptor."""
    if os.environ.get("FERKIT_VERBOSE"):
        yield
        return
    with _STDERR_LOCK:
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


_STDERR_LOCK = threading.RLock()


#: What each extra adds to the core install (``pip install ferkit``, which predicts on
#: photos and videos and evaluates with ONNX Runtime and LiteRT).
EXTRAS = {
    "report": "pandas and Matplotlib: DataFrames, Parquet manifests, plots (evaluation "
    "reports, the emotion chart of an annotated video, compare) and dataset exploration",
    "train": "TensorFlow, Keras and MTCNN: train, finish, bundle, export, soft labels, the "
    "Keras runtime and the mtcnn detector",
    "torch": "PyTorch: the torch training engine",
    "serve": "FastAPI and Uvicorn: ferkit serve, the REST API and web page",
    "ray": "Ray Data: ferkit predict --engine ray, on this machine's cores or a cluster",
    "openvino": "OpenVINO: --backend openvino and openvino-int8, the fastest int8 runtime here",
    "all": "report, train, torch, serve, ray and openvino",
}


class MissingExtraError(ImportError):
    """A command needs a library that only an extra of ferkit installs."""


def missing_extra(library: str, extra: str, purpose: str) -> MissingExtraError:
    """The error for a missing optional library, naming the extra that installs it."""
    whole = (
        "; pip install -r requirements.txt installs the whole toolkit" if extra == "train" else ""
    )
    # ferkit is installed from its checkout or from a wheel built from it (README, Install).
    return MissingExtraError(
        f"{purpose} needs {library}, which this installation lacks: add ferkit's {extra} "
        f"extra (in the checkout: pip install -e '.[{extra}]'; from a wheel: pip install "
        f"'ferkit-VERSION-py3-none-any.whl[{extra}]'){whole}"
    )


def import_tensorflow(purpose: str = "this command") -> ModuleType:
    """Import and return ``tensorflow`` with its C++ start-up chatter silenced.

    Raises:
        MissingExtraError: TensorFlow is not installed (``ferkit[train]`` installs it).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import tensorflow as tf
    except ImportError as error:
        raise missing_extra("TensorFlow", "train", purpose) from error
    return tf


def import_keras(purpose: str = "this command") -> ModuleType:
    """Import and return ``keras`` on its configured backend.

    TensorFlow unless ``KERAS_BACKEND`` names another (``jax`` or ``torch``, say, on a
    GPU machine without TensorFlow); only the TensorFlow backend imports TensorFlow.
    """
    if os.environ.setdefault("KERAS_BACKEND", "tensorflow") == "tensorflow":
        import_tensorflow(purpose)
    try:
        import keras
    except ImportError as error:
        raise missing_extra("Keras", "train", purpose) from error
    return keras


def import_pandas(purpose: str = "this command") -> ModuleType:
    """Import and return ``pandas``.

    Raises:
        MissingExtraError: pandas is not installed (``ferkit[report]`` installs it).
    """
    try:
        import pandas
    except ImportError as error:
        raise missing_extra("pandas", "report", purpose) from error
    return pandas


def has_matplotlib() -> bool:
    """Whether Matplotlib (``ferkit[report]``) is installed, for the callers that skip a
    plot, with a note, rather than fail."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def require_serve(purpose: str = "ferkit serve") -> None:
    """Check that the service's libraries are installed.

    Raises:
        MissingExtraError: FastAPI or Uvicorn is missing (``ferkit[serve]`` installs them).
    """
    import importlib.util

    for module, library in (("fastapi", "FastAPI"), ("uvicorn", "Uvicorn"), ("multipart", "python-multipart")):  # fmt: skip
        if importlib.util.find_spec(module) is None:
            raise missing_extra(library, "serve", purpose)


def import_torch() -> Any:
    if "tensorflow" in sys.modules and "torch._dynamo" not in sys.modules:
        # PyTorch's optimizers import torch._dynamo, which crashes the process when
        # TensorFlow was loaded first (seen with torch 2.14 + TensorFlow 2.21).
        raise RuntimeError(
            "the torch engine must load PyTorch before TensorFlow in a process: run it "
            "through the ferkit train command, or import torch first"
        )
    try:
        import torch
        import torch._dynamo
    except ImportError as error:
        raise missing_extra("PyTorch", "torch", "the torch engine (--engine torch)") from error
    return torch
