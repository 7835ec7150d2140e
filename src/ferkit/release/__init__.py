"""Stage 6, release: turn a finished run into a model folder others can use.

- :mod:`~ferkit.release.bundle`: ``ferkit bundle``: the run's best model, class list,
  calibration, metrics and checksums into a model folder.
- :mod:`~ferkit.release.model_card`: the model folder's ``MODEL_CARD.md``.
- :mod:`~ferkit.release.export`: ``ferkit export``: ONNX (float32 and int8) and TFLite
  files beside the model, checked against it.
"""
