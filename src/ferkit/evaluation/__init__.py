"""Stage 5, evaluation: measure models.

- :mod:`~ferkit.evaluation.evaluate`: ``ferkit evaluate``: metrics, plots and an HTML
  report of one model on labelled faces.
- :mod:`~ferkit.evaluation.compare`: ``ferkit compare``: evaluations side by side.
- :mod:`~ferkit.evaluation.benchmark`: ``ferkit benchmark``: speed of the models,
  runtimes and the video pipeline.
"""
