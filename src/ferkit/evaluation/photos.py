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
    from ferkit.evaluation.framing_fit import labelled_photos
    from ferkit.extras import MissingExtraError
    from ferkit.faces import DEFAULT_DETECTOR, detector_names
    from ferkit.images import read_image
    from ferkit.inference.recognizer import EmotionRecognizer
    from ferkit.outputs import progress_bar

    photos = labelled_photos(data)
    images = [
        read_image(path, color=True)
        for path, _ in progress_bar(photos, desc="decode", unit="photo", disable=not progress)
    ]
    names = list(detectors or detector_names())
    scores, lines = [], []
    base = None
    for name in progress_bar(names, desc="detectors", unit="detector", disable=not progress):
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


def fit_joint_temperature(
    crops: str | os.PathLike[str],
    photos: str | os.PathLike[str],
    *,
    model: str | None = None,
    detector: str | None = None,
    progress: bool = True,
) -> str:
    """Fit one temperature on training-framed crops and real photos together, and say
    whether the model should adopt it.

    The logits of every crop of ``crops`` (FER2013 val) and of the largest face of every
    photo of ``photos`` (the detector's framing, no test-time augmentation) are pooled,
    and the temperature that minimises their negative log-likelihood is found. The rule:
    adopt it when it lowers the photos' ECE and keeps the crops' ECE at 0.03 or under.

    Returns:
        A printable report: ECE of both sets at the model's temperature and at the joint
        one, and the rule's verdict.
    """
    from ferkit.calibration import expected_calibration_error, fit_temperature, softmax
    from ferkit.classes import canonical_name
    from ferkit.evaluation.framing_fit import labelled_photos
    from ferkit.faces import DEFAULT_DETECTOR
    from ferkit.images import read_image
    from ferkit.inference.recognizer import EmotionRecognizer
    from ferkit.outputs import progress_bar

    recognizer = EmotionRecognizer(model, detector=detector or DEFAULT_DETECTOR, faces="detect")
    classifier = recognizer.model
    index = {canonical_name(name): i for i, name in enumerate(classifier.classes)}
    size, _, channels = classifier.image_shape

    def logits_of(pairs: list[tuple[Path, str]], detect: bool) -> tuple[np.ndarray, np.ndarray]:
        faces, labels = [], []
        for path, label in progress_bar(pairs, desc=Path(pairs[0][0]).parents[1].name, unit="image",
                                disable=not progress):  # fmt: skip
            if canonical_name(label) not in index:
                continue
            image = read_image(path, color=detect)
            if detect:
                _, found, cut = recognizer.find_faces(image, "detect", tta=False)
                if not found:
                    continue
                faces.append(cut[0])
            else:
                from ferkit.images import resize_face

                faces.append(resize_face(image, size, channels))
            labels.append(index[canonical_name(label)])
        return classifier.predict_logits(np.stack(faces)), np.array(labels)

    crop_logits, crop_labels = logits_of(labelled_photos(crops), detect=False)
    photo_logits, photo_labels = logits_of(labelled_photos(photos), detect=True)
    joint = fit_temperature(
        np.concatenate([crop_logits, photo_logits]), np.concatenate([crop_labels, photo_labels])
    )
    rows = []
    for name, temperature in (("model's", classifier.temperature), ("joint", joint)):
        crop_ece = expected_calibration_error(softmax(crop_logits, temperature), crop_labels)
        photo_ece = expected_calibration_error(softmax(photo_logits, temperature), photo_labels)
        rows.append((name, temperature, crop_ece, photo_ece))
    (_, _, _, photo_before), (_, _, crop_after, photo_after) = rows
    adopt = photo_after < photo_before and crop_after <= 0.03
    lines = [
        f"temperature fitted on {len(crop_labels)} crops of {crops} and {len(photo_labels)} "
        f"faces of {photos} together ({recognizer.detector.name}, its framing)",
        f"{'temperature':<20}{'T':>7}{'ECE crops':>11}{'ECE photos':>12}",
        *(f"{n:<20}{t:>7.3f}{c:>11.4f}{p:>12.4f}" for n, t, c, p in rows),
        "rule (photos' ECE lower, crops' ECE <= 0.03): "
        + (f"adopt T = {joint:.3f}" if adopt else "keep the model's temperature"),
    ]
    return "\n".join(lines)
