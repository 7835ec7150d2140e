"""Benchmarks that print their figures: medians over repeated runs on this machine."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SHARED_ENV = "FERKIT_SHARED"


def shared_dir() -> Path:
    """The shared data folder: ``$FERKIT_SHARED``, else ``../shared`` from the project root."""
    if os.environ.get(SHARED_ENV):
        return Path(os.environ[SHARED_ENV])
    beside_cwd = Path.cwd().resolve().parent / "shared"
    if beside_cwd.is_dir():
        return beside_cwd
    return Path(__file__).resolve().parents[4] / "shared"


def benchmark_prepare(source: str | os.PathLike[str], repeats: int = 3, workers: int = 0) -> str:
    """Time ``prepare`` on a source ``repeats`` times; return a printable report."""
    from ferkit.data.prepare import PrepareConfig, prepare

    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: benchmark source not found; set {SHARED_ENV}")
    times, count = [], 0
    work = Path(tempfile.mkdtemp(prefix="ferkit-bench-"))
    try:
        for repeat in range(repeats):
            out = work / f"run{repeat}"
            started = time.perf_counter()
            result = prepare(source, out, PrepareConfig(workers=workers), progress=False)
            times.append(time.perf_counter() - started)
            count = sum(split["count"] for split in result.manifest["splits"].values())
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = statistics.median(times)
    return "\n".join(
        [
            f"prepare {source} ({count} faces, {os.cpu_count()} cores, workers={workers or 'auto'})",
            f"  runs (s): {', '.join(f'{t:.2f}' for t in times)}",
            f"  median: {median:.2f} s  ({count / median:,.0f} images/s)",
        ]
    )


def median_rate(run: Callable[[], Any], count: int, repeats: int) -> float:
    """Items a second of ``run`` (which handles ``count`` items), the median of
    ``repeats`` timed calls."""
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        rates.append(count / (time.perf_counter() - started))
    return statistics.median(rates)


def _model_rates(
    model, images, targets, batch_size: int, repeats: int
) -> tuple[float, float, float]:
    def fit() -> None:
        model.fit(images, targets[: len(images)], batch_size=batch_size, epochs=1, verbose=0)

    def predict_single() -> None:
        for _ in range(50):
            model.predict_on_batch(images[:1])

    def predict_batch() -> None:
        model.predict_on_batch(images[:256])

    for warm_up in (fit, predict_single, predict_batch):  # tracing and allocation
        warm_up()
    return (
        median_rate(fit, len(images), repeats),
        median_rate(predict_single, 50, repeats),
        median_rate(predict_batch, 256, repeats),
    )


def benchmark_models(
    archs: list[str] | None = None, repeats: int = 3, train_batches: int = 8, batch_size: int = 128
) -> str:
    """Training images/s and inference faces/s (batch 1 and 256) of each architecture,
    medians of ``repeats`` runs on random 48x48 faces; return a printable table."""
    import numpy as np

    from ferkit.models.keras_nets import ARCHITECTURES, ModelConfig, build_model
    from ferkit.training.config import TrainConfig
    from ferkit.training.keras_engine import compile_model

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(256, batch_size * train_batches), 48, 48, 1)).astype(
        "float32"
    )
    targets = np.eye(7, dtype="float32")[rng.integers(0, 7, len(images))]
    # Each architecture at the settings that matter: the shipped default model's (three
    # blocks a stage), the CPU recipe (two), the larger preset, and VGG16 at 48 px.
    presets = {
        "ferkit_cnn": [
            ("ferkit_cnn shipped (32-256 x3)", {"blocks_per_stage": 3}),
            ("ferkit_cnn CPU recipe (x2)", {"blocks_per_stage": 2}),
            ("ferkit_cnn large (48-384)", {"widths": (48, 96, 192, 384)}),
        ],
        "vgg16": [("vgg16 @48 px", {"weights": None, "backbone_size": 48})],
    }
    lines = [
        f"models on {os.cpu_count()} cores, 48x48 gray faces, medians of {repeats} runs",
        f"{'model':<30}{'params':>12}{'train img/s':>14}{'infer b=1 faces/s':>20}"
        f"{'infer b=256 faces/s':>22}",
    ]
    for arch in archs or sorted(ARCHITECTURES):
        for label, settings in presets.get(arch, [(arch, {})]):
            model = build_model(ModelConfig(arch=arch, **settings))
            compile_model(model, TrainConfig(batch_size=batch_size), steps_per_epoch=train_batches)
            rates = _model_rates(
                model, images[: batch_size * train_batches], targets, batch_size, repeats
            )
            lines.append(
                f"{label:<30}{model.count_params():>12,}"
                + "".join(f"{r:>{w},.0f}" for r, w in zip(rates, (14, 20, 22), strict=True))
            )
    return "\n".join(lines)


VIDEO_PIPELINES = (
    # (label, detector, backend, detect_every, max_frames)
    ("blazeface-full + onnx", "blazeface-full", "onnx", 1, None),
    ("blazeface + onnx", "blazeface", "onnx", 1, None),
    ("blazeface-full + onnx, detect every 3rd", "blazeface-full", "onnx", 3, None),
    ("haar + keras (fer-style baseline)", "haar", "keras", 1, None),
    ("mtcnn + keras", "mtcnn", "keras", 1, 60),
)


def benchmark_video(
    video: str | os.PathLike[str] | None = None,
    repeats: int = 3,
    model: str | os.PathLike[str] | None = None,
) -> str:
    """Frames/s of the full pipeline (decode, detect, crop, classify, track, smooth).

    Each pipeline reads the whole video (MTCNN only its first 60 frames: it runs at a
    few frames/s) ``repeats`` times; medians are shown with the ratio to the Haar +
    Keras baseline measured in the same run.
    """
    from ferkit.inference.recognizer import EmotionRecognizer

    video = Path(video) if video else shared_dir() / "samples" / "woman2.mp4"
    if not video.is_file():
        raise FileNotFoundError(f"{video}: no such video; pass one with --video")
    rates = {}
    found = {}
    for label, detector, backend, detect_every, max_frames in VIDEO_PIPELINES:
        recognizer = EmotionRecognizer(model, detector=detector, backend=backend)
        counts: list[int] = []

        def run(
            recognizer=recognizer, detect_every=detect_every, max_frames=max_frames, counts=counts
        ):
            counts.clear()
            for frame in recognizer.predict_video(
                video, detect_every=detect_every, max_frames=max_frames
            ):
                counts.append(len(frame.faces))

        run()  # warm up
        frames = len(counts)
        rates[label] = median_rate(run, frames, repeats)
        found[label] = (sum(c >= 1 for c in counts), frames)
    baseline = rates[VIDEO_PIPELINES[3][0]]
    lines = [
        f"full pipeline on {video.name}, {os.cpu_count()} cores, medians of {repeats} runs",
        f"{'pipeline':<42}{'frames/s':>10}{'x baseline':>12}{'frames with a face':>20}",
    ]
    for label, rate in rates.items():
        with_face, frames = found[label]
        lines.append(
            f"{label:<42}{rate:>10,.1f}{rate / baseline:>12.2f}{f'{with_face}/{frames}':>20}"
        )
    return "\n".join(lines)


def colour_faces(
    sources: list[Path],
    *,
    size: int = 48,
    every: int = 10,
    detector: str = "blazeface-full",
    skipped: list[tuple[str, str]] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """RGB face crops from photos and from every ``every``-th frame of videos, found by
    ``detector`` and cut as the prediction pipeline cuts them: ``(faces, where)``.

    A file that cannot be read is appended to ``skipped`` as ``(path, reason)`` (raised
    when ``skipped`` is None); the others are still read."""
    import cv2

    from ferkit.faces import make_detector
    from ferkit.framing import crop_face
    from ferkit.images import ImageReadError, is_image_path, read_image

    finder = make_detector(detector)
    faces, where = [], []

    def add(image: np.ndarray, name: str) -> None:
        for index, face in enumerate(finder.detect(image, thorough=True)):
            faces.append(crop_face(image, face, finder.framing, size=size, channels=3))
            where.append(f"{name}#{index}")

    for source in sources:
        if is_image_path(source):
            try:
                image = read_image(source)
            except (ImageReadError, OSError) as error:
                if skipped is None:
                    raise
                skipped.append((str(source), str(error)))
                continue
            add(image, source.name)
            continue
        capture = cv2.VideoCapture(str(source))
        try:
            if not capture.isOpened():
                reason = f"{source}: OpenCV cannot open it as a video"
                if skipped is None:
                    raise ValueError(reason)
                skipped.append((str(source), reason))
                continue
            frame_number = 0
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                if frame_number % every == 0:
                    add(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), f"{source.name}@{frame_number}")
                frame_number += 1
        finally:
            capture.release()
    shape = (0, size, size, 3)
    return (np.stack(faces) if faces else np.zeros(shape, np.uint8)), where


def benchmark_colour(
    source: str | os.PathLike[str] | None = None, model: str | os.PathLike[str] | None = None
) -> str:
    """Label stability of real colour faces under other colour-to-grey weightings.

    ``source`` is a photo, a video or a folder of them (default: the shared samples: every
    photo, and every 10th frame of each video).
    """
    from ferkit.evaluation.robustness import colour_consistency
    from ferkit.images import is_image_path
    from ferkit.inference.runtimes import load_classifier

    root = Path(source) if source else shared_dir() / "samples"
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such photo, video or folder")
    videos = (".mp4", ".avi", ".mov", ".mkv", ".webm")
    sources = (
        sorted(p for p in root.iterdir() if is_image_path(p) or p.suffix.lower() in videos)
        if root.is_dir()
        else [root]
    )
    classifier = load_classifier(model)
    skipped: list[tuple[str, str]] = []
    faces, where = colour_faces(sources, size=classifier.image_shape[0], skipped=skipped)
    notes = [f"skipped: {reason}" for _, reason in skipped]  # the reason names the file
    if not len(faces):
        raise ValueError(
            f"{root}: no face found in {len(sources) - len(skipped)} photo(s) and video(s)"
            + "".join(f"; {note}" for note in notes)
        )
    report = colour_consistency(classifier, faces)
    photos = sum("@" not in name for name in where)
    lines = [
        f"colour faces from {root}: {len(faces)} ({photos} in photos, "
        f"{len(faces) - photos} in video frames); reference: BT.601 grey",
        f"{'weighting':<16}{'same label':>12}{'mean TV distance':>18}",
    ]
    for name, row in report["weightings"].items():
        lines.append(f"{name:<16}{row['agreement']:>12.1%}{row['total_variation']:>18.3f}")
    return "\n".join(lines + notes)
