"""Stage 2, models: the networks and the model folder.

- :mod:`~ferkit.models.config`: :class:`ModelConfig` and :class:`AugmentConfig`, the
  settings that rebuild a network.
- :mod:`~ferkit.models.keras_nets`: the Keras networks (``ferkit_cnn``, ``vgg16``, ...)
  and their registry, ``ARCHITECTURES``.
- :mod:`~ferkit.models.torch_net`: ``ferkit_cnn`` as a PyTorch module, for the torch engine.
- :mod:`~ferkit.models.folder`: the model folder (file names, checksums, class list,
  temperature) and loading a model from one.

Importing this package loads no deep-learning library; ``keras_nets`` loads Keras and
``torch_net`` PyTorch.
"""
