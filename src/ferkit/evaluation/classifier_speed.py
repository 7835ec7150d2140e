"""``ferkit benchmark classifier``: faces/s of one classifier on every runtime at batch
1, 64 (what ``predict`` uses for image files) and 256, each runtime's accuracy on real
faces beside its speed, the ``fer`` package's classifier measured in the same run where
it is installed (:mod:`ferkit.evaluation.peer`), and whether the speed target is met.

The target: the path ``predict`` takes by default (the model's own runtime, see
:func:`ferkit.inference.runtimes.default_backend`) classifies at least
:data:`TARGET_TIMES_PEER` times as many faces a second as the peer at batch 64.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.release.bundle import INT8_TOLERANCE

#: The default path's faces/s over the peer's, at batch 64: the target and the aim.
TARGET_TIMES_PEER = 1.5
AIM_TIMES_PEER = 3.0
BATCHES = (1, 64, 256)
SINGLE_FACES = 200  # faces timed at batch 1


def labelled_faces(
    source: str | os.PathLike[str],
    classes: list[str],
    side: int,
    channels: int,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Real faces and their labels (indices into ``classes``) to score runtimes on.

    ``source``: a prepared dataset (its val split), or a folder of class folders of face
    crops (read and resized as ``predict --faces crop`` does); ``limit``: only that many
    faces, spread evenly over it (:func:`spread`). Returns the faces, the labels and a
    name for the table.

    Raises:
        FileNotFoundError: ``source`` is missing.
        ValueError: a class folder names no class of the model.
    """
    root = Path(source)
    if (root / "manifest.json").is_file():
        from ferkit.data.dataset import PreparedDataset

        val = PreparedDataset(root).split("val")
        kept = spread(len(val.labels), limit)
        return val.images[kept], val.labels[kept], f"{root.name} val"
    from ferkit.classes import canonical_name
    from ferkit.evaluation.framing_fit import labelled_photos
    from ferkit.images import read_image, resize_face

    index = {canonical_name(name): i for i, name in enumerate(classes)}
    pairs = labelled_photos(root)
    pairs = [pairs[i] for i in spread(len(pairs), limit)]
    unknown = sorted({label for _, label in pairs if canonical_name(label) not in index})
    if unknown:
        raise ValueError(
            f"{root}: class folders the model does not know: {', '.join(unknown)}; give "
            f"a folder of class folders named after its classes ({', '.join(classes)})"
        )
    faces = np.stack(
        [resize_face(read_image(path, color=channels == 3), side, channels) for path, _ in pairs]
    )
    labels = np.array([index[canonical_name(label)] for _, label in pairs])
    return faces, labels, f"{root.parent.name}/{root.name}"


def spread(count: int, limit: int | None) -> np.ndarray:
    """Indices of ``limit`` of ``count`` items spread evenly (so a folder sorted by class
    keeps every class but the smallest ones in proportion); all of them without a
    limit."""
    if not limit or limit >= count:
        return np.arange(count)
    return np.linspace(0, count - 1, limit).round().astype(int)


def _runtimes(model: str | os.PathLike[str] | None, scratch: Path) -> dict[str, Any]:
    """Every runtime this install can run ``model`` on: the model folder's files, and
    float32 LiteRT from a fresh export."""
    from ferkit.inference.runtimes import TFLiteModel, load_classifier
    from ferkit.release.export import export_tflite

    names = ["keras", "onnx", "onnx-int8"]
    if importlib.util.find_spec("openvino") is not None:
        names += ["openvino", "openvino-int8"]
    runtimes = {name: load_classifier(model, name) for name in names}
    keras_model = runtimes["keras"]
    path = export_tflite(keras_model.model, scratch / "model.tflite")
    runtimes["tflite"] = TFLiteModel(path, keras_model.classes, keras_model.temperature)
    with contextlib.suppress(FileNotFoundError):  # a folder without an int8 LiteRT file
        runtimes["tflite-int8"] = load_classifier(model, "tflite-int8")
    return runtimes


def benchmark_classifier(
    repeats: int = 5,
    n_faces: int = 2048,
    model: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] | None = None,
    peer: bool = True,
    limit: int | None = None,
) -> str:
    """Faces/s of a classifier (``model``: default, the bundled one) on each runtime, with
    each runtime's accuracy and, where ``fer`` is installed and ``peer``, fer's
    classifier timed in the same run; returns a printable table ending with the target.

    Speeds are medians of ``repeats`` timed passes over ``n_faces`` random faces (the cost
    does not depend on the pixel values), the runtimes and the peer taking turns
    (:func:`_interleaved_rates`). Accuracy is on ``data``: a prepared dataset's
    val split or a folder of class folders of crops (default: the shared FER2013 val
    crops, where present; else no accuracy column); ``limit``: that many of its faces
    only, spread evenly.
    """
    from ferkit.evaluation.benchmark import shared_dir
    from ferkit.evaluation.peer import PeerClassifier, fer_inputs
    from ferkit.inference.runtimes import default_backend

    if data is None and (shared_dir() / "datasets" / "fer2013" / "val").is_dir():
        data = shared_dir() / "datasets" / "fer2013" / "val"
    with tempfile.TemporaryDirectory() as scratch:
        runtimes = _runtimes(model, Path(scratch))
        reference = runtimes["keras"]
        side, _, channels = reference.image_shape
        scored = None
        if data is not None:
            scored = labelled_faces(data, list(reference.classes), side, channels, limit)
        faces = np.random.default_rng(0).integers(0, 256, (n_faces, side, side, channels))
        faces = faces.astype(np.uint8)
        fer = PeerClassifier.load() if peer and channels == 1 else None
        passes = {
            name: lambda b, r=runtime: r.predict_logits(faces[: _faces_at(b, n_faces)], b)
            for name, runtime in runtimes.items()
        }
        if fer is not None:
            peer_name = f"fer {fer.version} Keras (peer)"
            inputs = fer_inputs(faces)  # resizing to fer's 64x64 is not timed
            passes[peer_name] = lambda b: fer.predict_inputs(inputs[: _faces_at(b, n_faces)], b)
        rates = _interleaved_rates(passes, n_faces, repeats)
        rows: dict[str, tuple[list[float], float | None]] = {}
        for name, runtime in runtimes.items():
            accuracy = None
            if scored is not None:
                predicted = runtime.predict_proba(scored[0], batch_size=64).argmax(axis=1)
                accuracy = float(np.mean(predicted == scored[1]))
            rows[name] = (rates[name], accuracy)
        if fer is not None:
            accuracy = None
            if scored is not None:
                probabilities = fer.probabilities(scored[0], list(reference.classes))
                accuracy = float(np.mean(probabilities.argmax(axis=1) == scored[1]))
            rows[peer_name] = (rates[peer_name], accuracy)
    if not peer:
        note = ""
    elif channels != 1:
        note = "fer's classifier takes grey faces, so it was not measured beside this model"
    elif fer is None:
        note = (
            "fer's classifier not measured: install it beside ferkit to see the peer's "
            "figure (pip install tensorflow-cpu 'opencv-python-headless<5', then "
            "pip install --no-deps fer==25.10.3)"
        )
    else:
        note = ""
    return _table(rows, model, side, repeats, scored, default_backend(model), note)


def _interleaved_rates(
    passes: dict[str, Any], n_faces: int, repeats: int
) -> dict[str, list[float]]:
    """Faces/s of each ``passes[name](batch)`` at every batch size of :data:`BATCHES`: at
    each batch size, the median of ``repeats`` rounds, each round timing every runtime
    once in turn, so that a machine whose speed drifts over the minutes of the benchmark
    slows them all alike rather than whichever ran during a slow spell. Each runtime's
    first call at a batch size is not timed (LiteRT sizes its tensors there)."""
    timed: dict[str, list[float]] = {name: [] for name in passes}
    for b in BATCHES:
        for run in passes.values():
            run(b)  # warm up at this batch size
        rounds: dict[str, list[float]] = {name: [] for name in passes}
        for _ in range(repeats):
            for name, run in passes.items():
                started = time.perf_counter()
                run(b)
                rounds[name].append(_faces_at(b, n_faces) / (time.perf_counter() - started))
        for name, rates in rounds.items():
            timed[name].append(statistics.median(rates))
    return timed


def _faces_at(batch: int, n_faces: int) -> int:
    """Faces timed at ``batch``: :data:`SINGLE_FACES` one at a time, else ``n_faces``."""
    return min(SINGLE_FACES, n_faces) if batch == 1 else n_faces


def _table(
    rows: dict[str, tuple[list[float], float | None]],
    model: str | os.PathLike[str] | None,
    side: int,
    repeats: int,
    scored: tuple[np.ndarray, np.ndarray, str] | None,
    default: str,
    note: str,
) -> str:
    peer = next((name for name in rows if name.endswith("(peer)")), None)
    peer_rate = rows[peer][0][1] if peer else None
    lines = [
        f"{model or 'default'} classifier on {os.cpu_count()} cores, {side}x{side} faces, "
        f"medians of {repeats} runs"
        + (f"; accuracy on {len(scored[1]):,} faces of {scored[2]}" if scored else ""),
        f"{'runtime':<24}{'b=1 faces/s':>12}{'b=64 faces/s':>14}{'b=256 faces/s':>15}"
        + (f"{'x fer b=64':>12}" if peer_rate else "")
        + (f"{'accuracy':>10}" if scored else ""),
    ]
    for name, (rates, accuracy) in rows.items():
        label = f"{name} (default)" if name == default else name
        line = f"{label:<24}{rates[0]:>12,.0f}{rates[1]:>14,.0f}{rates[2]:>15,.0f}"
        if peer_rate:
            line += f"{rates[1] / peer_rate:>12.2f}"
        if scored:
            line += f"{accuracy:>10.2%}"
        lines.append(line)
    float_accuracy = rows["onnx"][1]
    if scored and float_accuracy is not None:
        keeping = [
            name
            for name, (_, accuracy) in rows.items()
            if name != peer and accuracy is not None and accuracy >= float_accuracy - INT8_TOLERANCE
        ]
        fastest = max(keeping, key=lambda name: rows[name][0][1])
        lines.append(
            f"fastest runtime within {INT8_TOLERANCE * 100:.1f} points of float32 ONNX's "
            f"accuracy: {fastest} ({rows[fastest][0][1]:,.0f} faces/s at b=64)"
        )
    if peer_rate:
        times = rows[default][0][1] / peer_rate
        verdict = "met" if times >= TARGET_TIMES_PEER else "NOT met"
        aim = " (the aim, 3x, met too)" if times >= AIM_TIMES_PEER else ""
        lines.append(
            f"target: predict's default path ({default}) at >= {TARGET_TIMES_PEER}x fer's "
            f"faces/s at b=64: {times:.2f}x, {verdict}{aim}"
        )
    elif note:
        lines.append(note)
    return "\n".join(lines)
