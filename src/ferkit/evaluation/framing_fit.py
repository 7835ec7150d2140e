"""Fit each detector's framing (:class:`ferkit.framing.Framing`) from data.

``ferkit framing-fit`` runs the three steps below and prints the values that
:data:`ferkit.faces.DETECTORS` registers, with their spread:

1. **Where FER2013 puts a face.** Training crops, upscaled 3x and pasted into a canvas of
   their border's grey, go through a reference detector (BlazeFace full-range by
   default); the medians of its eye and mouth points, in crop units, are the training
   crops' registration: eye line at about 0.40 of the height, eyes about 0.36 of the
   side apart, the mouth about 0.36 of the side below the eyes.
2. **Each detector's box against that frame.** On photos of real faces, the reference
   detector's landmarks give each face's registered frame (centre and side from the eye
   and mouth points, as in step 1). Each detector's box of the same face is compared
   with it: the medians over the photos of the frame's side over the box's longer side,
   and of the centre's offset, are that detector's geometric framing. Labels are not
   used; detectors without landmarks (Haar) are fitted the same way.
3. **One zoom for all detectors.** The geometric framing reproduces the training crops'
   average registration, but FER2013's crops vary in scale and the classifier reads
   real faces better a little closer in. The labelled photos choose one factor common
   to every detector: the largest zoom (the closest to the training framing) whose
   end-to-end accuracy, averaged over the detectors, is within ``tolerance`` of the best
   on the grid. One number for all detectors, and a preference for the training
   framing, keep the photos' few performers from steering it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.framing import Framing, crop_face

#: The zoom grid of step 3 (1.0: the geometric framing as fitted).
DEFAULT_ZOOMS = (0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)


@dataclass(frozen=True)
class Registration:
    """Where a training crop puts the eyes and mouth, in units of the crop's side."""

    eye_y: float  # height of the midpoint between the eyes, from the top
    eye_distance: float  # between the eye centres
    eye_to_mouth: float  # from the eyes' midpoint to the mouth point
    faces: int = 0  # crops whose landmarks were found

    def frame(self, face: Any) -> tuple[np.ndarray, float] | None:
        """The registered frame of a detected face with eye and mouth points: its centre
        (pixels) and side, or None without landmarks."""
        points = _eyes_and_mouth(face)
        if points is None:
            return None
        left, right, mouth = points
        middle = (left + right) / 2.0
        side = (
            np.linalg.norm(right - left) / self.eye_distance
            + np.linalg.norm(mouth - middle) / self.eye_to_mouth
        ) / 2.0
        angle = np.arctan2(right[1] - left[1], right[0] - left[0])
        down = np.array([-np.sin(angle), np.cos(angle)])
        return middle + down * (0.5 - self.eye_y) * side, float(side)


def _eyes_and_mouth(face: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    marks = face.landmarks or {}
    if "left_eye" not in marks or "right_eye" not in marks:
        return None
    if "mouth" in marks:
        mouth = np.asarray(marks["mouth"], float)
    elif "mouth_left" in marks and "mouth_right" in marks:
        mouth = (
            np.asarray(marks["mouth_left"], float) + np.asarray(marks["mouth_right"], float)
        ) / 2
    else:
        return None
    return np.asarray(marks["left_eye"], float), np.asarray(marks["right_eye"], float), mouth


def paste_crop(crop: np.ndarray, upscale: int = 3) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A grey training crop upscaled and pasted in the middle of a canvas three times its
    side, filled with the median of the crop's border.

    Returns:
        The RGB canvas and the crop's ``(x, y, side)`` in it.
    """
    import cv2

    gray = crop[:, :, 0] if crop.ndim == 3 else crop
    side = gray.shape[0] * upscale
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    canvas = np.full((3 * side, 3 * side), int(np.median(border)), dtype=np.uint8)
    canvas[side : 2 * side, side : 2 * side] = cv2.resize(
        gray, (side, side), interpolation=cv2.INTER_CUBIC
    )
    return np.repeat(canvas[:, :, None], 3, axis=2), (side, side, side)


def measure_registration(
    crops: Iterable[np.ndarray], detector: Any, progress: bool = False
) -> Registration:
    """Step 1: the median eye and mouth positions the detector finds in training crops."""
    from ferkit.outputs import progress_bar

    rows = []
    for crop in progress_bar(list(crops), desc="training crops", unit="crop", disable=not progress):
        canvas, (x0, y0, side) = paste_crop(crop)
        for face in detector.detect(canvas):
            points = _eyes_and_mouth(face)
            if points is None or not _centred_in(face.box, (x0, y0, side)):
                continue
            left, right, mouth = ((p - (x0, y0)) / side for p in points)
            rows.append(
                (
                    (left[1] + right[1]) / 2.0,
                    np.linalg.norm(right - left),
                    np.linalg.norm(mouth - (left + right) / 2.0),
                )
            )
            break
    if len(rows) < 10:
        raise ValueError(
            f"the {detector.name} detector found landmarks in only {len(rows)} training crops; "
            "give more crops (--limit) or another --reference detector"
        )
    eye_y, distance, to_mouth = np.median(np.asarray(rows), axis=0)
    return Registration(float(eye_y), float(distance), float(to_mouth), faces=len(rows))


def _centred_in(box: Sequence[float], square: tuple[int, int, int]) -> bool:
    x, y, w, h = box
    x0, y0, side = square
    return (
        abs(x + w / 2 - (x0 + side / 2)) < side / 2 and abs(y + h / 2 - (y0 + side / 2)) < side / 2
    )


@dataclass
class DetectorFit:
    """Step 2's result for one detector: the geometric framing and its spread."""

    framing: Framing
    faces: int
    quartiles: dict[str, tuple[float, float]] = field(default_factory=dict)


def fit_box_transform(boxes: np.ndarray, centres: np.ndarray, sides: np.ndarray) -> DetectorFit:
    """Step 2 for one detector: the median transform from boxes to registered frames.

    Args:
        boxes: ``(N, 4)`` detector boxes ``x, y, w, h``.
        centres: ``(N, 2)`` registered frames' centres.
        sides: ``(N,)`` registered frames' sides.
    """
    boxes = np.asarray(boxes, float)
    if len(boxes) == 0:
        raise ValueError("no face to fit a framing on")
    longer = boxes[:, 2:].max(axis=1)
    middle = boxes[:, :2] + boxes[:, 2:] / 2.0
    values = {
        "scale": np.asarray(sides, float) / longer,
        "shift_x": (centres[:, 0] - middle[:, 0]) / longer,
        "shift_y": (centres[:, 1] - middle[:, 1]) / longer,
    }
    medians = {name: float(np.median(v)) for name, v in values.items()}
    quartiles = {
        name: (float(np.percentile(v, 25)), float(np.percentile(v, 75)))
        for name, v in values.items()
    }
    return DetectorFit(Framing(**medians), faces=len(boxes), quartiles=quartiles)


def _largest(faces: list[Any]) -> Any | None:
    """The largest face (detectors return faces largest first), or None."""
    return faces[0] if faces else None


def labelled_photos(folder: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """The photos of a folder of class folders, as ``(path, class)``, sorted."""
    from ferkit.images import IMAGE_EXTENSIONS

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of class folders of photos")
    photos = [
        (path, class_dir.name)
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir())
        for path in sorted(class_dir.iterdir())
        if path.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not photos:
        raise ValueError(f"{root}: holds no class folders of images")
    return photos


@dataclass
class FramingFit:
    """Everything ``ferkit framing-fit`` found: registration, per-detector fits, zoom."""

    registration: Registration
    detectors: dict[str, DetectorFit]
    zoom: float
    zoom_table: list[dict[str, float]]
    photos: int

    def framings(self) -> dict[str, Framing]:
        """The fitted framing of each detector: the geometric one times the zoom."""
        return {
            name: Framing(
                round(fit.framing.scale * self.zoom, 3),
                round(fit.framing.shift_x, 3),
                round(fit.framing.shift_y, 3),
            )
            for name, fit in self.detectors.items()
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "registration": vars(self.registration),
            "photos": self.photos,
            "zoom": self.zoom,
            "zoom_table": self.zoom_table,
            "detectors": {
                name: {
                    "geometric": vars(fit.framing),
                    "faces": fit.faces,
                    "quartiles": fit.quartiles,
                    "framing": vars(self.framings()[name]),
                }
                for name, fit in self.detectors.items()
            },
        }

    def report(self) -> str:
        from ferkit.faces import DETECTORS

        reg = self.registration
        lines = [
            f"training crops' registration ({reg.faces} crops): eye line at {reg.eye_y:.3f}, "
            f"eyes {reg.eye_distance:.3f} apart, mouth {reg.eye_to_mouth:.3f} below the eyes",
            f"zoom chosen on {self.photos} labelled photos: {self.zoom:g} "
            "(mean end-to-end accuracy over the detectors, per zoom: "
            + ", ".join(f"{row['zoom']:g}: {row['mean_accuracy']:.1%}" for row in self.zoom_table)
            + ")",
            "",
            f"{'detector':<16}{'faces':>6}  {'scale':>7}{'shift_x':>9}{'shift_y':>9}"
            f"   scale IQR      registered now",
        ]
        for name, framing in self.framings().items():
            fit = self.detectors[name]
            low, high = fit.quartiles["scale"]
            now = DETECTORS[name].framing if name in DETECTORS else None
            registered = f"{now.scale:.3f} {now.shift_x:+.3f} {now.shift_y:+.3f}" if now else "-"
            lines.append(
                f"{name:<16}{fit.faces:>6}  {framing.scale:>7.3f}{framing.shift_x:>+9.3f}"
                f"{framing.shift_y:>+9.3f}   {low * self.zoom:.3f}..{high * self.zoom:.3f}   "
                f"{registered}"
            )
        return "\n".join(lines)


def fit_framing(
    crops: str | os.PathLike[str],
    photos: str | os.PathLike[str],
    *,
    detectors: Sequence[str],
    reference: str = "blazeface-full",
    model: str | None = None,
    crop_limit: int = 2000,
    zooms: Sequence[float] = DEFAULT_ZOOMS,
    tolerance: float = 0.01,
    seed: int = 0,
    progress: bool = True,
) -> FramingFit:
    """Fit every detector's framing (steps 1 to 3 of this module's docstring).

    Args:
        crops: a folder of class folders of training crops (FER2013 train).
        photos: a folder of class folders of photos of real faces (the class names are
            used by step 3 only).
        detectors: the detectors to fit.
        reference: the detector whose eye and mouth points register faces.
        model: the classifier of step 3 (default: the bundled model).
        crop_limit: training crops drawn (with ``seed``) for step 1.
        zooms: the grid of step 3.
        tolerance: step 3's allowance below the best mean accuracy.
    """
    from ferkit.classes import canonical_name
    from ferkit.faces import make_detector
    from ferkit.images import read_image
    from ferkit.inference.runtimes import load_classifier
    from ferkit.outputs import progress_bar

    crop_paths = [path for path, _ in labelled_photos(crops)]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(crop_paths), min(crop_limit, len(crop_paths)), replace=False)
    reference_detector = make_detector(reference)
    registration = measure_registration(
        (read_image(crop_paths[i], color=False) for i in sorted(chosen)),
        reference_detector,
        progress=progress,
    )

    labelled = labelled_photos(photos)
    images = [
        read_image(path, color=True)
        for path, _ in progress_bar(labelled, desc="photos", unit="photo", disable=not progress)
    ]
    frames = [
        registration.frame(face) if (face := _largest(reference_detector.detect(image))) else None
        for image in images
    ]
    found: dict[str, list[Any]] = {}
    fits: dict[str, DetectorFit] = {}
    for name in detectors:
        detector = reference_detector if name == reference else make_detector(name)
        faces = [
            _largest(detector.detect(image))
            for image in progress_bar(images, desc=name, unit="photo", disable=not progress)
        ]
        found[name] = faces
        pairs = [
            (face.box, frame)
            for face, frame in zip(faces, frames, strict=True)
            if face is not None and frame is not None and _same_face(face.box, frame)
        ]
        fits[name] = fit_box_transform(
            np.array([box for box, _ in pairs], float),
            np.array([frame[0] for _, frame in pairs], float),
            np.array([frame[1] for _, frame in pairs], float),
        )

    classifier = load_classifier(model)
    size, _, channels = classifier.image_shape
    index = {canonical_name(name): i for i, name in enumerate(classifier.classes)}
    labels = np.array([index.get(canonical_name(label), -1) for _, label in labelled])
    table = []
    for zoom in zooms:
        row: dict[str, float] = {"zoom": float(zoom)}
        for name, faces in found.items():
            framing = fits[name].framing.zoomed(zoom)
            kept = [i for i, face in enumerate(faces) if face is not None]
            batch = np.stack(
                [
                    crop_face(images[i], faces[i], framing, size=size, channels=channels)
                    for i in kept
                ]
            )
            predicted = classifier.predict_proba(batch).argmax(axis=1)
            row[name] = float(np.sum(predicted == labels[kept]) / len(labelled))
        row["mean_accuracy"] = float(np.mean([row[name] for name in found]))
        table.append(row)
    best = max(row["mean_accuracy"] for row in table)
    zoom = max(row["zoom"] for row in table if row["mean_accuracy"] >= best - tolerance)
    return FramingFit(registration, fits, zoom, table, photos=len(labelled))


def _same_face(box: Sequence[float], frame: tuple[np.ndarray, float]) -> bool:
    """Whether a detector's box and a registered frame are of one face (centres closer
    than half the box's longer side)."""
    x, y, w, h = box
    return bool(np.linalg.norm(frame[0] - (x + w / 2.0, y + h / 2.0)) < max(w, h) / 2.0)


def write_fit(fit: FramingFit, out: str | os.PathLike[str]) -> Path:
    """Write the fit as JSON (atomically)."""
    from ferkit.outputs import write_atomic

    path = Path(out)
    write_atomic(path, json.dumps(fit.to_dict(), indent=2) + "\n")
    return path
