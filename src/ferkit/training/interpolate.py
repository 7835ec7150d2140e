"""Weight-space interpolation between a fine-tuned model and the model it started from.

A model fine-tuned from another (``--init-from``) stays in the same basin of the loss, so
the straight line between the two sets of weights passes through models that keep much
of what each knows (WiSE-FT, Wortsman et al., 2022): ``(1 - alpha) * start + alpha *
tuned``. Every floating-point weight is interpolated, batch-norm statistics included;
layers are matched by name and shape, and the tuned model's augmentation block (which
holds only random-number state) is left as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


def _weighted_layers(model: Any) -> Iterator[Any]:
    for layer in model.layers:
        if hasattr(layer, "layers"):  # a nested model (the augmentation block)
            yield from _weighted_layers(layer)
        elif any(_is_float(w) for w in layer.weights):
            yield layer


def _is_float(weight: Any) -> bool:
    return np.issubdtype(np.dtype(str(weight.dtype)), np.floating)


def interpolate_weights(tuned: Any, start: Any, alpha: float) -> int:
    """Set every floating-point weight of the Keras model ``tuned`` to ``(1 - alpha) *
    start + alpha * tuned``, in place (``alpha`` 1 keeps ``tuned``, 0 gives ``start``).

    Returns:
        The number of layers interpolated.

    Raises:
        ValueError: ``alpha`` outside [0, 1], or a weighted layer of ``tuned`` that
            ``start`` lacks or holds in another shape (the two are not one architecture).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], not {alpha}")
    origin = {layer.name: layer for layer in _weighted_layers(start)}
    layers = list(_weighted_layers(tuned))
    for layer in layers:
        other = origin.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        if other is None or [tuple(w.shape) for w in other.weights] != shapes:
            raise ValueError(
                f"layer {layer.name!r} {shapes}: the start model has no layer of that name "
                "and shape; interpolate only a model with the one it was fine-tuned from"
            )
    for layer in layers:
        mixed = [
            (1.0 - alpha) * np.asarray(a) + alpha * np.asarray(b) if _is_float(b) else np.asarray(b)
            for a, b in zip(origin[layer.name].get_weights(), layer.get_weights(), strict=True)
        ]
        layer.set_weights(mixed)
    return len(layers)
