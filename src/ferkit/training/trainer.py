"""``ferkit train``: train a model on a prepared dataset into a self-describing run folder
(see :mod:`ferkit.training.run_folder`), with the Keras engine or the torch engine."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ferkit.outputs import locked
from ferkit.training.config import TrainConfig, TrainResult
from ferkit.training.run_folder import CONFIG_NAME

logger = logging.getLogger(__name__)


def train(
    config: TrainConfig,
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    verbose: int | None = None,
    stop_after_epochs: int | None = None,
    time_budget: float | None = None,
) -> TrainResult:
    """Train (or resume) a run.

    Args:
        config: settings; ignored on resume in favour of the run's own ``config.yaml``.
        run_dir: the run folder to create, or to continue with ``resume``.
        resume: continue the run in ``run_dir`` from its last completed epoch.
        overwrite: replace the run in ``run_dir`` (only the run's own files are removed).
        verbose: 0 for no progress bar over each epoch's batches, 1 for one (default:
            one on a terminal); a line per epoch is printed either way.
        stop_after_epochs: end this call after that many epochs, as if the process had
            been killed (used to test resuming); the run stays resumable.
        time_budget: torch engine only: seconds to fit the run into (see
            :func:`ferkit.training.torch_engine.train_torch`).

    Raises:
        FileExistsError: ``run_dir`` holds a run and ``resume`` is false.
        FileNotFoundError: resuming a folder without a run.
        ValueError: ``time_budget`` with the Keras engine; a checkpoint that does not
            match the run's state on resume.
        OutputLockedError: another process is training into ``run_dir``.
    """
    run_dir = Path(run_dir)
    engine = config.engine
    if resume and (run_dir / CONFIG_NAME).is_file():
        engine = TrainConfig.from_yaml(run_dir / CONFIG_NAME).engine
    if engine != "torch" and time_budget is not None:
        raise ValueError("--time-budget needs --engine torch")
    with locked(run_dir):
        if engine == "torch":  # PyTorch loads before TensorFlow in a process, or it crashes
            from ferkit.training.torch_engine import train_torch

            return train_torch(
                config, run_dir, resume=resume, overwrite=overwrite,
                stop_after_epochs=stop_after_epochs, time_budget=time_budget,
            )  # fmt: skip
        from ferkit.training.keras_engine import train_keras

        return train_keras(
            config, run_dir, resume=resume, overwrite=overwrite, verbose=verbose,
            stop_after_epochs=stop_after_epochs,
        )  # fmt: skip
