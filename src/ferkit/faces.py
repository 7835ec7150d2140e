"""Face detection and alignment, with detectors whose weights ship in their packages.

Two detectors, chosen by name through :func:`make_detector`:

- ``mtcnn`` (default): the ``mtcnn`` package's three-stage network on TensorFlow. It finds
  turned and small faces and gives five landmarks, so faces are aligned by the eyes.
- ``haar``: OpenCV's frontal-face Haar cascade. Several times faster, misses turned
  faces, gives no landmarks (faces are cropped without rotation).

Nothing is downloaded: both load files installed with their Python packages.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ferkit.images import resize_face


@dataclass(frozen=True)
class Face:
    """One detected face, in the pixel coordinates of the image it was found in."""

    box: tuple[int, int, int, int]  # x, y, width, height
    confidence: float
    landmarks: dict[str, tuple[float, float]] | None = field(default=None)

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]


class FaceDetector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Face]:
        """Return the faces in an RGB ``uint8`` image, largest first."""
        ...


def _shrink_for_detection(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscale big photos before detection: faces stay findable, time drops sharply."""
    import cv2

    longest = max(image.shape[:2])
    if longest <= max_side:
        return image, 1.0
    scale = max_side / longest
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def _clip_box(x: float, y: float, w: float, h: float, shape: tuple[int, ...]) -> tuple:
    x0, y0 = max(0, round(x)), max(0, round(y))
    x1, y1 = min(shape[1], round(x + w)), min(shape[0], round(y + h))
    return (x0, y0, max(0, x1 - x0), max(0, y1 - y0))


class MTCNNDetector:
    """MTCNN from the ``mtcnn`` package (TensorFlow), with five landmarks per face."""

    name = "mtcnn"

    def __init__(self, min_confidence: float = 0.9, max_side: int = 800) -> None:
        from ferkit._tf import import_tensorflow

        import_tensorflow()
        from mtcnn import MTCNN

        self.min_confidence = min_confidence
        self.max_side = max_side
        self._mtcnn = MTCNN(device="CPU:0")

    def detect(self, image: np.ndarray) -> list[Face]:
        image = _as_rgb(image)
        small, scale = _shrink_for_detection(image, self.max_side)
        faces = []
        for found in self._mtcnn.detect_faces(small):
            confidence = float(found["confidence"])
            if confidence < self.min_confidence:
                continue
            x, y, w, h = (float(v) / scale for v in found["box"])
            box = _clip_box(x, y, w, h, image.shape)
            if box[2] < 2 or box[3] < 2:
                continue
            landmarks = {
                name: (float(point[0]) / scale, float(point[1]) / scale)
                for name, point in found["keypoints"].items()
            }
            faces.append(Face(box=box, confidence=confidence, landmarks=landmarks))
        return sorted(faces, key=lambda face: face.area, reverse=True)


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (no landmarks)."""

    name = "haar"

    def __init__(self, min_neighbors: int = 5, scale_factor: float = 1.1, max_side: int = 800):
        import cv2

        cascade_path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(cascade_path)
        if self._cascade.empty():
            raise RuntimeError(
                f"OpenCV could not load its Haar cascade at {cascade_path}; install "
                "'opencv-python-headless<5' (OpenCV 5 no longer ships the cascades)"
            )
        self.min_neighbors = min_neighbors
        self.scale_factor = scale_factor
        self.max_side = max_side

    def detect(self, image: np.ndarray) -> list[Face]:
        import cv2

        image = _as_rgb(image)
        small, scale = _shrink_for_detection(image, self.max_side)
        gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        min_size = max(20, min(gray.shape) // 12)
        boxes, _, weights = self._cascade.detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_size, min_size),
            outputRejectLevels=True,
        )
        faces = []
        for (x, y, w, h), weight in zip(boxes, np.ravel(weights), strict=False):
            box = _clip_box(x / scale, y / scale, w / scale, h / scale, image.shape)
            # The cascade's level weight is unbounded; squash it into (0, 1) for display.
            confidence = float(1.0 / (1.0 + math.exp(-float(weight))))
            faces.append(Face(box=box, confidence=confidence, landmarks=None))
        return sorted(faces, key=lambda face: face.area, reverse=True)


DETECTORS: dict[str, Callable[[], FaceDetector]] = {
    "mtcnn": MTCNNDetector,
    "haar": HaarDetector,
}


def make_detector(name: str) -> FaceDetector:
    """Build a face detector by name (``mtcnn`` or ``haar``)."""
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; choose one of {sorted(DETECTORS)}")
    return DETECTORS[name]()


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image


def eye_angle(face: Face) -> float:
    """Angle in degrees of the line from the image-left eye to the image-right eye."""
    if not face.landmarks or "left_eye" not in face.landmarks:
        return 0.0
    (lx, ly), (rx, ry) = face.landmarks["left_eye"], face.landmarks["right_eye"]
    return math.degrees(math.atan2(ry - ly, rx - lx))


def align_and_crop(
    image: np.ndarray, face: Face, *, size: int, channels: int, margin: float = 0.15
) -> np.ndarray:
    """Cut one face out of an image: level the eyes, square crop with a margin, resize.

    Args:
        image: the RGB (or gray) ``uint8`` image the face was detected in.
        face: the detection; its landmarks, if any, set the rotation.
        size: output side in pixels.
        channels: 1 for grayscale, 3 for RGB.
        margin: extra context around the detector's box, as a fraction of its longer side.

    Returns:
        ``(size, size, channels)`` ``uint8``.
    """
    import cv2

    x, y, w, h = face.box
    center = (x + w / 2.0, y + h / 2.0)
    side = max(w, h) * (1.0 + margin)
    # Warp at up to 4x the output size, then area-resize: one warp straight to 48 px
    # would alias badly when the face is hundreds of pixels wide.
    work_size = int(max(size, min(round(side), 4 * size)))
    matrix = cv2.getRotationMatrix2D(center, eye_angle(face), work_size / side)
    matrix[0, 2] += work_size / 2.0 - center[0]
    matrix[1, 2] += work_size / 2.0 - center[1]
    crop = cv2.warpAffine(
        image,
        matrix,
        (work_size, work_size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return resize_face(crop, size, channels)
