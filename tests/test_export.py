"""Export to ONNX/TFLite, the bundled ONNX runtimes, and runtime selection."""

import json
import shutil

import numpy as np
import pytest

from ferkit.cli import main
from ferkit.inference.runtimes import OnnxModel, TFLiteModel, load_classifier
from ferkit.models.folder import DEFAULT_MODEL_DIR, ChecksumError, load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keras_model():
    return load_model()


@pytest.fixture(scope="module")
def faces():
    return np.random.default_rng(1).integers(0, 256, (64, 48, 48, 1)).astype(np.uint8)


def test_bundled_onnx_equals_keras(keras_model, faces):
    onnx = load_classifier(None, "onnx")
    assert isinstance(onnx, OnnxModel) and onnx.classes == keras_model.classes
    assert np.abs(onnx.predict_logits(faces) - keras_model.predict_logits(faces)).max() < 1e-4
    assert np.allclose(onnx.predict_proba(faces), keras_model.predict_proba(faces), atol=1e-5)


def test_auto_backend(tmp_path):
    """The bundled model runs its int8 LiteRT file (its default runtime); the ferplus
    model, which names none, float32 ONNX."""
    assert load_classifier().source.name == "model.int8.tflite"
    assert isinstance(load_classifier("ferplus"), OnnxModel)
    with pytest.raises(ValueError, match="unknown backend"):
        load_classifier(None, "torch")


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_cli_export_agrees_with_keras_and_loads(fmt, keras_model, faces, tmp_path):
    out = tmp_path / fmt
    assert main(["export", "--format", fmt, "--out", str(out)]) == 0
    details = json.loads((out / "export.json").read_text())
    assert details["format"] == fmt and details["max_abs_logit_difference"] < 1e-4
    exported = load_classifier(out)
    assert isinstance(exported, OnnxModel if fmt == "onnx" else TFLiteModel)
    difference = exported.predict_logits(faces) - keras_model.predict_logits(faces)
    assert np.abs(difference).max() < 1e-4
    assert exported.temperature == keras_model.temperature


def test_int8_needs_calibration(tmp_path):
    from ferkit.release.export import export_model

    assert main(["export", "--format", "onnx", "--quantize", "int8", "--out", str(tmp_path)]) == 2
    with pytest.raises(ValueError, match="--calibration-data"):
        export_model(None, "tflite", tmp_path / "out", quantize="int8")


def test_int8_tflite_export_tracks_keras_and_loads_by_itself(drawn, drawn_run, tmp_path):
    """An int8 LiteRT export of a trained run: float faces in, logits near Keras's out,
    and its folder loads on LiteRT with no backend named."""
    from ferkit.data.dataset import load_split

    out = tmp_path / "int8"
    argv = ["export", "--model", str(drawn_run), "--format", "tflite", "--quantize", "int8"]
    assert main([*argv, "--calibration-data", str(drawn), "--out", str(out)]) == 0
    details = json.loads((out / "export.json").read_text())
    assert details["file"] == "model.int8.tflite" and details["calibration"]["faces"] > 0
    exported = load_classifier(out)
    assert isinstance(exported, TFLiteModel) and exported.source.name == "model.int8.tflite"
    val = load_split(drawn, "val")
    keras_logits = load_model(drawn_run).predict_logits(val.images)
    int8_logits = exported.predict_logits(val.images)
    spread = np.abs(keras_logits).max()
    assert np.abs(int8_logits - keras_logits).max() < 0.1 * spread
    # a one-epoch network's logits are close together, so a few labels flip
    assert (int8_logits.argmax(axis=1) == keras_logits.argmax(axis=1)).mean() > 0.8


@pytest.mark.real_data
def test_int8_keeps_accuracy_on_real_faces(fer2013_prepared, bundled_onnx_on_fer2013_val, tmp_path):
    """int8 from a fresh calibration (of the fast model, a sixth of the default's cost),
    and the bundled default's int8 files (ONNX and LiteRT), track float32 on val."""
    from ferkit.data.dataset import load_split

    _, result = fer2013_prepared
    out = tmp_path / "int8"
    argv = ["export", "--model", "fast", "--format", "onnx", "--quantize", "int8"]
    assert main([*argv, "--out", str(out), "--calibration-data", str(result.out_dir)]) == 0
    val = load_split(result.out_dir, "val")
    images, labels = val.images[:1500], val.labels[:1500]
    fast = load_classifier("fast", "onnx").predict_proba(images).argmax(axis=1)
    default = bundled_onnx_on_fer2013_val[:1500].argmax(axis=1)
    bundled = [load_classifier(None, name) for name in ("onnx-int8", "tflite-int8")]
    for model, reference in [(load_classifier(out), fast), *((b, default) for b in bundled)]:
        predicted = model.predict_proba(images).argmax(axis=1)
        assert (predicted == reference).mean() > 0.93
        assert abs((predicted == labels).mean() - (reference == labels).mean()) < 0.015


def test_tampered_onnx_is_refused(tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(DEFAULT_MODEL_DIR, copy)
    with open(copy / "model.onnx", "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(ChecksumError, match=r"model\.onnx"):
        load_classifier(copy, "onnx")


def test_missing_runtime_file_names_the_fix(tmp_path):
    shutil.copy(DEFAULT_MODEL_DIR / "model.keras", tmp_path / "model.keras")
    shutil.copy(DEFAULT_MODEL_DIR / "labels.json", tmp_path / "labels.json")
    with pytest.raises(FileNotFoundError, match="ferkit export"):
        load_classifier(tmp_path, "onnx-int8")


def _rescaled_conv_model(path):
    """A small ONNX classifier as tf2onnx writes ferkit's: faces (N, 6, 6, 1) 0..255,
    rescaled by scalar Mul and Add, then a convolution."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    constants = [
        numpy_helper.from_array(np.array(1 / 127.5, dtype=np.float32), "rescale/scale"),
        numpy_helper.from_array(np.array(-1.0, dtype=np.float32), "rescale/offset"),
        numpy_helper.from_array(np.array([0, 3, 1, 2], dtype=np.int64), "perm"),
        numpy_helper.from_array(rng.normal(size=(2, 1, 3, 3)).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Mul", ["face", "rescale/scale"], ["rescale/mul:0"], name="m/rescale/mul"),
        helper.make_node("Add", ["rescale/mul:0", "rescale/offset"], ["rescale/add:0"], name="m/rescale/add"),
        helper.make_node("Transpose", ["rescale/add:0"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w"], ["logits"]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "m",
        [helper.make_tensor_value_info("face", TensorProto.FLOAT, ["n", 6, 6, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2, 4, 4])],
        constants,
        value_info=[helper.make_tensor_value_info("rescale/mul:0", TensorProto.FLOAT, ["n", 6, 6, 1])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_flattened_input_rescale_gives_identical_outputs(tmp_path):
    import onnx
    import onnxruntime as ort

    from ferkit.release.export import flatten_input_rescale

    path = tmp_path / "m.onnx"
    _rescaled_conv_model(path)
    faces = np.random.default_rng(1).integers(0, 256, (5, 6, 6, 1)).astype(np.float32)

    def run():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"face": faces})[0]

    before = run()
    assert flatten_input_rescale(path) is True
    nodes = onnx.load(str(path)).graph.node
    assert [n.op_type for n in nodes] == ["Reshape", "Mul", "Add", "Reshape", "Transpose", "Conv"]
    assert np.array_equal(run(), before)
    assert flatten_input_rescale(path) is False  # already rewritten: left as it is


@pytest.mark.parametrize("name", ["default", "fast", "ferplus"])
def test_installed_onnx_files_run_their_rescale_flattened(name):
    import onnx

    folder = DEFAULT_MODEL_DIR.parent / name
    for file in ("model.onnx", "model.int8.onnx"):
        graph = onnx.load(str(folder / file)).graph
        first = next(n for n in graph.node if graph.input[0].name in n.input)
        assert first.op_type == "Reshape", f"{name}/{file}"
