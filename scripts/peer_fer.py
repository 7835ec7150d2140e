"""Measure the ``fer`` PyPI package (the 2017 mini-Xception peer) on the same real data as ferkit.

This script is not part of the ferkit package and does not import it: it runs in a
separate virtual environment that holds ``fer`` and TensorFlow, so that fer's pins never
touch ferkit's own environment. ferkit's own figures on the same photos come from
``ferkit benchmark photos``; compare the two tables side by side.

Install the peer environment (outside the repository)::

    python3 -m venv ~/fer-peer-venv
    ~/fer-peer-venv/bin/pip install tensorflow-cpu 'opencv-python-headless<5' pandas tqdm
    ~/fer-peer-venv/bin/pip install --no-deps fer
    ~/fer-peer-venv/bin/pip install pillow

``--no-deps`` because fer's declared dependencies (facenet-pytorch, moviepy,
ffmpeg-python, opencv-contrib-python, tensorflow, matplotlib) pull in PyTorch and a
second OpenCV and are not needed here. What ``fer.fer`` imports at run time is cv2,
numpy, requests, tensorflow/keras, ``pkg_resources`` (setuptools, present in a Python
3.11 venv; on 3.12+ add ``pip install 'setuptools<81'``) and, through ``fer.utils``, PIL
(hence pillow). ``facenet-pytorch`` is only needed for ``mtcnn=True`` and moviepy only for
fer's video class (``fer.classes``), neither of which this script imports. fer 25.x's
``fer/__init__.py`` no longer re-exports ``FER``, so the class is taken from ``fer.fer``.
Tested with fer 25.10.3, tensorflow-cpu 2.21.0, keras 3.15.1 and
opencv-python-headless 4.14.0.94 on Python 3.11.

Run::

    ~/fer-peer-venv/bin/python scripts/peer_fer.py photos DATA_DIR [--json OUT.json]
    ~/fer-peer-venv/bin/python scripts/peer_fer.py classifier DATA_DIR [--json OUT.json]

``DATA_DIR`` is a folder of class subfolders (angry, disgust, fear, happy, neutral, sad,
surprise, or the usual spellings such as ``anger``/``surprised``) holding image files.

``photos`` -- end to end on uncropped photos, with fer's own detector:
    ``FER(mtcnn=False)`` (OpenCV's Haar cascade with fer's defaults: scale factor 1.1, 5
    neighbours, faces of at least 50 px, 10 px offsets) on every photo; fer's default
    classifier is the quantised TFLite model it ships (``--model keras`` runs the
    original Keras ``emotion_model.hdf5`` instead). The largest face found (box area)
    gives the photo's emotion scores, which fer rounds to 2 decimals; the top score is
    the prediction and its value the confidence. Printed:

    * photos, and faces missed (photos where fer found no face: wrong end to end);
    * accuracy over all photos (misses count as wrong);
    * balanced accuracy: the mean over the folder's classes of per-class recall, misses
      counted as wrong;
    * ECE: expected calibration error over the photos where a face was found (a miss has
      no confidence), 15 equal-width bins of top-score confidence, each bin's
      |accuracy - mean confidence| weighted by its share of those photos (the same
      definition as ``ferkit.calibration.expected_calibration_error``);
    * photos/s: photos divided by the summed wall time of ``FER.detect_emotions`` (Haar
      detection, cropping, preprocessing and classification) on the decoded BGR image.
      Model loading, JPEG decoding and one untimed warm-up call are excluded.

``classifier`` -- fer's emotion classifier alone on FER2013-style 48x48 face crops:
    the Keras model fer ships (``emotion_model.hdf5``, 64x64x1 input), loaded as fer loads
    it (``load_model(..., compile=False)``). Each crop is read as grey, resized to 64x64
    with ``cv2.resize`` (bilinear, as fer does), scaled ``/255``, ``-0.5``, ``*2.0`` --
    fer's own preprocessing in ``FER.detect_emotions``. Printed: faces/s at batch 64 with
    ``model.predict_on_batch`` (the whole set in batches of 64, one warm-up pass, then
    the median of 5 timed passes; reading and preprocessing excluded), accuracy and
    balanced accuracy on the crops.

``--json OUT.json`` writes the figures (with the package versions) to a file as well.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

# fer's output order (FER._get_labels) and the folder spellings each of its names accepts.
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
ALIASES: dict[str, str] = {
    "angry": "angry",
    "anger": "angry",
    "disgust": "disgust",
    "disgusted": "disgust",
    "fear": "fear",
    "fearful": "fear",
    "scared": "fear",
    "happy": "happy",
    "happiness": "happy",
    "joy": "happy",
    "sad": "sad",
    "sadness": "sad",
    "surprise": "surprise",
    "surprised": "surprise",
    "neutral": "neutral",
}
ECE_BINS = 15
CLASSIFIER_BATCH = 64
CLASSIFIER_REPEATS = 5
FER_INPUT_SIZE = (64, 64)


def list_dataset(data_dir: Path) -> tuple[list[str], list[Path], np.ndarray]:
    """Class folder names (sorted), image paths and, per image, its index in fer's labels.

    Raises ``SystemExit`` with a clear message when the folder is missing, holds no class
    folders with images, or has a class folder fer has no class for.
    """
    if not data_dir.is_dir():
        raise SystemExit(f"error: {data_dir}: data folder not found")
    classes, paths, labels = [], [], []
    unknown = []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        images = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not images:
            continue
        fer_name = ALIASES.get(folder.name.lower())
        if fer_name is None:
            unknown.append(folder.name)
            continue
        classes.append(folder.name)
        paths.extend(images)
        labels.extend([FER_LABELS.index(fer_name)] * len(images))
    if unknown:
        raise SystemExit(
            f"error: {data_dir}: class folder(s) {', '.join(unknown)} have no fer class "
            f"(fer predicts {', '.join(FER_LABELS)})"
        )
    if not paths:
        raise SystemExit(f"error: {data_dir}: no class subfolders with images")
    return classes, paths, np.asarray(labels, dtype=np.int64)


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``labels`` (-1 = no prediction)."""
    recalls = [float(np.mean(predicted[labels == c] == c)) for c in np.unique(labels)]
    return float(np.mean(recalls))


def per_class_recall(
    classes: Sequence[str], labels: np.ndarray, predicted: np.ndarray
) -> dict[str, float]:
    out = {}
    for name in classes:
        index = FER_LABELS.index(ALIASES[name.lower()])
        out[name] = float(np.mean(predicted[labels == index] == index))
    return out


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE over equal-width confidence bins, as ``ferkit.calibration`` computes it."""
    if len(confidence) == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    error = 0.0
    for index in range(n_bins):
        members = bins == index
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def _quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter and the deprecation notices fer triggers."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
    warnings.filterwarnings("ignore", message=r"(?s).*structure of `inputs` doesn't match")
    warnings.filterwarnings("ignore", message=r"(?s).*pkg_resources is deprecated")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for package in ("fer", "tensorflow-cpu", "tensorflow", "keras", "opencv-python-headless"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def run_photos(data_dir: Path, model: str) -> dict[str, Any]:
    """fer end to end (Haar detector + classifier) on every photo; returns the figures."""
    classes, paths, labels = list_dataset(data_dir)
    _quiet_tensorflow()
    import cv2
    from fer.fer import FER
    from tqdm import tqdm

    detector = FER(mtcnn=False, use_tflite=(model == "tflite"))
    images = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f"error: {path}: not a readable image")
        images.append(image)
    detector.detect_emotions(images[0])  # warm-up: first-call allocation, not timed

    predicted = np.full(len(paths), -1, dtype=np.int64)
    confidence = np.full(len(paths), np.nan)
    elapsed = 0.0
    for index, image in enumerate(tqdm(images, desc="fer photos", unit="photo", file=sys.stderr)):
        started = time.perf_counter()
        faces = detector.detect_emotions(image)
        elapsed += time.perf_counter() - started
        if not faces:
            continue
        largest = max(faces, key=lambda face: int(face["box"][2]) * int(face["box"][3]))
        scores = np.array([largest["emotions"][name] for name in FER_LABELS])
        predicted[index] = int(scores.argmax())
        confidence[index] = float(scores.max())

    found = predicted >= 0
    correct = predicted == labels
    return {
        "command": "photos",
        "data": str(data_dir),
        "detector": "haar (FER(mtcnn=False))",
        "model": "quantised TFLite (fer default)" if model == "tflite" else "Keras hdf5",
        "photos": len(paths),
        "classes": classes,
        "faces_missed": int((~found).sum()),
        "accuracy": float(correct.mean()),
        "balanced_accuracy": balanced_accuracy(labels, predicted),
        "ece_faces_found": expected_calibration_error(confidence[found], correct[found]),
        "ece_bins": ECE_BINS,
        "photos_per_second": len(paths) / elapsed,
        "seconds": elapsed,
        "per_class_recall": per_class_recall(classes, labels, predicted),
        "versions": versions(),
    }


def format_photos(figures: dict[str, Any]) -> str:
    header = (
        f"{'photos':>7}{'faces missed':>14}{'accuracy':>10}{'balanced acc':>14}"
        f"{'ECE (faces found)':>19}{'photos/s':>10}"
    )
    row = (
        f"{figures['photos']:>7}{figures['faces_missed']:>14}{figures['accuracy']:>10.2%}"
        f"{figures['balanced_accuracy']:>14.2%}{figures['ece_faces_found']:>19.3f}"
        f"{figures['photos_per_second']:>10.1f}"
    )
    found = figures["photos"] - figures["faces_missed"]
    return "\n".join(
        [
            f"fer {figures['versions'].get('fer', '?')} end to end on {figures['data']}: "
            f"{figures['detector']}, {figures['model']}, largest face per photo",
            header,
            row,
            f"misses count as wrong in accuracy and balanced accuracy; ECE ({figures['ece_bins']} "
            f"bins) over the {found} photos with a face; photos/s excludes model loading "
            "and decoding",
        ]
    )


def preprocess_crops(paths: Sequence[Path]) -> np.ndarray:
    """Grey crops -> fer's classifier input: 64x64, /255, -0.5, *2.0, shape (n, 64, 64, 1)."""
    import cv2

    faces = np.empty((len(paths), *FER_INPUT_SIZE), dtype=np.float32)
    for index, path in enumerate(paths):
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            raise SystemExit(f"error: {path}: not a readable image")
        faces[index] = cv2.resize(grey, FER_INPUT_SIZE)
    faces = (faces / 255.0 - 0.5) * 2.0
    return faces[..., np.newaxis]


def run_classifier(data_dir: Path) -> dict[str, Any]:
    """fer's Keras classifier alone on face crops: batch-64 faces/s and accuracy."""
    classes, paths, labels = list_dataset(data_dir)
    _quiet_tensorflow()
    from importlib.resources import files

    from fer.fer import FER
    from tensorflow.keras.models import load_model
    from tqdm import tqdm

    if tuple(FER._get_labels()[i] for i in range(len(FER_LABELS))) != FER_LABELS:
        raise SystemExit("error: this fer version orders its classes differently")
    model = load_model(str(files("fer") / "data" / "emotion_model.hdf5"), compile=False)
    if tuple(model.input_shape[1:3]) != FER_INPUT_SIZE:
        raise SystemExit(f"error: fer's model takes {model.input_shape}, expected 64x64")
    faces = preprocess_crops(paths)
    starts = range(0, len(faces), CLASSIFIER_BATCH)

    def one_pass() -> np.ndarray:
        return np.concatenate(
            [np.asarray(model.predict_on_batch(faces[s : s + CLASSIFIER_BATCH])) for s in starts]
        )

    probabilities = one_pass()  # warm-up (tracing); its predictions give the accuracy
    rates = []
    for _ in tqdm(range(CLASSIFIER_REPEATS), desc="timed passes", file=sys.stderr):
        started = time.perf_counter()
        one_pass()
        rates.append(len(faces) / (time.perf_counter() - started))
    predicted = probabilities.argmax(axis=1)
    correct = predicted == labels
    return {
        "command": "classifier",
        "data": str(data_dir),
        "model": "Keras emotion_model.hdf5 (64x64x1)",
        "faces": len(faces),
        "classes": classes,
        "batch_size": CLASSIFIER_BATCH,
        "faces_per_second": statistics.median(rates),
        "faces_per_second_runs": rates,
        "accuracy": float(correct.mean()),
        "balanced_accuracy": balanced_accuracy(labels, predicted),
        "ece": expected_calibration_error(probabilities.max(axis=1), correct),
        "ece_bins": ECE_BINS,
        "per_class_recall": per_class_recall(classes, labels, predicted),
        "cpu_count": os.cpu_count(),
        "versions": versions(),
    }


def format_classifier(figures: dict[str, Any]) -> str:
    runs = ", ".join(f"{rate:,.0f}" for rate in figures["faces_per_second_runs"])
    return "\n".join(
        [
            f"fer {figures['versions'].get('fer', '?')} classifier alone ({figures['model']}) "
            f"on {figures['data']}: {figures['faces']} crops resized to 64x64, "
            f"{figures['cpu_count']} cores",
            f"  faces/s at batch {figures['batch_size']} (predict_on_batch, median of "
            f"{CLASSIFIER_REPEATS} passes after a warm-up): {figures['faces_per_second']:,.0f}"
            f"  (runs: {runs})",
            f"  accuracy: {figures['accuracy']:.2%}",
            f"  balanced accuracy: {figures['balanced_accuracy']:.2%}",
            f"  ECE ({figures['ece_bins']} bins): {figures['ece']:.3f}",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Measure the fer PyPI package (peer) on real photos or face crops.",
        epilog="Run with the peer environment's Python (~/fer-peer-venv/bin/python); "
        "see the module docstring for its install commands.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    photos = subparsers.add_parser(
        "photos", help="fer end to end (its Haar detector + classifier) on uncropped photos"
    )
    photos.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="folder of class folders")
    photos.add_argument(
        "--model",
        choices=("tflite", "keras"),
        default="tflite",
        help="fer's classifier: its default quantised TFLite model, or the Keras hdf5 one",
    )
    photos.add_argument("--json", type=Path, metavar="OUT", help="also write the figures here")
    classifier = subparsers.add_parser(
        "classifier", help="fer's Keras classifier alone on 48x48 face crops"
    )
    classifier.add_argument(
        "data_dir", type=Path, metavar="DATA_DIR", help="folder of class folders"
    )
    classifier.add_argument("--json", type=Path, metavar="OUT", help="also write the figures here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "photos":
        figures = run_photos(args.data_dir, args.model)
        print(format_photos(figures))
    else:
        figures = run_classifier(args.data_dir)
        print(format_classifier(figures))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
