"""Recognise expressions in images: detect faces, align and crop them, classify.

>>> from ferkit import EmotionRecognizer                       # doctest: +SKIP
>>> recognizer = EmotionRecognizer()                           # the bundled model
>>> for face in recognizer.predict("photo.jpg"):               # doctest: +SKIP
...     print(face.box, face.label, face.probabilities["happy"])
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.faces import DEFAULT_DETECTOR, Face, align_and_crop, make_detector
from ferkit.images import read_image


@dataclass
class FaceResult:
    """One face found in an image and what it expresses."""

    box: tuple[int, int, int, int]  # x, y, width, height in the image's pixels
    detector_confidence: float
    label: str
    probabilities: dict[str, float]  # calibrated, one per class, summing to 1
    landmarks: dict[str, tuple[float, float]] | None = field(default=None)
    # Video only: the face's track across frames, and the unsmoothed values (``label``
    # and ``probabilities`` are then smoothed over time).
    track_id: int | None = None
    raw_label: str | None = None
    raw_probabilities: dict[str, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        x, y, w, h = self.box
        record: dict[str, Any] = {}
        if self.track_id is not None:
            record["track_id"] = self.track_id
        record.update(
            {
                "x": x,
                "y": y,
                "width": w,
                "height": h,
                "detector_confidence": round(self.detector_confidence, 4),
                "label": self.label,
                **{f"p_{name}": round(p, 4) for name, p in self.probabilities.items()},
            }
        )
        if self.raw_probabilities is not None:
            record["raw_label"] = self.raw_label
            record.update({f"raw_p_{k}": round(p, 4) for k, p in self.raw_probabilities.items()})
        return record


ImageInput = str | os.PathLike | np.ndarray | Any  # path, array or PIL image


class EmotionRecognizer:
    """Find faces in images and tell which expression each shows.

    Args:
        model: ``None`` for the bundled default model, or a run folder, bundle folder,
            export folder, or ``.keras``/``.onnx``/``.tflite`` file.
        detector: ``blazeface-full`` (default: fast, finds small and turned faces, aligns
            by the eyes), ``blazeface`` (short range, fastest), ``mtcnn`` or ``haar``; see
            :mod:`ferkit.faces` for the measurements behind the default.
        margin: context kept around each detected face, as a fraction of its size.
        backend: classifier runtime (``auto``, ``keras``, ``onnx``, ``onnx-int8``,
            ``tflite``); ``auto`` uses ONNX Runtime when the model has an ONNX file, so
            the bundled model predicts without importing TensorFlow.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        detector: str = DEFAULT_DETECTOR,
        margin: float = 0.15,
        backend: str = "auto",
    ) -> None:
        from ferkit.runtime import load_classifier

        self.model = load_classifier(model, backend)
        self.classes = self.model.classes
        self.detector = make_detector(detector)
        self.margin = margin
        self.size, _, self.channels = self.model.image_shape

    def _to_rgb(self, image: ImageInput, color_order: str) -> np.ndarray:
        if isinstance(image, str | os.PathLike):
            return read_image(Path(image), color=True)
        if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
            return np.asarray(image.convert("RGB"))
        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise ValueError(
                f"image arrays must be uint8, not {array.dtype}; scale to 0..255 first"
            )
        if array.ndim == 2:
            return np.repeat(array[:, :, None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            raise ValueError(f"image array must be HxW, HxWx3 or HxWx4, not {array.shape}")
        array = array[:, :, :3]
        if color_order.upper() == "BGR":
            array = array[:, :, ::-1]
        elif color_order.upper() != "RGB":
            raise ValueError(f"color_order must be 'RGB' or 'BGR', not {color_order!r}")
        return np.ascontiguousarray(array)

    def _crops(
        self, rgb: np.ndarray, faces: list[Face] | None = None
    ) -> tuple[list[Face], np.ndarray]:
        """Detect (unless ``faces`` are given) and cut out every face."""
        if faces is None:
            faces = self.detector.detect(rgb)
        crops = [
            align_and_crop(rgb, face, size=self.size, channels=self.channels, margin=self.margin)
            for face in faces
        ]
        empty = np.zeros((0, self.size, self.size, self.channels), dtype=np.uint8)
        return faces, np.stack(crops) if crops else empty

    def _results(self, faces: list[Face], probabilities: np.ndarray) -> list[FaceResult]:
        return [
            FaceResult(
                box=face.box,
                detector_confidence=face.confidence,
                label=self.classes[int(row.argmax())],
                probabilities={name: float(p) for name, p in zip(self.classes, row, strict=True)},
                landmarks=face.landmarks,
            )
            for face, row in zip(faces, probabilities, strict=True)
        ]

    def predict(self, image: ImageInput, *, color_order: str = "RGB") -> list[FaceResult]:
        """Results for every face in one image (an empty list when there is none).

        Args:
            image: a file path, a ``uint8`` array (``color_order`` says RGB or BGR, as
                OpenCV gives), or a PIL image.
        """
        return self.predict_batch([image], color_order=color_order)[0]

    def predict_batch(
        self, images: list[ImageInput], *, color_order: str = "RGB"
    ) -> list[list[FaceResult]]:
        """Like :meth:`predict` for several images, classifying all their faces in one batch."""
        detections = [self._crops(self._to_rgb(image, color_order)) for image in images]
        all_crops = [crops for _, crops in detections]
        probabilities = (
            self.model.predict_proba(np.concatenate(all_crops)) if all_crops else np.zeros((0,))
        )
        results, start = [], 0
        for faces, crops in detections:
            results.append(self._results(faces, probabilities[start : start + len(crops)]))
            start += len(crops)
        return results

    def classify_faces(self, faces: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for face crops already cut out (``(N, H, W, C)`` uint8)."""
        return self.model.predict_proba(faces)

    def predict_video(
        self,
        source: str | os.PathLike[str] | int,
        *,
        every: int = 1,
        detect_every: int = 1,
        smoothing_s: float = 0.5,
        max_frames: int | None = None,
    ) -> Iterator[Any]:
        """Stream per-frame results of a video file or a camera (an ``int`` index).

        Frames are read, classified and yielded one at a time, so memory stays flat
        however long the video. Faces are tracked across frames (``track_id``) and their
        probabilities smoothed over ``smoothing_s`` seconds; the raw values stay in
        ``raw_probabilities``.

        Args:
            every: process every N-th frame (the others are read and skipped).
            detect_every: run the detector on every N-th processed frame and reuse the
                tracked boxes in between (faster; faces still re-classified each frame).
            max_frames: stop after this many frames read (a camera runs until then).

        Yields:
            :class:`ferkit.video.FrameResult` for each processed frame.

        Raises:
            FileNotFoundError / ValueError: the file is missing or not a readable video,
                or the camera cannot be opened.
        """
        from ferkit.video import iter_video_results

        return iter_video_results(
            self,
            source,
            every=every,
            detect_every=detect_every,
            smoothing_s=smoothing_s,
            max_frames=max_frames,
        )


def results_to_dataframe(results: dict[str, list[FaceResult]] | list[Any]) -> Any:
    """One row per face, as a pandas DataFrame.

    Accepts ``{source: [FaceResult, ...]}`` (a ``source`` column is added), a list of
    :class:`FaceResult` from one image, or the frames of :meth:`EmotionRecognizer.
    predict_video` (``frame`` and ``time_s`` columns are added; consume the generator
    into a list first, or pass a slice of it).
    """
    import pandas as pd

    if isinstance(results, dict):
        rows = [
            {"source": str(source), "face": index, **face.as_dict()}
            for source, faces in results.items()
            for index, face in enumerate(faces)
        ]
    else:
        results = list(results)
        if results and hasattr(results[0], "faces"):  # video frames
            rows = [
                {"frame": frame.index, "time_s": frame.time_s, "face": index, **face.as_dict()}
                for frame in results
                for index, face in enumerate(frame.faces)
            ]
        else:
            rows = [{"face": index, **face.as_dict()} for index, face in enumerate(results)]
    return pd.DataFrame(rows)
