"""Stage 3, training: ``ferkit train`` into a self-describing, resumable run folder.

- :mod:`~ferkit.training.config`: :class:`TrainConfig`, every training setting.
- :mod:`~ferkit.training.trainer`: :func:`train`, which runs the chosen engine.
- :mod:`~ferkit.training.run_folder`: the run folder's files, atomic checkpoints, resume.
- :mod:`~ferkit.training.sampling`: the splits, each epoch's order, class weights, mixup.
- :mod:`~ferkit.training.schedule`: the learning-rate schedule.
- :mod:`~ferkit.training.epochs`: the end of each epoch (history, checkpoints, early stop).
- :mod:`~ferkit.training.keras_engine` and :mod:`~ferkit.training.torch_engine`: the two
  engines; everything above is shared by both.
- :mod:`~ferkit.training.finish`: calibrate the best model and write ``metrics.json``.
- :mod:`~ferkit.training.distill`: a teacher ensemble's soft labels for distillation.
"""

from ferkit.training.config import TrainConfig, TrainResult
from ferkit.training.trainer import train

__all__ = ["TrainConfig", "TrainResult", "train"]
