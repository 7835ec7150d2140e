"""The epoch loop's bookkeeping, for both engines: which epochs are left, and the end of
each one (history row, the printed line, best, last and optionally every epoch's
checkpoints, early stopping, and stopping a call early to test resuming)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferkit.training.config import TrainConfig, TrainResult
from ferkit.training.run_folder import (
    STATE_NAME,
    commit_epoch,
    record_epoch,
    save_atomic,
    write_json,
)

logger = logging.getLogger(__name__)

#: History columns that the epoch line leaves out (it shows them in its own way).
_NOT_IN_LINE = ("epoch", "seconds", "learning_rate")


def epoch_line(row: dict[str, float], total_epochs: int) -> str:
    """``epoch 3/40 - 61.2s - loss 1.2345 - accuracy 0.5012 - ...``: printed per epoch."""
    values = " - ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in _NOT_IN_LINE)
    return f"epoch {int(row['epoch'])}/{total_epochs} - {row['seconds']:.1f}s - {values}"


@dataclass
class EpochLoop:
    """Where a run's epochs stand during one call of an engine.

    Args:
        run_dir: the run folder.
        config: the run's settings (``total_epochs`` and ``early_stopping_patience``).
        state: the run's state (``state.json``), advanced in place.
        stop_after_epochs: end this call after that many epochs, as if killed.
    """

    run_dir: Path
    config: TrainConfig
    state: dict[str, Any]
    stop_after_epochs: int | None = None
    epochs_this_call: int = 0

    @property
    def epoch(self) -> int:
        """The next epoch to train, counted from 0."""
        return int(self.state["epoch"])

    def pending(self) -> bool:
        return self.epoch < self.config.total_epochs

    def end_epoch(
        self,
        row: dict[str, float],
        save_best: Callable[[Path], Any],
        best_name: str,
        save_last: Callable[[Path], Any],
        last_name: str,
    ) -> TrainResult | None:
        """Record a completed epoch: its history row and printed line, the best
        checkpoint when validation improved, the last checkpoint and the state, then
        early stopping (the rest of phase one is skipped: fine-tuning, if any, follows).

        Returns:
            The result of an interrupted call when ``stop_after_epochs`` is reached with
            epochs left, else None.
        """
        improved = record_epoch(self.run_dir, self.state, row)
        print(epoch_line(row, self.config.total_epochs), flush=True)
        if improved:
            save_atomic(save_best, self.run_dir / best_name)
        if self.config.keep_epoch_checkpoints:  # the best model's format, named by epoch
            kept = best_name.replace("best", f"epoch_{int(row['epoch']):03d}", 1)
            save_atomic(save_best, self.run_dir / kept)
        commit_epoch(self.run_dir, self.state, save_last, last_name)
        self.epochs_this_call += 1
        patience = self.config.early_stopping_patience
        if patience and self.state["wait"] >= patience and self.epoch < self.config.epochs:
            logger.info("early stopping: no val improvement for %d epochs", patience)
            self.state["epoch"] = self.config.epochs
            write_json(self.run_dir / STATE_NAME, self.state)
        stopping = self.stop_after_epochs is not None
        if stopping and self.epochs_this_call >= self.stop_after_epochs and self.pending():
            return TrainResult(self.run_dir, {"interrupted_after_epoch": self.epoch})
        return None
