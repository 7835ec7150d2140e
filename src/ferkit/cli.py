"""The ``ferkit`` command line. It only parses arguments and calls the stage functions.

Nothing heavy is imported at module level, so ``ferkit --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ferkit import __version__

logger = logging.getLogger("ferkit")


def _add_prepare(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="turn an image folder, fer2013.csv or FER+ into a compact training set",
        description=(
            "Read a facial-expression dataset (image folders with one sub-folder per class, "
            "optionally under train/val/test folders; fer2013.csv; or Microsoft's FER+ "
            "layout), find or crop the faces, and write one .npz per split plus a "
            "manifest.json listing classes, counts, settings and every skipped item."
        ),
    )
    parser.add_argument("source", type=Path, help="dataset folder or fer2013.csv file")
    parser.add_argument("--out", type=Path, required=True, help="output folder to create")
    parser.add_argument(
        "--format", default="auto", choices=["auto", "folder", "fer2013-csv", "ferplus"]
    )
    parser.add_argument(
        "--faces",
        default="auto",
        choices=["auto", "crop", "detect"],
        help="auto: images up to --crop-max-side px are taken as face crops, larger ones "
        "go through the detector; crop: never detect; detect: always detect",
    )
    parser.add_argument(
        "--detector",
        default="mtcnn",
        choices=["mtcnn", "haar", "blazeface", "blazeface-full"],
        help="face detector for photos (mtcnn: slowest, most thorough)",
    )
    parser.add_argument("--size", type=int, default=48, help="output side in pixels (48)")
    parser.add_argument("--channels", type=int, default=1, choices=[1, 3], help="1 gray, 3 RGB")
    parser.add_argument("--margin", type=float, default=0.15, help="context around a detection")
    parser.add_argument("--crop-max-side", type=int, default=128)
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="share of each class for val: used when the source has no splits (default "
        "0.1), or to carve val out of train when the source has no val split",
    )
    parser.add_argument("--test-fraction", type=float, default=None, help="as --val-fraction")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified split")
    parser.add_argument(
        "--soft-labels", action="store_true", help="keep FER+ vote distributions as soft labels"
    )
    parser.add_argument(
        "--ferplus-mode",
        default="plurality",
        choices=["plurality", "majority"],
        help="FER+ label rule: most votes (plurality) or more than half (majority); "
        "ties, unknown and not-a-face are dropped either way",
    )
    parser.add_argument(
        "--dedupe",
        action="store_true",
        help="drop identical images: repeats within a split, and train copies of val/test faces",
    )
    parser.add_argument("--no-compress", action="store_true", help="write uncompressed .npz")
    parser.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from ferkit.prepare import PrepareConfig, format_summary, prepare

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
    )
    result = prepare(
        args.source, args.out, config, overwrite=args.overwrite, progress=not args.quiet
    )
    print(format_summary(result))
    return 0


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="generate a small dataset (with some bad files) and prepare it",
        description=(
            "Generate a small image-folder dataset of drawn faces in several formats, "
            "including a corrupt file, a non-image and an empty class, then run prepare on "
            "it and print the summary. Needs no download and no data."
        ),
    )
    parser.add_argument("--dir", type=Path, default=Path("results/demo"), help="work folder")
    parser.add_argument("--per-class", type=int, default=40, help="images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from collections import Counter

    from ferkit.bundle import bundled_model_available, load_model
    from ferkit.data import PreparedDataset
    from ferkit.prepare import PrepareConfig, format_summary, prepare
    from ferkit.synthetic import make_image_folder

    source = args.dir / "source"
    make_image_folder(source, per_class=args.per_class, seed=args.seed, with_bad_files=True)
    print(f"Generated a demo dataset of drawn faces in {source}")
    result = prepare(
        source, args.dir / "prepared", PrepareConfig(seed=args.seed, faces="crop"), overwrite=True
    )
    print(format_summary(result))
    if not bundled_model_available():
        print("\n(no bundled model in this installation: skipping classification)")
        return 0
    model = load_model()
    data = PreparedDataset(result.out_dir)
    print(f"\nClassifying the prepared faces with the bundled model ({', '.join(model.classes)}):")
    print("(drawn cartoons are not real faces: this shows the pipeline end to end, not accuracy)")
    for split_name in data.splits:
        split = data.split(split_name)
        predicted = model.predict_proba(split.images).argmax(axis=1)
        for index, name in enumerate(data.classes):
            members = predicted[split.labels == index]
            counts = Counter(model.classes[p] for p in members).most_common(3)
            shares = ", ".join(f"{label} {count / len(members):.0%}" for label, count in counts)
            print(f"  {split_name:<5} drawn {name:<9} -> {shares}")
    return 0


def _add_benchmark(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark", help="time ferkit's stages on this machine and print the figures"
    )
    parser.add_argument(
        "stage",
        choices=["prepare", "models", "classifier", "video"],
        help="prepare: dataset preparation; models: training and inference speed per "
        "architecture; classifier: the bundled model's faces/s per runtime; video: frames/s "
        "of the full prediction pipeline",
    )
    parser.add_argument(
        "source",
        type=Path,
        nargs="?",
        default=None,
        help="dataset to prepare (default: the shared FER2013, $FERKIT_SHARED/datasets/fer2013)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is shown")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument(
        "--video", type=Path, default=None, help="video for 'video' (default: woman2.mp4)"
    )
    parser.set_defaults(handler=_run_benchmark)


def _run_benchmark(args: argparse.Namespace) -> int:
    from ferkit.benchmark import (
        benchmark_classifier,
        benchmark_models,
        benchmark_prepare,
        benchmark_video,
        shared_dir,
    )

    if args.stage == "classifier":
        print(benchmark_classifier(repeats=args.repeats))
        return 0
    if args.stage == "video":
        print(benchmark_video(args.video, repeats=args.repeats))
        return 0
    if args.stage == "models":
        print(benchmark_models(repeats=args.repeats))
        return 0
    source = args.source or shared_dir() / "datasets" / "fer2013"
    print(benchmark_prepare(source, repeats=args.repeats, workers=args.workers))
    return 0


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model on a prepared dataset (resumable)",
        description=(
            "Train a model into a run folder that describes itself (config.yaml, "
            "labels.json, history.csv, checkpoints, calibration.json, metrics.json). "
            "Settings come from --config (YAML) and are overridden by the flags below."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--config", type=Path, help="YAML settings (see configs/)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument(
        "--finish",
        action="store_true",
        help="end the (stopped) run in --out now: calibrate its best checkpoint, write metrics",
    )
    parser.add_argument("--data", help="prepared dataset folder (ferkit prepare --out)")
    parser.add_argument("--arch", help="architecture: ferkit_cnn or vgg16")
    parser.add_argument(
        "--weights", help="vgg16 backbone: imagenet (downloads), none, or a local weights file"
    )
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--fine-tune-epochs", type=int, help="vgg16 phase two epochs")
    parser.add_argument("--fine-tune-blocks", type=int, help="vgg16 blocks to unfreeze")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--label-smoothing", type=float)
    parser.add_argument("--class-weighting", choices=["none", "balanced"])
    parser.add_argument("--sampling", choices=["shuffle", "balanced"])
    parser.add_argument("--mixup-alpha", type=float)
    parser.add_argument("--soft-labels", action="store_true", default=None)
    parser.add_argument("--early-stopping-patience", type=int)
    parser.add_argument("--limit-train", type=int, help="train on a stratified subset")
    parser.add_argument(
        "--distribute",
        choices=["none", "mirrored", "multiworker"],
        help="mirrored: all GPUs of this machine; multiworker: several machines (TF_CONFIG)",
    )
    parser.add_argument(
        "--init-from",
        help="start from a model's weights (same layers by name and shape): a .keras file, "
        "a run folder, or 'default' to fine-tune the shipped model",
    )
    parser.add_argument(
        "--input-pipeline",
        choices=["auto", "tf.data", "numpy"],
        help="tf.data (TensorFlow) or NumPy batches (any Keras backend; auto picks)",
    )
    parser.add_argument(
        "--optimizer", choices=["adamw", "sgd"], help="adamw, or sgd with Nesterov momentum"
    )
    parser.add_argument(
        "--engine",
        choices=["keras", "torch"],
        help="keras (default), or torch: ferkit_cnn on PyTorch for a GPU without TensorFlow; "
        "its run is finished into a Keras model with --finish",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="torch engine: fit the planned epochs (and the schedule) into this many seconds",
    )
    parser.add_argument("--seed", type=int)
    parser.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import json

    from ferkit.train import TrainConfig, finish_now, train

    if args.finish:
        print(json.dumps(finish_now(args.out).metrics, indent=2))
        return 0
    overrides = {
        name: getattr(args, name)
        for name in (
            "data", "epochs", "fine_tune_epochs", "fine_tune_blocks", "batch_size",
            "learning_rate", "label_smoothing", "class_weighting", "sampling", "mixup_alpha",
            "soft_labels", "early_stopping_patience", "limit_train", "distribute", "seed",
            "init_from", "input_pipeline", "optimizer", "engine",
        )
    }  # fmt: skip
    config = (
        TrainConfig.from_yaml(args.config, **overrides)
        if args.config
        else TrainConfig(**{key: value for key, value in overrides.items() if value is not None})
    )
    model = dict(config.model)
    if args.arch:
        model["arch"] = args.arch
    if args.weights:
        model["weights"] = None if args.weights.lower() == "none" else args.weights
    config.model = model
    result = train(config, args.out, resume=args.resume, time_budget=args.time_budget)
    print(json.dumps(result.metrics, indent=2))
    return 0


def _add_soft_labels(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "soft-labels",
        help="copy a prepared dataset with teacher models' probabilities mixed into its "
        "training targets (knowledge distillation; train with --soft-labels)",
    )
    parser.add_argument("data", type=Path, help="prepared dataset (from 'ferkit prepare')")
    parser.add_argument(
        "--teacher",
        action="append",
        required=True,
        help="a teacher model: run folder, bundle folder, .keras file or 'default'; repeat "
        "for several (their probabilities are averaged)",
    )
    parser.add_argument("--out", type=Path, required=True, help="new dataset folder")
    parser.add_argument(
        "--label-weight",
        type=float,
        default=0.5,
        help="weight of the true label; the teachers share the rest (default 0.5)",
    )
    parser.add_argument("--split", action="append", help="split(s) to relabel (default: train)")
    parser.set_defaults(handler=_run_soft_labels)


def _run_soft_labels(args: argparse.Namespace) -> int:
    from ferkit.distill import write_teacher_labels

    out = write_teacher_labels(
        args.data,
        args.teacher,
        args.out,
        label_weight=args.label_weight,
        splits=tuple(args.split or ["train"]),
    )
    print(f"wrote {out}: train on it with --soft-labels")
    return 0


def _add_bundle(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bundle",
        help="package a finished run as the default model (with checksums and a model card)",
    )
    parser.add_argument("run", type=Path, help="finished run folder")
    parser.add_argument(
        "--dest", type=Path, default=None, help="bundle folder (default: the package's)"
    )
    parser.add_argument(
        "--card-notes",
        type=Path,
        help="Markdown file appended to the model card (other experiments, measured timings)",
    )
    parser.set_defaults(handler=_run_bundle)


def _run_bundle(args: argparse.Namespace) -> int:
    import yaml

    from ferkit.bundle import (
        DEFAULT_MODEL_DIR,
        accuracy_floor,
        bundle_run,
        load_model,
        write_model_card,
    )
    from ferkit.data import PreparedDataset
    from ferkit.export import add_runtimes_to_bundle

    config = yaml.safe_load((args.run / "config.yaml").read_text())
    val = PreparedDataset(config["data"]).split(config["val_split"])
    loaded = load_model(args.run)
    accuracy = float((loaded.predict_proba(val.images).argmax(axis=1) == val.labels).mean())
    card = write_model_card(args.run, val, loaded)
    if args.card_notes:
        card = card.rstrip("\n") + "\n\n" + args.card_notes.read_text().strip("\n") + "\n"
    floor = {"val_accuracy_floor": accuracy_floor(accuracy), "val_accuracy_bundled": accuracy}
    dest = bundle_run(
        args.run, args.dest or DEFAULT_MODEL_DIR, model_card=card, extra_metrics=floor
    )
    # ONNX float32 and int8 copies, so prediction runs without TensorFlow; int8 is
    # calibrated on the run's own training faces.
    add_runtimes_to_bundle(dest, config["data"], val)
    print(f"bundled {args.run} into {dest}")
    print(card)
    return 0


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    from ferkit.faces import DEFAULT_DETECTOR, DETECTOR_NAMES
    from ferkit.predict import OUTPUT_FORMATS
    from ferkit.runtime import BACKENDS

    parser = subparsers.add_parser(
        "predict",
        help="recognise expressions in images, folders, globs, videos or a webcam",
        description=(
            "Find the faces in each input and classify their expressions. Writes one record "
            "per face (source, frame and time for video, track id, box, label, "
            "probabilities) to OUT/predictions.<format>, every input's status (ok, no_face, "
            "error with its reason) to the same file and to OUT/summary.json, and prints a "
            "summary. Bad inputs are reported and skipped; the rest completes."
        ),
    )
    parser.add_argument("inputs", nargs="*", help="image/video files, folders, globs")
    parser.add_argument("--out", type=Path, default=Path("results/predictions"))
    parser.add_argument("--format", default="csv", choices=OUTPUT_FORMATS)
    parser.add_argument(
        "--annotate",
        action="store_true",
        help="also write images/videos with boxes, labels and probability bars, and an "
        "emotion-over-time plot per video, to OUT/annotated/",
    )
    parser.add_argument("--camera", type=int, default=None, help="read this webcam (0 = first)")
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--detector", default=DEFAULT_DETECTOR, choices=DETECTOR_NAMES)
    parser.add_argument("--backend", default="auto", choices=BACKENDS, help="classifier runtime")
    parser.add_argument("--every", type=int, default=1, help="video: process every N-th frame")
    parser.add_argument(
        "--detect-every",
        type=int,
        default=1,
        help="video: detect on every N-th processed frame, track in between",
    )
    parser.add_argument(
        "--smoothing", type=float, default=0.5, help="video: smoothing time constant (s)"
    )
    parser.add_argument("--max-frames", type=int, default=None, help="video/webcam frame limit")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from ferkit.predict import predict

    if not args.inputs and args.camera is None:
        raise ValueError("give image/video files, folders or globs, or --camera N")
    summary = predict(
        args.inputs,
        args.out,
        fmt=args.format,
        annotate=args.annotate,
        camera=args.camera,
        model=args.model,
        detector=args.detector,
        backend=args.backend,
        every=args.every,
        detect_every=args.detect_every,
        smoothing_s=args.smoothing,
        max_frames=args.max_frames,
        progress=not args.quiet,
        echo=print,
    )
    counts = ", ".join(f"{count} {status}" for status, count in sorted(summary.counts().items()))
    print(
        f"{len(summary.sources)} inputs ({counts}); {summary.faces} faces"
        + (f" over {summary.frames} video frames" if summary.frames else "")
        + f" in {summary.seconds:.1f} s -> {args.out / ('predictions.' + args.format)}"
    )
    return 0 if any(s["status"] != "error" for s in summary.sources) else 1


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    from ferkit.faces import DETECTOR_NAMES
    from ferkit.runtime import BACKENDS

    parser = subparsers.add_parser(
        "evaluate",
        help="metrics, plots and an HTML report for a model on a dataset",
        description=(
            "Evaluate a model (default: the bundled one) on a prepared folder or any raw "
            "source 'ferkit prepare' reads (prepared on the fly; photos go through the face "
            "detector). Evaluates the test split, the one named with --split, or the whole "
            "source when it has no splits. Writes metrics.json, classification_report.csv, "
            "predictions.csv, plots/ and a self-contained report.html."
        ),
    )
    parser.add_argument("--model", type=Path, default=None, help="run folder or model file")
    parser.add_argument("--data", type=Path, required=True, help="prepared folder or raw source")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. results/NAME")
    parser.add_argument("--split", default=None, help="split to evaluate (default: test)")
    parser.add_argument("--tta", action="store_true", help="also test-time augmentation")
    parser.add_argument("--faces", default="auto", choices=["auto", "crop", "detect"])
    parser.add_argument("--detector", default="mtcnn", choices=DETECTOR_NAMES)
    parser.add_argument("--backend", default="auto", choices=BACKENDS, help="classifier runtime")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from ferkit.evaluate import evaluate

    metrics = evaluate(
        args.model,
        args.data,
        args.out,
        split=args.split,
        tta=args.tta,
        faces=args.faces,
        detector=args.detector,
        backend=args.backend,
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
    if metrics["classes"]["data_classes_unknown_to_model"]:
        print(f"  not scored (unknown to the model): {metrics['faces_of_unknown_classes']}")
    print(f"report: {args.out / 'report.html'}")
    return 0


def _add_compare(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare several 'ferkit evaluate' results side by side"
    )
    parser.add_argument("results", nargs="+", type=Path, help="folders written by evaluate")
    parser.add_argument("--out", type=Path, default=Path("results/compare"))
    parser.set_defaults(handler=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from ferkit.compare import compare, format_markdown

    table = compare(args.results, args.out)
    print(format_markdown(table))
    print(f"\nwritten to {args.out}/comparison.csv, .md and .png")
    return 0


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    from ferkit.export import EXPORT_FORMATS

    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX (float32 or int8) or TensorFlow Lite",
        description=(
            "Write the bundled model (or --model) for deployment, with labels.json, "
            "calibration.json and export.json (which records how far the exported logits "
            "are from Keras's). The folder loads with EmotionRecognizer(model=OUT) or "
            "'ferkit predict --model OUT' without TensorFlow."
        ),
    )
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--quantize", choices=["int8"], default=None, help="ONNX only")
    parser.add_argument(
        "--calibration-data",
        type=Path,
        default=None,
        help="prepared dataset whose train faces calibrate int8 (from 'ferkit prepare')",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    parser.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    import json

    from ferkit.export import export_model

    out = export_model(
        args.model,
        args.format,
        args.out,
        quantize=args.quantize,
        calibration_data=args.calibration_data,
        seed=args.seed,
    )
    details = json.loads((out / "export.json").read_text())
    print(
        f"wrote {out / details['file']} (max |logit - Keras logit| on check faces: "
        f"{details['max_abs_logit_difference']:.2e})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferkit",
        description="Facial-expression recognition: prepare datasets, train, evaluate, predict.",
    )
    parser.add_argument("--version", action="version", version=f"ferkit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_prepare(subparsers)
    _add_train(subparsers)
    _add_soft_labels(subparsers)
    _add_bundle(subparsers)
    _add_evaluate(subparsers)
    _add_compare(subparsers)
    _add_predict(subparsers)
    _add_export(subparsers)
    _add_demo(subparsers)
    _add_benchmark(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ferkit`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (OSError, ValueError, KeyError) as error:  # OSError: missing files, downloads
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"ferkit {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ferkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
