"""Face geometry: 478 3-D landmarks, 52 blendshape scores and head pose for detected faces.

MediaPipe's Face Landmarker networks (Apache 2.0, shipped in ``assets/mediapipe`` and
checked against their SHA-256 before loading) run on LiteRT, on the faces ferkit's own
detectors find (:mod:`ferkit.faces`), one face at a time:

1. The face mesh network (Face Mesh V2) sees a 256x256 crop of the face, rotated so the
   eyes are level, as MediaPipe's Face Landmarker crops it from its detector's box (the box
   enlarged 1.5 times about its centre, rotated by the eye line). Its 478 landmarks are
   mapped back to the image: ``x``, ``y`` in pixels, ``z`` the depth in the same pixel
   scale, relative to the face's centre (smaller: nearer the camera).
2. The blendshape network turns 146 of those landmarks (their ``x``, ``y`` in image pixels,
   as MediaPipe feeds it) into 52 ARKit-style scores in [0, 1], in MediaPipe's order
   (:data:`BLENDSHAPE_NAMES`; ``_neutral`` is the model's own first output).
3. Head pose comes from fitting MediaPipe's canonical face model to the landmarks: a
   weighted similarity (Procrustes) fit on the landmarks and weights MediaPipe's geometry
   pipeline uses, under a weak-perspective camera.

Head pose convention: angles in degrees, a rotation ``R = Ry(yaw) Rx(-pitch) Rz(roll)`` of
the canonical face in a camera frame whose x points to the image's right, y up and z
towards the viewer; 0, 0, 0 is a face looking straight into the camera, upright.

- ``yaw > 0``: the face turns towards the image's right (the subject's own left).
- ``pitch > 0``: the face tilts up (chin raised).
- ``roll > 0``: the face rotates counter-clockwise in the image (the head leans towards
  the subject's right shoulder, on the image's left).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ferkit.extras import native_stderr_silenced
from ferkit.faces import verified_asset

MEDIAPIPE_DIR = Path(__file__).resolve().parent / "assets" / "mediapipe"
LANDMARK_COUNT = 478
# MediaPipe's names for the blendshape network's 52 outputs, in output order.
BLENDSHAPE_NAMES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft",
    "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft",
    "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen",
    "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower",
    "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)  # fmt: skip
# The landmarks the blendshape network reads, in its input order (MediaPipe's
# face_blendshapes_graph.cc): lips, eyes, brows, face outline and both irises.
BLENDSHAPE_LANDMARKS = np.array([
    0, 1, 4, 5, 6, 7, 8, 10, 13, 14, 17, 21, 33, 37, 39, 40, 46, 52, 53, 54, 55, 58, 61, 63,
    65, 66, 67, 70, 78, 80, 81, 82, 84, 87, 88, 91, 93, 95, 103, 105, 107, 109, 127, 132, 133,
    136, 144, 145, 146, 148, 149, 150, 152, 153, 154, 155, 157, 158, 159, 160, 161, 162, 163,
    168, 172, 173, 176, 178, 181, 185, 191, 195, 197, 234, 246, 249, 251, 263, 267, 269, 270,
    276, 282, 283, 284, 285, 288, 291, 293, 295, 296, 297, 300, 308, 310, 311, 312, 314, 317,
    318, 321, 323, 324, 332, 334, 336, 338, 356, 361, 362, 365, 373, 374, 375, 377, 378, 379,
    380, 381, 382, 384, 385, 386, 387, 388, 389, 390, 397, 398, 400, 402, 405, 409, 415, 454,
    466, 468, 469, 470, 471, 472, 473, 474, 475, 476, 477,
])  # fmt: skip
POSE_NAMES = ("yaw", "pitch", "roll")
# MediaPipe crops the mesh network's input from its own detector's box (BlazeFace
# short-range) enlarged 1.5 times about its centre. Against ferkit's boxes (BlazeFace
# full-range, enlarged and moved up for the classifier's framing), that crop is 1.29 times
# the box's longer side, centred 0.117 of that side below the box's centre: medians over
# 45 faces (the three sample photos and every 15th frame of both sample videos; IQR 0.08
# and 0.02).
CROP_SCALE = 1.29
CROP_SHIFT = 0.117
# The side of the crop that MediaPipe's tracking takes around a face's own landmarks.
LANDMARK_CROP_SCALE = 1.5
# MediaPipe's default virtual camera for face geometry.
VERTICAL_FIELD_OF_VIEW = 63.0


@dataclass(frozen=True)
class FaceGeometry:
    """The geometry of one face, in the pixel coordinates of its image.

    Attributes:
        landmarks: ``(478, 3)`` float32: x, y in pixels; z, depth in the same scale
            (smaller: nearer the camera), relative to the face.
        blendshapes: the 52 scores in [0, 1] by name, in :data:`BLENDSHAPE_NAMES` order.
        yaw, pitch, roll: head pose in degrees (see the module's convention).
        presence: the mesh network's probability that its crop holds a face.
    """

    landmarks: np.ndarray
    blendshapes: dict[str, float]
    yaw: float
    pitch: float
    roll: float
    presence: float


def mediapipe_model_path(file: str) -> Path:
    """A MediaPipe model file shipped with ferkit, checked against its recorded SHA-256.

    Raises:
        RuntimeError: the file is missing or damaged (the install is broken).
    """
    return verified_asset(MEDIAPIPE_DIR, file)


def _protobuf_fields(buffer: bytes):
    """(field number, value) of a serialized protobuf message: enough of the wire format
    to read the geometry metadata without the protobuf package."""

    def varint(position: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = buffer[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, position

    position = 0
    while position < len(buffer):
        key, position = varint(position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = varint(position)
        elif wire_type == 2:
            length, position = varint(position)
            value, position = buffer[position : position + length], position + length
        elif wire_type == 5:
            value, position = buffer[position : position + 4], position + 4
        elif wire_type == 1:
            value, position = buffer[position : position + 8], position + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        yield number, value


def canonical_face_model() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's canonical face model, from ``geometry_pipeline_metadata_landmarks``.

    Returns:
        The ``(468, 3)`` canonical vertices in centimetres (x right, y up, z towards the
        viewer, the face looking at the viewer), and the landmark indices and weights
        MediaPipe fits the model with.
    """
    data = mediapipe_model_path("geometry_pipeline_metadata_landmarks.binarypb").read_bytes()
    vertices, indices, weights = [], [], []
    for number, value in _protobuf_fields(data):
        if number == 1:  # canonical_mesh: vertex_buffer holds x, y, z, u, v per vertex
            vertices = [
                np.frombuffer(item, "<f4")[0]
                for field, item in _protobuf_fields(value)
                if field == 3
            ]
        elif number == 2:  # procrustes_landmark_basis: landmark_id, weight
            entry = dict(_protobuf_fields(value))
            indices.append(entry.get(1, 0))
            weights.append(float(np.frombuffer(entry.get(2, b"\0\0\0\0"), "<f4")[0]))
    mesh = np.asarray(vertices, dtype=np.float64).reshape(-1, 5)[:, :3]
    return mesh, np.asarray(indices), np.asarray(weights)


@functools.lru_cache(maxsize=1)
def mesh_edges() -> np.ndarray:
    """The edges of MediaPipe's face mesh, ``(E, 2)`` landmark indices: every side of the
    canonical mesh's triangles (``geometry_pipeline_metadata_landmarks``), once each;
    read once per process (read-only)."""
    data = mediapipe_model_path("geometry_pipeline_metadata_landmarks.binarypb").read_bytes()
    corners: list[int] = []
    for number, value in _protobuf_fields(data):
        if number == 1:  # canonical_mesh: index_buffer holds three vertices per triangle
            corners = [item for field, item in _protobuf_fields(value) if field == 4]
    triangles = np.asarray(corners, dtype=np.int64).reshape(-1, 3)
    sides = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    edges = np.unique(np.sort(sides, axis=1), axis=0)
    edges.flags.writeable = False
    return edges


#: The face's outlines as chains of landmark indices, by feature: the face oval, lips,
#: eyes, brows and irises (MediaPipe's ``FaceLandmarksConnections`` contours and irises;
#: "left" is the subject's own left, on the image's right).
FACE_CONTOURS: dict[str, tuple[tuple[int, ...], ...]] = {
    "face_oval": ((10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379,
                   378, 400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127,
                   162, 21, 54, 103, 67, 109, 10),),
    "lips": ((61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291),
             (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291),
             (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308),
             (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)),
    "left_eye": ((263, 249, 390, 373, 374, 380, 381, 382, 362),
                 (263, 466, 388, 387, 386, 385, 384, 398, 362)),
    "left_eyebrow": ((276, 283, 282, 295, 285), (300, 293, 334, 296, 336)),
    "right_eye": ((33, 7, 163, 144, 145, 153, 154, 155, 133),
                  (33, 246, 161, 160, 159, 158, 157, 173, 133)),
    "right_eyebrow": ((46, 53, 52, 65, 55), (70, 63, 105, 66, 107)),
    "left_iris": ((474, 475, 476, 477, 474),),
    "right_iris": ((469, 470, 471, 472, 469),),
}  # fmt: skip


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The head's rotation in the camera frame (x right, y up, z towards the viewer) from
    its pose in degrees: ``Ry(yaw) Rx(-pitch) Rz(roll)``, the module's convention. Its
    columns are the head's own axes: to its left side (the image's right when frontal),
    up, and forward out of the face."""
    a, b, c = (math.radians(value) for value in (yaw, -pitch, roll))
    turn = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    tilt = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    lean = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return turn @ tilt @ lean


def _similarity_fit(
    source: np.ndarray, target: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, float]:
    """The rotation and scale of the weighted least-squares similarity transform that
    takes ``source`` points (``(N, 3)``) onto ``target`` points (Umeyama's solution)."""
    weights = weights / weights.sum()
    source_centred = source - weights @ source
    target_centred = target - weights @ target
    u, singular, vt = np.linalg.svd(source_centred.T @ (weights[:, None] * target_centred))
    signs = np.array([1.0, 1.0, np.sign(np.linalg.det(vt.T @ u.T))])
    rotation = vt.T @ np.diag(signs) @ u.T
    scale = float(singular @ signs / (weights @ (source_centred**2).sum(axis=1)))
    return rotation, scale


def head_pose(
    landmarks: np.ndarray, image_size: tuple[int, int], model: tuple | None = None
) -> tuple[float, float, float]:
    """Yaw, pitch and roll in degrees of a face from its ``(478, 3)`` landmarks.

    As MediaPipe's geometry pipeline (with its default camera: 63 degrees vertical field
    of view), the landmarks are lifted into a perspective camera's space, at the depth
    where the canonical face model fits them at its own size, then the model is fitted
    to them (weighted Procrustes) and the fit's rotation read as in the module's
    convention.

    Args:
        landmarks: in image pixels, as :class:`FaceGeometry` holds them.
        image_size: the image's ``(width, height)`` in pixels.
        model: :func:`canonical_face_model`'s result (read from the package if None).
    """
    mesh, indices, weights = model if model is not None else canonical_face_model()
    width, height = image_size
    source = mesh[indices]
    points = landmarks[indices].astype(np.float64)
    # The camera's near plane (at distance 1) spans these sizes, centred on its axis.
    near_height = 2.0 * math.tan(math.radians(VERTICAL_FIELD_OF_VIEW / 2.0))
    near_width = near_height * width / height
    screen_x = points[:, 0] / width * near_width - near_width / 2.0
    screen_y = near_height / 2.0 - points[:, 1] / height * near_height
    screen_z = points[:, 2] / width * near_width

    def lifted(scale: float) -> np.ndarray:
        # Landmarks at the depth where they are ``1 / scale`` times their screen size;
        # the camera looks down -z (right-handed, y up).
        depth = (screen_z - screen_z.mean() + 1.0) / scale
        return np.column_stack([screen_x * depth, screen_y * depth, -depth])

    _, first_scale = _similarity_fit(
        source, np.column_stack([screen_x, screen_y, -screen_z]), weights
    )
    _, second_scale = _similarity_fit(source, lifted(first_scale), weights)
    rotation, _ = _similarity_fit(source, lifted(first_scale * second_scale), weights)
    yaw = math.degrees(math.atan2(rotation[0, 2], rotation[2, 2]))
    pitch = math.degrees(math.asin(float(np.clip(rotation[1, 2], -1.0, 1.0))))
    roll = math.degrees(math.atan2(rotation[1, 0], rotation[1, 1]))
    return yaw, pitch, roll


@dataclass(frozen=True)
class _Crop:
    """A square region of the image, rotated: where the mesh network looks."""

    centre: np.ndarray  # x, y in pixels
    side: float
    angle: float  # radians, of the crop's x axis against the image's (y down)

    def axes(self) -> tuple[np.ndarray, np.ndarray]:
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        return np.array([cos, sin]), np.array([-sin, cos])


def face_crop(face) -> _Crop:
    """The mesh network's crop for a detected face (:class:`ferkit.faces.Face`): its box
    enlarged as MediaPipe enlarges its detector's, rotated so the eyes are level (no
    rotation without eye points)."""
    x, y, width, height = face.box
    side = max(width, height)
    centre = np.array([x + width / 2.0, y + height / 2.0 + CROP_SHIFT * side])
    angle = 0.0
    points = face.landmarks or {}
    if "left_eye" in points and "right_eye" in points:
        (lx, ly), (rx, ry) = points["left_eye"], points["right_eye"]
        angle = math.atan2(ry - ly, rx - lx)
    return _Crop(centre, CROP_SCALE * side, angle)


def landmark_crop(landmarks: np.ndarray) -> _Crop:
    """The crop MediaPipe's tracking takes around a face's landmarks: rotated by the line
    from the outer corner of the image-left eye (33) to the other's (263), the landmarks'
    extent in that frame, squared on its longer side and enlarged 1.5 times."""
    points = landmarks[:, :2].astype(np.float64)
    delta = points[263] - points[33]
    angle = math.atan2(delta[1], delta[0])
    cos, sin = math.cos(angle), math.sin(angle)
    # The landmarks' box in the rotated frame, about its own centre.
    rotated = points @ np.array([[cos, -sin], [sin, cos]])
    low, high = rotated.min(axis=0), rotated.max(axis=0)
    middle = (low + high) / 2.0
    centre = np.array([middle[0] * cos - middle[1] * sin, middle[0] * sin + middle[1] * cos])
    return _Crop(centre, LANDMARK_CROP_SCALE * float(max(high - low)), angle)


class FaceGeometryEstimator:
    """Landmarks, blendshapes and head pose of detected faces (see the module's docstring).

    Args:
        refine: run the mesh network a second time on the crop MediaPipe's tracking takes
            around the first landmarks (:func:`landmark_crop`), which makes the result
            independent of how the detector frames its boxes; twice the time.
        num_threads: LiteRT threads per network.
    """

    def __init__(self, refine: bool = False, num_threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.refine = refine
        with native_stderr_silenced():  # LiteRT announces its CPU delegate here
            self._mesh = Interpreter(
                str(mediapipe_model_path("face_landmarks_detector.tflite")),
                num_threads=num_threads,
            )
            self._blendshapes = Interpreter(
                str(mediapipe_model_path("face_blendshapes.tflite")), num_threads=num_threads
            )
        self._mesh.allocate_tensors()
        self._blendshapes.allocate_tensors()
        mesh_input = self._mesh.get_input_details()[0]
        self._mesh_input = mesh_input["index"]
        self._input_size = int(mesh_input["shape"][1])
        outputs = {int(np.prod(d["shape"])): d["index"] for d in self._mesh.get_output_details()}
        self._mesh_landmarks = outputs[LANDMARK_COUNT * 3]
        # Two single-value outputs: the face presence logit is the first, MediaPipe's split
        # of the output tensors (landmarks, presence) taken in the model's output order.
        self._mesh_presence = next(
            d["index"] for d in self._mesh.get_output_details() if int(np.prod(d["shape"])) == 1
        )
        self._blendshapes_input = self._blendshapes.get_input_details()[0]["index"]
        self._blendshapes_output = self._blendshapes.get_output_details()[0]["index"]
        self._pose_model = canonical_face_model()

    def estimate(self, image: np.ndarray, faces: list) -> list[FaceGeometry]:
        """The geometry of each face in an RGB ``uint8`` image, in the order given."""
        return [self.estimate_face(image, face) for face in faces]

    def estimate_face(self, image: np.ndarray, face) -> FaceGeometry:
        """The geometry of one detected face (:class:`ferkit.faces.Face`)."""
        landmarks, presence = self.landmarks(image, face_crop(face))
        if self.refine:
            landmarks, presence = self.landmarks(image, landmark_crop(landmarks))
        yaw, pitch, roll = self.pose(landmarks, (image.shape[1], image.shape[0]))
        return FaceGeometry(
            landmarks=landmarks,
            blendshapes=self.blendshapes(landmarks),
            yaw=yaw,
            pitch=pitch,
            roll=roll,
            presence=presence,
        )

    def blendshapes(self, landmarks: np.ndarray) -> dict[str, float]:
        """The 52 blendshape scores of a face's ``(478, 3)`` landmarks, by name."""
        points = landmarks[BLENDSHAPE_LANDMARKS, :2].astype(np.float32)[None]
        self._blendshapes.set_tensor(self._blendshapes_input, points)
        self._blendshapes.invoke()
        scores = np.clip(self._blendshapes.get_tensor(self._blendshapes_output).ravel(), 0, 1)
        return {name: float(score) for name, score in zip(BLENDSHAPE_NAMES, scores, strict=True)}

    def pose(
        self, landmarks: np.ndarray, image_size: tuple[int, int]
    ) -> tuple[float, float, float]:
        """Yaw, pitch and roll in degrees of a face's landmarks (:func:`head_pose`)."""
        return head_pose(landmarks, image_size, self._pose_model)

    def landmarks(self, image: np.ndarray, crop: _Crop) -> tuple[np.ndarray, float]:
        """The mesh network's 478 landmarks for a crop, in image pixels, and its presence."""
        import cv2

        size = self._input_size
        x_axis, y_axis = crop.axes()
        scale = crop.side / size
        # The affine map from the network's input to the image, in coordinates where a
        # pixel spans [i, i + 1) (MediaPipe's, and the landmarks'); OpenCV centres pixel i
        # on i, hence the half-pixel shifts of the warp.
        corner = crop.centre - (x_axis + y_axis) * crop.side / 2.0
        to_image = np.column_stack([x_axis * scale, y_axis * scale, corner])
        warp = to_image.copy()
        warp[:, 2] += to_image[:, :2].sum(axis=1) * 0.5 - 0.5
        patch = cv2.warpAffine(
            image,
            warp,
            (size, size),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        self._mesh.set_tensor(self._mesh_input, (patch.astype(np.float32) / 255.0)[None])
        self._mesh.invoke()
        raw = self._mesh.get_tensor(self._mesh_landmarks).reshape(LANDMARK_COUNT, 3)
        logit = float(self._mesh.get_tensor(self._mesh_presence).ravel()[0])
        landmarks = np.empty((LANDMARK_COUNT, 3), dtype=np.float32)
        landmarks[:, :2] = raw[:, :2].astype(np.float64) @ to_image[:, :2].T + corner
        landmarks[:, 2] = raw[:, 2] * scale
        presence = 1.0 / (1.0 + math.exp(-max(-100.0, min(100.0, logit))))
        return landmarks, presence
