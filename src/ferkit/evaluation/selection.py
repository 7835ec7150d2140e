"""Three validation measures of a seven-class model, for choosing teachers, their mixture
and a student's epoch on the same footing.

1. **FER2013 val accuracy**: the prepared validation faces against their labels.
2. **FER+ plurality agreement**: the same faces against the plurality of their FER+
   votes (found by pixels; ties left out), as ``ferkit evaluate --votes`` scores it.
3. **Photos end to end**: the labelled photos of a folder of class folders (the shared
   taiwanese photos), each through the default detector's thorough search and fitted
   framing, the largest face classified; a photo without a face counts as wrong, as in
   ``ferkit benchmark photos``.

Faces are detected once; each model gets crops at its own input shape, so teachers of
another shape (face-api's 112x112 colour) are measured with the same boxes. Probabilities
are kept, so mixtures of models are scored without running them again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: The names of the three measures, in the order of :meth:`ValidationMeasures.score`.
MEASURES = ("fer2013_val", "ferplus_plurality", "photos")


@dataclass
class Probabilities:
    """One model's (or mixture's) probabilities over the dataset's classes on the faces of
    :class:`ValidationMeasures`; a NaN row on photos: no face found."""

    val: np.ndarray
    photos: np.ndarray

    def mixed(self, others: list[Probabilities], weights: list[float]) -> Probabilities:
        """The weighted mean of this and ``others``' probabilities (a NaN photo row stays
        NaN: the same detector finds the same faces for every model)."""
        members = [self, *others]
        total = float(sum(weights))
        return Probabilities(
            val=sum(w * m.val for w, m in zip(weights, members, strict=True)) / total,
            photos=sum(w * m.photos for w, m in zip(weights, members, strict=True)) / total,
        )


class ValidationMeasures:
    """The faces, labels and detections behind the three measures.

    Args:
        data: a prepared FER2013 dataset (``ferkit prepare``).
        votes: FER+ prepared with ``--soft-labels`` (copies of the same faces).
        photos: a folder of class folders of photos (e.g. ``../shared/datasets/taiwanese``).
        split: the validation split of ``data``.
        detector: the face detector of the photos (default: ferkit's default).
    """

    def __init__(
        self,
        data: str | os.PathLike[str],
        votes: str | os.PathLike[str],
        photos: str | os.PathLike[str],
        *,
        split: str = "val",
        detector: str | None = None,
        progress: bool = True,
    ) -> None:
        from ferkit.classes import canonical_name
        from ferkit.data.dataset import PreparedDataset
        from ferkit.data.matching import matched_votes
        from ferkit.evaluation.framing_fit import labelled_photos
        from ferkit.faces import DEFAULT_DETECTOR, make_detector
        from ferkit.images import read_image
        from ferkit.outputs import progress_bar

        faces = PreparedDataset(data).split(split)
        self.classes = list(faces.classes)
        self.images, self.labels = faces.images, faces.labels
        vote_data = PreparedDataset(votes)
        found = matched_votes(faces, [vote_data.split(s) for s in vote_data.splits])
        matched = np.isfinite(found[:, 0])
        top = np.where(matched[:, None], found, 0.0).max(axis=1, keepdims=True)
        tied = matched & ((np.abs(found - top) < 1e-6).sum(axis=1) > 1)
        self.scored = matched & ~tied
        self.vote_labels = np.where(self.scored, np.nan_to_num(found).argmax(axis=1), -1)
        index = {canonical_name(name): i for i, name in enumerate(self.classes)}
        pairs = labelled_photos(photos)
        self.photo_paths = [path for path, _ in pairs]
        self.photo_labels = np.array([index[canonical_name(label)] for _, label in pairs])
        self.detector = make_detector(detector or DEFAULT_DETECTOR)
        self._photos: list[tuple[np.ndarray, Any]] = []
        for path in progress_bar(
            self.photo_paths, desc="detect", unit="photo", disable=not progress
        ):
            rgb = read_image(path, color=True)
            found_faces = self.detector.detect(rgb, thorough=True)
            self._photos.append((rgb, found_faces[0] if found_faces else None))
        logger.info(
            "%d val faces (%d scored against FER+ votes), %d photos (%d without a face)",
            len(self.labels),
            int(self.scored.sum()),
            len(self._photos),
            sum(face is None for _, face in self._photos),
        )

    def photo_crops(self, size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """The largest face of each photo cut at ``size`` px and ``channels``, and the
        positions of the photos that have one."""
        from ferkit.framing import crop_face

        kept = [i for i, (_, face) in enumerate(self._photos) if face is not None]
        crops = [
            crop_face(self._photos[i][0], self._photos[i][1], self.detector.framing,
                      size=size, channels=channels)
            for i in kept
        ]  # fmt: skip
        return np.stack(crops), np.array(kept)

    def probabilities(self, model: str | os.PathLike[str] | Any | None) -> Probabilities:
        """A model's calibrated probabilities on the val faces and the photos: a name or
        path (see :func:`ferkit.training.distill.load_teacher`: classes the dataset lacks
        are dropped and the rest renormalised), or a loaded teacher."""
        from ferkit.training.distill import Teacher, load_teacher

        teacher = model if isinstance(model, Teacher) else load_teacher(model, self.classes)
        size, _, channels = teacher.model.image_shape
        val = teacher.predict_proba(self.images)
        crops, kept = self.photo_crops(size, channels)
        photos = np.full((len(self._photos), len(self.classes)), np.nan, dtype=np.float32)
        photos[kept] = teacher.predict_proba(crops)
        return Probabilities(val=val, photos=photos)

    def score(self, probabilities: Probabilities) -> dict[str, float]:
        """The three measures (and balanced val accuracy, val ECE and their mean)."""
        from ferkit.calibration import expected_calibration_error

        predicted = probabilities.val.argmax(axis=1)
        val = float(np.mean(predicted == self.labels))
        recall = [np.mean(predicted[self.labels == c] == c) for c in np.unique(self.labels)]
        ferplus = float(np.mean(predicted[self.scored] == self.vote_labels[self.scored]))
        found = np.isfinite(probabilities.photos[:, 0])
        photo_predicted = np.where(found, np.nan_to_num(probabilities.photos).argmax(axis=1), -1)
        photos = float(np.mean(photo_predicted == self.photo_labels))
        return {
            "fer2013_val": val,
            "ferplus_plurality": ferplus,
            "photos": photos,
            "mean": (val + ferplus + photos) / 3,
            "fer2013_val_balanced": float(np.mean(recall)),
            "fer2013_val_ece": float(
                expected_calibration_error(probabilities.val, self.labels, 15)
            ),
        }


def passes(scores: dict[str, float], floor: float) -> bool:
    """The selection rule's gate: FER2013 val accuracy at least ``floor``."""
    return scores["fer2013_val"] >= floor


def epoch_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The per-epoch checkpoints of a run (``keep_epoch_checkpoints``), in epoch order:
    ``epoch_NNN.keras`` (Keras engine) or ``epoch_NNN.weights.npz`` (torch engine)."""
    folder = Path(run_dir, "checkpoints")
    return sorted([*folder.glob("epoch_*.keras"), *folder.glob("epoch_*.weights.npz")])
