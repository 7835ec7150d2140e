"""Recognise expressions in images: detect faces, align and crop them, classify.

>>> from ferkit import EmotionRecognizer                       # doctest: +SKIP
>>> recognizer = EmotionRecognizer()                           # the bundled model
>>> for face in recognizer.predict("photo.jpg"):               # doctest: +SKIP
...     print(face.box, face.label, face.probabilities["happy"])
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.faces import DEFAULT_DETECTOR, Face, make_detector
from ferkit.framing import TTA_VIEWS, Framing, crop_face, crop_face_views
from ferkit.images import (
    DEFAULT_CROP_MAX_SIDE,
    DEFAULT_MAX_PIXELS,
    FACE_MODES,
    VIDEO_EXTENSIONS,
    ImageReadError,
    looks_like_crop,
    normalise_mode,
    read_image,
    resize_face,
)
from ferkit.inference.results import FaceResult, ImageInput, ImageResult

BATCH_ERRORS = ("record", "raise")


class EmotionRecognizer:
    """Find faces in images and tell which expression each shows.

    Args:
        model: ``None`` for the bundled default model, the name of another installed
            model (``"ferplus"``: eight classes with contempt; ``ferkit models`` lists
            them), or a run folder, bundle folder, export folder, or
            ``.keras``/``.onnx``/``.tflite`` file.
        detector: ``blazeface-full`` (default: fast, finds small and turned faces, aligns
            by the eyes), ``blazeface`` (short range, fastest), ``mtcnn`` or ``haar``; see
            :mod:`ferkit.faces` for the measurements behind the default.
        margin: ``None`` (default): each face is cut with the detector's fitted framing
            (:mod:`ferkit.framing`), the framing of the training crops; a number: the
            fixed framing of earlier releases instead, the box's longer side plus this
            fraction of it (0.15 was their default).
        tta: test-time augmentation for still images: each face is classified in three
            framings (zoomed 0.9, 1 and 1.1) and their mirror images and the
            probabilities averaged (:data:`ferkit.framing.TTA_VIEWS`); about six times
            the classifier's work per face. Video frames never use it.
        backend: classifier runtime (one of
            :data:`ferkit.inference.runtimes.BACKENDS`); ``auto`` uses the runtime the
            model folder names as its default (the bundled model's int8 LiteRT file),
            else ONNX Runtime when the model has an ONNX file, so the installed models
            predict without importing TensorFlow.
        faces: ``auto`` (small, roughly square images are taken as ready-cut face crops,
            others go through the detector), ``crop`` (every image is one face) or
            ``detect`` (always run the detector).
        crop_max_side: in ``auto`` mode, the longest side of an image taken as a crop.
        max_pixels: pixel budget of a decoded image file (see
            :func:`ferkit.images.decode_image`).
        threads: threads of one classifier call (default: one per core); a program that
            classifies on several threads at once runs faster with fewer each.
        geometry: also give each detected face its 478 landmarks, 52 blendshape scores
            and head pose (``FaceResult.geometry``, see :mod:`ferkit.geometry`): MediaPipe's
            face mesh and blendshape networks on LiteRT, about 7 ms a face.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        detector: str = DEFAULT_DETECTOR,
        margin: float | None = None,
        backend: str = "auto",
        faces: str = "auto",
        crop_max_side: int = DEFAULT_CROP_MAX_SIDE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        threads: int | None = None,
        tta: bool = False,
        geometry: bool = False,
    ) -> None:
        from ferkit.inference.runtimes import load_classifier

        _check_choice("faces", faces, FACE_MODES)
        if margin is not None and not margin >= 0:
            raise ValueError(f"margin must be zero or positive, not {margin}")
        if max_pixels < 1 or crop_max_side < 1:
            raise ValueError("max_pixels and crop_max_side must be at least 1")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        self.model = load_classifier(model, backend, threads=threads)
        self.backend, self.threads = backend, threads
        self._models_on: dict[tuple[int | None, bool], Any] = {}
        self.classes = self.model.classes
        self.detector = make_detector(detector)
        self.margin = margin
        self.tta = bool(tta)
        self.geometry = bool(geometry)
        self._geometry_estimator: Any = None
        self.faces = faces
        self.crop_max_side = crop_max_side
        self.max_pixels = max_pixels
        self.size, _, self.channels = self.model.image_shape

    @property
    def frame_model(self) -> Any:
        """The classifier of video frames (one face or a few at a time): the same model on
        one thread, unless ``threads`` was given; decoding and detection run on threads
        of their own beside it (:mod:`ferkit.inference.video`), so one is faster there."""
        return self._model_on(1)

    @property
    def batch_model(self) -> Any:
        """The classifier of image batches in ``predict``'s image loop, where reading,
        decoding and face finding run on a thread of their own: the same model with
        ONNX Runtime's threads sleeping between calls instead of spinning, unless
        ``threads`` was given. Spinning threads take the core the decoding thread needs:
        over the FER2013 train crops on two cores, the fast model's run took a quarter
        less CPU without them, and the default model, whose classification is most of
        the work, keeps both cores for it (one thread halves its rate)."""
        return self._model_on(None, spin=False)

    def _model_on(self, threads: int | None, spin: bool = True) -> Any:
        """The classifier on ``threads`` threads of ONNX Runtime or LiteRT (None: one per
        core), ``spin``: whether ONNX Runtime's threads spin between calls; loaded once
        per setting. Keras, and a recogniser given ``threads``, keep their own
        classifier."""
        from ferkit.inference.runtimes import OnnxModel, TFLiteModel

        model = self.model
        if self.threads is not None or not isinstance(model, OnnxModel | TFLiteModel):
            return model
        if isinstance(model, TFLiteModel) and threads is None:
            return model  # LiteRT's threads are the model's own: one per core
        if (threads, spin) not in self._models_on:
            self._models_on[threads, spin] = model.with_threads(threads, spin)
        return self._models_on[threads, spin]

    def with_detector(
        self, detector: str | None = None, *, geometry: bool | None = None
    ) -> EmotionRecognizer:
        """A recogniser that shares this one's classifier and settings and finds faces
        with a new ``detector`` instance (default: one like its own). Detectors keep
        state between calls, so each thread needs its own; so does a LiteRT classifier
        (its interpreter runs one call at a time), while the other runtimes are shared.
        ``geometry``: whether it computes face geometry (default: as this
        one does).
        """
        from ferkit.inference.runtimes import TFLiteModel

        twin = copy.copy(self)
        twin.detector = make_detector(detector or self.detector.name)
        twin._geometry_estimator = None  # LiteRT interpreters are not shared across threads
        if isinstance(self.model, TFLiteModel):  # one interpreter a thread, not taking turns
            twin.model = self.model.with_threads(self.threads)
            twin._models_on = {}
        if geometry is not None:
            twin.geometry = bool(geometry)
        return twin

    def with_model(self, model: str | os.PathLike[str] | None) -> EmotionRecognizer:
        """A recogniser with this one's settings (detector kind, runtime, margins,
        limits) and another ``model`` (an installed model's name, or a path)."""
        return EmotionRecognizer(
            model, detector=self.detector.name, margin=self.margin, backend=self.backend,
            faces=self.faces, crop_max_side=self.crop_max_side, max_pixels=self.max_pixels,
            threads=self.threads, tta=self.tta, geometry=self.geometry,
        )  # fmt: skip

    @property
    def framing(self) -> Framing:
        """Where each face's crop sits around its box: the detector's fitted framing, or
        the fixed one that ``margin`` asks for."""
        return Framing.margin(self.margin) if self.margin is not None else self.detector.framing

    @property
    def crop_shape(self) -> tuple[int, ...]:
        """The shape of one still image's face in the crops :meth:`find_faces` gives:
        ``(size, size, channels)``, or ``(views, size, size, channels)`` with ``tta``."""
        face = (self.size, self.size, self.channels)
        return (2 * len(TTA_VIEWS), *face) if self.tta else face

    def _to_rgb(self, image: ImageInput, color_order: str) -> np.ndarray:
        if isinstance(image, str | os.PathLike):
            path = Path(image)
            if re.match(r"[A-Za-z][A-Za-z0-9+.-]+://", os.fspath(image)):
                raise ValueError(
                    f"{image}: URLs are not read here; download the file first ('ferkit "
                    "predict URL' downloads http(s) URLs)"
                )
            if path.is_dir():
                raise ValueError(
                    f"{path}: is a folder; pass its image files (ferkit.inference.sources.expand_inputs "
                    "lists a folder's files)"
                )
            if path.suffix.lower() in VIDEO_EXTENSIONS:
                raise ValueError(f"{path}: is a video; use predict_video() for videos")
            return read_image(path, color=True, max_pixels=self.max_pixels)
        if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
            if image.size[0] < 1 or image.size[1] < 1:
                raise ValueError(f"the PIL image is empty ({image.size}); pass a real image")
            return np.asarray(normalise_mode(image, color=True))
        if not isinstance(image, np.ndarray):
            raise TypeError(
                f"an image must be a file path, a uint8 NumPy array (HxW, HxWx3 or HxWx4) or "
                f"a PIL image, not {type(image).__name__}"
            )
        array = image
        if array.dtype != np.uint8:
            raise ValueError(
                f"image arrays must be uint8, not {array.dtype}; scale to 0..255 and use "
                "array.astype(np.uint8)"
            )
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
            raise ValueError(
                f"an image array must be HxW, HxWx1, HxWx3 or HxWx4, not {array.shape}"
            )
        if array.size == 0:
            raise ValueError(
                f"the image array is empty (shape {array.shape}); pass a decoded image of at "
                "least 1x1 pixels"
            )
        if array.ndim == 2:
            return np.repeat(array[:, :, None], 3, axis=2)
        array = array[:, :, :3]
        if color_order.upper() == "BGR":
            array = array[:, :, ::-1]
        return np.ascontiguousarray(array)

    def _face_mode(self, rgb: np.ndarray, faces: str | None) -> str:
        mode = faces or self.faces
        if mode == "auto":
            return "crop" if looks_like_crop(rgb.shape, self.crop_max_side) else "detect"
        return mode

    def crop_faces(
        self,
        rgb: np.ndarray,
        faces: list[Face] | None = None,
        mode: str = "detect",
        *,
        views: bool = False,
    ) -> tuple[list[Face], np.ndarray]:
        """Detect the faces in ``rgb`` (unless ``faces`` are given, or ``mode`` is
        ``crop``: the whole image is one face) and cut out each as the classifier's input,
        with :func:`ferkit.framing.crop_face` and the recogniser's :attr:`framing`.

        Args:
            views: the test-time-augmentation views of each face (still images with
                ``tta``): crops get a views axis.

        Returns:
            The faces and their crops, ``(N, size, size, channels)`` ``uint8``, or
            ``(N, views, size, size, channels)`` with ``views``.
        """
        shape = (self.size, self.size, self.channels)
        if mode == "crop" and faces is None:
            height, width = rgb.shape[:2]
            whole = Face(box=(0, 0, width, height), confidence=None)
            if views:
                frame = Framing(1.0, level_eyes=False)
                crops = crop_face_views(rgb, whole, frame, size=self.size, channels=self.channels)
                return [whole], crops[None]
            return [whole], resize_face(rgb, self.size, self.channels)[None]
        if faces is None:
            faces = self.detector.detect(rgb)
        cut = crop_face_views if views else crop_face
        crops = [
            cut(rgb, face, self.framing, size=self.size, channels=self.channels) for face in faces
        ]
        views_shape = (2 * len(TTA_VIEWS),) if views else ()
        empty = np.zeros((0, *views_shape, *shape), dtype=np.uint8)
        return faces, np.stack(crops) if crops else empty

    def find_faces(
        self, rgb: np.ndarray, faces: str | None = None, tta: bool | None = None
    ) -> tuple[str, list[Face], np.ndarray]:
        """The faces of one still image (RGB ``uint8``) and their crops, unclassified:
        ``(mode, faces, crops)``, where ``mode`` is the face mode used (``crop`` or
        ``detect``; ``faces`` overrides the recogniser's). Still images get the
        detector's thorough search (faces cut by the frame too); video frames keep the
        single fast search. With test-time augmentation (``tta``, else the
        recogniser's) the crops have a views axis (see :attr:`crop_shape`);
        :meth:`classify_faces` averages over it."""
        mode = self._face_mode(rgb, faces)
        still = self.detector.detect(rgb, thorough=True) if mode == "detect" else None
        views = self.tta if tta is None else bool(tta)
        found, crops = self.crop_faces(rgb, still, mode=mode, views=views)
        return mode, found, crops

    def face_results(
        self, faces: list[Face], probabilities: np.ndarray, geometries: list | None = None
    ) -> list[FaceResult]:
        """One :class:`FaceResult` per face from its row of class probabilities (and its
        geometry, from :meth:`face_geometry`)."""
        geometries = geometries or [None] * len(faces)
        return [
            FaceResult.of(face, self.classes, row, geometry=geometry)
            for face, row, geometry in zip(faces, probabilities, geometries, strict=True)
        ]

    def face_geometry(
        self, rgb: np.ndarray, faces: list[Face], geometry: bool | None = None
    ) -> list[Any]:
        """The geometry of each face (:class:`ferkit.geometry.FaceGeometry`) when the
        recogniser computes it (``geometry`` overrides its setting), else a None for each."""
        if not (self.geometry if geometry is None else geometry):
            return [None] * len(faces)
        if self._geometry_estimator is None:
            from ferkit.geometry import FaceGeometryEstimator

            self._geometry_estimator = FaceGeometryEstimator()
        return self._geometry_estimator.estimate(rgb, faces)

    def predict(
        self,
        image: ImageInput,
        *,
        color_order: str = "RGB",
        faces: str | None = None,
        tta: bool | None = None,
        geometry: bool | None = None,
    ) -> ImageResult:
        """Results for every face in one image (an empty list when there is none).

        Args:
            image: a file path, a ``uint8`` array (``color_order`` says RGB or BGR, as
                OpenCV gives), or a PIL image.
            faces: override the recogniser's ``faces`` mode for this call.
            tta: override the recogniser's test-time augmentation for this call.
            geometry: override whether the recogniser computes face geometry.

        Raises:
            FileNotFoundError, ImageReadError: the file is missing or cannot be decoded.
            TypeError, ValueError: the argument is not an image (the message says what
                to pass).
        """
        return self.predict_batch(
            [image], color_order=color_order, faces=faces, errors="raise", tta=tta,
            geometry=geometry,
        )[0]  # fmt: skip

    def predict_batch(
        self,
        images: list[ImageInput],
        *,
        color_order: str = "RGB",
        faces: str | None = None,
        errors: str = "record",
        tta: bool | None = None,
        geometry: bool | None = None,
    ) -> list[ImageResult]:
        """Like :meth:`predict` for several images, classifying all their faces in one batch.

        Args:
            errors: ``record`` (default): an image that cannot be used (missing file,
                corrupt data, wrong array) gets an :class:`ImageResult` whose ``error``
                says why, and every other image is still classified; ``raise``: the
                first such image raises its error.

        Returns:
            One :class:`ImageResult` (a list of :class:`FaceResult`) per image, in order.
        """
        if (
            isinstance(images, str | os.PathLike | np.ndarray | dict)
            or hasattr(images, "convert")
            or not hasattr(images, "__iter__")
        ):
            raise TypeError(
                "predict_batch takes a list of images (paths, uint8 arrays or PIL images), "
                f"not {type(images).__name__}; for one image call predict(image)"
            )
        _check_choice("errors", errors, BATCH_ERRORS)
        _check_choice("color_order", str(color_order).upper(), ("RGB", "BGR"))
        if faces is not None:
            _check_choice("faces", faces, FACE_MODES)
        detections: list[tuple[list[Face], np.ndarray, list] | None] = []
        results: list[ImageResult] = []
        for image in images:
            try:
                rgb = self._to_rgb(image, color_order)
                mode, found, crops = self.find_faces(rgb, faces, tta)
            except (FileNotFoundError, ImageReadError, TypeError, ValueError, OSError) as error:
                if errors == "raise":
                    raise
                detections.append(None)
                results.append(ImageResult(error=_describe_error(error)))
                continue
            except Exception as error:  # a detector failing on one odd image
                if errors == "raise":
                    raise
                detections.append(None)
                results.append(
                    ImageResult(error=f"face detection failed: {type(error).__name__}: {error}")
                )
                continue
            detections.append((found, crops, self.face_geometry(rgb, found, geometry)))
            height, width = rgb.shape[:2]
            results.append(ImageResult(face_mode=mode, width=width, height=height))
        all_crops = [detection[1] for detection in detections if detection is not None]
        probabilities = (
            self.classify_faces(np.concatenate(all_crops))
            if all_crops
            else np.zeros((0, len(self.classes)))
        )
        start = 0
        for detection, result in zip(detections, results, strict=True):
            if detection is None:
                continue
            found, crops, geometries = detection
            rows = probabilities[start : start + len(crops)]
            result.extend(self.face_results(found, rows, geometries))
            start += len(crops)
        return results

    def classify_faces(self, faces: np.ndarray, model: Any = None) -> np.ndarray:
        """Calibrated probabilities for face crops already cut out: ``(N, H, W, C)``
        ``uint8``, or ``(N, V, H, W, C)`` for V views of each face (test-time
        augmentation), whose probabilities are averaged. ``model``: the classifier to
        run (default: :attr:`model`; :attr:`batch_model` is the same model, its threads
        sleeping between calls)."""
        model = self.model if model is None else model
        if faces.ndim == 5:
            count, views = faces.shape[:2]
            flat = model.predict_proba(faces.reshape(count * views, *faces.shape[2:]))
            return flat.reshape(count, views, -1).mean(axis=1)
        return model.predict_proba(faces)

    def predict_video(
        self,
        source: str | os.PathLike[str] | int,
        *,
        every: int = 1,
        detect_every: int | str = "auto",
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
            detect_every: ``auto`` (default): detect on every frame while faces move,
                appear or vanish, and on every other frame while they hold still (see
                :class:`ferkit.inference.video.DetectionPlan`); N: run the detector on
                every N-th processed frame; in between, the tracked boxes are reused
                (faces are still classified on every frame). 1 detects on every frame.
            max_frames: stop after this many frames read (a camera runs until then).

        Yields:
            :class:`ferkit.inference.video.FrameResult` for each processed frame.

        Raises:
            FileNotFoundError / ValueError: the file is missing or not a readable video,
                or the camera cannot be opened.
        """
        from ferkit.inference.video import iter_video_results

        return iter_video_results(
            self,
            source,
            every=every,
            detect_every=detect_every,
            smoothing_s=smoothing_s,
            max_frames=max_frames,
        )


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")


def _describe_error(error: BaseException) -> str:
    """One line saying why an input could not be used (no path prefix for file errors,
    since the caller knows which input it was)."""
    if isinstance(error, ImageReadError):
        return error.reason
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, OSError) and error.strerror:
        return f"unreadable: {error.strerror}"
    return str(error)
