"""The installed ``fast`` model: a fifth of the default model's cost or less, intact,
with its card, ONNX float32 and int8 files, and its accuracy floor on FER2013 val on the
runtime that ``predict`` uses for it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ferkit.data.dataset import PreparedDataset
from ferkit.inference.runtimes import default_backend, load_classifier
from ferkit.models.folder import (
    ASSETS_DIR,
    DEFAULT_MODEL_DIR,
    installed_models,
    load_model,
    verify_checksums,
)
from ferkit.models.keras_nets import multiply_adds

FAST_DIR = ASSETS_DIR / "fast"


def _metrics() -> dict:
    return json.loads((FAST_DIR / "metrics.json").read_text())


def test_fast_model_is_installed_intact_with_its_card_and_runtimes():
    assert list(installed_models()) == ["default", "fast", "ferplus"]
    verify_checksums(FAST_DIR)
    assert json.loads((FAST_DIR / "labels.json").read_text()) == json.loads(
        (DEFAULT_MODEL_DIR / "labels.json").read_text()
    )
    assert {"model.keras", "model.onnx", "model.int8.onnx"} <= {p.name for p in FAST_DIR.iterdir()}
    metrics = _metrics()
    assert {"model.onnx", "model.int8.onnx"} <= set(metrics["runtimes"])
    card = (FAST_DIR / "MODEL_CARD.md").read_text()
    assert card.startswith("# ferkit model `fast`")
    assert "Selection rule (fixed before training)" in card and "--model fast" in card


def test_fast_model_costs_a_fifth_of_the_default_or_less():
    fast, default = load_model("fast").model, load_model(None).model
    assert multiply_adds(fast) * 5 <= multiply_adds(default)
    assert fast.count_params() * 5 <= default.count_params()


@pytest.mark.real_data
def test_fast_model_clears_its_floor_on_fer2013_val(fer2013_prepared):
    """On its own default runtime and on float32 ONNX; a default runtime other than
    float32 keeps float32's accuracy within 0.3 points."""
    _, prepared = fer2013_prepared
    val = PreparedDataset(prepared.out_dir).split("val")
    metrics = _metrics()
    runtime = default_backend("fast")
    assert runtime == metrics.get("default_runtime", "onnx")
    accuracy = {}
    for backend in sorted({"onnx", runtime}):
        predicted = load_classifier("fast", backend).predict_proba(val.images).argmax(axis=1)
        accuracy[backend] = float(np.mean(predicted == val.labels))
        assert accuracy[backend] >= metrics["val_accuracy_floor"], (backend, accuracy)
    assert accuracy[runtime] >= accuracy["onnx"] - 0.003
    stated = metrics["runtimes"]["model.onnx"]["val_accuracy"]
    assert accuracy["onnx"] == pytest.approx(stated, abs=2e-3)
