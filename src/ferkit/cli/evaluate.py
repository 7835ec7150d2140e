"""``ferkit evaluate``, ``ferkit compare``, ``ferkit benchmark`` and ``ferkit
framing-fit``: measuring models and the pipeline (a model's metrics and report on a
dataset, several evaluations side by side, the speed and accuracy of each stage on this
machine, and the framing each detector's faces are cut with, fitted from data)."""

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
from ferkit.settings import default_of


def add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    from ferkit.evaluation.evaluate import evaluate
    from ferkit.faces import DETECTOR_NAMES
    from ferkit.images import FACE_MODES
    from ferkit.inference.runtimes import BACKENDS

    parser = subparsers.add_parser(
        "evaluate",
        help="metrics, plots and an HTML report for a model on a dataset",
        formatter_class=HelpFormatter,
        description=(
            "Evaluate a model (default: the bundled one) on a prepared folder or any raw "
            "source 'ferkit prepare' reads (prepared on the fly; photos go through the face "
            "detector). Evaluates the test split, the one named with --split, or the whole "
            "source when it has no splits. Writes metrics.json, classification_report.csv, "
            "predictions.csv, plots/ and a self-contained report.html.\n\n" + OUTPUT_POLICY
        ),
        epilog=EXIT_STATUSES,
    )
    model_flag(parser)
    parser.add_argument("--data", type=Path, required=True, help="prepared folder or raw source")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. results/NAME")
    overwrite_flag(parser, "evaluation")
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


def add_compare(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare several 'ferkit evaluate' results side by side",
        formatter_class=HelpFormatter,
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
    overwrite_flag(parser, "comparison")
    parser.set_defaults(handler=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from ferkit.evaluation.compare import compare, format_markdown
    from ferkit.outputs import default_run_folder

    out = args.out or default_run_folder(Path("results") / "compare")
    table = compare(args.results, out, overwrite=args.overwrite)
    print(format_markdown(table))
    print(f"\nwritten to {out}/comparison.csv, .md and .png")
    return 0


def add_benchmark(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        formatter_class=HelpFormatter,
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
        "architecture; classifier: a model's faces/s per runtime with each runtime's accuracy "
        "(default: on the shared FER2013 val crops), the fer package's classifier timed in "
        "the same run where it is installed, and the 1.5x target; video: frames/s "
        "of the full prediction pipeline; predict-video: frames/s of 'ferkit predict VIDEO' "
        "as a whole command, against detection on every frame and against float32 ONNX, and "
        "their label agreement; "
        "crops: faces/s of 'ferkit predict FOLDER --faces crop' per runtime against the "
        "default model's float32 ONNX, and the 2,000 faces/s target (default folder: "
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
        "the shared samples); classifier: a prepared dataset (its val split) or a folder of "
        "class folders of crops to score each runtime on (default: the shared FER2013 val "
        "crops); crops, ray: folder of face crops",
    )
    parser.add_argument(
        "--backends",
        default="onnx,onnx-int8",
        help="crops: further runtimes of --model to time, comma-separated, beside its "
        "default path and the baseline (the default model on float32 ONNX)",
    )
    parser.add_argument("--ray-workers", default="1,2", help="ray: worker counts, comma-separated")
    parser.add_argument(
        "--limit", type=int, default=7000, help="ray: crops read (0: the whole folder)"
    )
    parser.add_argument(
        "--address", default=None, help="ray: the cluster (default: a local Ray on this machine)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs; the median is shown (default: 5 for classifier, crops and "
        "predict-video, else 3)",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="prepare: processes (0: one per core)"
    )
    parser.add_argument(
        "--video",
        type=Path,
        default=None,
        help="video for 'video', 'predict-video' and 'geometry' (default: woman2.mp4)",
    )
    model_flag(parser, "classifier, video, crops, serve, colour: ")
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
        benchmark_models,
        benchmark_prepare,
        benchmark_video,
        shared_dir,
    )

    if args.repeats is None:
        args.repeats = 5 if args.stage in ("classifier", "crops", "predict-video") else 3
    if args.stage == "classifier":
        from ferkit.evaluation.classifier_speed import benchmark_classifier

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
            print(throughput.benchmark_crops(args.source, args.repeats, backends, args.model))
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


def add_framing_fit(subparsers: argparse._SubParsersAction) -> None:
    from ferkit.evaluation.framing_fit import DEFAULT_ZOOMS
    from ferkit.faces import DEFAULT_DETECTOR

    parser = subparsers.add_parser(
        "framing-fit",
        help="fit each detector's framing (the box-to-crop transform) from data",
        formatter_class=HelpFormatter,
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
