"""What prediction returns: a :class:`FaceResult` per face, an :class:`ImageResult` per
image, and a table of them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ferkit.faces import Face

if TYPE_CHECKING:
    from ferkit.geometry import FaceGeometry


@dataclass
class FaceResult:
    """One face found in an image and what it expresses."""

    box: tuple[int, int, int, int]  # x, y, width, height in the image's pixels
    detector_confidence: float | None  # None when the image was taken as a face crop
    label: str
    probabilities: dict[str, float]  # calibrated, one per class, summing to 1
    landmarks: dict[str, tuple[float, float]] | None = field(default=None)
    # Video only: the face's track across frames, and the unsmoothed values (``label``
    # and ``probabilities`` are then smoothed over time).
    track_id: int | None = None
    raw_label: str | None = None
    raw_probabilities: dict[str, float] | None = None
    # With geometry on (``EmotionRecognizer(geometry=True)``): the face's 478 landmarks,
    # 52 blendshape scores and head pose (:class:`ferkit.geometry.FaceGeometry`).
    geometry: FaceGeometry | None = None

    @classmethod
    def of(
        cls,
        face: Face,
        classes: list[str],
        probabilities: np.ndarray,
        *,
        raw: np.ndarray | None = None,
        track_id: int | None = None,
        geometry: FaceGeometry | None = None,
    ) -> FaceResult:
        """The result for a detected ``face`` from its class ``probabilities`` (for video,
        smoothed over time, with the frame's own ``raw`` ones and the face's track), and
        its ``geometry`` where computed."""

        def named(row: np.ndarray) -> dict[str, float]:
            return dict(zip(classes, map(float, row), strict=True))

        return cls(
            box=face.box,
            detector_confidence=face.confidence,
            label=classes[int(np.argmax(probabilities))],
            probabilities=named(probabilities),
            landmarks=face.landmarks,
            track_id=track_id,
            raw_label=None if raw is None else classes[int(np.argmax(raw))],
            raw_probabilities=None if raw is None else named(raw),
            geometry=geometry,
        )

    def as_dict(self, digits: int | None = 4) -> dict[str, Any]:
        """The face as a flat record (box, label, probabilities; with geometry,
        ``bs_<name>`` for each blendshape, ``yaw``, ``pitch``, ``roll`` and ``landmarks``,
        478 ``[x, y, z]`` lists); probabilities and blendshapes are rounded to ``digits``
        decimals (None: full precision), angles to 0.01 degree and landmarks to 0.1 px."""

        def rounded(value: float) -> float:
            return round(value, digits) if digits is not None else float(value)

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
                "detector_confidence": None
                if self.detector_confidence is None
                else round(self.detector_confidence, 4),
                "label": self.label,
                **{f"p_{name}": rounded(p) for name, p in self.probabilities.items()},
            }
        )
        if self.raw_probabilities is not None:
            record["raw_label"] = self.raw_label
            record.update({f"raw_p_{k}": rounded(p) for k, p in self.raw_probabilities.items()})
        if self.geometry is not None:
            record.update(geometry_record(self.geometry, digits))
        return record


def geometry_record(geometry: FaceGeometry, digits: int | None = 4) -> dict[str, Any]:
    """A face's geometry as record fields: ``bs_<name>`` per blendshape, ``yaw``,
    ``pitch``, ``roll`` (degrees) and ``landmarks`` (478 ``[x, y, z]`` lists, pixels)."""

    def rounded(value: float, places: int | None) -> float:
        return round(float(value), places) if places is not None else float(value)

    fine = None if digits is None else 1
    record: dict[str, Any] = {
        f"bs_{name}": rounded(score, digits) for name, score in geometry.blendshapes.items()
    }
    record.update(
        yaw=rounded(geometry.yaw, None if digits is None else 2),
        pitch=rounded(geometry.pitch, None if digits is None else 2),
        roll=rounded(geometry.roll, None if digits is None else 2),
        # Rounded by NumPy: 1,434 values a face, on every video frame.
        landmarks=(
            geometry.landmarks.astype(np.float64)
            if fine is None
            else np.round(geometry.landmarks.astype(np.float64), fine)
        ).tolist(),
    )
    return record


ImageInput = str | os.PathLike | np.ndarray | Any  # path, array or PIL image


class ImageResult(list):
    """The faces found in one image of a batch: a list of :class:`FaceResult`, plus
    ``error`` (why the image could not be used, else None), ``face_mode`` (``crop`` when
    the whole image was taken as one face, else ``detect``) and the image's size."""

    def __init__(
        self,
        faces: list[FaceResult] = (),
        *,
        error: str | None = None,
        face_mode: str | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> None:
        super().__init__(faces)
        self.error = error
        self.face_mode = face_mode
        self.width = width
        self.height = height

    @property
    def ok(self) -> bool:
        return self.error is None

    def __repr__(self) -> str:
        if self.error is not None:
            return f"ImageResult(error={self.error!r})"
        return f"ImageResult({list.__repr__(self)})"


def results_to_dataframe(results: dict[str, list[FaceResult]] | list[Any]) -> Any:
    """One row per face, as a pandas DataFrame.

    Accepts ``{source: [FaceResult, ...]}`` (a ``source`` column is added; an
    :class:`ImageResult` with an ``error`` gives a row with that ``error``), a list of
    :class:`FaceResult` from one image, or the frames of :meth:`EmotionRecognizer.
    predict_video` (``frame`` and ``time_s`` columns are added; consume the generator
    into a list first, or pass a slice of it).
    """
    from ferkit.extras import import_pandas

    pd = import_pandas("a DataFrame of results")

    if isinstance(results, dict):
        rows = []
        for source, faces in results.items():
            error = getattr(faces, "error", None)
            if error is not None:  # an image that could not be used keeps a row
                rows.append({"source": str(source), "error": error})
            rows.extend(
                {"source": str(source), "face": index, **face.as_dict()}
                for index, face in enumerate(faces, start=1)
            )
    else:
        results = list(results)
        if results and hasattr(results[0], "faces"):  # video frames
            rows = [
                {"frame": frame.index, "time_s": frame.time_s, "face": index, **face.as_dict()}
                for frame in results
                for index, face in enumerate(frame.faces, start=1)
            ]
        else:
            rows = [
                {"face": index, **face.as_dict()} for index, face in enumerate(results, start=1)
            ]
    return pd.DataFrame(rows)
