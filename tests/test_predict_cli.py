"""``ferkit predict`` on the real samples plus bad inputs: records, statuses, annotation."""

import collections
import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import require_shared, write_truncated_video
from PIL import Image

from ferkit.cli import main
from ferkit.inference.sources import expand_inputs

pytestmark = [pytest.mark.real_data, pytest.mark.slow]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The sample photos and woman2.mp4 (by path, not copied), plus a folder of bad files."""
    samples = require_shared("samples")
    bad = tmp_path_factory.mktemp("bad")
    (bad / "notes.txt").write_text("not a picture")
    (bad / "data.bin").write_bytes(b"neither an image nor a video")
    (bad / "renamed.dat").write_bytes((samples / "justin.jpg").read_bytes())
    (bad / "truncated.jpg").write_bytes((samples / "justin.jpg").read_bytes()[:2000])
    (bad / "garbage.mp4").write_bytes(b"\x00" * 4096)
    (bad / ".hidden.jpg").write_bytes(b"ignored")
    return samples, bad


@pytest.fixture(scope="module")
def run_csv(inputs, tmp_path_factory):
    samples, bad = inputs
    out = tmp_path_factory.mktemp("pred")
    argv = [
        "predict",
        str(samples / "*.jpg"),
        str(samples / "woman2.mp4"),
        str(bad),
        str(samples / "missing.png"),
        "--out",
        str(out),
        "--annotate",
        "--quiet",
    ]
    assert main(argv) == 3  # completed; the bad inputs are listed
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return out, rows, json.loads((out / "summary.json").read_text())


def _rows(rows, name):
    return [row for row in rows if row["source"].endswith(name)]


def test_photos(run_csv):
    _, rows, _ = run_csv
    (justin,) = _rows(rows, "justin.jpg")
    assert justin["status"] == "ok" and justin["label"] == "happy"
    assert len(_rows(rows, "couple.jpg")) == 2
    (none,) = _rows(rows, "no-faces.jpg")
    assert none["status"] == "no_face" and none["label"] == ""


def test_bad_inputs_recorded_with_reasons(run_csv):
    _, rows, summary = run_csv
    reasons = {
        row["source"].rsplit("/", 1)[-1]: row["reason"] for row in rows if row["status"] == "error"
    }
    assert set(reasons) == {"data.bin", "truncated.jpg", "garbage.mp4", "missing.png"}
    assert "not an image or video" in reasons["data.bin"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "not a readable video" in reasons["garbage.mp4"]
    assert "no such file" in reasons["missing.png"]
    # 3 photos, a renamed photo (found by its content) and the video; a text file in a
    # folder is plainly no image: skipped and counted, not a failure.
    assert summary["counts"] == {"ok": 5, "no_face": 1, "error": 4, "skipped": 1}
    (skipped,) = [row for row in rows if row["status"] == "skipped"]
    assert skipped["source"].endswith("notes.txt") and "a .txt file" in skipped["reason"]
    (renamed,) = _rows(rows, "renamed.dat")
    assert renamed["status"] == "ok" and renamed["label"] == "happy"
    assert not any("hidden" in source["source"] for source in summary["sources"])


def test_video_records(run_csv):
    _, rows, summary = run_csv
    video = _rows(rows, "woman2.mp4")
    assert len(video) >= 0.95 * 464
    assert {row["track_id"] for row in video} == {"1"}
    frames = [int(row["frame"]) for row in video]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)
    assert float(video[30]["time_s"]) == pytest.approx(int(video[30]["frame"]) / 29.97, abs=1e-3)
    for row in video[:5]:
        smoothed = sum(float(v) for k, v in row.items() if k.startswith("p_"))
        raw = sum(float(v) for k, v in row.items() if k.startswith("raw_p_"))
        assert smoothed == pytest.approx(1, abs=1e-3) and raw == pytest.approx(1, abs=1e-3)
    (entry,) = [s for s in summary["sources"] if s["source"].endswith("woman2.mp4")]
    assert entry["frames"] == 464 and entry["tracks"] == 1
    assert sum(entry["share_of_time"].values()) == pytest.approx(1, abs=1e-3)


def test_annotated_outputs_match_inputs(run_csv, inputs):
    import cv2

    out, _, _ = run_csv
    samples, _ = inputs
    from ferkit.inference.annotate import STILL_IMAGE_MIN_SIDE

    for name in ("justin.jpg", "couple.jpg", "no-faces.jpg"):
        with Image.open(out / "annotated" / name) as drawn, Image.open(samples / name) as source:
            # small photos are enlarged so that labels stay legible; the shape is kept
            has_face = name != "no-faces.jpg"  # a photo without faces is not enlarged
            scale = max(1.0, STILL_IMAGE_MIN_SIDE / min(source.size)) if has_face else 1.0
            assert drawn.size == pytest.approx([side * scale for side in source.size], abs=1)
    # WebM (VP8) by default: web browsers play it, as they play the service's.
    capture = cv2.VideoCapture(str(out / "annotated" / "woman2.webm"))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (
        596,
        336,
    )
    assert frames == 464
    with Image.open(out / "annotated" / "woman2_emotions.png") as plot:
        assert plot.size[0] > 400
    # The box is drawn: the annotated photo differs from the source inside the image.
    drawn = np.asarray(Image.open(out / "annotated" / "couple.jpg"), dtype=np.int16)
    original = np.asarray(Image.open(samples / "couple.jpg").convert("RGB"), dtype=np.int16)
    assert np.abs(drawn - original).max() > 100


def test_api_and_cli_agree(run_csv, inputs):
    from ferkit import EmotionRecognizer

    _, rows, _ = run_csv
    samples, _ = inputs
    recognizer = EmotionRecognizer()
    for name in ("justin.jpg", "couple.jpg"):
        api = recognizer.predict(samples / name)
        cli = _rows(rows, name)
        assert [face.label for face in api] == [row["label"] for row in cli]
        for face, row in zip(api, cli, strict=True):
            assert [int(row[k]) for k in ("x", "y", "width", "height")] == list(face.box)
            assert float(row["p_happy"]) == pytest.approx(face.probabilities["happy"], abs=1e-4)
    api_video = [
        f for f in recognizer.predict_video(samples / "woman2.mp4", max_frames=50) if f.faces
    ]
    cli_video = _rows(rows, "woman2.mp4")[: len(api_video)]
    assert [f.faces[0].label for f in api_video] == [row["label"] for row in cli_video]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_json_formats_parse_back(fmt, inputs, tmp_path):
    samples, _ = inputs
    out = tmp_path / fmt
    argv = ["predict", str(samples / "justin.jpg"), str(samples / "no-faces.jpg")]
    assert main([*argv, "--out", str(out), "--format", fmt, "--quiet"]) == 0
    text = (out / f"predictions.{fmt}").read_text()
    records = (
        json.loads(text) if fmt == "json" else [json.loads(line) for line in text.splitlines()]
    )
    assert [r["status"] for r in records] == ["ok", "no_face"]
    assert records[0]["label"] == "happy" and records[0]["p_happy"] > 0.5


def test_missing_camera_is_a_clear_error(tmp_path, capsys):
    assert main(["predict", "--camera", "9", "--out", str(tmp_path / "cam")]) == 2
    assert "camera 9 could not be opened" in capsys.readouterr().err


def test_failed_inputs_exit_3(tmp_path, capsys):
    assert (
        main(["predict", str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "o"), "--quiet"]) == 3
    )
    assert "no such file or folder" in capsys.readouterr().out


def test_expand_inputs_folders_and_globs(tmp_path, inputs):
    samples, _ = inputs
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    shutil.copy(samples / "justin.jpg", nested / "x.JPG")
    (tmp_path / "a" / "clip.MOV").write_bytes(b"")
    found = expand_inputs(
        [str(tmp_path / "a"), str(tmp_path / "**" / "*.JPG"), str(tmp_path / "z*")]
    )
    assert [(s.kind, s.error) for s in found] == [
        ("image", None),
        ("video", None),
        ("image", None),
        ("unknown", "the pattern matched no file"),
    ]


def test_a_text_manifest_line_that_is_not_utf8_is_one_bad_entry(tmp_path):
    Image.new("L", (48, 48), 128).save(tmp_path / "ok.png")
    latin1 = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.png")  # from an old system
    Image.new("L", (48, 48), 90).save(latin1)
    manifest = tmp_path / "list.txt"
    manifest.write_bytes(b"\xef\xbb\xbfok.png\r\ncaf\xe9.png\n# note\ngone-\xff.png\n")
    found = expand_inputs([str(manifest)])
    assert [(s.kind, s.error) for s in found[:2]] == [("image", None), ("image", None)]
    assert found[1].name.endswith("caf\\xe9.png") and found[1].path == Path(latin1)
    assert found[2].kind == "unknown" and found[2].name.endswith("gone-\\xff.png")
    assert "not UTF-8" in found[2].error and "save the manifest as UTF-8" in found[2].error
    assert all(source.listed for source in found)


def test_csv_manifests_with_and_without_a_header_row(tmp_path):
    from ferkit.inference.sources import read_manifest

    named = tmp_path / "named.csv"  # BOM, the path in a named column that is not first
    named.write_bytes(b'\xef\xbb\xbfid,Path\r\n1,a.jpg\r\n2,"b, c.jpg"\r\n3,\r\n')
    assert read_manifest(named) == [str(tmp_path / "a.jpg"), str(tmp_path / "b, c.jpg")]
    bare = tmp_path / "bare.csv"  # no header: the first row is an entry
    bare.write_text("x/a.jpg,1\n/abs/b.png,2\n")
    assert read_manifest(bare) == [str(tmp_path / "x" / "a.jpg"), "/abs/b.png"]
    other = tmp_path / "other.csv"  # a header of other names: its first column is read
    other.write_text("image,label\nc.jpg,happy\n")
    assert read_manifest(other) == [str(tmp_path / "c.jpg")]
    mac = tmp_path / "mac.csv"  # Excel for Mac: bare carriage returns
    mac.write_bytes(b'path\rd.jpg\r"e\rf.jpg"\r')
    assert read_manifest(mac) == [str(tmp_path / "d.jpg"), str(tmp_path / "e\rf.jpg")]
    (tmp_path / "none.csv").write_text("\n\n")
    with pytest.raises(ValueError, match="has no column"):
        read_manifest(tmp_path / "none.csv")
    (tmp_path / "open.csv").write_text('path\n"/a.jpg\n/b.jpg\n')  # a quote never closed
    with pytest.raises(ValueError, match="not a well-formed CSV file"):
        read_manifest(tmp_path / "open.csv")
    found = expand_inputs([str(tmp_path / "open.csv"), str(named)])  # one bad entry, not fatal
    assert found[0].kind == "unknown" and "well-formed" in found[0].error
    assert [Path(s.name).name for s in found[1:]] == ["a.jpg", "b, c.jpg"]


class _StandInCapture:
    """One capture of :class:`StandInCameras`: forwards to a real ``cv2.VideoCapture``
    until released; a refused one (busy device) is never opened."""

    def __init__(self, key, inner):
        self.key, self.inner, self.releases = key, inner, 0

    @property
    def holding(self):
        """Opened and not yet released: the device is held."""
        return self.inner is not None and self.releases == 0 and self.inner.isOpened()

    def isOpened(self):
        return self.holding

    def read(self):
        return self.inner.read() if self.holding else (False, None)

    def grab(self):
        return self.inner.grab() if self.holding else False

    def get(self, prop):
        return self.inner.get(prop) if self.holding else 0.0

    def release(self):
        self.releases += 1
        if self.inner is not None:
            self.inner.release()


class StandInCameras:
    """``cv2.VideoCapture`` for a machine without a webcam: camera index 0 is served by
    a video file. Like a real webcam, the device takes one capture at a time: opening it
    again while a capture holds it gives a capture that is not opened, as a busy camera
    does (so opening the camera twice fails). Other indexes are no device. Every capture
    of a camera or file is recorded, so tests count opens and releases per source."""

    def __init__(self, real, video):
        self.real, self.video = real, str(video)
        self.captures = []

    def __call__(self, source, *args):
        key = source if isinstance(source, int) else str(source)
        if isinstance(source, int):
            busy = any(c.key == key and c.holding for c in self.captures)
            inner = self.real(self.video) if source == 0 and not busy else None
        else:
            inner = self.real(source, *args)
        capture = _StandInCapture(key, inner)
        self.captures.append(capture)
        return capture

    def opens(self):
        """Captures made per source (a refused camera open counts)."""
        return collections.Counter(c.key for c in self.captures)

    def unreleased(self):
        """Sources of captures that were opened and never released."""
        return [c.key for c in self.captures if c.inner is not None and c.releases == 0]


@pytest.fixture
def cameras(inputs, monkeypatch):
    import cv2

    samples, _ = inputs
    stand_in = StandInCameras(cv2.VideoCapture, samples / "woman2.mp4")
    monkeypatch.setattr(cv2, "VideoCapture", stand_in)
    return stand_in


@pytest.fixture(scope="module")
def recognizer():
    from ferkit import EmotionRecognizer

    return EmotionRecognizer()


def test_the_stand_in_camera_is_busy_while_held(cameras):
    """The stand-in behaves as the bug needs: a second open of a held camera fails."""
    import cv2

    first = cv2.VideoCapture(0)
    assert first.isOpened() and first.read()[0]
    second = cv2.VideoCapture(0)
    assert not second.isOpened() and not second.read()[0]
    assert not cv2.VideoCapture(1).isOpened()  # no such device
    first.release()
    third = cv2.VideoCapture(0)
    assert third.isOpened()
    third.release()
    assert cameras.opens() == {0: 3, 1: 1} and cameras.unreleased() == []


def test_webcam_path_with_a_stand_in_camera(cameras, tmp_path):
    """No camera here: camera index 0 is served by the sample video. predict opens the
    camera once (a second open would fail: the camera is busy) and releases it."""
    out = tmp_path / "cam"
    assert (
        main(["predict", "--camera", "0", "--max-frames", "20", "--out", str(out), "--quiet"]) == 0
    )
    assert cameras.opens() == {0: 1}
    assert cameras.unreleased() == []
    summary = json.loads((out / "summary.json").read_text())
    (entry,) = summary["sources"]
    assert entry["source"] == "camera:0" and entry["kind"] == "camera"
    assert entry["frames"] == 20 and entry["tracks"] == 1
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    times = [float(row["time_s"]) for row in rows]
    assert len(rows) == 20 and times == sorted(times)  # wall-clock time for a camera


def test_camera_and_video_file_are_each_opened_once_and_released(cameras, inputs, tmp_path):
    samples, _ = inputs
    clip = samples / "test.mp4"
    out = tmp_path / "both"
    argv = ["predict", str(clip), "--camera", "0", "--max-frames", "8", "--annotate"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    assert cameras.opens() == {0: 1, str(clip): 1}
    assert cameras.unreleased() == []
    sources = json.loads((out / "summary.json").read_text())["sources"]
    assert sorted(entry["kind"] for entry in sources) == ["camera", "video"]
    assert all(entry["status"] == "ok" and entry["frames"] == 8 for entry in sources)


def test_a_failing_run_still_releases_the_camera(cameras, recognizer, tmp_path, monkeypatch):
    from ferkit.inference.predict import predict

    calls = {"n": 0}
    model = recognizer.frame_model  # the classifier of video frames
    classify = model.predict_proba

    def fails_on_the_third_frame(faces, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("the classifier broke")
        return classify(faces, *args, **kwargs)

    monkeypatch.setattr(model, "predict_proba", fails_on_the_third_frame)
    try:
        summary = predict([], tmp_path / "out", camera=0, max_frames=10,
                          recognizer=recognizer, progress=False)  # fmt: skip
    except RuntimeError:
        summary = None
    if summary is not None:  # recorded as the camera's error, the batch completed
        (entry,) = json.loads((tmp_path / "out" / "summary.json").read_text())["sources"]
        assert entry["status"] == "error" and "the classifier broke" in entry["reason"]
    assert calls["n"] == 3
    assert cameras.opens() == {0: 1} and cameras.unreleased() == []


def test_predict_video_opens_the_camera_once_and_releases_it(cameras, recognizer):
    frames = list(recognizer.predict_video(0, max_frames=5))
    assert [f.index for f in frames] == list(range(5))
    assert cameras.opens() == {0: 1} and cameras.unreleased() == []
    # Stopped early (the stream closed after one frame): released too.
    stream = recognizer.predict_video(0, max_frames=50)
    next(stream)
    with pytest.raises(ValueError, match="camera 0 could not be opened"):
        recognizer.predict_video(0)  # while the first stream holds it, as a real webcam
    stream.close()
    assert cameras.unreleased() == []
    assert len(list(recognizer.predict_video(0, max_frames=2))) == 2  # free again
    assert cameras.unreleased() == []


def test_a_folder_with_only_good_photos_and_a_readme_exits_zero(tmp_path, capsys):
    """A README.md beside the photos is skipped and counted: the run succeeds (exit 0),
    and the report says where the annotated images went."""
    samples = require_shared("samples")
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "justin.jpg").symlink_to(samples / "justin.jpg")
    (folder / "README.md").write_text("# my photos\n")
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--out", str(out), "--annotate", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "1 skipped" in printed and "README.md" in printed
    assert f"annotated images and videos: {out / 'annotated'}" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"ok": 1, "skipped": 1}


def test_a_truncated_video_is_partial_and_exits_3(tmp_path):
    """A video whose stream ends at frame 48 of the 464 its header announces completes
    with a note: status ``partial`` with the frames read and announced, in summary.json
    and in the records, and exit status 3; with ``--max-frames`` too (it was ``ok``, exit
    0, and with ``--max-frames`` the reason vanished)."""
    video = write_truncated_video(require_shared("samples", "woman2.mp4"), tmp_path / "cut.mp4")
    for extra in ([], ["--max-frames", "300"]):
        out = tmp_path / f"out{len(extra)}"
        assert main(["predict", str(video), "--out", str(out), "--quiet", *extra]) == 3
        summary = json.loads((out / "summary.json").read_text())
        (entry,) = summary["sources"]
        assert summary["exit_status"] == 3 and summary["counts"] == {"partial": 1}
        assert entry["status"] == "partial" and entry["frames_announced"] == 464
        assert 40 <= entry["frames"] < 60
        assert f"stream ended at frame {entry['frames']} of the 464" in entry["reason"]
        with open(out / "predictions.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        (note,) = [row for row in rows if row["status"] == "partial"]
        assert note["reason"] == entry["reason"] and note["kind"] == "video"
        assert {row["status"] for row in rows} == {"ok", "partial"}  # the frames read are kept
    # Frames asked for that the stream holds: nothing is missing.
    out = tmp_path / "first20"
    assert main(["predict", str(video), "--out", str(out), "--quiet", "--max-frames", "20"]) == 0
    (entry,) = json.loads((out / "summary.json").read_text())["sources"]
    assert entry["status"] == "ok" and entry["frames"] == 20 and "reason" not in entry
