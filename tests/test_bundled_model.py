"""The model that ships with ferkit: present, intact, and as accurate as its card says."""

import json

import numpy as np
import pytest

from ferkit.data.dataset import PreparedDataset
from ferkit.models.folder import DEFAULT_MODEL_DIR, load_model, verify_checksums

pytestmark = pytest.mark.real_data


def _stated_floor() -> float:
    """The accuracy floor the bundle states for FER2013 val (in its metrics.json)."""
    return json.loads((DEFAULT_MODEL_DIR / "metrics.json").read_text())["val_accuracy_floor"]


def test_bundled_model_is_installed_and_intact():
    assert (DEFAULT_MODEL_DIR / "model.keras").is_file(), (
        "the default model must ship with the package"
    )
    verify_checksums(DEFAULT_MODEL_DIR)
    total = sum(path.stat().st_size for path in DEFAULT_MODEL_DIR.iterdir())
    assert total <= 20 * 1024 * 1024  # model.keras and its two ONNX runtimes together
    assert {"model.onnx", "model.int8.onnx"} <= set(
        json.loads((DEFAULT_MODEL_DIR / "checksums.json").read_text())
    )
    assert (DEFAULT_MODEL_DIR / "MODEL_CARD.md").is_file()


def test_bundled_model_clears_its_floor_on_fer2013_val(
    fer2013_prepared, bundled_onnx_on_fer2013_val
):
    """On every val face with float32 ONNX (the session's shared pass), and the Keras
    file giving the same probabilities on 600 of them, spread over the split."""
    _, prepared = fer2013_prepared
    val = PreparedDataset(prepared.out_dir).split("val")
    probabilities = bundled_onnx_on_fer2013_val
    accuracy = float(np.mean(probabilities.argmax(axis=1) == val.labels))
    print(f"bundled model: FER2013 val accuracy {accuracy:.4f} on {len(val)} faces")
    assert accuracy >= _stated_floor()
    model = load_model()  # the default: no path
    assert model.classes == PreparedDataset(prepared.out_dir).classes
    kept = np.linspace(0, len(val) - 1, 600).astype(int)
    keras = model.predict_proba(val.images[kept])
    assert np.abs(keras - probabilities[kept]).max() < 1e-4


def test_bundled_runtimes_match_their_stated_accuracy(
    fer2013_prepared, bundled_onnx_on_fer2013_val
):
    """Each runtime file scores what metrics.json says, and the one predict uses by
    default (int8 LiteRT) is within 0.3 points of float32 and above the floor."""
    from ferkit.inference.runtimes import default_backend, load_classifier
    from ferkit.models.folder import RUNTIME_FILES
    from ferkit.release.bundle import INT8_TOLERANCE

    _, prepared = fer2013_prepared
    val = PreparedDataset(prepared.out_dir).split("val")
    stated = json.loads((DEFAULT_MODEL_DIR / "metrics.json").read_text())["runtimes"]
    accuracy = {
        "model.onnx": float(np.mean(bundled_onnx_on_fer2013_val.argmax(axis=1) == val.labels))
    }
    for runtime in ("onnx-int8", "tflite-int8"):
        probabilities = load_classifier(None, runtime).predict_proba(val.images)
        accuracy[RUNTIME_FILES[runtime]] = float(
            np.mean(probabilities.argmax(axis=1) == val.labels)
        )
    for name, measured in accuracy.items():
        assert measured == pytest.approx(stated[name]["val_accuracy"], abs=2e-3), name
    default = RUNTIME_FILES[default_backend()]
    assert default == "model.int8.tflite"
    assert accuracy[default] >= accuracy["model.onnx"] - INT8_TOLERANCE
    assert accuracy[default] >= _stated_floor()


def test_openvino_runs_the_bundled_onnx_files(fer2013_prepared, bundled_onnx_on_fer2013_val):
    """--backend openvino gives ONNX Runtime's probabilities; openvino-int8 keeps the
    bundled model's accuracy floor on FER2013 val."""
    pytest.importorskip("openvino")
    from ferkit.inference.runtimes import OpenVinoModel, load_classifier

    _, prepared = fer2013_prepared
    val = PreparedDataset(prepared.out_dir).split("val")
    reference = bundled_onnx_on_fer2013_val
    runtime = load_classifier(None, "openvino")
    assert isinstance(runtime, OpenVinoModel) and runtime.image_shape == (48, 48, 1)
    kept = np.linspace(0, len(val) - 1, 600).astype(int)  # the probabilities: 600 faces
    given = runtime.predict_proba(val.images[kept], batch_size=64)
    assert np.abs(given - reference[kept]).max() < 1e-4
    int8 = load_classifier(None, "openvino-int8").predict_proba(val.images, batch_size=64)
    assert float(np.mean(int8.argmax(axis=1) == val.labels)) >= _stated_floor()
    assert float(np.mean(int8.argmax(axis=1) == reference.argmax(axis=1))) >= 0.95
