"""Framing: where the classifier's square crop sits around a detected face.

The bundled models learned from FER2013's tight, registered 48x48 crops. A detector's box
is not that frame: each detector draws its box with its own scale and centre, so one fixed
margin around every box gives each detector a different framing, none of them the
training crops'. A :class:`Framing` maps a detector's box onto the crop the classifier
expects (scale of the side, horizontal and vertical shift of the centre, eye levelling);
each detector's framing is fitted from data (:mod:`ferkit.evaluation.framing_fit`,
``ferkit framing-fit``) and registered with the detector in :data:`ferkit.faces.DETECTORS`.

:func:`crop_face` is the one crop function: ``predict``, ``evaluate``, ``prepare`` of
photos, video, ``serve``, the Ray engine and the Python API all cut their faces with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ferkit.images import resize_face


def eye_angle(face: Any) -> float:
    """Angle in degrees of the line from the image-left eye to the image-right eye of a
    detected face (:class:`ferkit.faces.Face`; 0 without eye points)."""
    if not face.landmarks or "left_eye" not in face.landmarks:
        return 0.0
    (lx, ly), (rx, ry) = face.landmarks["left_eye"], face.landmarks["right_eye"]
    return math.degrees(math.atan2(ry - ly, rx - lx))


@dataclass(frozen=True)
class Framing:
    """A box-to-crop transform, in units of the box's longer side.

    Attributes:
        scale: the crop's side over the box's longer side.
        shift_x: the crop's centre minus the box's centre, horizontally (positive:
            towards the image's right).
        shift_y: the same vertically (positive: down).
        level_eyes: rotate about the crop's centre so the eyes are level, where the
            detector gives eye points.
    """

    scale: float
    shift_x: float = 0.0
    shift_y: float = 0.0
    level_eyes: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"a framing's scale must be a positive number, not {self.scale}")
        if not (math.isfinite(self.shift_x) and math.isfinite(self.shift_y)):
            raise ValueError("a framing's shifts must be finite numbers")

    @classmethod
    def margin(cls, margin: float) -> Framing:
        """The fixed framing of earlier releases: the box's longer side plus ``margin`` of
        it, centred on the box (eyes levelled)."""
        if not margin >= 0:
            raise ValueError(f"margin must be zero or positive, not {margin}")
        return cls(scale=1.0 + margin)

    def zoomed(self, zoom: float, shift_x: float = 0.0, shift_y: float = 0.0) -> Framing:
        """This framing with its side times ``zoom`` and its centre moved by the shifts
        (in box sides): the views of test-time augmentation."""
        return Framing(
            self.scale * zoom, self.shift_x + shift_x, self.shift_y + shift_y, self.level_eyes
        )

    def square(self, face: Any) -> tuple[tuple[float, float], float, float]:
        """The crop of a detected face (:class:`ferkit.faces.Face`) in its image:
        ``(centre, side, angle)`` in pixels and degrees (the angle that levels the eyes,
        or 0)."""
        x, y, w, h = face.box
        longer = float(max(w, h))
        centre = (x + w / 2.0 + self.shift_x * longer, y + h / 2.0 + self.shift_y * longer)
        angle = eye_angle(face) if self.level_eyes else 0.0
        return centre, max(longer * self.scale, 1.0), angle


def crop_face(
    image: np.ndarray, face: Any, framing: Framing, *, size: int, channels: int
) -> np.ndarray:
    """Cut one face out of an image with a framing: level the eyes, square crop, resize.

    Args:
        image: the RGB (or gray) ``uint8`` image the face was detected in.
        face: the detection; its landmarks, if any, set the rotation.
        framing: where the crop sits around the box (the detector's fitted framing:
            ``detector.framing``).
        size: output side in pixels.
        channels: 1 for grayscale, 3 for RGB.

    Returns:
        ``(size, size, channels)`` ``uint8``. Parts of the crop outside the image repeat
        its edge pixels.
    """
    import cv2

    centre, side, angle = framing.square(face)
    # Warp at up to 4x the output size, then area-resize: one warp straight to 48 px
    # would alias badly when the face is hundreds of pixels wide.
    work_size = int(max(size, min(round(side), 4 * size)))
    matrix = cv2.getRotationMatrix2D(centre, angle, work_size / side)
    matrix[0, 2] += work_size / 2.0 - centre[0]
    matrix[1, 2] += work_size / 2.0 - centre[1]
    crop = cv2.warpAffine(
        image,
        matrix,
        (work_size, work_size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return resize_face(crop, size, channels)


#: Test-time augmentation for still photos: each view is (zoom, shift_x, shift_y) of the
#: detector's framing, taken as is and mirrored; the probabilities are averaged. On the
#: taiwanese photos three scales and their mirror images gave 2-3 points over one crop,
#: more than shifts did (see docs/benchmarks.md).
TTA_VIEWS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.0, 0.0),
    (0.9, 0.0, 0.0),
    (1.1, 0.0, 0.0),
)


def crop_face_views(
    image: np.ndarray, face: Any, framing: Framing, *, size: int, channels: int
) -> np.ndarray:
    """The test-time-augmentation crops of one face: :data:`TTA_VIEWS` and their mirror
    images, ``(2 * len(TTA_VIEWS), size, size, channels)`` ``uint8``."""
    crops = [
        crop_face(image, face, framing.zoomed(*view), size=size, channels=channels)
        for view in TTA_VIEWS
    ]
    crops += [crop[:, ::-1] for crop in crops]
    return np.ascontiguousarray(np.stack(crops))
