"""The recognisers a server process shares between its requests, and results as JSON.

A process loads its model once; :class:`RecognizerPool` lends each request one of a few
recognisers that share that model (the classifier runtimes are safe to share, detectors
are not), so requests are classified in parallel up to the pool's size and queue up to
a bound beyond it; past that bound the server says it is saturated instead of letting
latency and memory grow.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from ferkit.images import ImageReadError, decode_image


class Saturated(RuntimeError):
    """Every recogniser is busy and the queue is full: answer 503 with Retry-After."""


class RecognizerPool:
    """``size`` recognisers per face detector, created when first needed, lent to one
    request at a time; at most ``size + max_pending`` requests are admitted at once.

    Args:
        base: the recogniser whose model (and settings) every lent one shares.
    """

    def __init__(self, base: Any, size: int, max_pending: int) -> None:
        self.base = base
        self.size = size
        self.capacity = size + max_pending
        self.admitted = 0
        self._lock = threading.Lock()
        self._free: dict[str, queue.SimpleQueue] = {}
        self._made: dict[str, int] = {}

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Count a request in for its whole duration.

        Raises:
            Saturated: the pool is working and its queue is full.
        """
        with self._lock:
            if self.admitted >= self.capacity:
                raise Saturated(
                    f"the server is saturated ({self.admitted} requests in progress); try "
                    "again shortly"
                )
            self.admitted += 1
        try:
            yield
        finally:
            with self._lock:
                self.admitted -= 1

    @contextlib.contextmanager
    def lend(self, detector: str | None = None) -> Iterator[Any]:
        """A recogniser with ``detector`` (default: the base's), for this thread alone
        until the block ends; waits while all of that detector's are lent."""
        name = detector or self.base.detector.name
        with self._lock:
            free = self._free.setdefault(name, queue.SimpleQueue())
            make = free.empty() and self._made.get(name, 0) < self.size
            if make:
                self._made[name] = self._made.get(name, 0) + 1
        if make:
            try:
                recognizer = self.base.with_detector(name)
            except BaseException:
                with self._lock:
                    self._made[name] -= 1
                raise
        else:
            recognizer = free.get()
        try:
            yield recognizer
        finally:
            free.put(recognizer)


def face_json(face: Any) -> dict[str, Any]:
    """One face as the API returns it (video faces also carry their track and raw
    values)."""
    record: dict[str, Any] = {
        "box": [int(v) for v in face.box],
        "label": face.label,
        "probabilities": {name: round(p, 6) for name, p in face.probabilities.items()},
        "detector_confidence": None
        if face.detector_confidence is None
        else round(float(face.detector_confidence), 4),
        "landmarks": None
        if face.landmarks is None
        else {
            name: [round(float(x), 1), round(float(y), 1)]
            for name, (x, y) in face.landmarks.items()
        },
    }
    if face.track_id is not None:
        record["track_id"] = face.track_id
        record["raw_label"] = face.raw_label
        record["raw_probabilities"] = {
            name: round(p, 6) for name, p in (face.raw_probabilities or {}).items()
        }
    return record


def image_json(result: Any) -> dict[str, Any]:
    """One image's result: its faces (none: ``[]``), size and how faces were found."""
    return {
        "faces": [face_json(face) for face in result],
        "width": result.width,
        "height": result.height,
        "face_mode": result.face_mode,
    }


def error_status(error: ImageReadError) -> int:
    """The HTTP status of an image that cannot be used: 413 over the pixel budget, 415
    not an image (or not a decodable one)."""
    return 413 if error.kind == "too_large" else 415


def predict_uploads(
    recognizer: Any, uploads: list[tuple[str, bytes]], faces: str, max_pixels: int
) -> list[dict[str, Any]]:
    """Decode each uploaded image and classify all their faces in one batch.

    Args:
        uploads: ``(name, encoded bytes)``; the name is only shown, never opened.

    Returns:
        Per upload, in order, ``{"filename", **image_json}`` or ``{"filename", "error",
        "status"}`` for one that cannot be used; the others are still classified.
    """
    decoded: list[np.ndarray] = []
    entries: list[dict[str, Any]] = []
    for name, data in uploads:
        try:
            decoded.append(decode_image(data, source=name, max_pixels=max_pixels))
            entries.append({"filename": name})
        except ImageReadError as error:
            entries.append({"filename": name, "error": error.reason, "status": error_status(error)})
    results = iter(recognizer.predict_batch(decoded, faces=faces, errors="record"))
    for entry in entries:
        if "error" in entry:
            continue
        result = next(results)
        if result.error is not None:
            entry.update(error=result.error, status=422)
        else:
            entry.update(image_json(result))
    return entries
