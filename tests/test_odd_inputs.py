"""One odd input never stops a batch: a folder mixing real photos with every kind of odd
file runs through ``predict`` and ``prepare`` with the good ones classified, each odd one
listed with its reason, exit status 3, and memory bounded; the Python batch API records
per-item errors; bad arguments say what to pass."""

import csv
import functools
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import require_shared
from PIL import Image

from ferkit.cli import main

pytestmark = pytest.mark.real_data

LATIN1_NAME = os.fsdecode(b"caf\xe9.jpg")  # not valid UTF-8


def _png(path, array):
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Good photos and 48x48 crops beside every odd input a user has reported."""
    samples = require_shared("samples")
    crops = require_shared("datasets", "fer2013", "val", "happy")
    root = tmp_path_factory.mktemp("mixed")
    photos = root / "photos" / "happy"  # a class folder, so prepare reads it too
    photos.mkdir(parents=True)
    shutil.copy(samples / "justin.jpg", photos / "justin.jpg")
    shutil.copy(samples / "couple.jpg", photos / "couple.jpg")
    shutil.copy(samples / "justin.jpg", photos / LATIN1_NAME)
    for crop in sorted(crops.iterdir())[:2]:
        shutil.copy(crop, photos / crop.name)
    _png(photos / "line.png", np.full((1, 3000, 3), 128, np.uint8))  # 3000x1
    _png(photos / "column.png", np.full((3000, 1), 128, np.uint8))  # 1x3000
    huge = Image.new("L", (20000, 20000))  # 400 megapixels, a few hundred KB as PNG
    huge.save(photos / "huge.png")
    del huge
    (photos / "truncated.jpg").write_bytes((samples / "justin.jpg").read_bytes()[:3000])
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "page.jpg").write_text("<html>not an image</html>")
    shutil.copy(samples / "test.mp4", photos / os.fsdecode(b"clip\xff.mp4"))  # OpenCV-hostile
    (photos / "gone.jpg").symlink_to(root / "nowhere.jpg")  # a dangling link
    return root / "photos", photos


def _peak_mb(stderr: str) -> float:
    """The run's peak memory bound: its own peak plus its workers' (at most two here)."""
    line = next(line for line in stderr.splitlines() if line.startswith("peak "))
    own, worker = (float(value) for value in line.split()[1:])
    return own + 2 * worker


# Runs the CLI and prints its peak memory, measured by the same function the CLI reports.
RUN_MEASURED = (
    "import sys; from ferkit.cli import main; from ferkit.outputs import peak_memory_mb; "
    "code = main(sys.argv[1:]); peak = peak_memory_mb(); "
    "print('peak', peak['process'], peak['largest_worker'], file=sys.stderr); sys.exit(code)"
)


def test_predict_completes_a_mixed_folder(mixed, tmp_path):
    root, _ = mixed
    out = tmp_path / "out"
    command = [sys.executable, "-c", RUN_MEASURED, "predict", str(root), "--out", str(out)]
    run = subprocess.run([*command, "--quiet"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 3, run.stderr  # completed, with failures listed
    assert "peak memory" in run.stdout
    assert _peak_mb(run.stderr) < 1500
    summary = json.loads((out / "summary.json").read_text())
    by_name = {os.path.basename(entry["source"]): entry for entry in summary["sources"]}
    assert by_name["justin.jpg"]["labels"] == ["happy"]
    assert len(by_name["couple.jpg"]["labels"]) == 2
    crops = [e for name, e in by_name.items() if name.startswith("PublicTest")]
    assert len(crops) == 2 and all(e["face_mode"] == "crop" and e["faces"] == 1 for e in crops)
    latin1 = by_name["caf\\xe9.jpg"]
    assert latin1["labels"] == ["happy"] and latin1["source_bytes_hex"].endswith("636166e92e6a7067")
    for name in ("line.png", "column.png"):
        assert by_name[name]["status"] == "no_face"
    assert "pixels" in by_name["huge.png"]["reason"]
    for name in ("huge.png", "truncated.jpg", "empty.jpg", "page.jpg", "gone.jpg"):
        assert by_name[name]["status"] == "error" and by_name[name]["reason"], name
    assert "symbolic link" in by_name["gone.jpg"]["reason"]
    video = by_name["clip\\xff.mp4"]
    assert video["status"] == "ok" and video["frames"] == 115
    assert video["source_bytes_hex"].endswith(b"/clip\xff.mp4".hex())  # videos too
    assert summary["failed"] == 5 and summary["exit_status"] == 3
    with open(out / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert any(row["source"].endswith("caf\\xe9.jpg") for row in rows)


def test_prepare_completes_a_mixed_folder(mixed, tmp_path):
    root, _ = mixed
    out = tmp_path / "prepared"
    command = [sys.executable, "-c", RUN_MEASURED, "prepare", str(root), "--out", str(out)]
    run = subprocess.run(
        [*command, "--detector", "blazeface-full", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 3, run.stderr
    assert "peak memory" in run.stdout
    assert _peak_mb(run.stderr) < 1500
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["splits"]) == ["train"]  # too few images for val/test, as warned
    assert manifest["splits"]["train"]["count"] == 5  # justin, its Latin-1 copy, couple, 2 crops
    assert any("val split is empty" in warning for warning in manifest["warnings"])
    skipped = {os.path.basename(entry["path"]): entry for entry in manifest["skipped"]}
    assert skipped["huge.png"]["kind"] == "too_large"
    assert skipped["line.png"]["kind"] == "no_face" and skipped["column.png"]["kind"] == "no_face"
    for name in ("truncated.jpg", "empty.jpg"):
        assert skipped[name]["kind"] == "unreadable"
    assert skipped["page.jpg"]["kind"] == "not_image"
    assert skipped["gone.jpg"]["reason"] == "broken or looping symbolic link"
    assert "happy/caf\\xe9.jpg" in np.load(out / "train.npz")["paths"].tolist()


@pytest.fixture(scope="module")
def recognizer():
    from ferkit import EmotionRecognizer

    return EmotionRecognizer()


def test_predict_batch_records_errors_and_keeps_the_rest(recognizer):
    samples = require_shared("samples")
    results = recognizer.predict_batch(
        [
            samples / "justin.jpg",
            samples / "missing.jpg",
            np.zeros((0, 0, 3), np.uint8),
            42,
            np.zeros((4, 3000, 3), np.uint8),
            samples / "no-faces.jpg",
        ]
    )
    assert [r.ok for r in results] == [True, False, False, False, True, True]
    assert results[0][0].label == "happy"
    assert "no such file" in results[1].error
    assert "empty" in results[2].error
    assert "not int" in results[3].error
    assert list(results[4]) == [] and list(results[5]) == []


def test_bad_arguments_say_what_to_pass(recognizer):
    with pytest.raises(ValueError, match=r"empty .* at least 1x1"):
        recognizer.predict(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(TypeError, match="list of images"):
        recognizer.predict_batch("photo.jpg")
    with pytest.raises(TypeError, match="uint8 NumPy array"):
        recognizer.predict([[1, 2]])
    with pytest.raises(ValueError, match="astype"):
        recognizer.predict(np.zeros((5, 5, 3), np.float32))
    with pytest.raises(ValueError, match="errors must be one of record, raise"):
        recognizer.predict_batch([], errors="ignore")
    with pytest.raises(ValueError, match="faces must be one of"):
        recognizer.predict_batch([], faces="magic")
    with pytest.raises(FileNotFoundError):
        recognizer.predict("missing.jpg")


@pytest.mark.parametrize(
    ("crops", "match"),
    [
        (np.full((2, 48, 48, 1), np.nan, np.float32), r"not faces of NaN or infinite pixels"),
        (
            np.zeros((2, 64, 64, 1), np.uint8),
            r"takes \(N, 48, 48, 1\) uint8 .* not faces of 64x64x1",
        ),
        (np.zeros((2, 48, 48, 3), np.uint8), r"faces of 48x48x3; .*resize_face\(face, 48, 1\)"),
        (np.zeros((2, 4, 64, 64, 1), np.uint8), r"faces of 64x64x1"),  # test-time views
        (np.zeros((48, 48, 1), np.uint8), r"without its batch axis; pass face\[None\]"),
        (np.zeros((2, 48, 48), np.uint8), r"not an array of shape \(2, 48, 48\)"),
        (np.zeros((2, 48, 48, 1), bool), r"not faces of bool values; pass pixels 0\.\.255"),
    ],
)
def test_classify_faces_says_what_to_pass(recognizer, crops, match):
    with pytest.raises(ValueError, match=match):
        recognizer.classify_faces(crops)


def test_classify_faces_takes_crops_of_the_model_shape(recognizer):
    crops = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 1), dtype=np.uint8)
    probabilities = recognizer.classify_faces(crops)
    assert probabilities.shape == (3, len(recognizer.classes))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    as_float = recognizer.classify_faces(crops.astype(np.float32))
    np.testing.assert_allclose(as_float, probabilities, rtol=1e-5)


def test_face_crops_auto_crop_and_detect(recognizer, tmp_path, capsys):
    crops = sorted(require_shared("datasets", "fer2013", "val", "happy").iterdir())[:12]
    auto = recognizer.predict_batch(crops)
    assert all(len(r) == 1 and r.face_mode == "crop" for r in auto)
    assert np.mean([r[0].label == "happy" for r in auto]) > 0.5
    assert auto[0][0].box == (0, 0, 48, 48) and auto[0][0].detector_confidence is None
    detected = recognizer.predict_batch(crops, faces="detect")
    assert all(r.face_mode == "detect" and len(r) <= 1 for r in detected)
    # a run where most images have no face found suggests --faces crop
    folder = tmp_path / "photos"
    folder.mkdir()
    samples = require_shared("samples")
    for index in range(3):
        shutil.copy(samples / "no-faces.jpg", folder / f"{index}.jpg")
    shutil.copy(samples / "justin.jpg", folder / "justin.jpg")
    assert main(["predict", str(folder), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert "no face was found in 3 of 4 images" in capsys.readouterr().out
    assert "--faces crop" in json.loads((tmp_path / "o" / "summary.json").read_text())["hints"][0]


def test_large_jpeg_is_decoded_reduced_and_others_refused():
    from ferkit.images import ImageReadError, decode_image

    buffer = io.BytesIO()
    Image.new("RGB", (8000, 6000), (90, 60, 30)).save(buffer, "JPEG")
    array = decode_image(buffer.getvalue(), max_pixels=10_000_000)
    assert array.shape[0] * array.shape[1] <= 10_000_000 and array.shape[1] == 2000
    buffer = io.BytesIO()
    Image.new("RGB", (5000, 3000)).save(buffer, "PNG")
    with pytest.raises(ImageReadError, match=r"pixel budget .* --max-pixels") as caught:
        decode_image(buffer.getvalue(), max_pixels=10_000_000)
    assert caught.value.kind == "too_large"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_urls_are_downloaded_or_explained(tmp_path):
    samples = require_shared("samples")
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(samples / "justin.jpg", served / "justin.jpg")
    handler = functools.partial(_Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        out = tmp_path / "out"
        argv = ["predict", f"{base}/justin.jpg", f"{base}/gone.jpg", "s3://bucket/x.jpg"]
        assert main([*argv, "--out", str(out), "--quiet"]) == 3
    finally:
        server.shutdown()
    sources = json.loads((out / "summary.json").read_text())["sources"]
    assert sources[0]["labels"] == ["happy"]
    assert "HTTP 404" in sources[1]["reason"]
    assert "s3:// URLs are not read" in sources[2]["reason"]


@pytest.mark.parametrize(
    ("option", "value"),
    [("--smoothing", "nan"), ("--smoothing", "-1"), ("--max-pixels", "0"),
     ("--max-frames", "0"), ("--every", "0"), ("--camera", "-1")],
)  # fmt: skip
def test_bad_option_values_are_refused_up_front(option, value, tmp_path, capsys):
    photo = require_shared("samples") / "justin.jpg"
    out = tmp_path / "out"
    assert main(["predict", str(photo), option, value, "--out", str(out), "--quiet"]) == 2
    assert "must be" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_ctrl_c_in_a_video_keeps_what_was_done_and_says_so(recognizer, tmp_path):
    from ferkit.inference.predict import predict

    samples = require_shared("samples")
    calls = {"n": 0}
    model = recognizer.frame_model  # the classifier of video frames
    classify = model.predict_proba

    def interrupted_after_ten(faces, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        return classify(faces, *args, **kwargs)

    model.predict_proba = interrupted_after_ten
    try:
        out = tmp_path / "out"
        summary = predict(
            [str(samples / "woman2.mp4"), str(samples / "justin.jpg")], out,
            recognizer=recognizer, progress=False,
        )  # fmt: skip
    finally:
        model.predict_proba = classify
    assert summary.exit_status() == 130
    video, image = json.loads((out / "summary.json").read_text())["sources"]
    assert video["status"] == "ok" and "stopped by Ctrl-C after" in video["reason"]
    assert "of 464 frames" in video["reason"]
    assert image["status"] == "skipped"
    with open(out / "predictions.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["source"].endswith("woman2.mp4")]
    assert len(rows) == video["faces"] == 10


def test_images_in_batches_match_one_by_one_and_a_failed_batch_loses_only_itself(
    recognizer, tmp_path, monkeypatch
):
    """Runs of image files are classified in batches: the records are those of
    recognizer.predict on each image; a batch whose classification fails is recorded
    image by image with the reason, and the other batches complete."""
    import ferkit.inference.predict as predict_module
    from ferkit.inference.predict import predict

    val = require_shared("datasets", "fer2013", "val")
    crops = sorted(val.glob("happy/*.jpg"))[:40] + sorted(val.glob("sad/*.jpg"))[:40]
    photo = require_shared("samples", "couple.jpg")
    inputs = [str(p) for p in crops[:30]] + [str(photo)] + [str(p) for p in crops[30:]]
    monkeypatch.setattr(predict_module, "IMAGE_BATCH", 16)
    summary = predict(inputs, tmp_path / "all", progress=False, recognizer=recognizer)
    assert summary.counts() == {"ok": 81} and summary.faces == 82
    with open(tmp_path / "all" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["source"] for r in rows][:31] == [*inputs[:30], str(photo)]
    for given in (inputs[0], str(photo), inputs[-1]):
        expected = recognizer.predict(given)
        mine = [r for r in rows if r["source"] == given]
        assert [r["label"] for r in mine] == [face.label for face in expected]
        for row, face in zip(mine, expected, strict=True):
            for name, p in face.probabilities.items():
                assert abs(float(row[f"p_{name}"]) - p) <= 5e-5 + 1e-6

    calls = {"n": 0}
    classify = recognizer.classify_faces

    def second_batch_fails(faces, model=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("out of memory in the runtime")
        return classify(faces, model)

    monkeypatch.setattr(recognizer, "classify_faces", second_batch_fails)
    summary = predict(inputs, tmp_path / "one_failed", progress=False, recognizer=recognizer)
    failed = [e for e in summary.sources if e["status"] == "error"]
    assert len(failed) == 16 and summary.counts()["ok"] == 81 - 16
    assert all("RuntimeError: out of memory in the runtime" in e["reason"] for e in failed)
    assert [e["source"] for e in failed] == inputs[16:32]
    assert summary.exit_status() == 3


def test_a_failure_after_classification_loses_only_that_image(recognizer, tmp_path, monkeypatch):
    """Drawing one annotated photo fails: that photo is recorded with the reason, the
    others keep their records and drawings."""
    import ferkit.inference.predict as predict_module
    from ferkit.inference.predict import predict

    samples = require_shared("samples")
    draw = predict_module._annotate_image

    def fails_on_the_couple(source, *args, **kwargs):
        if source.path.name == "couple.jpg":
            raise OSError(36, "File name too long")
        return draw(source, *args, **kwargs)

    monkeypatch.setattr(predict_module, "_annotate_image", fails_on_the_couple)
    inputs = [str(samples / name) for name in ("justin.jpg", "couple.jpg", "no-faces.jpg")]
    summary = predict(
        inputs, tmp_path / "out", annotate=True, progress=False, recognizer=recognizer
    )
    assert [e["status"] for e in summary.sources] == ["ok", "error", "no_face"]
    assert "File name too long" in summary.sources[1]["reason"]
    assert (tmp_path / "out" / summary.sources[0]["annotated"]).is_file()


def test_a_video_stopped_by_its_consumer_leaves_no_thread_and_releases_it(recognizer, tmp_path):
    """An error raised while the frames are read (here by the progress callback) ends
    the video as that input's error; the decoding and detection threads are stopped."""
    import threading

    from ferkit.inference.predict import predict

    video = require_shared("samples", "woman2.mp4")

    def stops(name, done, total):
        if done == 40:
            raise RuntimeError("the server is stopping")

    summary = predict([str(video)], tmp_path / "out", on_frame=stops, progress=False,
                      recognizer=recognizer)  # fmt: skip
    (entry,) = summary.sources
    assert entry["status"] == "error" and "the server is stopping" in entry["reason"]
    assert not [t.name for t in threading.enumerate() if t.name.startswith("ferkit-video")]
