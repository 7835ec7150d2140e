"""``ferkit train``: train a model on a prepared dataset into a self-describing run folder.

A run folder holds everything needed to understand, resume and use the run::

    config.yaml        resolved settings (rebuilds the model and the data pipeline)
    labels.json        the class list, in output order
    history.csv        one row per completed epoch
    state.json         where the run is: last completed epoch, best score, patience
    checkpoints/last.keras   model + optimizer state after the last completed epoch
    checkpoints/best.keras   the model with the best validation score
    calibration.json   temperature fitted on validation, ECE before and after
    metrics.json       final validation metrics and training time

Each epoch's shuffling comes from ``seed + epoch`` and the optimizer state is saved every
epoch, so ``--resume`` continues exactly where a killed run stopped. Every file is written
atomically; the last checkpoint is first saved complete under a temporary name, then
``state.json`` records its SHA-256, then it replaces the previous one, so a kill or a full
disk at any moment leaves a run that resumes from its last complete epoch. Resuming checks
the checkpoint against ``state.json`` and refuses, with the fix, when they disagree.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from ferkit.data.dataset import PreparedDataset, Split
from ferkit.outputs import MARKER, check_not_overlapping, write_atomic, write_marker
from ferkit.training.config import TrainConfig, TrainResult, yaml_ready
from ferkit.training.sampling import run_splits

logger = logging.getLogger(__name__)


CONFIG_NAME = "config.yaml"


STATE_NAME = "state.json"


HISTORY_NAME = "history.csv"


LAST_CHECKPOINT = "checkpoints/last.keras"


LAST_RNG = "checkpoints/last_rng.json"


BEST_CHECKPOINT = "checkpoints/best.keras"


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically: a kill never leaves half a state file."""
    write_atomic(path, json.dumps(value, indent=2) + "\n")


def _append_history(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_history(path: Path, epochs: int) -> None:
    """Drop rows past the last epoch ``state.json`` records (a kill between the two writes)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    if len(lines) > epochs + 1:
        path.write_text("".join(lines[: epochs + 1]))


def read_history(run_dir: str | os.PathLike[str]) -> list[dict[str, float]]:
    """The run's per-epoch history as a list of rows (numbers as floats)."""
    path = Path(run_dir) / HISTORY_NAME
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def write_run_config(run_dir: Path, config: TrainConfig) -> None:
    """Write the run's resolved ``config.yaml``."""
    write_atomic(run_dir / CONFIG_NAME, yaml.safe_dump(yaml_ready(asdict(config)), sort_keys=False))


def read_state(run_dir: Path) -> dict[str, Any]:
    """A run's ``state.json``, checked.

    Raises:
        FileNotFoundError: no state (no run in ``run_dir``).
        ValueError: the file is damaged (naming it, with the fix).
    """
    path = run_dir / STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir}: no {STATE_NAME}, so no run to resume; start one without --resume"
        )
    try:
        state = json.loads(path.read_text())
        valid = (
            isinstance(state, dict)
            and isinstance(state.get("epoch"), int)
            and state["epoch"] >= 0
            and isinstance(state.get("seconds", 0.0), int | float)
        )
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(
            f"{path}: damaged (not the state ferkit train writes); the run cannot be resumed. "
            f"Restore the file, or start the run again with --overwrite"
        )
    return state


def pending_path(path: Path) -> Path:
    """Where a checkpoint is saved before it replaces ``path`` (Keras needs the suffix)."""
    return path.with_name(f".pending-{path.name}")


def save_atomic(save: Any, path: Path) -> None:
    """Save a checkpoint through a temporary name: the previous file stays whole until
    the new one is complete."""
    pending = pending_path(path)
    try:
        save(pending)
        os.replace(pending, path)
    except BaseException:
        pending.unlink(missing_ok=True)
        raise


def commit_epoch(run_dir: Path, state: dict[str, Any], save_last: Any, last_name: str) -> None:
    """Save the last checkpoint and the state of a completed epoch, for both engines.

    The checkpoint is saved complete under a temporary name, ``state.json`` then records
    its SHA-256, and only then does it replace the previous checkpoint:
    :func:`verify_checkpoint` can tell which file belongs to the state whenever the
    process was killed.
    """
    from ferkit.models.folder import sha256_file

    last = run_dir / last_name
    pending = pending_path(last)
    try:
        save_last(pending)
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    state["checkpoint"] = {"file": last_name, "sha256": sha256_file(pending)}
    write_json(run_dir / STATE_NAME, state)
    os.replace(pending, last)


def verify_checkpoint(run_dir: Path, state: dict[str, Any], last_name: str) -> Path | None:
    """The checkpoint to resume from, checked against ``state.json``.

    Returns None for a run that has completed no epoch (it starts from its initial
    weights). Completes the rename of a checkpoint that was saved and recorded when the
    process was killed.

    Raises:
        ValueError: the checkpoint is missing or is not the one the state recorded
            (truncated, replaced, or from another run); the message says what to do.
    """
    from ferkit.models.folder import sha256_file

    if state["epoch"] < 1:
        return None
    last = run_dir / last_name
    pending = pending_path(last)
    expected = (state.get("checkpoint") or {}).get("sha256")
    restart = (
        f"restore it from a backup, or start the run again with 'ferkit train --out {run_dir} "
        "--overwrite' (same settings)"
    )
    if expected is None:  # a run written before checkpoints were recorded in the state
        if last.is_file():
            return last
        raise ValueError(
            f"{last}: missing, but {STATE_NAME} says {state['epoch']} epoch(s) were trained; "
            f"resuming would silently restart from random weights. {restart}"
        )
    if last.is_file() and sha256_file(last) == expected:
        pending.unlink(missing_ok=True)
        return last
    if pending.is_file() and sha256_file(pending) == expected:
        os.replace(pending, last)  # the process was killed between the state and the rename
        logger.info("%s: completed the interrupted save of the last checkpoint", last)
        return last
    what = "missing" if not last.is_file() else "not the checkpoint recorded in state.json"
    raise ValueError(
        f"{last}: {what} (epoch {state['epoch']}); it is truncated, replaced or from "
        f"another run, so the run cannot be resumed from it. {restart}"
    )


def unloadable_checkpoint(path: Path, state: dict[str, Any], error: BaseException) -> ValueError:
    """The error for a checkpoint that :func:`verify_checkpoint` returned but that failed
    to load, saying what the failure is.

    A checkpoint whose SHA-256 matches ``state.json`` is the file training saved, so a
    failure to load it is not damage: calling it damaged would send the user to
    ``--overwrite`` and throw a sound run away.
    """
    from ferkit.models.folder import error_summary

    if (state.get("checkpoint") or {}).get("sha256"):
        return ValueError(
            f"{path}: cannot be loaded ({error_summary(error)}), though it is intact (its "
            f"SHA-256 matches {STATE_NAME}); the installed software cannot read it. Resume "
            "with the ferkit, Keras and PyTorch versions that trained the run, and report "
            "the error if they are the same"
        )
    return ValueError(  # a run written before checkpoints were recorded in the state
        f"{path}: cannot be loaded ({error_summary(error)}); {STATE_NAME} records no "
        "checksum to tell whether the file is damaged. Restore it from a backup, resume "
        "with the versions that trained the run, or start the run again with --overwrite"
    )


def check_resume_overrides(run_dir: str | os.PathLike[str], overrides: dict[str, Any]) -> None:
    """Refuse settings given with ``--resume`` that differ from the run's own.

    A resumed run continues with its ``config.yaml``; a changed setting would be
    silently ignored, or would break the learning-rate schedule halfway.

    Args:
        overrides: the settings given on the command line (None: not given); ``arch``
            and ``weights`` are compared with the run's model settings.

    Raises:
        ValueError: naming each differing setting and what to do instead.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_NAME).is_file():
        return
    saved = asdict(TrainConfig.from_yaml(run_dir / CONFIG_NAME))
    differing = {}
    for name, value in overrides.items():
        if value is None:
            continue
        current = saved[name] if name in saved else saved["model"].get(name)
        if name == "weights" and str(value).lower() == "none":
            value = None
        same = (
            Path(value).resolve() == Path(current).resolve()
            if name in ("data", "init_from") and current is not None
            else current == value
        )
        if not same:
            differing[name] = f"{name} {current!r} -> {value!r}"
    if not differing:
        return
    extend = (
        " --resume cannot extend a run: its learning-rate schedule was planned for its own "
        "epochs. To train longer, start a new run from this one's weights: ferkit train "
        f"--init-from {run_dir} --epochs N --out NEW_RUN"
        if "epochs" in differing
        else " Drop them, or start a new run with --out NEW_RUN."
    )
    raise ValueError(
        f"{run_dir}: --resume continues the run with its own settings (config.yaml), but "
        f"these differ: {', '.join(differing.values())}.{extend}"
    )


#: Files a run writes: what ``--overwrite`` removes, and nothing else.
RUN_FILES = (
    CONFIG_NAME, STATE_NAME, HISTORY_NAME, "labels.json", "calibration.json", "metrics.json",
    "init.json", "checksums.json", MARKER, LAST_CHECKPOINT, BEST_CHECKPOINT, LAST_RNG,
    "checkpoints/last.pt", "checkpoints/best.weights.npz",
)  # fmt: skip


def is_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run that ``ferkit train`` wrote (its marker, or for
    older runs a state, a config and a class list that read back)."""
    from ferkit.outputs import written_by

    if written_by(run_dir) == "train":
        return True
    try:
        state = json.loads((run_dir / STATE_NAME).read_text())
        TrainConfig.from_yaml(run_dir / CONFIG_NAME)
        json.loads((run_dir / "labels.json").read_text())
    except (OSError, ValueError, TypeError):
        return False
    return isinstance(state, dict) and "epoch" in state


def remove_run(run_dir: Path) -> None:
    for name in RUN_FILES:
        path = run_dir / name
        path.unlink(missing_ok=True)
        pending_path(path).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # kept when it holds files of the user's
        (run_dir / "checkpoints").rmdir()


def record_epoch(run_dir: Path, state: dict[str, Any], row: dict[str, float]) -> bool:
    """Append an epoch's history row and advance the state (epoch, time, best score,
    patience); the caller saves checkpoints and the state. Returns whether val improved."""
    _append_history(run_dir / HISTORY_NAME, row)
    state["epoch"] = int(row["epoch"])
    state["seconds"] = state["seconds"] + row["seconds"]
    if state["best_score"] is None or row["val_accuracy"] > state["best_score"]:
        state.update(best_score=row["val_accuracy"], best_epoch=int(row["epoch"]), wait=0)
        return True
    state["wait"] += 1
    return False


def open_run(
    config: TrainConfig, run_dir: Path, resume: bool, overwrite: bool = False
) -> tuple[TrainConfig, dict[str, Any], TrainResult | None]:
    """Start or reopen a run folder: the config to use (a copy of ``config`` for a new
    run, the run's own for a resumed one), the state, and the result of a run that has
    already finished (nothing left to do), for both training engines.

    Raises:
        FileExistsError: ``run_dir`` holds a run and neither ``resume`` nor
            ``overwrite`` is set.
        FileNotFoundError: resuming a folder without a run.
    """
    if resume and overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces it: choose one")
    if not resume:
        if (run_dir / STATE_NAME).exists() or (run_dir / CONFIG_NAME).exists():
            if not overwrite:
                raise FileExistsError(
                    f"{run_dir}: holds a run already; pass --resume to continue it, "
                    "--overwrite to replace it, or choose another --out"
                )
            if not is_run(run_dir):
                raise FileExistsError(
                    f"{run_dir}: holds a config.yaml or state.json that 'ferkit train' did not "
                    "write; --overwrite replaces only a ferkit run. Choose another --out"
                )
            remove_run(run_dir)  # only the run's own files: anything else stays
        elif run_dir.is_symlink() or (run_dir.is_dir() and any(run_dir.iterdir())):
            raise FileExistsError(
                f"{run_dir}: holds files but no ferkit run; train into a new or empty folder"
            )
        state = {
            "epoch": 0,
            "best_score": None,
            "best_epoch": None,
            "wait": 0,
            "seconds": 0.0,
            "finished": False,
        }
        check_not_overlapping(run_dir, [config.data])
        # the engines resolve and shrink settings on the config they are given (the engine
        # name, --time-budget's plan): a copy keeps the caller's object as it was
        return copy.deepcopy(config), state, None
    state = read_state(run_dir)
    config = TrainConfig.from_yaml(run_dir / CONFIG_NAME)
    _truncate_history(run_dir / HISTORY_NAME, state["epoch"])
    if state.get("finished"):
        logger.warning("%s: run already finished; nothing to resume", run_dir)
        return (
            config,
            state,
            TrainResult(run_dir, json.loads((run_dir / "metrics.json").read_text())),
        )
    return config, state, None


@contextlib.contextmanager
def removed_on_failure(run_dir: Path, resume: bool) -> Iterator[None]:
    """Undo a new run's folder when setting it up fails before its first epoch (a model
    that cannot be built, weights that cannot be loaded), so the same command can simply
    be run again; a resumed run's folder is never touched."""
    existed = run_dir.exists()
    try:
        yield
    except BaseException:
        if not resume:
            if not existed:
                shutil.rmtree(run_dir, ignore_errors=True)
            else:  # a folder the user made: take back only what the run wrote
                remove_run(run_dir)
        raise


def load_run_data(
    config: TrainConfig, run_dir: Path, resume: bool, state: dict[str, Any]
) -> tuple[PreparedDataset, Split, Split, Any]:
    """Load the run's splits (limited as configured), resolve its model settings from the
    data, and write a new run's ``config.yaml``, ``labels.json`` and state."""
    from ferkit.models.config import ModelConfig

    data = PreparedDataset(config.data)
    train_split, val_split = run_splits(config, data, announce=not resume)
    image_shape = data.manifest["image_shape"]
    if config.init_from and not resume:  # the source's architecture, unless told otherwise
        from ferkit.training.init_from import init_model_settings

        config.model = init_model_settings(config.model, config.init_from)
    model_config = ModelConfig(
        **{
            **config.model,
            "n_classes": len(data.classes),
            "image_size": image_shape[0],
            "channels": image_shape[2],
            "seed": config.seed,
        }
    )
    config.model = yaml_ready(asdict(model_config))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    if not resume:
        write_marker(run_dir, "train")
        write_run_config(run_dir, config)
        write_json(run_dir / "labels.json", data.classes)
        write_json(run_dir / STATE_NAME, state)
    return data, train_split, val_split, model_config


LAST_TORCH_CHECKPOINT = "checkpoints/last.pt"


BEST_WEIGHTS = "checkpoints/best.weights.npz"
