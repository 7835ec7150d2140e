"""The scripts in examples/ run as a user runs them (a subprocess of this Python) and do
what they say: each is checked on what it prints and writes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import SHARED, require_shared

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(
    name: str, *args: str, cwd: Path, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``examples/NAME`` with ``args`` in ``cwd``; return the finished process."""
    env = {**os.environ, "FERKIT_SHARED": str(SHARED), "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert process.returncode == 0, process.stdout + process.stderr
    return process


def number_after(label: str, text: str) -> float:
    match = re.search(rf"{re.escape(label)}:? ([0-9.e+-]+)", text)
    assert match, f"no '{label}' in:\n{text}"
    return float(match.group(1))


def test_every_example_has_a_header_and_is_tested():
    scripts = sorted(path.name for path in EXAMPLES.glob("*.py"))
    assert scripts == [
        "evaluate_model.py",
        "export_onnx.py",
        "predict_photos.py",
        "predict_video.py",
        "serve_client.py",
        "train_small_model.py",
    ]
    source = Path(__file__).read_text()
    for name in scripts:
        header = (EXAMPLES / name).read_text().split('"""')[1]
        assert "Title: " in header and "Description: " in header, name
        assert f'"{name}"' in source, f"{name} has no test"


@pytest.mark.parametrize("name", sorted(path.name for path in EXAMPLES.glob("*.py")))
def test_help_gives_the_whole_description(name, tmp_path):
    header = (EXAMPLES / name).read_text().split('"""')[1]
    field = re.search(r"^Description: (.*?)\n(?=\S)", header, re.M | re.S).group(1)
    description = " ".join(field.split())
    assert description.endswith("."), f"{name}: the Description field is not a sentence"
    shown = run_example(name, "--help", cwd=tmp_path).stdout
    assert description in " ".join(shown.split()), shown


def test_predict_photos_reads_the_shipped_samples(tmp_path):
    missing = tmp_path / "missing.jpg"
    samples = EXAMPLES.parent / "src" / "ferkit" / "assets" / "samples"
    photos = [str(samples / "justin.jpg"), str(missing), str(samples / "selfie-many-people.jpg")]
    process = run_example("predict_photos.py", *photos, "--out", "table", cwd=tmp_path)
    assert "justin.jpg: 1 face(s)" in process.stdout
    assert "missing.jpg: no such file" in process.stdout  # recorded; the others still run
    table = pd.read_csv(tmp_path / "table" / "predictions.csv")
    table["source"] = table["source"].map(lambda source: Path(source).name)
    justin = table[table["source"] == "justin.jpg"]
    assert len(justin) == 1 and justin["label"].iloc[0] == "happy"
    assert justin["p_happy"].iloc[0] > 0.5
    selfie = table[table["source"] == "selfie-many-people.jpg"]
    assert len(selfie) >= 4 and (selfie["label"] == "happy").all()
    assert table.loc[table["source"] == "missing.jpg", "error"].notna().all()
    # The printed table has the same faces as the file.
    assert process.stdout.count("selfie-many-people.jpg ") == len(selfie)


def test_predict_photos_without_arguments_uses_the_samples(tmp_path):
    process = run_example("predict_photos.py", cwd=tmp_path)
    assert "justin.jpg: 1 face(s)" in process.stdout
    assert "selfie-many-people.jpg: " in process.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written without --out


@pytest.mark.real_data
def test_predict_video_shares_of_time_on_the_shared_sample(tmp_path):
    video = require_shared("samples", "woman2.mp4")
    process = run_example(
        "predict_video.py", str(video), "--max-frames", "120", "--out", "out", cwd=tmp_path
    )
    assert "woman2.mp4: 120 frames processed" in process.stdout
    assert "120 with a face, 1 track(s)" in process.stdout
    shares = re.search(r"share of time: (.*)", process.stdout).group(1)
    percents = {label: int(value) for label, value in re.findall(r"(\w+) (\d+)%", shares)}
    assert next(iter(percents)) == "happy"  # the most frequent first
    assert abs(sum(percents.values()) - 100) <= len(percents)  # rounding
    rows = pd.read_csv(tmp_path / "out" / "frames.csv")
    assert len(rows) == 120 and set(rows["track_id"]) == {1}
    assert {"time_s", "raw_label", "p_happy", "raw_p_happy"} <= set(rows.columns)
    assert round(100 * (rows["label"] == "happy").mean()) == percents["happy"]


def test_predict_video_names_a_missing_file(tmp_path):
    process = run_example("predict_video.py", "nope.mp4", cwd=tmp_path, check=False)
    assert process.returncode != 0
    assert "nope.mp4: no such video" in process.stderr


def test_evaluate_model_on_drawn_faces(tmp_path):
    process = run_example("evaluate_model.py", "--per-class", "8", "--out", "eval", cwd=tmp_path)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert number_after("accuracy", process.stdout) == pytest.approx(metrics["accuracy"], abs=1e-4)
    assert number_after("macro-F1", process.stdout) == pytest.approx(metrics["macro_f1"], abs=1e-4)
    assert metrics["classes"]["covered"] == ["angry", "happy", "sad", "surprise"]
    assert metrics["model"]["runtime"] == "TFLiteModel"  # the bundled model's default: LiteRT
    assert (tmp_path / "eval" / "report.html").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["eval"]


@pytest.mark.real_data
@pytest.mark.slow
def test_evaluate_model_reproduces_the_bundled_models_val_accuracy(tmp_path):
    val = require_shared("datasets", "fer2013", "val")
    process = run_example("evaluate_model.py", "--data", str(val), cwd=tmp_path)
    assert "split all" in process.stdout  # a folder without splits is scored whole
    from ferkit.models.folder import DEFAULT_MODEL_DIR, RUNTIME_FILES

    metrics = json.loads((DEFAULT_MODEL_DIR / "metrics.json").read_text())
    default_file = RUNTIME_FILES[metrics["default_runtime"]]  # what evaluate runs
    stated = metrics["runtimes"][default_file]["val_accuracy"]
    assert number_after("accuracy", process.stdout) == pytest.approx(stated, abs=5e-4)
    assert list(tmp_path.iterdir()) == []  # the evaluation went to a temporary folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """examples/train_small_model.py run once: (its folder, its output)."""
    root = tmp_path_factory.mktemp("train_example")
    process = run_example("train_small_model.py", "--out", "work", cwd=root)
    return root / "work", process.stdout


def test_train_small_model_trains_finishes_and_predicts(trained):
    work, stdout = trained
    run = work / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["finished_early"] == "after epoch 5 of 6"
    assert "finished early: after epoch 5 of 6" in stdout
    for name in ("config.yaml", "labels.json", "history.csv", "state.json", "calibration.json"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "best.keras").is_file()
    assert json.loads((run / "labels.json").read_text()) == ["angry", "happy", "sad", "surprise"]
    assert (work / "prepared" / "manifest.json").is_file()
    # Drawn expressions are easy: five epochs are far above chance (0.25).
    assert number_after("test accuracy", stdout) > 0.6
    assert len(re.findall(r"new \w+ drawing: \w+ \(p=", stdout)) == 4


def test_export_onnx_of_the_bundled_model_agrees_with_keras(tmp_path):
    process = run_example("export_onnx.py", "--out", "onnx", "--faces", "32", cwd=tmp_path)
    assert number_after("max |p_onnx - p_keras| on 32 faces", process.stdout) < 1e-4
    details = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert details["format"] == "onnx" and details["max_abs_logit_difference"] < 1e-4
    assert {"model.onnx", "labels.json", "calibration.json", "checksums.json"} <= {
        path.name for path in (tmp_path / "onnx").iterdir()
    }
    assert re.search(r"justin\.jpg: happy \(p=0\.\d+\)", process.stdout)


def test_export_onnx_of_a_trained_run(trained, tmp_path):
    work, _ = trained
    process = run_example("export_onnx.py", "--model", str(work / "run"), cwd=tmp_path)
    assert number_after("max |p_onnx - p_keras| on 64 faces", process.stdout) < 1e-4
    assert "checkpoints/best.keras" in process.stdout
    assert list(tmp_path.iterdir()) == []  # the export went to a temporary folder


def test_serve_client_talks_to_a_running_server(tmp_path):
    pytest.importorskip("fastapi")
    from ferkit.serve.loadtest import free_port, running_server

    video = require_shared("samples", "test.mp4")
    port = free_port()
    with running_server(port, "--api-key", "example-key-0123"):
        url = f"http://127.0.0.1:{port}"
        result = run_example("serve_client.py", "--url", url, "--api-key", "example-key-0123",
                             "--video", str(video), cwd=tmp_path)  # fmt: skip
        refused = run_example("serve_client.py", "--url", url, cwd=tmp_path, check=False)
    assert "justin.jpg: 1 face(s) happy" in result.stdout
    assert "test.mp4: 115 frames; time per emotion:" in result.stdout
    assert "30 frames with a face" in result.stdout
    assert refused.returncode == 1 and "401 missing or wrong API key" in refused.stderr
