"""A model folder that is wrong says so at load, in one line: labels that disagree with
the outputs, missing checksums (a warning), a checksum failure on the user's own folder
(no advice to reinstall ferkit), a corrupt model file (no traceback)."""

import json
import shutil
import subprocess
import sys

import pytest

from ferkit.inference.runtimes import load_classifier
from ferkit.models.folder import (
    DEFAULT_MODEL_DIR,
    ChecksumError,
    ModelLoadError,
    bundled_model_available,
)

pytestmark = pytest.mark.skipif(not bundled_model_available(), reason="no bundled model")


@pytest.fixture
def copy(tmp_path):
    """The bundled model's ONNX files and metadata, as a user's own model folder."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("model.onnx", "labels.json", "calibration.json", "checksums.json"):
        shutil.copy(DEFAULT_MODEL_DIR / name, folder / name)
    listed = json.loads((folder / "checksums.json").read_text())
    kept = {name: digest for name, digest in listed.items() if (folder / name).exists()}
    (folder / "checksums.json").write_text(json.dumps(kept))
    return folder


def test_labels_that_disagree_with_the_outputs_fail_at_load(copy):
    (copy / "checksums.json").unlink()
    (copy / "labels.json").write_text(json.dumps(["happy", "sad"]))
    with pytest.raises(ModelLoadError, match=r"7 outputs but labels.json .* names 2 classes"):
        load_classifier(copy, "onnx")


def test_missing_checksums_load_with_a_warning(copy, caplog):
    (copy / "checksums.json").unlink()
    with caplog.at_level("WARNING", logger="ferkit"):
        model = load_classifier(copy, "onnx")
    assert model.classes == json.loads((DEFAULT_MODEL_DIR / "labels.json").read_text())
    assert "unverified" in caplog.text


def test_checksum_failure_on_a_users_folder_does_not_advise_reinstalling(copy):
    calibration = json.loads((copy / "calibration.json").read_text())
    calibration["temperature"] = 2.0
    (copy / "calibration.json").write_text(json.dumps(calibration))
    with pytest.raises(ChecksumError) as caught:
        load_classifier(copy, "onnx")
    assert "reinstall ferkit" not in str(caught.value)
    assert "restore the original file" in str(caught.value)


def test_corrupt_model_file_is_a_one_line_error(copy, tmp_path):
    (copy / "checksums.json").unlink()
    data = (copy / "model.onnx").read_bytes()
    (copy / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelLoadError, match="not a loadable ONNX model"):
        load_classifier(copy, "onnx")
    photo = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (64, 64)).save(photo)
    run = subprocess.run(
        [sys.executable, "-m", "ferkit", "predict", str(photo), "--model", str(copy)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert "unverified" in lines[0]  # the folder has no checksums.json: said first
    (error,) = lines[1:]  # then one line says what is wrong
    assert "not a loadable ONNX model" in error and error.startswith("ferkit predict: error:")


def test_bad_metadata_names_the_file(copy):
    (copy / "checksums.json").unlink()
    (copy / "calibration.json").write_text('{"temperature": "hot"}')
    with pytest.raises(ModelLoadError, match=r"calibration.json: bad calibration"):
        load_classifier(copy, "onnx")
    (copy / "calibration.json").unlink()
    (copy / "labels.json").write_text("not json")
    with pytest.raises(ModelLoadError, match=r"labels.json: bad class list"):
        load_classifier(copy, "onnx")


def test_a_file_that_is_no_model_is_named(tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff")
    with pytest.raises(ValueError, match=r"photo.jpg: not a model file"):
        load_classifier(photo)
