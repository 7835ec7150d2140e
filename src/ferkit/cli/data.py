"""``ferkit prepare`` and ``ferkit soft-labels``: the commands that write datasets (a
prepared training set from a raw one, and a copy of a prepared one with teacher models'
probabilities mixed into its training targets)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ferkit.cli.common import EXIT_STATUSES, OUTPUT_POLICY, HelpFormatter, overwrite_flag
from ferkit.settings import add_option, default_of


def add_prepare(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="turn an image folder, fer2013.csv or FER+ into a compact training set",
        formatter_class=HelpFormatter,
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
    overwrite_flag(parser, "prepared dataset")
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


def add_soft_labels(subparsers: argparse._SubParsersAction) -> None:
    from ferkit.training.distill import write_teacher_labels

    parser = subparsers.add_parser(
        "soft-labels",
        formatter_class=HelpFormatter,
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
    overwrite_flag(parser, "dataset")
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
