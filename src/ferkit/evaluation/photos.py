"""``ferkit benchmark photos``: end to end on labelled photos of real faces, per detector.

Each photo goes through what ``ferkit predict photo.jpg`` does (the detector's thorough
search for still images, the detector's framing, the classifier, optionally test-time
augmentation), and the largest face's label is scored against the photo's class folder.
A photo where the detector finds no face counts as wrong, so a detector cannot look good
by missing the hard faces. One table: accuracy, balanced accuracy, ECE (over the faces
found), faces missed and faces per second (detection, crop and classification; decoding
left out, as it is the same for every detector).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class PhotoScores:
    """One detector's end-to-end figures on a folder of labelled photos."""

    detector: str
    photos: int
    missed: int
    accuracy: float
    balanced_accuracy: float
    ece: float
    faces_per_s: float
    per_class_recall: dict[str, float]


def score_photos(
    recognizer: Any, photos: list[tuple[Path, str]], images: list[np.ndarray] | None = None
) -> PhotoScores:
    """Run ``recognizer`` on every photo and score the largest face of each.

    Args:
        recognizer: an :class:`ferkit.inference.recognizer.EmotionRecognizer`.
        photos: ``(path, class)`` pairs (:func:`ferkit.evaluation.framing_fit.labelled_photos`).
        images: the photos already decoded (RGB), in the same order.
    """
    from ferkit.calibration import expected_calibration_error
    from ferkit.classes import canonical_name
    from ferkit.images import read_image

    index = {canonical_name(name): i for i, name in enumerate(recognizer.classes)}
    unknown = sorted({label for _, label in photos if canonical_name(label) not in index})
    if unknown:
        raise ValueError(
            f"class folders the model does not know: {', '.join(unknown)}; rename them to "
            f"the model's classes ({', '.join(recognizer.classes)}) or their synonyms"
        )
    labels = np.array([index[canonical_name(label)] for _, label in photos])
    predicted = np.full(len(photos), -1)
    probabilities: list[np.ndarray] = []
    found_labels: list[int] = []
    seconds = 0.0
    for position, (path, _) in enumerate(photos):
        rgb = images[position] if images is not None else read_image(path, color=True)
        started = time.perf_counter()
        _, faces, crops = recognizer.find_faces(rgb, "detect")
        if faces:
            row = recognizer.classify_faces(crops[:1])[0]
        seconds += time.perf_counter() - started
        if faces:
            predicted[position] = int(row.argmax())
            probabilities.append(row)
            found_labels.append(int(labels[position]))
    correct = predicted == labels
    recall = {
        recognizer.classes[c]: float(correct[labels == c].mean()) for c in sorted(set(labels))
    }
    found = len(probabilities)
    ece = (
        float(expected_calibration_error(np.stack(probabilities), np.array(found_labels), 15))
        if found
        else float("nan")
    )
    return PhotoScores(
        detector=recognizer.detector.name,
        photos=len(photos),
        missed=len(photos) - found,
        accuracy=float(correct.mean()),
        balanced_accuracy=float(np.mean(list(recall.values()))),
        ece=ece,
        faces_per_s=found / seconds if seconds else float("nan"),
        per_class_recall=recall,
    )


def benchmark_photos(
    data: str | os.PathLike[str],
    *,
    detectors: Sequence[str] | None = None,
    model: str | None = None,
    tta: bool = False,
    margin: float | None = None,
    progress: bool = True,
) -> tuple[str, list[PhotoScores]]:
    """The table of ``ferkit benchmark photos``: every detector end to end on ``data``.

    Args:
        data: a folder of class folders of photos (e.g. the shared taiwanese photos).
        detectors: the detectors to run (default: every registered one that this
            installation can build; one that needs a missing extra is reported as such).
        margin: None (default): each detector's fitted framing; a number: the fixed framing
            of earlier releases (the box plus this share of its side), to compare.

    Returns:
        The printable table and the figures.
    """
    from tqdm.auto import tqdm

    from ferkit.evaluation.framing_fit import labelled_photos
    from ferkit.extras import MissingExtraError
    from ferkit.faces import DEFAULT_DETECTOR, detector_names
    from ferkit.images import read_image
    from ferkit.inference.recognizer import EmotionRecognizer

    photos = labelled_photos(data)
    images = [
        read_image(path, color=True)
        for path, _ in tqdm(photos, desc="decode", unit="photo", disable=not progress)
    ]
    names = list(detectors or detector_names())
    scores, lines = [], []
    base = None
    for name in tqdm(names, desc="detectors", unit="detector", disable=not progress):
        try:
            recognizer = (
                EmotionRecognizer(model, detector=name, faces="detect", tta=tta, margin=margin)
                if base is None
                else base.with_detector(name)
            )
        except MissingExtraError as error:
            lines.append(f"{name:<16}not run: {error}")
            continue
        base = base or recognizer
        scores.append(score_photos(recognizer, photos, images))
    framing = f"fixed margin {margin:g}" if margin is not None else "each detector's fitted framing"
    header = [
        f"end to end on {len(photos)} photos of {Path(data)} ({framing}"
        + (", test-time augmentation" if tta else "")
        + f"; model {model or 'default'})",
        f"{'detector':<16}{'accuracy':>9}{'balanced':>10}{'ECE':>7}{'missed':>8}{'faces/s':>9}",
    ]
    rows = [
        f"{s.detector + (' *' if s.detector == DEFAULT_DETECTOR else ''):<16}"
        f"{s.accuracy:>9.1%}{s.balanced_accuracy:>10.1%}{s.ece:>7.3f}{s.missed:>8}"
        f"{s.faces_per_s:>9.0f}"
        for s in scores
    ]
    footer = [
        "* the default detector. A photo without a face found counts as wrong; ECE over the "
        "faces found (15 bins); faces/s: detection, crop and classification on this machine."
    ]
    return "\n".join(header + rows + lines + footer), scores
