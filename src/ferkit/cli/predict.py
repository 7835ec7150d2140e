"""``ferkit predict`` and ``ferkit demo``: expressions in images, folders, globs, URLs,
videos or a webcam, on the local engine or on Ray, and a first run on the photos shipped
with ferkit."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ferkit.cli.common import (
    EXIT_STATUSES,
    OUTPUT_POLICY,
    HelpFormatter,
    model_flag,
    overwrite_flag,
)
from ferkit.settings import default_of


def _detect_every(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"'auto' or a whole number of frames >= 1, not {text!r}")
    return value


def add_predict(subparsers: argparse._SubParsersAction) -> None:
    from ferkit.faces import DEFAULT_DETECTOR, DETECTOR_NAMES
    from ferkit.images import DEFAULT_MAX_PIXELS, FACE_MODES
    from ferkit.inference.annotate import GEOMETRY_DRAWINGS
    from ferkit.inference.predict import predict
    from ferkit.inference.recognizer import DEFAULT_CROP_MAX_SIDE
    from ferkit.inference.records import OUTPUT_FORMATS
    from ferkit.inference.runtimes import BACKENDS
    from ferkit.inference.video_loop import ANNOTATED_VIDEO_FORMATS

    parser = subparsers.add_parser(
        "predict",
        help="recognise expressions in images, folders, globs, URLs, videos or a webcam",
        formatter_class=HelpFormatter,
        description=(
            "Find the faces in each input and classify their expressions. Writes one record "
            "per face (source, frame and time for video, track id, box, label, "
            "probabilities) to OUT/predictions.<format>, every input's status (ok, no_face, "
            "error with its reason, partial: a video whose stream ends before the frames it "
            "announces) to the same file and to OUT/summary.json, and prints a "
            "summary. Bad inputs are reported and skipped; the rest completes. http(s) URLs "
            "are downloaded (up to 200 MB, 60 s).\n\n"
            "Without --out, each run writes a new folder results/predictions/YYYYmmdd-HHMMSS. "
            + OUTPUT_POLICY
        ),
        epilog=EXIT_STATUSES,
    )
    parser.add_argument("inputs", nargs="*", help="image/video files, folders, globs, URLs")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: a new results/predictions/YYYYmmdd-HHMMSS)",
    )
    parser.add_argument(
        "--format", default=default_of(predict, "fmt"), choices=OUTPUT_FORMATS, help="records file"
    )
    overwrite_flag(parser)
    parser.add_argument(
        "--annotate",
        action="store_true",
        help="also write images/videos with boxes, labels and probability bars, and an "
        "emotion-over-time plot per video (with the report extra), to OUT/annotated/",
    )
    parser.add_argument(
        "--annotate-geometry",
        default=None,
        choices=GEOMETRY_DRAWINGS,
        help="annotate (as --annotate), and draw each face's geometry (as --geometry) under "
        "its box and panel: mesh (the face mesh), contours (face, eyes, brows, lips, irises) "
        "or axes (head pose from the nose tip: red to the subject's left, green up, blue "
        "forward; default: none)",
    )
    parser.add_argument(
        "--annotated-video",
        default=default_of(predict, "annotated_video"),
        choices=tuple(ANNOTATED_VIDEO_FORMATS),
        help="container of annotated videos: webm (VP8, plays in web browsers and desktop "
        "players) or mp4 (MPEG-4 part 2, which browsers do not play)",
    )
    parser.add_argument(
        "--camera", type=int, default=None, help="read this webcam (0 = first; default: none)"
    )
    model_flag(parser)
    parser.add_argument(
        "--faces",
        default=default_of(predict, "faces"),
        choices=FACE_MODES,
        help=f"auto: small, roughly square images (at most {DEFAULT_CROP_MAX_SIDE} px) are taken as ready-cut face "
        "crops, others go through the detector; crop: every image is one face; detect: "
        "always detect",
    )
    parser.add_argument(
        "--detector", default=DEFAULT_DETECTOR, choices=DETECTOR_NAMES, help="face detector"
    )
    parser.add_argument(
        "--backend",
        default=default_of(predict, "backend"),
        choices=BACKENDS,
        help="classifier runtime",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="pixel budget of one image: larger JPEGs are decoded reduced, others are refused",
    )
    parser.add_argument(
        "--tta",
        action="store_true",
        help="photos: test-time augmentation, each face read in three framings and their "
        "mirror images, probabilities averaged (about 2 points more on real photos, six "
        "times the classifier's work per face; never for video)",
    )
    parser.add_argument(
        "--geometry",
        action="store_true",
        help="each face's 52 blendshape scores (bs_<name>) and head pose (yaw, pitch, roll "
        "in degrees), and in JSON/JSONL its 478 landmarks: MediaPipe's face mesh, about 7 ms "
        "a face",
    )
    parser.add_argument(
        "--every",
        type=int,
        default=default_of(predict, "every"),
        help="video: process every N-th frame",
    )
    parser.add_argument(
        "--detect-every",
        type=_detect_every,
        default=default_of(predict, "detect_every"),
        help="video: auto: detect on every frame while faces move, on every other frame "
        "while they hold still; N: detect on every N-th processed frame; the tracked boxes "
        "are used in between (1: detect on every frame)",
    )
    parser.add_argument(
        "--smoothing",
        type=float,
        default=default_of(predict, "smoothing_s"),
        help="video: smoothing time constant (s)",
    )
    parser.add_argument(
        "--max-frames", type=int, default=None, help="video/webcam frame limit (default: none)"
    )
    parser.add_argument(
        "--engine",
        default="local",
        choices=("local", "ray"),
        help="local: this process; ray: Ray Data on a Ray cluster (pip install -e '.[ray]'), "
        "records as Parquet files under OUT/predictions/",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="ray: the cluster (auto: the one 'ray start' made here; ray://HOST:10001); "
        "default: a local one on this machine",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="ray: decode-and-detect tasks and classifier actors, each (default: the "
        "cluster's CPUs)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="ray: finish an earlier run into --out, skipping the inputs it wrote",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run_predict)


def _report_predict(summary: Any, records: Any, out: Path) -> int:
    """Print what a prediction run did and where its results are; its exit status."""
    from ferkit.outputs import format_memory

    counts = ", ".join(f"{count} {status}" for status, count in sorted(summary.counts().items()))
    print(
        f"{len(summary.sources)} inputs ({counts}); {summary.faces} faces"
        + (f" over {summary.frames} video frames" if summary.frames else "")
        + f" in {summary.seconds:.1f} s; {format_memory(summary.peak_memory_mb)}"
    )
    print(f"results: {records} and {out / 'summary.json'}")
    if (out / "annotated").is_dir():
        print(f"annotated images and videos: {out / 'annotated'}")
    no_chart = [entry for entry in summary.sources if "emotion_plot_skipped" in entry]
    if no_chart:
        print(f"no emotion-over-time chart for {len(no_chart)} video(s): "
              f"{no_chart[0]['emotion_plot_skipped']}")  # fmt: skip
    if summary.skipped:
        names = [Path(entry["source"]).name for entry in summary.skipped]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        print(f"{len(names)} file(s) skipped, not images or videos by their extension: {shown}")
    if summary.failed:
        print(
            f"{len(summary.failed)} input(s) failed, each listed with its reason above and in "
            "summary.json (exit status 3)"
        )
    if summary.partial:
        print(
            f"{len(summary.partial)} video(s) read only in part (the stream ends before the "
            "frames the file announces), each listed with its reason above and in "
            "summary.json (exit status 3)"
        )
    return summary.exit_status()


def _run_predict_ray(args: argparse.Namespace, out: Path) -> int:
    from ferkit.inference.distributed import predict_ray

    unsupported = [f for f, on in (("--camera", args.camera is not None),
                                   ("--annotate", args.annotate),
                                   ("--annotate-geometry", args.annotate_geometry),
                                   (f"--format {args.format}", args.format != "csv")) if on]  # fmt: skip
    if unsupported:
        raise ValueError(
            f"{', '.join(unsupported)}: not with --engine ray (it writes Parquet records "
            "and the summary); use the local engine for these"
        )
    summary = predict_ray(
        args.inputs, out, address=args.address, workers=args.workers, resume=args.resume,
        overwrite=args.overwrite, model=args.model, detector=args.detector,
        backend=args.backend, faces=args.faces, max_pixels=args.max_pixels, tta=args.tta,
        geometry=args.geometry, every=args.every, detect_every=args.detect_every, smoothing_s=args.smoothing,
        max_frames=args.max_frames, progress=not args.quiet, echo=print,
    )  # fmt: skip
    return _report_predict(summary, f"{out / 'predictions'}/part-*.parquet", out)


def _run_predict(args: argparse.Namespace) -> int:
    from ferkit.inference.predict import predict
    from ferkit.outputs import default_run_folder

    if not args.inputs and args.camera is None:
        raise ValueError("give image/video files, folders, globs or URLs, or --camera N")
    ray_only = [f for f, on in (("--address", args.address), ("--workers", args.workers),
                                ("--resume", args.resume)) if on]  # fmt: skip
    if args.engine == "local" and ray_only:
        raise ValueError(f"{', '.join(ray_only)}: only with --engine ray")
    out = args.out or default_run_folder(Path("results") / "predictions")
    if args.engine == "ray":
        return _run_predict_ray(args, out)
    summary = predict(
        args.inputs,
        out,
        fmt=args.format,
        annotate=args.annotate,
        camera=args.camera,
        model=args.model,
        detector=args.detector,
        backend=args.backend,
        faces=args.faces,
        max_pixels=args.max_pixels,
        tta=args.tta,
        geometry=args.geometry,
        every=args.every,
        detect_every=args.detect_every,
        smoothing_s=args.smoothing,
        max_frames=args.max_frames,
        overwrite=args.overwrite,
        progress=not args.quiet,
        echo=print,
        annotated_video=args.annotated_video,
        annotate_geometry=args.annotate_geometry,
    )
    return _report_predict(summary, out / f"predictions.{args.format}", out)


SAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "samples"


def add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        formatter_class=HelpFormatter,
        help="recognise the expressions in photos (yours, or two real photos shipped with "
        "ferkit) and show where the annotated results are",
        description=(
            "Run the bundled model on your photos, or, without any, on two real photos that "
            "ship with ferkit (a portrait and a group selfie; MIT-licensed, see "
            "ferkit/assets/samples/README.md). Writes annotated images, predictions.csv and "
            "summary.json, prints what it found, where the files are and what to try next."
        ),
        epilog=EXIT_STATUSES,
    )
    parser.add_argument("photos", nargs="*", help="your photos, folders or URLs (optional)")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: a new results/demo/...)"
    )
    model_flag(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from ferkit.inference.predict import predict
    from ferkit.outputs import default_run_folder

    photos = args.photos or [str(path) for path in sorted(SAMPLES_DIR.glob("*.jpg"))]
    out = args.out or default_run_folder(Path("results") / "demo")
    which = "your photos" if args.photos else "two real photos shipped with ferkit"
    model = "the bundled model" if args.model is None else f"the model {args.model}"
    print(f"Recognising facial expressions in {which} with {model}:")
    summary = predict(
        photos, out, annotate=True, model=args.model, progress=not args.quiet,
        echo=lambda line: print(f"  {line}"),
    )  # fmt: skip
    annotated = [entry["annotated"] for entry in summary.sources if entry.get("annotated")]
    print(f"\nResults are in {out}/")
    for name in annotated:
        print(f"  {out / name}   (boxes, labels and probabilities drawn on the photo)")
    print(f"  {out / 'predictions.csv'}   (one row per face: box, label, probabilities)")
    print(f"  {out / 'summary.json'}   (every input's status)")
    print(
        "\nNext, try:\n"
        "  ferkit predict YOUR_PHOTO.jpg --annotate      your own photos, folders or URLs\n"
        "  ferkit predict YOUR_VIDEO.mp4 --annotate      videos: tracked faces, smoothed labels"
        " and, with the report extra, an emotion-over-time plot (or --camera 0 for a webcam)\n"
        "  ferkit predict YOUR_PHOTO.jpg --model ferplus eight expressions, contempt too"
        " ('ferkit models' lists the installed models)\n"
        "  ferkit evaluate --data LABELLED_FOLDER --out results/eval\n"
        "                                                accuracy report on your own labelled"
        " photos (one sub-folder per expression)\n"
        "  ferkit serve                                  a web page and REST API for photos,"
        " videos and your camera (pip install -e '.[serve]')"
    )
    return summary.exit_status()
