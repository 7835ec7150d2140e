"""Stage 4, inference: find faces and tell their expressions, in photos, folders, videos
and a live camera. Needs only the core install (ONNX Runtime or LiteRT; no TensorFlow).

- :mod:`~ferkit.inference.runtimes`: the classifier runtimes (ONNX, int8 ONNX, TFLite,
  Keras) and :func:`load_classifier`, which picks one.
- :mod:`~ferkit.inference.results`: :class:`FaceResult`, :class:`ImageResult` and
  :func:`results_to_dataframe`.
- :mod:`~ferkit.inference.recognizer`: :class:`EmotionRecognizer`, the Python API.
- :mod:`~ferkit.inference.video`: video and webcam frames, face tracking and smoothing.
- :mod:`~ferkit.inference.annotate`: boxes, labels and probability bars drawn on images.
- :mod:`~ferkit.inference.predict`: ``ferkit predict``: a batch of inputs into a results
  folder, with :mod:`~ferkit.inference.sources` (files, folders, globs, manifests, URLs),
  :mod:`~ferkit.inference.records` (the records, ``summary.json`` and exit status) and
  :mod:`~ferkit.inference.video_loop` (one video or webcam, frame by frame).
"""
