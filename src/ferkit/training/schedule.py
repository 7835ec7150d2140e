"""The learning-rate schedule, one formula for both engines: constant, or cosine decay
to 1% of the peak after a linear warm-up from a tenth of it (Keras's ``CosineDecay`` with
``warmup_target``)."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from ferkit.training.config import TrainConfig

#: The cosine's floor, as a fraction of the peak learning rate.
FLOOR = 0.01


def learning_rate_at(
    config: TrainConfig, step: Any, steps_per_epoch: int, ops: ModuleType | Any = np
) -> Any:
    """The learning rate at optimizer ``step`` (counted from 0 over the whole run).

    ``ops`` is the array library the step is in: NumPy (a plain number, the torch engine)
    or ``keras.ops`` (a tensor, inside the Keras optimizer); ``step`` must be a float.
    """
    if config.schedule == "constant":
        return config.learning_rate
    peak = config.learning_rate
    warmup = config.warmup_epochs * steps_per_epoch
    decay_steps = max(1, config.epochs * steps_per_epoch - warmup)
    progress = ops.minimum(ops.maximum(step - warmup, 0.0), decay_steps) / decay_steps
    cosine = peak * ((1 - FLOOR) * 0.5 * (1 + ops.cos(math.pi * progress)) + FLOOR)
    if not warmup:
        return cosine
    start = peak / 10
    return ops.where(step < warmup, start + (peak - start) * step / warmup, cosine)
