"""Batch-norm statistics re-estimated on clean training faces.

A network trained with strong augmentation (the robustness corruptions, random erasing)
keeps, in each batch-norm layer, a running mean and variance of *augmented* faces, while
it is used on clean ones. :func:`recalibrate_batchnorm` passes clean training faces
through the network with its augmentation switched off and its weights untouched, and
sets every batch-norm layer's statistics to their average over those batches (an equal
weight for each batch, not the exponential average of training). Only the statistics
change: no weight is learned, and no validation data is used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from ferkit.extras import import_keras


@contextlib.contextmanager
def _augmentation_off(model: Any) -> Iterator[None]:
    """The model's ``augmentation`` block (see :func:`ferkit.models.keras_nets.augmentation`)
    passes faces through unchanged for the duration, even in training mode."""
    try:
        block = model.get_layer("augmentation")
    except ValueError:  # a model built without augmentation
        yield
        return
    block.call = lambda inputs, training=None, **_: inputs
    try:
        yield
    finally:
        del block.call  # the class's own call again


def recalibrate_batchnorm(
    model: Any,
    images: np.ndarray,
    *,
    max_images: int = 8192,
    batch_size: int = 256,
    seed: int = 0,
) -> int:
    """Re-estimate every batch-norm layer's moving mean and variance of a Keras ``model``
    on up to ``max_images`` of ``images`` (drawn with ``seed``), in place.

    Returns:
        The number of batch-norm layers updated.

    Raises:
        ValueError: no image given.
    """
    keras = import_keras("re-estimating batch-norm statistics")
    layers = [
        layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)
    ]
    if not len(images):
        raise ValueError("recalibrate_batchnorm needs at least one image")
    if not layers:
        return 0
    # In random order: a batch of one class (prepared splits are often sorted by class)
    # would have too small a variance.
    chosen = np.random.default_rng(seed).permutation(len(images))[:max_images]
    faces = np.asarray(images)[chosen].astype(np.float32)
    momenta = [layer.momentum for layer in layers]
    try:
        with _augmentation_off(model):
            for step, start in enumerate(range(0, len(faces), batch_size)):
                for layer in layers:  # the mean of the batches seen so far
                    layer.momentum = step / (step + 1)
                model(faces[start : start + batch_size], training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return len(layers)


def _all_layers(model: Any) -> Iterator[Any]:
    for layer in model.layers:
        if hasattr(layer, "layers"):  # a nested model
            yield from _all_layers(layer)
        else:
            yield layer
