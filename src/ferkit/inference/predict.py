"""``ferkit predict``: recognise expressions in files, folders, globs, videos and a webcam.

:func:`predict` expands the inputs (:mod:`~ferkit.inference.sources`), runs an
:class:`~ferkit.inference.recognizer.EmotionRecognizer` over each, and streams one record per
face into ``predictions.csv|json|jsonl`` (:mod:`~ferkit.inference.records`; video
records carry the frame index, timestamp and track id, and both smoothed and raw
probabilities). Every input also gets a status: ``ok``, ``no_face`` (an image without a
face: an empty result, not an error), ``error`` (with the reason: unreadable, not an
image or video, missing), ``partial`` (a video whose stream ends before the frames it
announces: its results cover the frames read) or ``skipped``. Those rows go into the same
file, and ``summary.json`` repeats them with per-video shares of time per emotion, so a
batch never loses work on one bad file. ``--annotate`` writes images and videos with
boxes, labels and probability bars, and an emotion-over-time plot per video (which
needs Matplotlib, the report extra);
``--annotate-geometry`` draws each face's mesh, contours or pose axes under them.

Runs of image files are handled here, in batches: decoded and their faces found on a
thread of their own, the faces of up to :data:`IMAGE_BATCH` images classified in one
call. Each video or webcam goes through :mod:`~ferkit.inference.video_loop`, frame by
frame.

The output folder follows :mod:`ferkit.outputs` (refused if it holds results, unless
``overwrite``; written whole or not at all; one writer at a time). http(s) URLs are
downloaded, bounded in size and time; other URL schemes are reported with the fix.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.images import FACE_MODES, VIDEO_EXTENSIONS, ImageReadError, read_image
from ferkit.inference.records import (
    OUTPUT_FORMATS,
    PredictSummary,
    RecordWriter,
    describe,
    error_entry,
    geometry_drawing,
    hints_for,
    image_records,
    record_columns,
    unique_name,
    with_exact_name,
    write_summary,
)
from ferkit.inference.sources import Source, download, expand_inputs, read_paths, url_scheme
from ferkit.inference.video_loop import ANNOTATED_VIDEO_FORMATS, predict_video_source
from ferkit.outputs import output_folder, path_text, peak_memory_mb

logger = logging.getLogger(__name__)


#: Images classified in one call by the local engine (fewer when annotating, since the
#: decoded images are then kept until drawn).
IMAGE_BATCH = 64
ANNOTATE_BATCH = 8


def predict(
    inputs: list[str],
    out: str | os.PathLike[str] | None = None,
    *,
    fmt: str = "csv",
    annotate: bool = False,
    camera: int | None = None,
    model: str | os.PathLike[str] | None = None,
    detector: str | None = None,
    backend: str = "auto",
    faces: str = "auto",
    max_pixels: int | None = None,
    tta: bool = False,
    geometry: bool = False,
    every: int = 1,
    detect_every: int | str = "auto",
    smoothing_s: float = 0.5,
    max_frames: int | None = None,
    overwrite: bool = False,
    recognizer: Any = None,
    progress: bool = True,
    echo: Any = None,
    annotated_video: str = "webm",
    on_frame: Callable[[str, int, int | None], None] | None = None,
    annotate_geometry: str | None = None,
) -> PredictSummary:
    """Run recognition over inputs and write the records.

    Args:
        inputs: image/video files, folders, globs, http(s) URLs.
        out: output folder (``predictions.<fmt>``, ``summary.json``, ``annotated/``), or
            None to write nothing. It must not hold results already unless ``overwrite``
            (see :mod:`ferkit.outputs`).
        camera: also read this webcam index until ``max_frames`` or Ctrl-C.
        faces: ``auto``, ``crop`` or ``detect`` (see :class:`EmotionRecognizer`).
        max_pixels: pixel budget of one decoded image (default: the recogniser's).
        tta: test-time augmentation of the faces of still images (see
            :class:`EmotionRecognizer`); never for video frames.
        geometry: each face's blendshapes and head pose too (``bs_<name>``, ``yaw``,
            ``pitch``, ``roll``), and in JSON/JSONL its 478 ``landmarks`` (see
            :mod:`ferkit.geometry`).
        recognizer: an existing :class:`EmotionRecognizer` (else one is built from
            ``model``, ``detector``, ``backend``, ``faces``, ``max_pixels`` and ``tta``, which are
            then ignored in favour of the recogniser's own settings).
        echo: callable that receives one human-readable line per input (``print``).
        annotated_video: container of annotated videos, ``webm`` (VP8, which web
            browsers play) or ``mp4`` (MPEG-4 part 2, for older desktop tools).
        on_frame: called after each video frame is read with the input's name, the
            frames read so far and the frames expected (None when unknown), for progress
            reports.
        annotate_geometry: annotate, and draw each face's geometry under its box and
            panel: ``mesh``, ``contours`` or ``axes`` (see
            :data:`ferkit.inference.annotate.GEOMETRY_DRAWINGS`); turns ``annotate`` and
            ``geometry`` on.

    Returns:
        What happened to every input; :meth:`PredictSummary.exit_status` tells a script
        whether some inputs failed. Ctrl-C ends the run early, keeping what was done.

    Raises:
        ValueError: bad options, the camera cannot be opened, nothing to do, or ``out``
            overlaps an input.
        FileExistsError: ``out`` holds results and ``overwrite`` is false.
    """
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, not {fmt!r}")
    if annotated_video not in ANNOTATED_VIDEO_FORMATS:
        raise ValueError(
            f"annotated_video must be one of {tuple(ANNOTATED_VIDEO_FORMATS)}, not "
            f"{annotated_video!r}"
        )
    check_options(faces, every, detect_every, smoothing_s, max_frames, max_pixels)
    if annotate_geometry is not None:
        from ferkit.inference.annotate import GEOMETRY_DRAWINGS

        if annotate_geometry not in GEOMETRY_DRAWINGS:
            raise ValueError(
                f"annotate_geometry must be one of {GEOMETRY_DRAWINGS}, not {annotate_geometry!r}"
            )
        if recognizer is not None and not recognizer.geometry:
            raise ValueError("annotate_geometry needs a recognizer made with geometry=True")
        # From here on, annotate names the drawing (a str) or is a bool.
        annotate, geometry = annotate_geometry, True
    if camera is not None and camera < 0:
        raise ValueError(f"camera index must be 0 or more (0 is the first), not {camera}")
    sources = expand_inputs(list(inputs))
    if camera is None and not sources:
        raise ValueError("nothing to predict on: give image/video files, folders or --camera N")
    given_paths = read_paths(inputs, sources)
    run = {
        "fmt": fmt, "annotate": annotate, "camera": camera, "model": model,
        "detector": detector, "backend": backend, "faces": faces, "max_pixels": max_pixels,
        "tta": tta, "geometry": geometry, "every": every, "detect_every": detect_every,
        "smoothing_s": smoothing_s,
        "max_frames": max_frames, "recognizer": recognizer, "progress": progress, "echo": echo,
        "annotated_video": annotated_video, "on_frame": on_frame,
    }  # fmt: skip
    if out is None:
        return _predict_all(sources, None, **run)
    with output_folder(out, "predict", overwrite=overwrite, inputs=given_paths) as staging:
        summary = _predict_all(sources, staging, **run)
    summary.out = Path(out)
    return summary


def check_options(
    faces: str,
    every: int,
    detect_every: int | str,
    smoothing_s: float,
    max_frames: int | None,
    max_pixels: int | None,
) -> None:
    """Refuse prediction settings out of range, naming the setting.

    Raises:
        ValueError: a setting is out of range.
    """
    if faces not in FACE_MODES:
        raise ValueError(f"faces must be one of {FACE_MODES}, not {faces!r}")
    from ferkit.inference.video import check_detect_every

    if every < 1:
        raise ValueError(f"every must be at least 1, not {every}")
    check_detect_every(detect_every)
    if not math.isfinite(smoothing_s) or smoothing_s < 0:
        raise ValueError(f"smoothing must be a number of seconds, 0 or more, not {smoothing_s}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, not {max_frames}")
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be at least 1, not {max_pixels}")


def _predict_all(
    sources: list[Source],
    out_dir: Path | None,
    *,
    fmt: str,
    annotate: bool | str,
    camera: int | None,
    model: Any,
    detector: str | None,
    backend: str,
    faces: str,
    max_pixels: int | None,
    tta: bool,
    geometry: bool,
    every: int,
    detect_every: int | str,
    smoothing_s: float,
    max_frames: int | None,
    recognizer: Any,
    progress: bool,
    echo: Any,
    annotated_video: str,
    on_frame: Callable[[str, int, int | None], None] | None,
) -> PredictSummary:
    from ferkit.inference.video import open_video

    echo = echo or (lambda line: None)
    camera_capture = None
    if camera is not None:
        # Opened now so that a missing camera is an error before any work; this capture is
        # the one the camera's frames are read from, and it is released whatever happens.
        opened = open_video(camera)
        camera_capture = opened[0]
        sources.append(Source(f"camera:{camera}", "camera", camera=camera, opened=opened))
    try:
        if recognizer is None:
            recognizer = _make_recognizer(
                model, detector, backend, faces, max_pixels, tta, geometry
            )
        options = {"every": every, "detect_every": detect_every, "smoothing_s": smoothing_s,
                   "max_frames": max_frames, "annotated_video": annotated_video,
                   "on_frame": on_frame}  # fmt: skip
        summary = _run_sources(
            recognizer, sources, fmt, out_dir, annotate, progress, echo, options,
        )  # fmt: skip
    finally:
        if camera_capture is not None:
            camera_capture.release()
    summary.hints = hints_for(summary, recognizer)
    for hint in summary.hints:
        echo(f"hint: {hint}")
    summary.peak_memory_mb = peak_memory_mb()
    if out_dir is not None:
        write_summary(out_dir / "summary.json", summary, recognizer)
    return summary


def _make_recognizer(
    model: Any,
    detector: str | None,
    backend: str,
    faces: str,
    max_pixels: int | None,
    tta: bool = False,
    geometry: bool = False,
) -> Any:
    from ferkit.inference.recognizer import EmotionRecognizer

    kwargs: dict[str, Any] = {"detector": detector} if detector else {}
    if max_pixels is not None:
        kwargs["max_pixels"] = max_pixels
    if geometry:
        kwargs["geometry"] = True
    return EmotionRecognizer(model, backend=backend, faces=faces, tta=tta, **kwargs)


def _run_sources(
    recognizer: Any,
    sources: list[Source],
    fmt: str,
    out_dir: Path | None,
    annotate: bool | str,
    progress: bool,
    echo: Any,
    options: dict[str, Any],
) -> PredictSummary:
    """Each input in turn, its records written as they come; Ctrl-C (or one in the middle
    of a video) records the inputs left as skipped."""
    import tempfile

    from ferkit.outputs import progress_bar

    columns = record_columns(recognizer.classes, getattr(recognizer, "geometry", False))
    writer = RecordWriter(out_dir / f"predictions.{fmt}", fmt, columns) if out_dir else None
    summary = PredictSummary(out=out_dir)
    used_names: set[str] = set()
    started = time.perf_counter()
    downloads = tempfile.TemporaryDirectory(prefix="ferkit-download-")
    try:
        bar = progress_bar(
            total=len(sources), desc="predict", unit="input",
            disable=not progress or len(sources) < 2,
        )  # fmt: skip
        entries = _entries(
            recognizer, sources, writer, out_dir, annotate, used_names, progress,
            Path(downloads.name), options,
        )  # fmt: skip
        try:
            for entry in entries:
                bar.update(1)
                summary.frames += entry.get("frames", 0)
                summary.faces += entry.get("faces", 0)
                summary.sources.append(entry)
                echo(describe(entry))
                if entry.pop("interrupted", False):  # Ctrl-C in the middle of a video
                    summary.interrupted = True
                    _skip_rest(summary, sources[len(summary.sources) :], writer, echo)
                    break
        except KeyboardInterrupt:
            summary.interrupted = True
            _skip_rest(summary, sources[len(summary.sources) :], writer, echo)
        finally:
            entries.close()
            bar.close()
    finally:
        downloads.cleanup()
        if writer is not None:
            writer.close()
        summary.seconds = time.perf_counter() - started
    return summary


def _entries(
    recognizer: Any,
    sources: list[Source],
    writer: RecordWriter | None,
    out_dir: Path | None,
    annotate: bool | str,
    used_names: set[str],
    progress: bool,
    downloads: Path,
    options: dict[str, Any],
) -> Iterator[dict[str, Any]]:
    """Each input's summary entry, in order, its records written just before it: runs of
    image files go through :func:`_predict_images` (batched), the rest one by one."""
    start = 0
    while start < len(sources):
        end = start
        while end < len(sources) and sources[end].kind in ("image", "unknown"):
            end += 1
        if end > start:
            yield from _predict_images(
                recognizer, sources[start:end], writer, out_dir, annotate, used_names
            )
            start = end
            continue
        yield predict_source(
            recognizer, sources[start], writer, out_dir, annotate, used_names, progress,
            downloads, options,
        )  # fmt: skip
        start += 1


def _found_faces(
    recognizer: Any, sources: list[Source], keep_image: bool
) -> Iterator[tuple[Source, np.ndarray | None, str, Any]]:
    """Per image file: ``(source, rgb or None, reason it failed, (mode, faces, crops,
    shape, geometries) or None)``, the image decoded and its faces found and cut out (and
    their geometry, where the recogniser computes it)."""
    for source in sources:
        try:
            rgb, reason = read_source_image(source, recognizer.max_pixels)
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except Exception as error:  # recorded, as the local engine records any input's
            logger.debug("%s failed", source.name, exc_info=True)
            rgb, reason = None, f"failed: {type(error).__name__}: {error}"
        if rgb is None:
            yield source, None, reason, None
            continue
        try:
            mode, found, crops = recognizer.find_faces(rgb)
            geometries = recognizer.face_geometry(rgb, found)
        except Exception as error:  # a detector failing on one odd image
            logger.debug("%s failed", source.name, exc_info=True)
            yield source, None, detection_failure(error), None
            continue
        yield source, (rgb if keep_image else None), "", (mode, found, crops, rgb.shape, geometries)


def _predict_images(
    recognizer: Any,
    sources: list[Source],
    writer: RecordWriter | None,
    out_dir: Path | None,
    annotate: bool | str,
    used_names: set[str],
) -> Iterator[dict[str, Any]]:
    """Image files in batches: decoding and face finding on a thread of their own (PIL,
    OpenCV and LiteRT release the GIL), the faces of up to :data:`IMAGE_BATCH` images
    classified in one call; the same records and entries as :func:`_predict_image` one
    by one."""
    from ferkit.inference.video import prefetch

    size = ANNOTATE_BATCH if annotate and out_dir is not None else IMAGE_BATCH
    keep = annotate and out_dir is not None
    found = prefetch(_found_faces(recognizer, sources, keep), depth=size, name="ferkit-images")
    batch: list[tuple[Source, np.ndarray | None, str, Any]] = []
    try:
        for item in found:
            batch.append(item)
            if len(batch) >= size:
                yield from _classified(recognizer, batch, writer, out_dir, annotate, used_names)
                batch = []
        yield from _classified(recognizer, batch, writer, out_dir, annotate, used_names)
    finally:
        found.close()


def _classified(
    recognizer: Any,
    batch: list[tuple[Source, np.ndarray | None, str, Any]],
    writer: RecordWriter | None,
    out_dir: Path | None,
    annotate: bool | str,
    used_names: set[str],
) -> Iterator[dict[str, Any]]:
    from ferkit.inference.results import ImageResult

    crops = [item[3][2] for item in batch if item[3] is not None]
    try:
        model = getattr(recognizer, "batch_model", None)  # leaves the decoding thread its core
        probabilities = recognizer.classify_faces(np.concatenate(crops), model) if crops else None
    except Exception as error:  # the batch's images are recorded as failed, the run goes on
        logger.debug("classifying a batch failed", exc_info=True)
        failed = f"failed: {type(error).__name__}: {error}"
        batch = [(s, None, r or failed, None) for s, _, r, _ in batch]
    start = 0
    for source, rgb, reason, faces in batch:
        if faces is None:
            yield error_entry(source, reason, writer)
            continue
        mode, boxes, cut, shape, geometries = faces
        rows = probabilities[start : start + len(cut)]
        start += len(cut)
        try:
            result = ImageResult(face_mode=mode, width=shape[1], height=shape[0])
            result.extend(recognizer.face_results(boxes, rows, geometries))
            records, entry = image_records(source.name, result)
            if annotate and out_dir is not None:
                entry["annotated"] = _annotate_image(
                    source, rgb, result, out_dir, used_names, geometry_drawing(annotate)
                )
        except (KeyboardInterrupt, SystemExit, MemoryError):
            raise
        except Exception as error:  # this image is recorded as failed, the run goes on
            logger.debug("%s failed", source.name, exc_info=True)
            yield error_entry(source, f"failed: {type(error).__name__}: {error}", writer)
            continue
        source.kind = "image"
        if writer is not None:
            for record in records:
                writer.write(record)
        yield with_exact_name(entry, source)


def _annotate_image(
    source: Source,
    rgb: np.ndarray,
    faces: Any,
    out_dir: Path,
    used_names: set[str],
    drawing: str | None = None,
) -> str:
    """Draw an image's faces (and their geometry: ``drawing``) into ``annotated/``;
    returns the file's path in ``out_dir``."""
    from PIL import Image

    from ferkit.inference.annotate import STILL_IMAGE_MIN_SIDE, draw_results

    folder = out_dir / "annotated"
    folder.mkdir(exist_ok=True)
    suffix = ".jpg" if source.path.suffix.lower() in (".jpg", ".jpeg") else ".png"
    target = unique_name(folder, path_text(source.path.stem), suffix, used_names)
    drawn = draw_results(rgb, faces, min_side=STILL_IMAGE_MIN_SIDE, geometry=drawing)
    Image.fromarray(drawn).save(target, quality=92)
    return f"annotated/{target.name}"


def _skip_rest(
    summary: PredictSummary, left: list[Source], writer: RecordWriter | None, echo: Any
) -> None:
    summary.sources.extend(
        error_entry(s, "not processed: the run was interrupted", writer, "skipped") for s in left
    )
    if left:
        echo(f"interrupted: {len(left)} input(s) not processed")


def predict_source(
    recognizer: Any,
    source: Source,
    writer: RecordWriter | None,
    out_dir: Path | None,
    annotate: bool | str,
    used_names: set[str],
    progress: bool,
    downloads: Path,
    options: dict[str, Any],
) -> dict[str, Any]:
    """One input's records and summary entry; an unexpected failure on this input is
    recorded as its error, so the rest of the batch completes."""
    try:
        if source.kind == "skipped":
            return error_entry(source, source.error or "skipped", writer, status="skipped")
        if source.kind == "url" and source.error is None:
            try:
                source.path = download(source.url, downloads)
            except ValueError as error:
                return error_entry(source, str(error), writer)
            suffix = source.path.suffix.lower()
            source.kind = "video" if suffix in VIDEO_EXTENSIONS else "unknown"
        if source.kind == "uri":
            scheme = url_scheme(source.url)
            return error_entry(
                source,
                f"{scheme}:// URLs are not read by the local engine: use --engine ray, which "
                "reads them through pyarrow's file systems, or download the file first and "
                "give its local path (http and https URLs are downloaded)",
                writer,
            )
        if source.kind in ("video", "camera"):
            entry = predict_video_source(
                recognizer, source, writer, out_dir, annotate, used_names, progress, **options
            )
        else:
            entry = _predict_image(recognizer, source, writer, out_dir, annotate, used_names)
        return with_exact_name(entry, source)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as error:
        logger.debug("%s failed", source.name, exc_info=True)
        return error_entry(source, f"failed: {type(error).__name__}: {error}", writer)


def _predict_image(
    recognizer: Any,
    source: Source,
    writer: RecordWriter | None,
    out_dir: Path | None,
    annotate: bool | str,
    used_names: set[str],
) -> dict[str, Any]:

    rgb, reason = read_source_image(source, recognizer.max_pixels)
    if rgb is None:
        return error_entry(source, reason, writer)
    source.kind = "image"
    try:
        faces = recognizer.predict(rgb)
    except Exception as error:  # a detector failing on one odd image
        logger.debug("%s failed", source.name, exc_info=True)
        return error_entry(source, detection_failure(error), writer)
    records, entry = image_records(source.name, faces)
    if writer is not None:
        for record in records:
            writer.write(record)
    if annotate and out_dir is not None:
        entry["annotated"] = _annotate_image(
            source, rgb, faces, out_dir, used_names, geometry_drawing(annotate)
        )
    return entry


def read_source_image(source: Source, max_pixels: int) -> tuple[np.ndarray | None, str]:
    """The RGB pixels of an image input, or None and the reason it cannot be used."""
    if source.error:
        return None, source.error
    try:
        return read_image(source.path, color=True, max_pixels=max_pixels), ""
    except ImageReadError as error:
        reason = error.reason
        if source.kind in ("unknown", "url") and error.kind == "not_image":
            reason = f"not an image or video ({error.reason})"
        return None, reason
    except OSError as error:
        return None, f"unreadable: {error.strerror or error}"


def detection_failure(error: BaseException) -> str:
    """The reason recorded for an image on which the detector raised."""
    return f"face detection failed: {type(error).__name__}: {error}"
