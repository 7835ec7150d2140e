"""The face-api teacher: the TF.js weights reader, the rebuilt network against a NumPy
reading of face-api's code, the tarball check, and (with the npm tarball at hand) the
built folder on real faces."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import require_shared

from ferkit.release import faceapi
from ferkit.release.faceapi import (
    TarballMismatchError,
    build_faceapi_teacher,
    check_tarball,
    decode_tfjs_weights,
    read_tfjs_weights,
)

#: face-api's output order and ferkit's name of each class, written out here rather than
#: taken from the module under test.
FACEAPI_TO_FERKIT = {
    "neutral": "neutral",
    "happy": "happy",
    "sad": "sad",
    "angry": "angry",
    "fearful": "fear",
    "disgusted": "disgust",
    "surprised": "surprise",
}


# --- the TF.js weights manifest --------------------------------------------------------


def _write_manifest(folder: Path, groups: list[tuple[list[bytes], list[dict]]]) -> Path:
    """A manifest whose groups each hold the given shards (written as files) and specs."""
    manifest = []
    for group, (shards, specs) in enumerate(groups):
        paths = []
        for index, shard in enumerate(shards):
            name = f"group{group}-shard{index}.bin"
            (folder / name).write_bytes(shard)
            paths.append(name)
        manifest.append({"paths": paths, "weights": specs})
    path = folder / "model-weights_manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def test_reads_uint8_uint16_float16_and_float32_tensors(tmp_path):
    rng = np.random.default_rng(0)
    quantized = rng.integers(0, 256, (2, 3)).astype(np.uint8)
    wide = rng.integers(0, 65536, (5,)).astype("<u2")
    half = rng.normal(size=(4,)).astype("<f2")
    plain = rng.normal(size=(3, 1)).astype("<f4")
    counts = np.array([7, -2], dtype="<i4")
    scale, minimum = 0.0125, -1.5
    data = quantized.tobytes() + half.tobytes() + plain.tobytes()
    specs = [
        {
            "name": "a/filters",
            "shape": [2, 3],
            "dtype": "float32",
            "quantization": {"dtype": "uint8", "scale": scale, "min": minimum},
        },
        {"name": "a/half", "shape": [4], "dtype": "float32", "quantization": {"dtype": "float16"}},
        {"name": "a/bias", "shape": [3, 1], "dtype": "float32"},
    ]
    second = [
        {
            "name": "b/wide",
            "shape": [5],
            "dtype": "float32",
            "quantization": {"dtype": "uint16", "scale": 0.5, "min": 2.0},
        },
        {"name": "b/counts", "shape": [2], "dtype": "int32"},
    ]
    # The first group's bytes split across two shards at an odd place, as TF.js does.
    manifest = _write_manifest(
        tmp_path, [([data[:5], data[5:]], specs), ([wide.tobytes() + counts.tobytes()], second)]
    )

    tensors = read_tfjs_weights(manifest)

    assert list(tensors) == ["a/filters", "a/half", "a/bias", "b/wide", "b/counts"]
    np.testing.assert_array_equal(
        tensors["a/filters"], (quantized.astype(np.float64) * scale + minimum).astype(np.float32)
    )
    assert tensors["a/filters"].dtype == np.float32 and tensors["a/filters"].shape == (2, 3)
    np.testing.assert_array_equal(tensors["a/half"], half.astype(np.float32))
    np.testing.assert_array_equal(tensors["a/bias"], plain)
    np.testing.assert_array_equal(tensors["b/wide"], wide * 0.5 + 2.0)
    np.testing.assert_array_equal(tensors["b/counts"], [7, -2])
    assert tensors["b/counts"].dtype == np.int32


def test_dequantized_uint8_spans_min_to_min_plus_255_scales():
    specs = [
        {
            "name": "w",
            "shape": [3],
            "dtype": "float32",
            "quantization": {"dtype": "uint8", "scale": 0.01, "min": -1.0},
        }
    ]
    tensors = decode_tfjs_weights(
        [{"paths": ["x"], "weights": specs}], lambda _: bytes([0, 100, 255])
    )
    np.testing.assert_allclose(tensors["w"], [-1.0, 0.0, 1.55], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"\x00" * 11, "needs 12 bytes"), (b"\x00" * 13, "describes 12")],
)
def test_shards_of_the_wrong_length_are_refused(data, message):
    specs = [{"name": "w", "shape": [3], "dtype": "float32"}]
    with pytest.raises(ValueError, match=message):
        decode_tfjs_weights([{"paths": ["x"], "weights": specs}], lambda _: data)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"dtype": "string"}, "not supported"),
        ({"dtype": "float32", "quantization": {"dtype": "int4"}}, "not supported"),
        ({"dtype": "float32", "quantization": {"dtype": "uint8", "min": 0}}, "'scale' and 'min'"),
    ],
)
def test_unsupported_dtypes_and_quantizations_are_refused(spec, message):
    specs = [{"name": "w", "shape": [4], **spec}]
    with pytest.raises(ValueError, match=message):
        decode_tfjs_weights([{"paths": ["x"], "weights": specs}], lambda _: b"\x00" * 4)


# --- the tarball ---------------------------------------------------------------------------


def _fake_tarball(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        readme = path.parent / "README.md"
        readme.write_text("not face-api\n")
        archive.add(readme, arcname="package/README.md")
    return path


def test_another_tarball_is_refused_with_the_fix(tmp_path):
    tarball = _fake_tarball(tmp_path / "vladmandic-face-api-1.7.15.tgz")
    with pytest.raises(TarballMismatchError, match=r"differs from the recorded.*npm pack"):
        check_tarball(tarball)
    with pytest.raises(TarballMismatchError):
        build_faceapi_teacher(tarball, tmp_path / "teacher")
    assert not (tmp_path / "teacher").exists()


def test_command_reports_a_refused_tarball(tmp_path, capsys):
    tarball = _fake_tarball(tmp_path / "other.tgz")
    out = tmp_path / "teacher"
    assert faceapi.main(["--tarball", str(tarball), "--out", str(out)]) == 2
    assert "differs from the recorded" in capsys.readouterr().err
    assert faceapi.main(["--tarball", str(tmp_path / "missing.tgz"), "--out", str(out)]) == 2
    assert "npm pack @vladmandic/face-api@1.7.15" in capsys.readouterr().err
    assert not out.exists()


def test_the_teacher_is_never_built_into_the_package():
    from ferkit.models.folder import ASSETS_DIR

    with pytest.raises(ValueError, match="outside the package"):
        build_faceapi_teacher("unused.tgz", ASSETS_DIR / "faceapi")
    assert not (ASSETS_DIR / "faceapi").exists()


# --- the network, against a NumPy reading of face-api's code -------------------------------


def _same_padding(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """TensorFlow's 'same' padding of NHWC ``x`` (the extra pixel goes after)."""
    pads = []
    for side in x.shape[1:3]:
        total = max((-(-side // stride) - 1) * stride + kernel - side, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, [(0, 0), *pads, (0, 0)])


def _taps(x: np.ndarray, kernel: int, stride: int):
    """Each tap ``(i, j)`` of a ``kernel`` x ``kernel`` window sliding over NHWC ``x``
    with 'same' padding: ``(i, j, the input pixels it sees at every output position)``."""
    padded = _same_padding(x, kernel, stride)
    end = stride * -(-x.shape[1] // stride)
    for i in range(kernel):
        for j in range(kernel):
            yield i, j, padded[:, i : i + end : stride, j : j + end : stride]


def _conv(x: np.ndarray, filters: np.ndarray, stride: int) -> np.ndarray:
    """tf.conv2d(x, filters, stride, 'same') for HWIO ``filters``."""
    return sum(seen @ filters[i, j] for i, j, seen in _taps(x, filters.shape[0], stride))


def _separable(x: np.ndarray, tensors: dict, name: str, stride: int) -> np.ndarray:
    """face-api's depthwiseSeparableConv: depthwise 3x3, pointwise 1x1, plus bias."""
    depthwise = tensors[f"{name}/depthwise_filter"][:, :, :, 0]
    out = sum(seen * depthwise[i, j] for i, j, seen in _taps(x, 3, stride))
    return out @ tensors[f"{name}/pointwise_filter"][0, 0] + tensors[f"{name}/bias"]


def faceapi_reference(tensors: dict, faces: np.ndarray) -> np.ndarray:
    """face-api's expression probabilities, in its own class order, for ``(N, 112, 112,
    3)`` RGB faces in 0..255 (FaceFeatureExtractor.forwardInput, denseBlock4,
    FaceProcessor.runNet, FaceExpressionNet.forwardInput), in float64."""
    relu = lambda value: np.maximum(value, 0.0)  # noqa: E731
    x = (np.asarray(faces, np.float64) - [122.782, 117.001, 104.298]) / 255.0
    for block in range(4):
        prefix = f"dense{block}"
        if block == 0:
            conv0 = _conv(x, tensors[f"{prefix}/conv0/filters"], 2)
            out1 = relu(conv0 + tensors[f"{prefix}/conv0/bias"])
        else:
            out1 = relu(_separable(x, tensors, f"{prefix}/conv0", 2))
        out2 = _separable(out1, tensors, f"{prefix}/conv1", 1)
        out3 = _separable(relu(out1 + out2), tensors, f"{prefix}/conv2", 1)
        out4 = _separable(relu(out1 + out2 + out3), tensors, f"{prefix}/conv3", 1)
        x = relu(out1 + out2 + out3 + out4)
    pooled = x.mean(axis=(1, 2))  # avgPool 7x7, stride 2, valid, on 7x7 maps
    logits = pooled @ tensors["fc/weights"] + tensors["fc/bias"]
    logits -= logits.max(axis=1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def _in_ferkit_order(probabilities: np.ndarray, classes: list[str]) -> np.ndarray:
    order = [list(FACEAPI_TO_FERKIT.values()).index(name) for name in classes]
    return probabilities[:, order]


def _random_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights of face-api's shapes (conv and fc weights scaled to keep the
    activations of order one)."""
    rng = np.random.default_rng(seed)
    tensors = {"dense0/conv0/filters": rng.normal(0, 0.3, (3, 3, 3, 32))}
    tensors["dense0/conv0/bias"] = rng.normal(0, 0.1, 32)
    channels_in = 32
    for block, channels in enumerate((32, 64, 128, 256)):
        for conv in range(4) if block else range(1, 4):
            name = f"dense{block}/conv{conv}"
            width = channels_in if conv == 0 else channels
            tensors[f"{name}/depthwise_filter"] = rng.normal(0, 0.3, (3, 3, width, 1))
            pointwise_scale = 0.5 / np.sqrt(width)
            tensors[f"{name}/pointwise_filter"] = rng.normal(
                0, pointwise_scale, (1, 1, width, channels)
            )
            tensors[f"{name}/bias"] = rng.normal(0, 0.1, channels)
        channels_in = channels
    tensors["fc/weights"] = rng.normal(0, 1.0, (256, 7))
    tensors["fc/bias"] = rng.normal(0, 0.1, 7)
    return {name: value.astype(np.float32) for name, value in tensors.items()}


def test_keras_network_matches_the_numpy_reading_of_faceapi():
    pytest.importorskip("keras")
    from ferkit.calibration import softmax

    tensors = _random_tensors()
    model = faceapi.build_keras_model(tensors)
    faces = np.random.default_rng(1).integers(0, 256, (3, 112, 112, 3)).astype(np.float32)
    classes, _ = faceapi.ferkit_order()
    assert classes == ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    assert model.input_shape == (None, 112, 112, 3) and model.output_shape == (None, 7)
    expected = _in_ferkit_order(faceapi_reference(tensors, faces), classes)
    got = softmax(np.asarray(model.predict_on_batch(faces)), 1.0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert model.count_params() == sum(value.size for value in tensors.values())


def test_network_refuses_a_manifest_of_other_tensors():
    pytest.importorskip("keras")
    tensors = _random_tensors()
    with pytest.raises(ValueError, match="does not use: \\['extra'\\]"):
        faceapi.build_keras_model({**tensors, "extra": np.zeros(1, np.float32)})
    del tensors["fc/bias"]
    with pytest.raises(ValueError, match="no tensor fc/bias"):
        faceapi.build_keras_model(tensors)


# --- the real package: needs the npm tarball -----------------------------------------------


def faceapi_tarball() -> Path:
    """The npm tarball: $FERKIT_FACEAPI_TARBALL, else ~/faceapi/*.tgz; skips without it."""
    given = os.environ.get("FERKIT_FACEAPI_TARBALL")
    found = [Path(given)] if given else sorted((Path.home() / "faceapi").glob("*.tgz"))
    found = [path for path in found if path.is_file()]
    if not found:
        pytest.skip(
            "no face-api tarball: run 'npm pack @vladmandic/face-api@1.7.15' in ~/faceapi or "
            "set FERKIT_FACEAPI_TARBALL"
        )
    return found[0]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return build_faceapi_teacher(faceapi_tarball(), tmp_path_factory.mktemp("faceapi") / "teacher")


@pytest.mark.real_data
@pytest.mark.slow
def test_built_folder_is_a_checked_model_folder(teacher):
    from ferkit.models.folder import verify_checksums

    verify_checksums(teacher)
    assert json.loads((teacher / "labels.json").read_text()) == sorted(FACEAPI_TO_FERKIT.values())
    card = (teacher / "MODEL_CARD.md").read_text()
    assert faceapi.FACEAPI_TARBALL_SHA256 in card and "MIT" in card and "112x112 RGB" in card
    assert "323,687 parameters" in card
    assert (teacher / "LICENSE").read_text().startswith("MIT License")
    source = json.loads((teacher / "source.json").read_text())
    assert source["version"] == "1.7.15" and source["onnx_max_abs_logit_difference"] < 1e-4


@pytest.mark.real_data
@pytest.mark.slow
def test_built_folder_finds_justin_happy_as_faceapi_would(teacher):
    from ferkit.inference.recognizer import EmotionRecognizer
    from ferkit.inference.runtimes import OnnxModel
    from ferkit.release.faceapi import read_tarball

    recogniser = EmotionRecognizer(model=teacher)
    assert isinstance(recogniser.model, OnnxModel)
    assert recogniser.model.image_shape == (112, 112, 3)
    photo = require_shared("samples") / "justin.jpg"
    result = recogniser.predict(photo)
    assert len(result) == 1 and result[0].label == "happy"

    # The ONNX model gives face-api's own probabilities for the same crop.
    tensors, _ = read_tarball(faceapi_tarball())
    from ferkit.images import read_image

    _, _, crops = recogniser.find_faces(read_image(photo))
    expected = _in_ferkit_order(faceapi_reference(tensors, crops), recogniser.classes)
    got = recogniser.model.predict_proba(crops)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.real_data
@pytest.mark.slow
def test_calibration_fits_a_temperature_and_keeps_the_folder_loadable(teacher, drawn, tmp_path):
    import shutil

    from ferkit.data.dataset import PreparedDataset
    from ferkit.models.folder import load_model, verify_checksums
    from ferkit.release.faceapi import calibrate_teacher

    folder = shutil.copytree(teacher, tmp_path / "teacher")  # the module's stays as built
    before = load_model(folder)
    record = calibrate_teacher(folder, drawn, "val")
    verify_checksums(folder)  # calibration.json and the card changed, their sums too
    after = load_model(folder)
    assert after.temperature == pytest.approx(record["temperature"]) != 1.0
    assert record["split"] == "val" and record["faces"] == len(PreparedDataset(drawn).split("val"))
    assert (
        f"temperature {record['temperature']:.3f}, fitted on"
        in (folder / "MODEL_CARD.md").read_text()
    )
    faces = np.random.default_rng(0).integers(0, 256, (8, 112, 112, 3)).astype(np.uint8)
    np.testing.assert_array_equal(  # the confidence changes, never the prediction
        before.predict_proba(faces).argmax(axis=1), after.predict_proba(faces).argmax(axis=1)
    )
    with pytest.raises(ValueError, match="no split 'nope'"):
        calibrate_teacher(folder, drawn, "nope")
