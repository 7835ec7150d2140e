"""The recognisers a server process shares between its requests, and results as JSON.

A process loads its model once; :class:`RecognizerPool` lends each request one of a few
recognisers that share that model (the classifier runtimes are safe to share, detectors
are not), so requests are classified in parallel up to the pool's size and queue up to
a bound beyond it; past that bound the server says it is saturated instead of letting
latency and memory grow.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from ferkit.images import ImageReadError, decode_image, decode_memory

logger = logging.getLogger(__name__)


class Saturated(RuntimeError):
    """Every recogniser is busy and the queue is full: answer 503 with Retry-After."""


class ModelUnavailable(RuntimeError):
    """An offered model could not be loaded (damaged, or no file for the runtime): answer
    503 with the reason; the failure is remembered, so it is not retried per request."""


class DecodeBudget:
    """The memory that decoded images may hold at once in a server process: one budget
    for every photo request and camera frame, whatever their model and detector.

    An image holds its decoding's cost (:func:`ferkit.images.decode_memory`, read from
    its header before a pixel is decoded) from its decoding until its faces are
    classified. One that would pass the budget waits for others to end, up to
    ``wait_s`` seconds (then :class:`Saturated`); one that costs more than the whole
    budget waits until it can be decoded alone.
    """

    def __init__(self, capacity_bytes: int, wait_s: float) -> None:
        self.capacity = max(1, int(capacity_bytes))
        self.wait_s = wait_s
        self.held = 0
        self._freed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        """Hold ``cost`` bytes of the budget for the block.

        Raises:
            Saturated: the budget did not have room within ``wait_s`` seconds.
        """
        cost = min(max(int(cost), 0), self.capacity)
        with self._freed:
            if not self._freed.wait_for(
                lambda: self.held + cost <= self.capacity, timeout=self.wait_s
            ):
                raise Saturated(
                    f"the server is decoding other images ({self.held / 2**20:.0f} MB of its "
                    f"{self.capacity / 2**20:.0f} MB for decoding are taken); try again shortly"
                )
            self.held += cost
        try:
            yield
        finally:
            with self._freed:
                self.held -= cost
                self._freed.notify_all()


class RecognizerPool:
    """``size`` recognisers per model and face detector, created when first needed,
    lent to one thread at a time; at most ``size + max_pending`` requests (and camera
    frames) are admitted at once, whatever their model.

    Args:
        base: the recogniser of the served model, whose settings every lent one shares.
        models: the installed models a request may pick by name besides the served one;
            each loads once, when first asked for.
        served: the installed name of the served model, if it is one (asking for it by
            name lends the base's recognisers, not a second copy).
        decode_budget: the memory budget of every decoding in the process (default: one
            of 512 MB, waited on for up to 60 s).
    """

    def __init__(
        self,
        base: Any,
        size: int,
        max_pending: int,
        models: tuple[str, ...] = (),
        served: str | None = None,
        decode_budget: DecodeBudget | None = None,
    ) -> None:
        self.base = base
        self.decode_budget = decode_budget or DecodeBudget(512 * 2**20, 60.0)
        self.served = served
        self.size = size
        self.capacity = size + max_pending
        self.models = tuple(models)
        self.admitted = 0
        self._lock = threading.Lock()
        self._returned = threading.Condition(self._lock)
        self._free: dict[tuple[str | None, str], list[Any]] = {}
        self._made: dict[tuple[str | None, str], int] = {}
        self._bases: dict[str, Any] = {}
        self._failed: dict[str, str] = {}
        self._loading = {name: threading.Lock() for name in self.models}

    def base_for(self, model: str | None) -> Any:
        """The recogniser of ``model`` (``None``: the served model), loaded on first use.

        Raises:
            ValueError: ``model`` is not one a request may pick.
            ModelUnavailable: it could not be loaded (now or at an earlier request).
        """
        if model is None or model == self.served:
            return self.base
        if model not in self.models:
            raise ValueError(
                f"that model is not offered here; choose one of: "
                f"{', '.join(self.models) or 'none (this server runs one model)'}"
            )
        loaded = self._bases.get(model)
        if loaded is not None:
            return loaded
        with self._loading[model]:  # one load per model; other models are not held up
            if model in self._failed:
                raise ModelUnavailable(self._failed[model])
            if model not in self._bases:
                try:
                    self._bases[model] = self.base.with_model(model)
                except Exception as error:
                    logger.error("model %s could not be loaded", model, exc_info=True)
                    self._failed[model] = f"the model {model} could not be loaded: {error}"
                    raise ModelUnavailable(self._failed[model]) from None
            return self._bases[model]

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Count a request in for its whole duration (hold it in the thread that does
        the work, so that a request abandoned by its client still counts until done).

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
    def lend(self, detector: str | None = None, model: str | None = None) -> Iterator[Any]:
        """A recogniser of ``model`` (default: the served one) with ``detector``
        (default: the base's), for this thread alone until the block ends; waits, first
        come first served, while all are lent.

        Raises:
            ValueError, MissingExtraError: the model is not offered, or the detector
                cannot be made (unknown, or its library is not installed).
        """
        base = self.base_for(model)
        name = (None if model == self.served else model, detector or self.base.detector.name)
        with self._returned:
            free = self._free.setdefault(name, [])
            while not free and self._made.get(name, 0) >= self.size:
                self._returned.wait()
            recognizer = free.pop(0) if free else None
            if recognizer is None:
                self._made[name] = self._made.get(name, 0) + 1
        if recognizer is None:
            try:
                recognizer = base.with_detector(name[1])
            except BaseException:
                with self._returned:
                    self._made[name] -= 1
                    self._returned.notify()  # a waiter may make one now
                raise
        try:
            yield recognizer
        finally:
            with self._returned:
                free.append(recognizer)
                self._returned.notify()


def geometry_json(
    blendshapes: dict[str, float], yaw: float, pitch: float, roll: float, mesh: Any
) -> dict[str, Any]:
    """A face's geometry as the API returns it: ``blendshapes`` (name: score, 4
    decimals), ``head_pose`` (degrees, 2 decimals) and ``mesh`` (478 ``[x, y, z]``
    landmarks in pixels, 0.1 px)."""
    return {
        "blendshapes": {name: round(float(score), 4) for name, score in blendshapes.items()},
        "head_pose": {
            "yaw": round(float(yaw), 2),
            "pitch": round(float(pitch), 2),
            "roll": round(float(roll), 2),
        },
        "mesh": [[round(float(value), 1) for value in point] for point in mesh],
    }


def face_json(face: Any) -> dict[str, Any]:
    """One face as the API returns it (video faces also carry their track and raw
    values; faces with geometry, :func:`geometry_json`'s fields)."""
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
    geometry = getattr(face, "geometry", None)
    if geometry is not None:
        record.update(
            geometry_json(
                geometry.blendshapes,
                geometry.yaw,
                geometry.pitch,
                geometry.roll,
                geometry.landmarks.tolist(),
            )
        )
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
    """The HTTP status of an image that cannot be used: 413 over a decoding limit (the
    pixel budget, a JPEG's scan count), 415 not an image (or not a decodable one)."""
    return 413 if error.kind in ("too_large", "too_complex") else 415


def predict_uploads(
    recognizer: Any,
    uploads: list[tuple[str, bytes]],
    faces: str,
    max_pixels: int,
    tta: bool = False,
    budget: DecodeBudget | None = None,
    geometry: bool = False,
) -> list[dict[str, Any]]:
    """Decode and classify each uploaded image in turn (one decoded image in memory at
    a time, whatever the number of uploads).

    Args:
        uploads: ``(name, encoded bytes)``; the name is only shown, never opened.
        tta: test-time augmentation of each face (``?tta=1``).
        budget: the process's decoding budget, held by each image from its decoding
            until it is classified (None: none).
        geometry: each face's blendshapes, head pose and mesh too (``?geometry=1``).

    Raises:
        Saturated: the budget had no room for an image in time.

    Returns:
        Per upload, in order, ``{"filename", **image_json}`` or ``{"filename", "error",
        "status"}`` for one that cannot be used; the others are still classified.
    """
    entries = []
    for name, data in uploads:
        cost = decode_memory(data, max_pixels) if budget is not None else 0
        with budget.hold(cost) if budget is not None else contextlib.nullcontext():
            try:
                rgb = decode_image(data, source=name, max_pixels=max_pixels)
            except ImageReadError as error:
                entries.append({"filename": name, "error": error.reason, "status": error_status(error)})  # fmt: skip
                continue
            (result,) = recognizer.predict_batch(
                [rgb], faces=faces, errors="record", tta=tta, geometry=geometry
            )
            del rgb
        if result.error is not None:  # the detector failed on this image: no detail out
            logger.warning("%s: %s", name, result.error)
            entries.append({"filename": name, "error": "face detection failed on this image",
                            "status": 422})  # fmt: skip
        else:
            entries.append({"filename": name, **image_json(result)})
    return entries
