"""Benchmarks of ``ferkit predict`` as a whole command, and of its Ray engine.

Each figure is a median over repeated runs on this machine, printed beside a baseline
measured in the same run, since timings on a shared machine drift:

- :func:`benchmark_predict_video`: frames/s of ``ferkit predict VIDEO`` (start-up,
  decoding, detection, classification, tracking, writing: all of it) with the default
  settings, against detection on every frame (``--detect-every 1``), and how often the
  two agree on a frame's labels.
- :func:`benchmark_crops`: faces/s of ``ferkit predict FOLDER --faces crop`` over a
  folder of face crops (decoding included), per classifier runtime.
- :func:`benchmark_ray`: faces/s of ``ferkit predict --engine ray`` for several worker
  counts on a local Ray, against the local engine on the same images.
- :func:`benchmark_geometry`: faces/s of face geometry alone (the mesh, blendshape and
  pose steps of :class:`ferkit.geometry.FaceGeometryEstimator`) on a video's faces, and
  frames/s of ``ferkit predict VIDEO --geometry`` as a whole command against the default
  path in the same run.
"""

from __future__ import annotations

import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ferkit.evaluation.benchmark import SHARED_ENV, shared_dir


def _timed_predict(arguments: list[str], out: Path) -> float:
    """Seconds of one ``ferkit predict`` command (a new process, as a user runs it)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "ferkit", "predict", *arguments, "--out", str(out), "--quiet"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


def _frame_labels(predictions: Path) -> dict[int, tuple[str, ...]]:
    """Each frame's labels (in face order) from a ``predictions.csv``."""
    frames: dict[int, list[str]] = {}
    with open(predictions, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["frame"]:
                frames.setdefault(int(row["frame"]), []).append(row["label"])
    return {frame: tuple(labels) for frame, labels in frames.items()}


def benchmark_predict_video(
    video: str | os.PathLike[str] | None = None, repeats: int = 5, frames: int | None = None
) -> str:
    """Frames/s of ``ferkit predict VIDEO`` as a whole command, default settings against
    ``--detect-every 1``, and their agreement on each frame's labels; where the default
    model's runtime is not float32 ONNX, also on float32 ONNX (``--backend onnx``), with
    the target: the default path no slower than float32."""
    from ferkit.inference.runtimes import default_backend

    video = Path(video) if video else shared_dir() / "samples" / "woman2.mp4"
    if not video.is_file():
        raise FileNotFoundError(f"{video}: no such video; pass one with --video")
    settings = {
        "default (--detect-every auto)": [],
        "--detect-every 1 (baseline)": ["--detect-every", "1"],
    }
    backend = default_backend()
    float32 = backend != "onnx"
    if float32:
        settings["--backend onnx (float32)"] = ["--backend", "onnx"]
    with tempfile.TemporaryDirectory(prefix="ferkit-bench-") as scratch:
        times: dict[str, list[float]] = {label: [] for label in settings}
        for _ in range(repeats):  # interleaved, so drift hits both alike
            for index, (label, extra) in enumerate(settings.items()):
                out = Path(scratch) / f"run{index}"
                times[label].append(_timed_predict([str(video), *extra], out))
        labels = [_frame_labels(Path(scratch) / f"run{i}" / "predictions.csv") for i in range(2)]
    count = frames or len(labels[1])
    shared = set(labels[0]) | set(labels[1])
    agreement = sum(labels[0].get(f) == labels[1].get(f) for f in shared) / max(1, len(shared))
    baseline = statistics.median(times["--detect-every 1 (baseline)"])
    lines = _whole_command_rows(video, count, repeats, times, baseline, width=32)
    lines.append(f"frames whose labels agree with detection on every frame: {agreement:.2%}")
    if float32:
        default = statistics.median(times["default (--detect-every auto)"])
        speedup = statistics.median(times["--backend onnx (float32)"]) / default
        verdict = "met" if speedup >= 1 else "NOT met"
        lines.append(
            f"target: the default path ({backend}) no slower than float32 ONNX: "
            f"{speedup:.2f}x its frames/s, {verdict}"
        )
    return "\n".join(lines)


def _whole_command_rows(
    video: Path,
    count: int,
    repeats: int,
    times: dict[str, list[float]],
    baseline: float,
    width: int,
) -> list[str]:
    """The header and one row per setting of a whole-command video benchmark: median
    seconds, frames/s and speed against ``baseline`` (a median in seconds)."""
    lines = [
        f"ferkit predict {video.name} as a whole command ({count} frames with a face), "
        f"{os.cpu_count()} cores, medians of {repeats} runs",
        f"{'settings':<{width}}{'seconds':>9}{'frames/s':>10}{'x baseline':>12}",
    ]
    for label, runs in times.items():
        median = statistics.median(runs)
        lines.append(
            f"{label:<{width}}{median:>9.2f}{count / median:>10.1f}{baseline / median:>12.2f}"
        )
    return lines


def _crop_folder(source: str | os.PathLike[str] | None) -> Path:
    folder = Path(source) if source else shared_dir() / "datasets" / "fer2013" / "train"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of face crops; set {SHARED_ENV}")
    return folder


#: ``benchmark crops``: the whole command's target, faces/s.
CROPS_TARGET = 2000


def benchmark_crops(
    source: str | os.PathLike[str] | None = None,
    repeats: int = 5,
    backends: tuple[str, ...] = ("onnx", "onnx-int8"),
    model: str | os.PathLike[str] | None = None,
) -> str:
    """Faces/s of ``ferkit predict FOLDER --faces crop`` as a whole command: ``model``
    (default: the bundled one) on the runtime ``predict`` picks for it (no ``--backend``:
    the default path, which the :data:`CROPS_TARGET` verdict is about) and on each of
    ``backends``, against the default model on float32 ONNX measured in the same run (the
    baseline)."""
    from ferkit.inference.runtimes import default_backend

    folder = _crop_folder(source)
    count = sum(1 for path in folder.rglob("*") if path.is_file())
    name = str(model or "default")
    chosen = default_backend(model)
    crops = [str(folder), "--faces", "crop"]
    with_model = ["--model", str(model)] if model else []
    default_path = f"{name} (its default: {chosen})"
    settings = {"default onnx (baseline)": [*crops, "--backend", "onnx"],
                default_path: [*crops, *with_model]}  # fmt: skip
    for backend in backends:
        if not (name == "default" and backend == "onnx") and backend != chosen:
            settings[f"{name} {backend}"] = [*crops, *with_model, "--backend", backend]
    times: dict[str, list[float]] = {label: [] for label in settings}
    with tempfile.TemporaryDirectory(prefix="ferkit-bench-") as scratch:
        for _ in range(repeats):
            for index, (label, arguments) in enumerate(settings.items()):
                times[label].append(_timed_predict(arguments, Path(scratch) / str(index)))
    baseline = statistics.median(times["default onnx (baseline)"])
    width = max(len(label) for label in settings) + 2
    lines = [
        f"ferkit predict {folder} --faces crop ({count:,} files, decoding included), "
        f"{os.cpu_count()} cores, medians of {repeats} runs",
        f"{'--model, runtime':<{width}}{'seconds':>9}{'faces/s':>10}{'x baseline':>12}",
    ]
    rates = {}
    for label, runs in times.items():
        median = statistics.median(runs)
        rates[label] = count / median
        lines.append(
            f"{label:<{width}}{median:>9.1f}{rates[label]:>10,.0f}{baseline / median:>12.2f}"
        )
    verdict = "met" if rates[default_path] >= CROPS_TARGET else "NOT met"
    lines.append(
        f"target: {name}'s default path at >= {CROPS_TARGET:,} faces/s as a whole command: "
        f"{rates[default_path]:,.0f}, {verdict}"
    )
    return "\n".join(lines)


def benchmark_ray(
    source: str | os.PathLike[str] | None = None,
    workers: tuple[int, ...] = (1, 2),
    repeats: int = 3,
    limit: int | None = 7000,
    address: str | None = None,
) -> str:
    """Faces/s of ``predict --engine ray --faces crop`` for each worker count (a Ray
    already running, so its start-up is not counted), and of the local engine on the
    same images in the same run."""
    import ray

    from ferkit.inference.distributed import predict_ray
    from ferkit.inference.predict import predict

    folder = _crop_folder(source)
    files = sorted(str(p) for p in folder.rglob("*") if p.is_file())[:limit]
    started_ray = not ray.is_initialized()
    if started_ray:
        options: dict[str, Any] = {"include_dashboard": False}
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=max(workers), **options)
    cluster_cpus = int(ray.cluster_resources().get("CPU", 0))
    rates: dict[str, list[float]] = {"local engine": []}
    rates.update({f"ray, {w} worker{'s' * (w > 1)}": [] for w in workers})
    try:
        with tempfile.TemporaryDirectory(prefix="ferkit-bench-") as scratch:
            manifest = Path(scratch) / "inputs.txt"
            manifest.write_text("\n".join(files) + "\n")
            for _ in range(repeats):
                out = Path(scratch) / "out"
                shutil.rmtree(out, ignore_errors=True)
                began = time.perf_counter()
                predict([str(manifest)], out, faces="crop", progress=False)
                rates["local engine"].append(len(files) / (time.perf_counter() - began))
                for count in workers:
                    shutil.rmtree(out, ignore_errors=True)
                    began = time.perf_counter()
                    predict_ray([str(manifest)], out, faces="crop", workers=count, progress=False)
                    label = f"ray, {count} worker{'s' * (count > 1)}"
                    rates[label].append(len(files) / (time.perf_counter() - began))
    finally:
        if started_ray:
            ray.shutdown()
    baseline = statistics.median(rates["local engine"])
    lines = [
        f"ferkit predict --faces crop on {len(files):,} crops of {folder}, Ray with "
        f"{cluster_cpus} CPUs ({os.cpu_count()} cores here), medians of {repeats} runs",
        f"{'engine':<22}{'faces/s':>10}{'x local':>10}",
    ]
    for label, runs in rates.items():
        median = statistics.median(runs)
        lines.append(f"{label:<22}{median:>10,.0f}{median / baseline:>10.2f}")
    return "\n".join(lines)


def _video_faces(video: Path, limit: int) -> tuple[list[Any], list[list[Any]]]:
    """Up to ``limit`` RGB frames of a video and the faces the default detector finds."""
    import cv2

    from ferkit.faces import DEFAULT_DETECTOR, make_detector

    detector = make_detector(DEFAULT_DETECTOR)
    capture = cv2.VideoCapture(str(video))
    frames: list[Any] = []
    try:
        while len(frames) < limit:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    return frames, [detector.detect(frame) for frame in frames]


def benchmark_geometry(
    video: str | os.PathLike[str] | None = None, repeats: int = 3, frames: int = 200
) -> str:
    """Faces/s of face geometry alone, per step, on the faces of ``frames`` frames of a
    video (one thread, in this process); then frames/s of ``ferkit predict VIDEO`` as a
    whole command with ``--geometry`` against without (interleaved runs, medians), and
    whether the two agree on every frame's labels."""
    from ferkit.geometry import FaceGeometryEstimator, face_crop

    video = Path(video) if video else shared_dir() / "samples" / "woman2.mp4"
    if not video.is_file():
        raise FileNotFoundError(f"{video}: no such video; pass one with --video")
    images, found = _video_faces(video, frames)
    pairs = [(image, face) for image, faces in zip(images, found, strict=True) for face in faces]
    if not pairs:
        raise ValueError(f"{video}: no face found in its first {frames} frames")
    estimator = FaceGeometryEstimator()
    meshes = [estimator.estimate_face(image, face).landmarks for image, face in pairs]
    steps = {
        "whole (mesh, blendshapes, pose)": lambda: [estimator.estimate_face(i, f) for i, f in pairs],
        "face mesh network (crop included)": lambda: [
            estimator.landmarks(i, face_crop(f)) for i, f in pairs
        ],
        "blendshape network": lambda: [estimator.blendshapes(m) for m in meshes],
        "head pose fit": lambda: [
            estimator.pose(m, (i.shape[1], i.shape[0])) for m, (i, _) in zip(meshes, pairs, strict=True)
        ],
    }  # fmt: skip
    rates: dict[str, list[float]] = {step: [] for step in steps}
    for _ in range(repeats):
        for step, run in steps.items():
            began = time.perf_counter()
            run()
            rates[step].append(len(pairs) / (time.perf_counter() - began))
    lines = [
        f"face geometry on the {len(pairs)} faces of {len(images)} frames of {video.name}, one "
        f"thread, {os.cpu_count()} cores, medians of {repeats} runs",
        f"{'step':<36}{'faces/s':>9}{'ms/face':>9}",
    ]
    for step, runs in rates.items():
        median = statistics.median(runs)
        lines.append(f"{step:<36}{median:>9.0f}{1000 / median:>9.2f}")
    settings = {"default (no geometry, baseline)": [], "--geometry": ["--geometry"]}
    with tempfile.TemporaryDirectory(prefix="ferkit-bench-") as scratch:
        times: dict[str, list[float]] = {label: [] for label in settings}
        for _ in range(repeats):  # interleaved, so drift hits both alike
            for index, (label, extra) in enumerate(settings.items()):
                out = Path(scratch) / f"run{index}"
                times[label].append(_timed_predict([str(video), *extra], out))
        labels = [_frame_labels(Path(scratch) / f"run{i}" / "predictions.csv") for i in range(2)]
    count = len(labels[0])
    agree = sum(labels[0].get(f) == labels[1].get(f) for f in labels[0]) / max(1, count)
    baseline = statistics.median(times["default (no geometry, baseline)"])
    lines += ["", *_whole_command_rows(video, count, repeats, times, baseline, width=34)]
    lines.append(f"frames whose labels agree with the default path: {agree:.2%}")
    return "\n".join(lines)
