"""``ferkit models``, ``ferkit bundle`` and ``ferkit export``: the models installed with
ferkit, a finished run packaged as a model bundle (with the figures of its evaluations),
and a model written as ONNX or TensorFlow Lite for deployment."""

from __future__ import annotations

import argparse
from pathlib import Path

from ferkit.cli.common import (
    EXIT_STATUSES,
    OUTPUT_POLICY,
    HelpFormatter,
    model_flag,
    overwrite_flag,
)


def add_models(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        formatter_class=HelpFormatter,
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


def add_bundle(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bundle",
        formatter_class=HelpFormatter,
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
    from ferkit.release.bundle import DEFAULT_RUNTIMES, INT8_TOLERANCE

    parser.add_argument(
        "--default-runtime",
        choices=DEFAULT_RUNTIMES,
        default=None,
        help="the runtime 'predict' uses for this model unless --backend says otherwise; "
        f"onnx-int8 or tflite-int8 is accepted only if its int8 file stays within "
        f"{INT8_TOLERANCE * 100:.1f} points of float32 on the val split, checked before the "
        "bundle is written (check the real photos too: 'ferkit benchmark photos --model "
        "BUNDLE/INT8_FILE'; default: float32 ONNX)",
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

        if not args.evaluation or args.card_notes or args.dest or args.default_runtime:
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
    # With --default-runtime the bundle is made beside its destination and moved there
    # only once the runtime is accepted: a refusal leaves an earlier bundle as it was.
    staging = dest_folder.parent / f".{dest_folder.name}.staging" if args.default_runtime else None
    try:
        dest = bundle_run(args.run, staging or dest_folder, model_card=card, extra_metrics=extra)
        # ONNX float32 and int8 copies (and LiteRT int8 when it is to be the default), so
        # prediction runs without TensorFlow; int8 is calibrated on the run's own
        # training faces.
        tflite_int8 = args.default_runtime == "tflite-int8"
        add_runtimes_to_bundle(dest, config["data"], val, tflite_int8=tflite_int8)
        if staging is not None:
            from ferkit.outputs import swap_into_place
            from ferkit.release.bundle import check_replaceable_bundle, set_default_runtime

            set_default_runtime(staging, args.default_runtime)
            check_replaceable_bundle(dest_folder)
            swap_into_place(staging, dest_folder)
            dest = dest_folder
    finally:
        if staging is not None and staging.exists():
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    print(f"bundled {args.run} into {dest}")
    print(card)
    return 0


def add_export(subparsers: argparse._SubParsersAction) -> None:
    from ferkit.release.export import EXPORT_FORMATS

    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX or TensorFlow Lite, float32 or int8",
        formatter_class=HelpFormatter,
        description=(
            "Write the bundled model (or --model) for deployment, with labels.json, "
            "calibration.json, checksums.json and export.json (which records how far the "
            "exported logits are from Keras's). The folder loads with "
            "EmotionRecognizer(model=OUT) or 'ferkit predict --model OUT' without "
            "TensorFlow.\n\n" + OUTPUT_POLICY
        ),
        epilog=EXIT_STATUSES,
    )
    model_flag(parser)
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="file format")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    overwrite_flag(parser, "export")
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="int8 weights and activations, calibrated on --calibration-data (default: none, "
        "float32)",
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
