"""``ferkit train``: train a model into a run folder that describes itself; the settings
come from ``--config`` and the flags (:data:`TRAIN_FLAGS`) override them."""

from __future__ import annotations

import argparse
from pathlib import Path

from ferkit.cli.common import EXIT_STATUSES, HelpFormatter
from ferkit.settings import add_option

#: The TrainConfig settings that ``ferkit train`` takes as flags (each overrides --config).
TRAIN_FLAGS = (
    "data", "epochs", "fine_tune_epochs", "fine_tune_blocks", "batch_size", "learning_rate",
    "label_smoothing", "mixup_alpha", "early_stopping_patience", "limit_train", "val_fraction",
    "seed", "class_weighting", "sampling", "soft_labels", "distribute", "init_from",
    "input_pipeline", "optimizer", "engine",
)  # fmt: skip


def add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model on a prepared dataset (resumable)",
        formatter_class=HelpFormatter,
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
