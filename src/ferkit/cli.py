"""The ``ferkit`` command line. It only parses arguments and calls the stage functions.

Nothing heavy is imported at module level, so ``ferkit --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import faulthandler
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ferkit import __version__
from ferkit.settings import add_option, default_of

logger = logging.getLogger("ferkit")

#: Exit statuses, documented in ``ferkit --help`` and the README.
EXIT_STATUSES = (
    "exit status: 0 done; 2 refused (bad arguments or input, an --out that holds results, "
    "a damaged model) with nothing written; 3 completed, but some inputs failed (each is "
    "listed in the summary); 1 unexpected internal error; 130 interrupted"
)


class _HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default (settings that come from --config say so) and wraps
    the description paragraph by paragraph."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        return "\n\n".join(
            textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent,
                          break_on_hyphens=False,
                          subsequent_indent=indent)
            for paragraph in text.split("\n\n")
        )  # fmt: skip

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "(default" in text
            or not action.option_strings
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
        ):
            return text
        return f"{text} (default: %(default)s)"


OUTPUT_POLICY = (
    "Results are written whole or not at all (into a hidden folder beside --out, renamed "
    "into place when complete). An --out that already holds files is refused unless "
    "--overwrite is given, and --overwrite replaces only an earlier output of the same "
    "command. An --out inside an input is refused. A second run into the same --out while "
    "one is running fails at once."
)


def _overwrite_flag(parser: argparse.ArgumentParser, what: str = "results") -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace the {what} that an earlier run of this command wrote in --out "
        "(nothing else is ever replaced)",
    )


def _model_flag(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    parser.add_argument(
        "--model",
        default=None,
        help=f"{prefix}an installed model's name ('ferkit models' lists them: default, ferplus), "
        "or a run, bundle or export folder, or a model file (default: the bundled default model)",
    )


def _add_prepare(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="turn an image folder, fer2013.csv or FER+ into a compact training set",
        formatter_class=_HelpFormatter,
        description=(
            "Read a facial-expression dataset (image folders with one sub-folder per class, "
            "optionally under train/val/test folders; fer2013.csv; or Microsoft's FER+ "
            "layout), find or crop the faces, and write one .npz per split plus a "
            "manifest.json listing classes, counts, settings and every skipped item.\n\n"
            + OUTPUT_POLICY
            + " --out may not be, contain or lie inside the source."
        ),
        epilog=EXIT_STATUSES,
    )
    from ferkit.data.prepare import PrepareConfig

    parser.add_argument("source", type=Path, help="dataset folder or fer2013.csv file")
    parser.add_argument("--out", type=Path, required=True, help="output folder to create")
    for name in (
        "format", "faces", "detector", "size", "channels", "margin", "crop_max_side",
        "max_pixels", "val_fraction", "test_fraction", "seed", "soft_labels", "ferplus_mode",
        "dedupe",
    ):  # fmt: skip
        add_option(parser, PrepareConfig, name)
    parser.add_argument("--no-compress", action="store_true", help="write uncompressed .npz")
    add_option(parser, PrepareConfig, "workers")
    _overwrite_flag(parser, "prepared dataset")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from ferkit.data.prepare import PrepareConfig, format_summary, prepare

    config = PrepareConfig(
        format=args.format,
        faces=args.faces,
        detector=args.detector,
        size=args.size,
        channels=args.channels,
        margin=args.margin,
        crop_max_side=args.crop_max_side,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        soft_labels=args.soft_labels,
        ferplus_mode=args.ferplus_mode,
        dedupe=args.dedupe,
        compress=not args.no_compress,
        workers=args.workers,
        max_pixels=args.max_pixels,
    )
    result = prepare(
        args.source, args.out, config, overwrite=args.overwrite, progress=not args.quiet
    )
    print(format_summary(result))
    return 3 if result.manifest["failed"] else 0


SAMPLES_DIR = Path(__file__).resolve().parent / "assets" / "samples"


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        formatter_class=_HelpFormatter,
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
    _model_flag(parser)
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
        " and an emotion-over-time plot (or --camera 0 for a webcam)\n"
        "  ferkit predict YOUR_PHOTO.jpg --model ferplus eight expressions, contempt too"
        " ('ferkit models' lists the installed models)\n"
        "  ferkit evaluate --data LABELLED_FOLDER --out results/eval\n"
        "                                                accuracy report on your own labelled"
        " photos (one sub-folder per expression)\n"
        "  ferkit serve                                  a web page and REST API for photos,"
        " videos and your camera (pip install -e '.[serve]')"
    )
    return summary.exit_status()


def _add_benchmark(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        formatter_class=_HelpFormatter,
        help="time ferkit's stages on this machine and print the figures",
    )
    parser.add_argument(
        "stage",
        choices=(
            [
                "prepare",
                "models",
                "classifier",
                "video",
                "predict-video",
                "crops",
                "ray",
                "serve",
                "colour",
                "photos",
                "geometry",
            ]
        ),
        help="prepare: dataset preparation; models: training and inference speed per "
        "architecture; classifier: the bundled model's faces/s per runtime; video: frames/s "
        "of the full prediction pipeline; predict-video: frames/s of 'ferkit predict VIDEO' "
        "as a whole command, against detection on every frame, and their label agreement; "
        "crops: faces/s of 'ferkit predict FOLDER --faces crop' per runtime (default folder: "
        "the shared FER2013 train crops); ray: faces/s of --engine ray per worker count "
        "against the local engine; serve: requests/s, latency and memory of ferkit "
        "serve under a bounded load on loopback; colour: how often real colour faces keep "
        "their label under other colour-to-grey weightings (the accuracy under every other "
        "shift is 'ferkit evaluate --corruptions'); photos: end-to-end accuracy, balanced "
        "accuracy, ECE, faces missed and faces/s of every detector on a folder of class "
        "folders of real photos (default: the shared taiwanese photos); geometry: faces/s "
        "of face geometry alone (mesh, blendshapes, pose) on a video's faces, and frames/s "
        "of 'ferkit predict VIDEO --geometry' as a whole command against the default path",
    )
    parser.add_argument(
        "source",
        type=Path,
        nargs="?",
        default=None,
        help="prepare: dataset to prepare (default: the shared FER2013, "
        "$FERKIT_SHARED/datasets/fer2013); colour: photo, video or folder of them (default: "
        "the shared samples); classifier: a prepared dataset, to add each runtime's accuracy "
        "on its val split; crops, ray: folder of face crops",
    )
    parser.add_argument(
        "--backends",
        default="onnx,onnx-int8",
        help="crops: classifier runtimes, comma-separated (the first is the baseline)",
    )
    parser.add_argument("--ray-workers", default="1,2", help="ray: worker counts, comma-separated")
    parser.add_argument(
        "--limit", type=int, default=7000, help="ray: crops read (0: the whole folder)"
    )
    parser.add_argument(
        "--address", default=None, help="ray: the cluster (default: a local Ray on this machine)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is shown")
    parser.add_argument(
        "--workers", type=int, default=0, help="prepare: processes (0: one per core)"
    )
    parser.add_argument(
        "--video",
        type=Path,
        default=None,
        help="video for 'video', 'predict-video' and 'geometry' (default: woman2.mp4)",
    )
    _model_flag(parser, "classifier, video, serve, colour: ")
    parser.add_argument("--clients", type=int, default=8, help="serve: concurrent clients")
    parser.add_argument("--duration", type=float, default=60.0, help="serve: seconds of load")
    parser.add_argument(
        "--photo",
        type=Path,
        action="append",
        default=None,
        help="serve: a photo the clients post (repeatable; default: the shipped sample "
        "photos, resized to 400x300)",
    )
    parser.add_argument(
        "--server-workers", type=int, default=1, help="serve: the server's worker processes"
    )
    parser.add_argument(
        "--detectors",
        default=None,
        help="photos: detectors, comma-separated (default: every one this install can run)",
    )
    parser.add_argument(
        "--tta", action="store_true", help="photos: with test-time augmentation (predict --tta)"
    )
    parser.add_argument(
        "--fit-temperature",
        type=Path,
        default=None,
        metavar="CROPS",
        help="photos: instead of the table, fit one temperature on these training-framed "
        "crops (a folder of class folders, e.g. FER2013 val) and the photos together, and "
        "say whether the model should adopt it (default: none: print the table)",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=None,
        help="photos: cut faces with this fixed margin around the box instead of each "
        "detector's fitted framing (0.15: earlier releases' framing; default: none: the "
        "fitted framing)",
    )
    parser.set_defaults(handler=_run_benchmark)


def _run_benchmark(args: argparse.Namespace) -> int:
    from ferkit.evaluation.benchmark import (
        benchmark_classifier,
        benchmark_models,
        benchmark_prepare,
        benchmark_video,
        shared_dir,
    )

    if args.stage == "classifier":
        print(benchmark_classifier(repeats=args.repeats, model=args.model, data=args.source))
        return 0
    if args.stage == "video":
        print(benchmark_video(args.video, repeats=args.repeats, model=args.model))
        return 0
    if args.stage == "models":
        print(benchmark_models(repeats=args.repeats))
        return 0
    if args.stage in ("predict-video", "crops", "ray", "geometry"):
        from ferkit.evaluation import throughput

        if args.stage == "geometry":
            print(throughput.benchmark_geometry(args.video, repeats=args.repeats))
        elif args.stage == "predict-video":
            print(throughput.benchmark_predict_video(args.video, repeats=args.repeats))
        elif args.stage == "crops":
            backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
            print(throughput.benchmark_crops(args.source, args.repeats, backends))
        else:
            counts = tuple(int(w) for w in args.ray_workers.split(",") if w.strip())
            print(
                throughput.benchmark_ray(
                    args.source, counts, args.repeats, args.limit or None, args.address
                )
            )
        return 0
    if args.stage == "photos":
        from ferkit.evaluation.photos import benchmark_photos

        photos = args.source or shared_dir() / "datasets" / "taiwanese"
        if args.fit_temperature:
            from ferkit.evaluation.photos import fit_joint_temperature

            print(fit_joint_temperature(args.fit_temperature, photos, model=args.model))
            return 0
        detectors = [d.strip() for d in (args.detectors or "").split(",") if d.strip()]
        table, _ = benchmark_photos(
            photos, detectors=detectors or None,
            model=args.model, tta=args.tta, margin=args.margin,
        )  # fmt: skip
        print(table)
        return 0
    if args.stage == "colour":
        from ferkit.evaluation.benchmark import benchmark_colour

        print(benchmark_colour(args.source, model=args.model))
        return 0
    if args.stage == "serve":
        from ferkit.extras import require_serve

        require_serve("ferkit benchmark serve")
        from ferkit.serve.loadtest import benchmark_serve

        report = benchmark_serve(
            photos=args.photo, clients=args.clients, duration_s=args.duration,
            workers=args.server_workers,
            server_args=("--model", args.model) if args.model else (),
        )  # fmt: skip
        print(report.text())
        return 0
    source = args.source or shared_dir() / "datasets" / "fer2013"
    print(benchmark_prepare(source, repeats=args.repeats, workers=args.workers))
    return 0


def _add_framing_fit(subparsers: argparse._SubParsersAction) -> None:
    from ferkit.evaluation.framing_fit import DEFAULT_ZOOMS
    from ferkit.faces import DEFAULT_DETECTOR

    parser = subparsers.add_parser(
        "framing-fit",
        help="fit each detector's framing (the box-to-crop transform) from data",
        formatter_class=_HelpFormatter,
        description=(
            "Fit the framing that each detector's faces are cut with: where FER2013's "
            "training crops put the eyes and mouth (training crops pasted into larger "
            "canvases, landmarks of --reference), each detector's box against that "
            "registration on photos of real faces, and one zoom for all detectors chosen "
            "on the photos' labels (the largest within --tolerance of the best). Prints "
            "the fitted values beside the registered ones (ferkit.faces.DETECTORS) and "
            "writes them as JSON with --out."
        ),
    )
    parser.add_argument(
        "--crops",
        type=Path,
        default=None,
        help="folder of class folders of training crops (default: the shared FER2013 train)",
    )
    parser.add_argument(
        "--photos",
        type=Path,
        default=None,
        help="folder of class folders of real photos (default: the shared taiwanese photos)",
    )
    parser.add_argument(
        "--detectors",
        default=None,
        help="detectors to fit, comma-separated (default: every one this install can run)",
    )
    parser.add_argument(
        "--reference", default=DEFAULT_DETECTOR, help="detector whose landmarks register faces"
    )
    parser.add_argument("--limit", type=int, default=2000, help="training crops drawn")
    parser.add_argument(
        "--zooms",
        default=",".join(f"{z:g}" for z in DEFAULT_ZOOMS),
        help="zoom grid, comma-separated",
    )
    parser.add_argument(
        "--tolerance", type=float, default=0.01, help="zoom: allowance below the best accuracy"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the crops drawn")
    parser.add_argument(
        "--out", type=Path, default=None, help="write the fit to this JSON file (default: none)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run_framing_fit)


def _run_framing_fit(args: argparse.Namespace) -> int:
    from ferkit.evaluation.benchmark import shared_dir
    from ferkit.evaluation.framing_fit import fit_framing, write_fit
    from ferkit.extras import MissingExtraError
    from ferkit.faces import detector_names, make_detector

    names = [d.strip() for d in (args.detectors or "").split(",") if d.strip()]
    if not names:
        names = []
        for name in detector_names():
            try:
                make_detector(name)
            except MissingExtraError as error:
                print(f"{name}: not fitted ({error})")
                continue
            names.append(name)
    fit = fit_framing(
        args.crops or shared_dir() / "datasets" / "fer2013" / "train",
        args.photos or shared_dir() / "datasets" / "taiwanese",
        detectors=names, reference=args.reference, crop_limit=args.limit,
        zooms=[float(z) for z in args.zooms.split(",") if z.strip()],
        tolerance=args.tolerance, seed=args.seed, progress=not args.quiet,
    )  # fmt: skip
    print(fit.report())
    if args.out:
        print(f"fit written to {write_fit(fit, args.out)}")
    return 0


#: The TrainConfig settings that ``ferkit train`` takes as flags (each overrides --config).
TRAIN_FLAGS = (
    "data", "epochs", "fine_tune_epochs", "fine_tune_blocks", "batch_size", "learning_rate",
    "label_smoothing", "mixup_alpha", "early_stopping_patience", "limit_train", "val_fraction",
    "seed", "class_weighting", "sampling", "soft_labels", "distribute", "init_from",
    "input_pipeline", "optimizer", "engine",
)  # fmt: skip


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model on a prepared dataset (resumable)",
        formatter_class=_HelpFormatter,
        description=(
            "Train a model into a run folder that describes itself (config.yaml, "
            "labels.json, history.csv, checkpoints, calibration.json, metrics.json). "
            "Settings come from --config (YAML) and are overridden by the flags below; a "
            "flag's default is the --config file's value, else the one shown.\n\n"
            "A folder that holds a run is refused unless --resume (continue it, with its "
            "own settings) or --overwrite (replace it: only the run's own files are "
            "removed). Checkpoints are written atomically and checked on --resume. A second "
            "process training into the same folder fails at once."
        ),
        epilog=EXIT_STATUSES,
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument(
        "--config", type=Path, help="YAML settings, see configs/ (default: none: built-in settings)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out (only the run's own files are removed)",
    )
    parser.add_argument(
        "--finish",
        action="store_true",
        help="end the (stopped) run in --out now: calibrate its best checkpoint, write metrics",
    )
    from ferkit.models.config import ModelConfig
    from ferkit.models.keras_nets import ARCHITECTURES
    from ferkit.training.config import TrainConfig

    add_option(parser, TrainConfig, TRAIN_FLAGS[0], from_config_file=True)
    add_option(
        parser, ModelConfig, "arch", from_config_file=True, choices=sorted(ARCHITECTURES),
        help="architecture, from the registry in ferkit.models.keras_nets",
    )  # fmt: skip
    parser.add_argument(
        "--weights",
        help="vgg16 backbone: imagenet (downloads), none, or a local weights file (default: none)",
    )
    for name in TRAIN_FLAGS[1:]:
        add_option(parser, TrainConfig, name, from_config_file=True)
    parser.add_argument(
        "--time-budget",
        type=float,
        help="torch engine: fit the planned epochs into SECONDS (default: none)",
    )
    parser.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import json

    from ferkit.outputs import locked
    from ferkit.training.config import TrainConfig
    from ferkit.training.finish import finish_now
    from ferkit.training.run_folder import check_resume_overrides
    from ferkit.training.trainer import train

    if args.finish:
        with locked(args.out):
            print(json.dumps(finish_now(args.out).metrics, indent=2))
        return 0
    overrides = {name: getattr(args, name) for name in TRAIN_FLAGS}
    if args.resume:
        if args.config:
            raise ValueError(
                "--resume continues the run with its own config.yaml; drop --config (or start "
                "a new run with --out NEW_RUN)"
            )
        check_resume_overrides(args.out, {**overrides, "arch": args.arch, "weights": args.weights})
    config = (
        TrainConfig.from_yaml(args.config, **overrides)
        if args.config
        else TrainConfig(**{key: value for key, value in overrides.items() if value is not None})
    )
    model = dict(config.model)
    if args.arch:
        model["arch"] = args.arch
    if args.weights:
        model["weights"] = _weights(args.weights)
    config.model = model
    result = train(
        config,
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        time_budget=args.time_budget,
    )
    print(json.dumps(result.metrics, indent=2))
    return 0


def _weights(value: str | None) -> str | None:
    return None if value is None or value.lower() == "none" else value


def _add_soft_labels(subparsers: argparse._SubParsersAction) -> None:
    from ferkit.training.distill import write_teacher_labels

    parser = subparsers.add_parser(
        "soft-labels",
        formatter_class=_HelpFormatter,
        help="copy a prepared dataset with teacher models' probabilities mixed into its "
        "training targets (knowledge distillation; train with --soft-labels)",
    )
    parser.add_argument("data", type=Path, help="prepared dataset (from 'ferkit prepare')")
    parser.add_argument(
        "--teacher",
        action="append",
        help="a teacher model: run folder, bundle folder, .keras file or an installed model "
        "name ('default'); repeat "
        "for several (their probabilities are averaged)",
    )
    parser.add_argument(
        "--votes",
        type=Path,
        help="a dataset prepared with --soft-labels that holds copies of the same faces (FER+ "
        "for FER2013): each face found there by its pixels gets its vote distribution as one "
        "more teacher; classes are matched by name, others (contempt) dropped (default: none)",
    )
    parser.add_argument("--out", type=Path, required=True, help="new dataset folder")
    _overwrite_flag(parser, "dataset")
    parser.add_argument(
        "--label-weight",
        type=float,
        default=default_of(write_teacher_labels, "label_weight"),
        help="weight of the true label; the teachers share the rest (default 0.5)",
    )
    parser.add_argument(
        "--teacher-weight",
        type=float,
        action="append",
        help="relative weight of each --teacher, in their order; without --teacher: of each "
        "teacher kept in DATA by an earlier soft-labels run (default: equal)",
    )
    parser.add_argument(
        "--votes-weight", type=float, default=1.0, help="relative weight of the --votes (default 1)"
    )
    parser.add_argument("--split", action="append", help="split(s) to relabel (default: train)")
    parser.set_defaults(handler=_run_soft_labels)


def _run_soft_labels(args: argparse.Namespace) -> int:
    from ferkit.training.distill import remix_teacher_labels, write_teacher_labels

    if not args.teacher and args.votes is None:  # a new mixture of the kept probabilities
        out = remix_teacher_labels(
            args.data, args.out, label_weight=args.label_weight,
            teacher_weights=args.teacher_weight, votes_weight=args.votes_weight,
            overwrite=args.overwrite,
        )  # fmt: skip
        print(f"wrote {out}: train on it with --soft-labels")
        return 0
    out = write_teacher_labels(
        args.data,
        args.teacher or [],
        args.out,
        votes=args.votes,
        label_weight=args.label_weight,
        teacher_weights=args.teacher_weight,
        votes_weight=args.votes_weight,
        splits=tuple(args.split or ["train"]),
        overwrite=args.overwrite,
    )
    import json

    manifest = json.loads((Path(out) / "manifest.json").read_text())
    for split, count in manifest["teacher_labels"].get("votes_matched", {}).items():
        total = manifest["splits"][split]["count"]
        print(f"{split}: {count} of {total} faces found in {args.votes}; the others keep "
              "their label" + (" and the teachers" if args.teacher else ""))  # fmt: skip
    print(f"wrote {out}: train on it with --soft-labels")
    return 0


def _add_bundle(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bundle",
        formatter_class=_HelpFormatter,
        help="package a finished run as the default model (with checksums and a model card)",
        description="Package a finished run as a model bundle: the best model without "
        "optimizer state, ONNX float32 and int8 copies, class list, calibration, config, "
        "metrics, a model card and SHA-256 checksums. Given an existing bundle instead of a "
        "run (an installed model's folder), only adds --evaluation figures to its card and "
        "metrics.json.",
    )
    parser.add_argument(
        "run", type=Path, help="finished run folder (or a bundle, to add --evaluation figures)"
    )
    parser.add_argument(
        "--dest", type=Path, default=None, help="bundle folder (default: the package's)"
    )
    parser.add_argument(
        "--card-notes",
        type=Path,
        help="Markdown file appended to the model card (other experiments, measured timings; "
        "default: none)",
    )
    parser.add_argument(
        "--evaluation",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a 'ferkit evaluate' output folder of this run's model whose figures go into "
        "the card and metrics.json under NAME (e.g. 'FER+ valid, majority labels=results/x'); "
        "repeat for several (default: none)",
    )
    parser.set_defaults(handler=_run_bundle)


def _read_evaluation(spec: str, run: Path) -> dict[str, object]:
    """``NAME=DIR`` (or ``DIR``): the main figures of a ``ferkit evaluate`` folder.

    Raises:
        FileNotFoundError: no metrics.json in DIR.
        ValueError: DIR evaluated another model than ``run``'s.
    """
    import json

    from ferkit.models.folder import ONNX_FILE, model_location

    if Path(spec).is_dir():  # a folder whose name holds "=" is a folder
        name, folder = "", spec
    else:
        name, _, folder = spec.partition("=")
    folder_path = Path(folder)
    metrics_file = folder_path / "metrics.json"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"--evaluation {spec}: no metrics.json in {folder_path}; give a folder 'ferkit evaluate' wrote")  # fmt: skip
    metrics = json.loads(metrics_file.read_text())
    evaluated = Path(metrics["model"]["source"]).resolve()
    folder, keras_file = model_location(run)
    # The file bundle_run copies, or a bundle's float32 ONNX copy of it.
    same_model = evaluated == keras_file.resolve() or evaluated == (folder / ONNX_FILE).resolve()
    if not same_model:
        raise ValueError(
            f"--evaluation {spec}: it evaluated {evaluated}, not the model of {run}; evaluate "
            f"the run first: ferkit evaluate --model {run} ..."
        )
    from ferkit.models.folder import sha256_file

    recorded = metrics["model"].get("sha256")
    if recorded and recorded != "sha256:" + sha256_file(evaluated):
        raise ValueError(
            f"--evaluation {spec}: {evaluated} changed since it was evaluated (its SHA-256 "
            f"differs from the one in {metrics_file}); evaluate it again"
        )
    evaluation = {
        "name": name or folder_path.name,
        "split": metrics["data"]["split"],
        **{
            key: metrics[key]
            for key in ("faces", "accuracy", "balanced_accuracy", "macro_f1", "ece")
        },
    }
    if "votes" in metrics:  # figures only: the paths of this machine stay out of a bundle
        evaluation["votes"] = {
            key: metrics["votes"][key]
            for key in ("name", "faces", "faces_matched", "faces_scored", "accuracy")
        }
    if "robustness" in metrics:
        from ferkit.evaluation.robustness import summary

        evaluation["robustness"] = summary(metrics["robustness"])
    return evaluation


def _run_bundle(args: argparse.Namespace) -> int:
    import yaml

    from ferkit.data.dataset import PreparedDataset
    from ferkit.models.folder import DEFAULT_MODEL_DIR, load_model
    from ferkit.release.bundle import bundle_run, is_bundle
    from ferkit.release.export import add_runtimes_to_bundle
    from ferkit.release.model_card import accuracy_floor, selected_on, write_model_card
    from ferkit.training.config import TrainConfig
    from ferkit.training.sampling import run_splits

    if is_bundle(args.run):  # figures added to an existing bundle; its model stays
        from ferkit.release.bundle import add_evaluations_to_bundle

        if not args.evaluation or args.card_notes or args.dest:
            raise ValueError(
                f"{args.run} is a model bundle, not a run: give it only --evaluation NAME=DIR "
                "to add figures to its card and metrics.json"
            )
        evaluations = [_read_evaluation(spec, args.run) for spec in args.evaluation]
        add_evaluations_to_bundle(args.run, evaluations)
        names = ", ".join(str(e["name"]) for e in evaluations)
        print(f"added {names} to {args.run}/MODEL_CARD.md and metrics.json")
        return 0
    config = yaml.safe_load((args.run / "config.yaml").read_text())
    _, val = run_splits(
        TrainConfig.from_yaml(args.run / "config.yaml"), PreparedDataset(config["data"])
    )
    evaluations = [_read_evaluation(spec, args.run) for spec in args.evaluation]
    loaded = load_model(args.run)
    accuracy = float((loaded.predict_proba(val.images).argmax(axis=1) == val.labels).mean())
    dest_folder = args.dest or DEFAULT_MODEL_DIR
    card = write_model_card(args.run, val, loaded, name=dest_folder.name, evaluations=evaluations)
    if args.card_notes:
        card = card.rstrip("\n") + "\n\n" + args.card_notes.read_text().strip("\n") + "\n"
    extra = {
        "val_accuracy_floor": accuracy_floor(accuracy),
        "val_accuracy_bundled": accuracy,
        "selected_on": selected_on(args.run),
        "evaluations": evaluations,
    }
    dest = bundle_run(args.run, dest_folder, model_card=card, extra_metrics=extra)
    # ONNX float32 and int8 copies, so prediction runs without TensorFlow; int8 is
    # calibrated on the run's own training faces.
    add_runtimes_to_bundle(dest, config["data"], val)
    print(f"bundled {args.run} into {dest}")
    print(card)
    return 0


def _add_models(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        formatter_class=_HelpFormatter,
        help="list the models installed with ferkit (pick one with --model NAME)",
        description=(
            "List the models installed with ferkit: their classes, parameters, size on "
            "disk, runtimes, validation accuracy and calibration error, further "
            "evaluations, and where each model card is. Any command's --model (and "
            "EmotionRecognizer(model=NAME), and the server's ?model=NAME) takes these names."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    import json

    from ferkit.models.catalogue import describe_models, format_models

    models = describe_models()
    if not models:
        raise FileNotFoundError("no model is installed with ferkit; reinstall ferkit")
    print(json.dumps(models, indent=2) if args.json else format_models(models))
    return 0


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


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    from ferkit.faces import DEFAULT_DETECTOR, DETECTOR_NAMES
    from ferkit.images import DEFAULT_MAX_PIXELS, FACE_MODES
    from ferkit.inference.annotate import GEOMETRY_DRAWINGS
    from ferkit.inference.predict import ANNOTATED_VIDEO_FORMATS, OUTPUT_FORMATS, predict
    from ferkit.inference.recognizer import DEFAULT_CROP_MAX_SIDE
    from ferkit.inference.runtimes import BACKENDS

    parser = subparsers.add_parser(
        "predict",
        help="recognise expressions in images, folders, globs, URLs, videos or a webcam",
        formatter_class=_HelpFormatter,
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
    _overwrite_flag(parser)
    parser.add_argument(
        "--annotate",
        action="store_true",
        help="also write images/videos with boxes, labels and probability bars, and an "
        "emotion-over-time plot per video, to OUT/annotated/",
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
    _model_flag(parser)
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
        "in degrees), and in JSON/JSONL its 478 landmarks: MediaPipe's face mesh, about 6 ms "
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


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    from ferkit.evaluation.evaluate import evaluate
    from ferkit.faces import DETECTOR_NAMES
    from ferkit.images import FACE_MODES
    from ferkit.inference.runtimes import BACKENDS

    parser = subparsers.add_parser(
        "evaluate",
        help="metrics, plots and an HTML report for a model on a dataset",
        formatter_class=_HelpFormatter,
        description=(
            "Evaluate a model (default: the bundled one) on a prepared folder or any raw "
            "source 'ferkit prepare' reads (prepared on the fly; photos go through the face "
            "detector). Evaluates the test split, the one named with --split, or the whole "
            "source when it has no splits. Writes metrics.json, classification_report.csv, "
            "predictions.csv, plots/ and a self-contained report.html.\n\n" + OUTPUT_POLICY
        ),
        epilog=EXIT_STATUSES,
    )
    _model_flag(parser)
    parser.add_argument("--data", type=Path, required=True, help="prepared folder or raw source")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. results/NAME")
    _overwrite_flag(parser, "evaluation")
    parser.add_argument(
        "--split", default=None, help="split to evaluate (default: test, else the whole source)"
    )
    parser.add_argument("--tta", action="store_true", help="also test-time augmentation")
    parser.add_argument(
        "--corruptions",
        action="store_true",
        help="also the robustness benchmark: accuracy and calibration after JPEG, blur, "
        "downscaling, sensor noise, brightness, contrast, gamma, colour-to-grey weightings, "
        "rotation, box jitter and occlusion (glasses, hand, mask), each at 3 severities, and "
        "their mean (robustness.csv, plots/robustness.png)",
    )
    parser.add_argument(
        "--votes",
        type=Path,
        help="a dataset prepared with --soft-labels holding copies of the same faces (FER+ for "
        "FER2013): also report accuracy against its vote pluralities (default: none)",
    )
    parser.add_argument(
        "--faces",
        default=default_of(evaluate, "faces"),
        choices=FACE_MODES,
        help="raw sources: how faces are found (as in prepare)",
    )
    parser.add_argument(
        "--detector",
        default=default_of(evaluate, "detector"),
        choices=DETECTOR_NAMES,
        help="raw sources: face detector",
    )
    parser.add_argument(
        "--backend",
        default=default_of(evaluate, "backend"),
        choices=BACKENDS,
        help="classifier runtime",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from ferkit.evaluation.evaluate import evaluate

    metrics = evaluate(
        args.model,
        args.data,
        args.out,
        split=args.split,
        tta=args.tta,
        faces=args.faces,
        detector=args.detector,
        backend=args.backend,
        corruptions=args.corruptions,
        votes=args.votes,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(f"{metrics['data']['source']} [{metrics['data']['split']}]: {metrics['faces']} faces")
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "top2_accuracy", "ece"):
        print(f"  {key:<18} {metrics[key]:.4f}")
    end_to_end = metrics["end_to_end"]
    print(
        f"  end-to-end         {end_to_end['accuracy']:.4f} ({end_to_end['no_face_found']} faces not found)"
    )
    if "tta" in metrics:
        print(
            f"  with TTA           {metrics['tta']['accuracy']:.4f} ({metrics['tta']['accuracy_gain']:+.4f})"
        )
    if "votes" in metrics:
        votes = metrics["votes"]
        print(
            f"  against votes      {votes['accuracy']:.4f} ({votes['faces_scored']} faces found "
            f"in {votes['source']}; {votes['faces_tied']} with tied votes left out)"
        )
    if "robustness" in metrics:
        from ferkit.evaluation.robustness import format_robustness

        print("robustness (accuracy):")
        print("  " + format_robustness(metrics["robustness"]).replace("\n", "\n  "))
    if metrics["classes"]["data_classes_unknown_to_model"]:
        print(f"  not scored (unknown to the model): {metrics['faces_of_unknown_classes']}")
    print(f"report: {args.out / 'report.html'}")
    from ferkit.data.prepare import FAILURE_KINDS

    failed = [e for e in metrics["skipped"]["items"] if e["kind"] in FAILURE_KINDS]
    if failed and metrics["data"]["prepared_here"]:  # this run's own inputs failed
        print(f"  {len(failed)} input(s) failed, listed in metrics.json (exit status 3)")
        return 3
    return 0


def _add_compare(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare several 'ferkit evaluate' results side by side",
        formatter_class=_HelpFormatter,
        description="Tabulate and plot the main figures of several evaluations.\n\n"
        + OUTPUT_POLICY,
        epilog=EXIT_STATUSES,
    )
    parser.add_argument("results", nargs="+", type=Path, help="folders written by evaluate")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: a new results/compare/YYYYmmdd-HHMMSS)",
    )
    _overwrite_flag(parser, "comparison")
    parser.set_defaults(handler=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from ferkit.evaluation.compare import compare, format_markdown
    from ferkit.outputs import default_run_folder

    out = args.out or default_run_folder(Path("results") / "compare")
    table = compare(args.results, out, overwrite=args.overwrite)
    print(format_markdown(table))
    print(f"\nwritten to {out}/comparison.csv, .md and .png")
    return 0


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    from ferkit.release.export import EXPORT_FORMATS

    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX (float32 or int8) or TensorFlow Lite",
        formatter_class=_HelpFormatter,
        description=(
            "Write the bundled model (or --model) for deployment, with labels.json, "
            "calibration.json, checksums.json and export.json (which records how far the "
            "exported logits are from Keras's). The folder loads with "
            "EmotionRecognizer(model=OUT) or 'ferkit predict --model OUT' without "
            "TensorFlow.\n\n" + OUTPUT_POLICY
        ),
        epilog=EXIT_STATUSES,
    )
    _model_flag(parser)
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="file format")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    _overwrite_flag(parser, "export")
    parser.add_argument(
        "--quantize", choices=["int8"], default=None, help="ONNX only (default: none, float32)"
    )
    parser.add_argument(
        "--calibration-data",
        type=Path,
        default=None,
        help="prepared dataset whose train faces calibrate int8 (from 'ferkit prepare'; default: "
        "none)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    parser.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    import json

    from ferkit.release.export import export_model

    out = export_model(
        args.model,
        args.format,
        args.out,
        quantize=args.quantize,
        calibration_data=args.calibration_data,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    details = json.loads((out / "export.json").read_text())
    print(
        f"wrote {out / details['file']} (max |logit - Keras logit| on check faces: "
        f"{details['max_abs_logit_difference']:.2e})"
    )
    return 0


def _add_serve(subparsers: argparse._SubParsersAction) -> None:
    from ferkit.serve.config import ServeConfig

    parser = subparsers.add_parser(
        "serve",
        formatter_class=_HelpFormatter,
        help="a REST API and a web page (photos, videos, a live camera) on a port",
        description=(
            "Serve the recogniser: the web page at /, the REST API under /v1 (POST "
            "/v1/predict for photos, POST /v1/videos for video jobs, WS /v1/stream for a "
            "live camera), /healthz, and the API reference at /docs. The model loads once "
            "per worker. Every limit below has a safe default; a request over one gets a "
            "JSON error with its status (413, 415, 422, 429, 503...).\n\n"
            "Listening on an address other than loopback needs --api-key (or "
            "$FERKIT_API_KEY), or --insecure."
        ),
        epilog="Needs the serve extra: pip install -e '.[serve]'. Ctrl-C stops the server.",
    )
    for field in dataclasses.fields(ServeConfig):  # every setting is a flag
        add_option(parser, ServeConfig, field.name)
    parser.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from ferkit.extras import require_serve

    require_serve()
    from ferkit.serve.config import ServeConfig
    from ferkit.serve.server import run

    config = ServeConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)})
    run(
        config,
        # One line per request (and every warning and error) by default, as a service's
        # operator expects; -v adds the libraries' debug lines.
        log_level="debug" if args.verbose else "info",
        announce=lambda line: print(line, flush=True),
    )
    return 0


COMMANDS = {
    "prepare": "_add_prepare", "train": "_add_train", "soft-labels": "_add_soft_labels",
    "bundle": "_add_bundle", "evaluate": "_add_evaluate", "compare": "_add_compare",
    "predict": "_add_predict", "models": "_add_models", "export": "_add_export",
    "demo": "_add_demo", "serve": "_add_serve", "benchmark": "_add_benchmark",
    "framing-fit": "_add_framing_fit",
}  # fmt: skip


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of the command ``only`` (a command's parser
    imports what its defaults come from, so building one alone starts faster)."""
    parser = argparse.ArgumentParser(
        prog="ferkit",
        description="Facial-expression recognition: prepare datasets, train, evaluate, predict.",
    )
    parser.add_argument("--version", action="version", version=f"ferkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command, add in COMMANDS.items():
        if only is None or command == only:
            globals()[add](subparsers)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (its first word that is not an option), if known."""
    words = [word for word in argv if not word.startswith("-")]
    return words[0] if words and words[0] in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ferkit`` console script; returns the exit status."""
    parser = build_parser(_command_of(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    original_stdout = sys.stdout
    sys.stdout = _PipeSafeStdout(sys.stdout)
    try:
        with _quiet_libraries(args.verbose):
            return _run(args)
    finally:
        sys.stdout = original_stdout


def _run(args: argparse.Namespace) -> int:
    from ferkit.extras import MissingExtraError
    from ferkit.models.folder import ChecksumError
    from ferkit.outputs import OutputLockedError

    try:
        return args.handler(args)
    except (
        OSError, ValueError, KeyError, ChecksumError, OutputLockedError, MissingExtraError,
    ) as error:  # fmt: skip
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"ferkit {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ferkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.verbose:
            traceback.print_exc()
        print(
            f"ferkit {args.command}: internal error: {type(error).__name__}: {error}"
            + ("" if args.verbose else " (run with --verbose for the traceback)"),
            file=sys.stderr,
        )
        return 1


@contextlib.contextmanager
def _quiet_libraries(verbose: bool) -> Iterator[None]:
    """Show ferkit's own messages only, unless ``--verbose``.

    TensorFlow, CUDA, LiteRT and ONNX Runtime print start-up lines from native code
    straight to the process's standard error (file descriptor 2), which no Python setting
    reaches. So, for the command's duration, descriptor 2 goes to /dev/null while
    Python's ``sys.stderr`` (ferkit's messages, progress bars, errors) keeps writing to
    the terminal through a copy of the original descriptor; library warnings and log
    records below ERROR are dropped. Everything is restored afterwards.
    """
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose:
        previous = os.environ.get("FERKIT_VERBOSE")
        os.environ["FERKIT_VERBOSE"] = "1"  # native libraries' lines too
        try:
            yield
        finally:
            root.removeHandler(handler)
            root.setLevel(previous_level)
            if previous is None:
                del os.environ["FERKIT_VERBOSE"]
            else:
                os.environ["FERKIT_VERBOSE"] = previous
        return
    handler.addFilter(lambda record: record.name.startswith("ferkit") or record.levelno >= 40)
    for name, value in (("TF_CPP_MIN_LOG_LEVEL", "3"), ("GRPC_VERBOSITY", "ERROR")):
        os.environ.setdefault(name, value)
    saved_stderr = sys.stderr
    saved_fd = None
    try:
        sys.stderr.flush()
        saved_fd = os.dup(2)
        if _writes_to_fd(sys.stderr, 2):
            sys.stderr = os.fdopen(os.dup(saved_fd), "w", buffering=1, errors="backslashreplace")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        if sys.stderr is not saved_stderr:  # a crash of native code is still reported
            faulthandler.enable(file=sys.stderr)
    except OSError:  # no descriptor 2 to redirect (embedded interpreters): stay as we are
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if sys.stderr is not saved_stderr:
            faulthandler.disable()
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = saved_stderr
        if saved_fd is not None:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
        root.removeHandler(handler)
        root.setLevel(previous_level)


class _PipeSafeStdout:
    """Standard output that a closed reader (``ferkit predict ... | head``) cannot break:
    the run goes on and writes its results; what it would print is dropped."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._broken = False

    def write(self, text: str) -> int:
        if not self._broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._close()
        return len(text)

    def flush(self) -> None:
        if not self._broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._close()

    def _close(self) -> None:
        self._broken = True
        with contextlib.suppress(AttributeError, OSError, ValueError):
            # Python's own flush at exit must not fail on the closed pipe either.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _StderrHandler(logging.StreamHandler):
    """A log handler that writes to whatever ``sys.stderr`` is when a record comes, so
    ferkit's warnings follow the terminal copy that :func:`_quiet_libraries` installs."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # set by StreamHandler.__init__; ignored
        pass


def _writes_to_fd(stream: Any, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False


if __name__ == "__main__":
    raise SystemExit(main())
