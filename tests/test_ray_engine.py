"""``ferkit predict --engine ray`` against the local engine, on real data, with a local
Ray (2 CPUs, in this process): the same labels, probabilities within 1e-5, the same
statuses and summary; resume after a killed run; a worker killed in the middle of a video.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import require_shared

from ferkit.inference.distributed import _copy_uri, predict_ray
from ferkit.inference.predict import predict
from ferkit.inference.recognizer import EmotionRecognizer
from ferkit.inference.sources import expand_inputs, read_manifest, read_uri
from ferkit.outputs import OutputExistsError

pytestmark = [pytest.mark.real_data, pytest.mark.slow]

CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
VIDEO_FRAMES = 150


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A CSV manifest of FER2013 val crops (30 a class) and of the sample photos, a
    corrupt file and a missing one; and the sample video."""
    val = require_shared("datasets", "fer2013", "val")
    samples = require_shared("samples")
    folder = tmp_path_factory.mktemp("ray-inputs")
    crops = [sorted((val / name).iterdir())[:30] for name in CLASSES]
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    photos = [samples / name for name in ("justin.jpg", "couple.jpg", "no-faces.jpg")]
    rows = [str(p) for group in crops for p in group] + [str(p) for p in photos]
    rows += ["corrupt.jpg", "missing.jpg"]
    pd.DataFrame({"path": rows}).to_csv(folder / "inputs.csv", index=False)
    return {"manifest": folder / "inputs.csv", "video": samples / "woman2.mp4"}


def read_parts(out: Path) -> pd.DataFrame:
    parts = sorted((out / "predictions").glob("part-*.parquet"))
    assert parts, f"no Parquet file under {out}"
    table = pd.concat([pd.read_parquet(part) for part in parts], ignore_index=True)
    return sort_records(table)


def sort_records(table: pd.DataFrame) -> pd.DataFrame:
    keys = ["source", "frame", "face"]
    return table.sort_values(keys, na_position="first").reset_index(drop=True)


def test_ray_engine_matches_local_engine(ray_local, inputs, tmp_path):
    given = [str(inputs["manifest"]), str(inputs["video"])]
    ray_out, local_out = tmp_path / "ray", tmp_path / "local"
    summary = predict_ray(given, ray_out, max_frames=VIDEO_FRAMES, progress=False)
    local = predict(given, local_out, max_frames=VIDEO_FRAMES, progress=False)
    assert summary.counts() == local.counts() == {"ok": 213, "no_face": 1, "error": 2}
    assert summary.exit_status() == local.exit_status() == 3

    records = read_parts(ray_out)
    expected = sort_records(pd.read_csv(local_out / "predictions.csv"))
    assert list(records.columns) == list(expected.columns)
    assert len(records) == len(expected)
    for column in ("source", "kind", "status", "label", "raw_label", "reason"):
        assert records[column].fillna("").tolist() == expected[column].fillna("").tolist()
    for column in ("frame", "face", "track_id", "x", "y", "width", "height"):
        assert np.array_equal(records[column].fillna(-1), expected[column].fillna(-1))
    probabilities = [c for c in expected.columns if c.startswith(("p_", "raw_p_"))]
    gap = np.abs(records[probabilities].to_numpy() - expected[probabilities].to_numpy())
    assert np.nanmax(gap) <= 5e-5 + 1e-5  # the CSV rounds to 4 decimals

    # full precision against the Python API of the local engine
    recognizer = EmotionRecognizer()
    still = records[(records.kind == "image") & (records.status == "ok")]
    for source, rows in list(still.groupby("source"))[::10]:
        faces = recognizer.predict(source)
        found = np.array([[face.probabilities[c] for c in recognizer.classes] for face in faces])
        mine = rows.sort_values("face")[[f"p_{c}" for c in recognizer.classes]].to_numpy()
        assert np.abs(found - mine).max() <= 1e-5, source
    frames = records[records.kind == "video"].sort_values(["frame", "face"])
    smoothed, raw = [], []
    for frame in recognizer.predict_video(inputs["video"], max_frames=VIDEO_FRAMES):
        for face in frame.faces:
            smoothed.append([face.probabilities[c] for c in recognizer.classes])
            raw.append([face.raw_probabilities[c] for c in recognizer.classes])
    assert len(frames) == len(smoothed) == VIDEO_FRAMES
    assert np.abs(frames[[f"p_{c}" for c in CLASSES]].to_numpy() - smoothed).max() <= 1e-5
    assert np.abs(frames[[f"raw_p_{c}" for c in CLASSES]].to_numpy() - raw).max() <= 1e-5

    mine, theirs = (json.loads((o / "summary.json").read_text()) for o in (ray_out, local_out))
    assert mine["engine"] == "ray" and mine["counts"] == theirs["counts"]
    reasons = {e["source"]: e.get("reason") for e in mine["sources"] if e["status"] == "error"}
    assert reasons == {
        e["source"]: e.get("reason") for e in theirs["sources"] if e["status"] == "error"
    }
    assert any("no such file" in r for r in reasons.values())
    assert any("corrupt or truncated" in r for r in reasons.values())
    for a, b in zip(mine["sources"], theirs["sources"], strict=True):
        assert a["source"] == b["source"] and a["status"] == b["status"]
        assert a.get("labels") == b.get("labels")
        assert a.get("share_of_time") == b.get("share_of_time")
    assert not list((ray_out / "predictions").glob(".*")), "temporary files left behind"


def test_out_folder_rules(ray_local, inputs, tmp_path):
    photo = str(require_shared("samples", "justin.jpg"))
    out = tmp_path / "out"
    predict_ray([photo], out, progress=False)
    first = read_parts(out)
    assert first.label.tolist() == ["happy"]
    with pytest.raises(OutputExistsError, match="--resume"):
        predict_ray([photo], out, progress=False)
    with pytest.raises(ValueError, match=r"settings differ.*faces"):
        predict_ray([photo], out, resume=True, faces="detect", progress=False)
    lines: list[str] = []
    summary = predict_ray([photo], out, resume=True, progress=False, echo=lines.append)
    assert "resume: 1 input(s) already written, 0 to do" in lines
    assert summary.counts() == {"ok": 1}
    assert read_parts(out).equals(first)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"notes\.txt"):
        predict_ray([photo], out, overwrite=True, progress=False)
    (out / "notes.txt").unlink()
    predict_ray([photo], out, overwrite=True, progress=False)
    assert read_parts(out).equals(first)
    elsewhere = tmp_path / "local"
    predict([photo], elsewhere, progress=False)
    with pytest.raises(ValueError, match="no earlier"):
        predict_ray([photo], elsewhere, resume=True, progress=False)


def session_processes(session: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == session:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_resume_after_killed_run(ray_local, tmp_path):
    """A run killed (every process of it, SIGKILL) after its first Parquet file is
    finished by --resume: each input written once, the same labels as a whole run."""
    val = require_shared("datasets", "fer2013", "val")
    files = sorted(val.glob("*/*.jpg"))[:600]
    (tmp_path / "inputs.txt").write_text("\n".join(map(str, files)) + "\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ferkit", "predict", "--engine", "ray", "--workers", "1",
               str(tmp_path / "inputs.txt"), "--out", str(out), "--quiet"]  # fmt: skip
    job = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    try:
        while not list((out / "predictions").glob("part-*.parquet")):
            assert job.poll() is None, job.stderr.read().decode()
            assert time.monotonic() < deadline, "no Parquet file written in 2 minutes"
            time.sleep(0.05)
    finally:
        for pid in session_processes(job.pid):
            os.kill(pid, signal.SIGKILL)
        job.wait()
    written = _sources(out)
    assert 0 < len(written) < len(files), "the run was not killed in the middle"
    assert not (out / "summary.json").exists()

    lines: list[str] = []
    summary = predict_ray(
        [str(tmp_path / "inputs.txt")], out, resume=True, progress=False, echo=lines.append
    )
    assert (
        f"resume: {len(written)} input(s) already written, {len(files) - len(written)} to do"
        in lines
    )
    assert summary.counts() == {"ok": len(files)}
    records = read_parts(out)
    assert records.source.tolist() == sorted(map(str, files)), "an input missing or twice"
    assert json.loads((out / "summary.json").read_text())["resumed"] == len(written)
    whole = tmp_path / "whole"  # the local engine gives Ray's labels (the test above)
    predict([str(tmp_path / "inputs.txt")], whole, progress=False)
    expected = sort_records(pd.read_csv(whole / "predictions.csv"))
    assert records.label.tolist() == expected.label.tolist()


def _sources(out: Path) -> list[str]:
    parts = sorted((out / "predictions").glob("part-*.parquet"))
    return [s for part in parts for s in pd.read_parquet(part, columns=["source"]).source]


def test_killed_worker_is_retried(ray_local, inputs, tmp_path):
    """The process of a video task is killed in the middle: Ray runs the task again and
    the video's records are complete and the same."""
    killed: list[int] = []

    def kill_video_worker() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for entry in Path("/proc").iterdir():
                try:
                    title = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if b"predict_video_task" in title:
                    time.sleep(1.0)  # in the middle of the video
                    try:  # only if that process still runs the task
                        still = b"predict_video_task" in (entry / "cmdline").read_bytes()
                    except OSError:
                        still = False
                    if still:
                        os.kill(int(entry.name), signal.SIGKILL)
                        killed.append(int(entry.name))
                        return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_video_worker)
    killer.start()
    out = tmp_path / "out"
    summary = predict_ray([str(inputs["video"])], out, progress=False)
    killer.join()
    assert killed, "no video task was killed while it ran"
    assert summary.counts() == {"ok": 1} and summary.frames == 464
    records = read_parts(out)
    assert records.frame.tolist() == list(range(464))
    assert not list((out / "predictions").glob(".*")), "the killed attempt's file is left"


def test_manifests(tmp_path):
    photo = require_shared("samples", "justin.jpg")
    (tmp_path / "list.txt").write_text(f"# photos\n{photo}\n\nrelative.jpg\n")
    pd.DataFrame({"id": [1, 2], "uri": [str(photo), "https://example.org/x.jpg"]}).to_parquet(
        tmp_path / "list.parquet"
    )
    (tmp_path / "empty.csv").write_text("path\n")
    assert read_manifest(tmp_path / "list.txt") == [str(photo), str(tmp_path / "relative.jpg")]
    assert read_manifest(tmp_path / "list.parquet") == [str(photo), "https://example.org/x.jpg"]
    with pytest.raises(ValueError, match="lists no path"):
        read_manifest(tmp_path / "empty.csv")
    sources = expand_inputs(
        [
            str(tmp_path / "list.parquet"),
            str(tmp_path / "empty.csv"),
            f"file://{photo}",
            "s3://b/k.jpg",
        ]
    )
    assert [(s.kind, s.error is None) for s in sources] == [
        ("image", True), ("url", True), ("unknown", False), ("image", True), ("uri", True),
    ]  # fmt: skip
    assert "lists no path" in sources[2].error
    assert read_uri(f"file://{photo}") == photo.read_bytes()
    copied = _copy_uri(f"file://{photo}", tmp_path / "copy.jpg")
    assert copied.read_bytes() == photo.read_bytes()
    with pytest.raises(OSError, match="no such file"):
        read_uri(f"file://{tmp_path}/gone.jpg")
    with pytest.raises(OSError, match="no such file"):
        _copy_uri(f"file://{tmp_path}/gone.mp4", tmp_path / "x.mp4")


def test_relative_paths_hold_when_the_workers_run_elsewhere(ray_local, tmp_path, monkeypatch):
    """Ray's workers keep the folder Ray started in: relative inputs, manifests, models
    and --out given from another folder still reach the right files."""
    photo = require_shared("samples", "justin.jpg")
    work = tmp_path / "work"
    (work / "in").mkdir(parents=True)
    (work / "in" / "me.jpg").write_bytes(photo.read_bytes())
    (work / "in" / "list.csv").write_text("me.jpg\n")  # no header row: a path
    monkeypatch.chdir(work)
    summary = predict_ray(["in/list.csv", "in/me.jpg"], "out", progress=False)
    assert summary.counts() == {"ok": 2}
    records = read_parts(work / "out")
    assert records.label.tolist() == ["happy", "happy"]
    assert sorted(records.source) == sorted([os.path.join("in", "me.jpg"), "in/me.jpg"])


def test_bad_inputs_of_every_kind_are_recorded_not_fatal(ray_local, tmp_path):
    """URIs pyarrow cannot read, a manifest that cannot be read, a broken video and a
    truncated image: each is a recorded error, the good photo is still read."""
    photo = require_shared("samples", "justin.jpg")
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    (tmp_path / "cut.jpg").write_bytes(photo.read_bytes()[:2000])
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not parquet")
    given = [str(photo), "nosuchscheme://bucket/face.jpg", "nosuchscheme://bucket/clip.mp4",
             str(tmp_path / "bad.parquet"), str(tmp_path / "broken.mp4"), str(tmp_path / "cut.jpg")]  # fmt: skip
    summary = predict_ray(given, tmp_path / "out", progress=False)
    local = predict(given, tmp_path / "local", progress=False)
    statuses = [e["status"] for e in summary.sources]
    assert statuses == ["ok", "error", "error", "error", "error", "error"]
    assert "cannot be read through pyarrow" in summary.sources[1]["reason"]
    assert "manifest" in summary.sources[3]["reason"]
    assert [e["status"] for e in local.sources] == statuses
    for mine, theirs in zip(summary.sources, local.sources, strict=True):
        if not mine["source"].startswith("nosuchscheme"):  # the local engine reads no URI
            assert mine.get("reason") == theirs.get("reason")
    assert read_parts(tmp_path / "out").source.nunique() == len(given)


LISTENING = """
import json, os, psutil
import ray  # imported first, as `ferkit predict --engine ray` does before starting it
from ferkit.inference.distributed import _start_ray
ray, started = _start_ray(None, 1)
processes = [psutil.Process()] + psutil.Process().children(recursive=True)
listening = sorted({
    (process.name(), connection.laddr.ip)
    for process in processes
    for connection in process.net_connections(kind="inet")
    if connection.status == psutil.CONN_LISTEN
})
print(json.dumps({"started": started, "listening": listening,
                  "auth": os.environ.get("RAY_AUTH_MODE")}))
ray.shutdown()
"""


def test_the_local_cluster_listens_on_loopback_only():
    """The Ray cluster that ``--engine ray`` starts on this machine (its GCS, raylet,
    agents and workers) listens on loopback alone, with Ray's token authentication (it
    listened on every interface: Ray gives a local cluster the machine's network
    address on Linux, even when ``ray.init`` is asked for 127.0.0.1)."""
    pytest.importorskip("ray")
    pytest.importorskip("psutil")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    result = subprocess.run(
        [sys.executable, "-c", LISTENING], capture_output=True, text=True, timeout=180,
        env=environment, check=True,
    )  # fmt: skip
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["started"] and report["auth"] == "token"
    names = {name for name, _ in report["listening"]}
    assert {"gcs_server", "raylet"} <= names, report
    addresses = {address.removeprefix("::ffff:") for _, address in report["listening"]}
    assert addresses <= {"127.0.0.1", "::1"}, report["listening"]


def test_ray_engine_carries_geometry_as_the_local_engine_does(ray_local, tmp_path):
    """``geometry=True``: Parquet gets the blendshape and pose columns and the landmarks as
    a list column, equal at full precision to the local engine's on the sample photos and
    the first frames of a video; without it the schema is unchanged."""
    from ferkit.geometry import BLENDSHAPE_NAMES

    samples = require_shared("samples")
    photos = [
        str(samples / name) for name in ("justin.jpg", "couple.jpg", "selfie-many-people.jpg")
    ]
    video = str(samples / "woman2.mp4")
    frames = 12
    predict_ray(
        [*photos, video], tmp_path / "ray", geometry=True, max_frames=frames, progress=False
    )
    records = read_parts(tmp_path / "ray")
    blendshapes = [f"bs_{name}" for name in BLENDSHAPE_NAMES]
    assert {*blendshapes, "yaw", "pitch", "roll", "landmarks"} <= set(records.columns)

    recognizer = EmotionRecognizer(geometry=True)
    expected = []  # (source, frame, face) -> geometry of the local engine, in record order
    for photo in photos:
        for index, face in enumerate(recognizer.predict(photo), start=1):
            expected.append(((photo, None, index), face))
    for frame in recognizer.predict_video(video, max_frames=frames):
        for index, face in enumerate(frame.faces, start=1):
            expected.append(((video, frame.index, index), face))
    ok = records[records.status == "ok"]
    assert len(ok) == len(expected) >= 3 + frames
    by_key = {
        (row.source, None if pd.isna(row.frame) else int(row.frame), int(row.face)): row
        for row in ok.itertuples(index=False)
    }
    for key, face in expected:
        row = by_key[key]._asdict()
        mine = np.array([row[name] for name in blendshapes])
        theirs = np.array([face.geometry.blendshapes[name] for name in BLENDSHAPE_NAMES])
        assert np.abs(mine - theirs).max() <= 1e-6, key
        pose = (face.geometry.yaw, face.geometry.pitch, face.geometry.roll)
        assert (row["yaw"], row["pitch"], row["roll"]) == pytest.approx(pose, abs=1e-6)
        landmarks = np.array([list(point) for point in row["landmarks"]], dtype=np.float32)
        assert landmarks.shape == (478, 3)
        assert np.abs(landmarks - face.geometry.landmarks).max() <= 1e-3, key
    happy = ok[ok.source == photos[0]].iloc[0]
    assert happy.bs_mouthSmileRight > 0.7 and abs(happy.yaw) < 10

    predict_ray(photos[:1], tmp_path / "plain", progress=False)
    plain = read_parts(tmp_path / "plain")
    assert not any(c.startswith("bs_") or c in ("yaw", "landmarks") for c in plain.columns)
