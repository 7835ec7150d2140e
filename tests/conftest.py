"""Shared fixtures: the real data folder and small image writers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferkit.evaluation.benchmark import shared_dir
from ferkit.training.config import TrainConfig

SHARED = shared_dir()
TINY_MODEL = {"arch": "ferkit_cnn", "widths": [8, 16, 32, 64]}


def tiny_train_config(data: str | os.PathLike[str], **overrides) -> TrainConfig:
    """Settings for a seconds-long test run on ``data``: a tiny ferkit_cnn, one epoch of
    batches of 32, no warm-up; ``overrides`` replace any field."""
    values = {
        "data": str(data),
        "model": dict(TINY_MODEL),
        "epochs": 1,
        "batch_size": 32,
        "warmup_epochs": 0,
    }
    return TrainConfig(**{**values, **overrides})


def require_shared(*parts: str) -> Path:
    """Return a path inside the shared data folder, or skip when this machine lacks it.

    CI always has it, so there (CI=true) a missing folder fails instead of skipping.
    """
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{path} not found in CI; the shared data must sit beside the clone")
        pytest.skip(f"{path} not found; set FERKIT_SHARED to the shared data folder")
    return path


def write_gray(path: Path, value: int, size: int = 48, seed: int | None = None) -> Path:
    """Write a grayscale image: flat ``value``, or noise around it when ``seed`` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if seed is None:
        pixels = np.full((size, size), value, dtype=np.uint8)
    else:
        rng = np.random.default_rng(seed)
        pixels = np.clip(rng.normal(value, 30, (size, size)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return path


@pytest.fixture
def shared() -> Path:
    return require_shared()


@pytest.fixture(scope="session")
def fer2013_prepared(tmp_path_factory):
    """The shared FER2013 prepared once per test session: (source folder, PrepareResult)."""
    from ferkit.data.prepare import prepare

    source = require_shared("datasets", "fer2013")
    out = tmp_path_factory.mktemp("fer2013") / "prepared"
    return source, prepare(source, out, progress=False)
