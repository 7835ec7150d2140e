"""Weight interpolation between a fine-tuned model and its start: every float weight on
the straight line, layers matched by name, other architectures refused."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from ferkit.training.interpolate import interpolate_weights  # noqa: E402


def small_model(seed: int, width: int = 3) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 1))
    augmentation = keras.Sequential([keras.layers.RandomFlip(seed=seed)], name="augmentation")
    x = keras.layers.Conv2D(width, 3, name="conv")(augmentation(inputs))
    x = keras.layers.BatchNormalization(name="bn")(x)
    outputs = keras.layers.Dense(2, name="logits")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.full(width, float(seed), np.float32))
    return model


def test_every_float_weight_lies_on_the_line():
    start, tuned = small_model(0), small_model(1)
    before = {layer.name: layer.get_weights() for layer in tuned.layers if layer.weights}
    origin = {layer.name: layer.get_weights() for layer in start.layers if layer.weights}
    assert interpolate_weights(tuned, start, 0.25) == 3  # conv, bn, logits
    for name in ("conv", "bn", "logits"):
        after = tuned.get_layer(name).get_weights()
        for a, b, mixed in zip(origin[name], before[name], after, strict=True):
            np.testing.assert_allclose(mixed, 0.75 * a + 0.25 * b, rtol=1e-6)
    assert float(tuned.get_layer("bn").moving_mean.numpy()[0]) == pytest.approx(0.25)


def test_the_ends_of_the_line_are_the_two_models():
    start, tuned = small_model(0), small_model(1)
    faces = np.random.default_rng(0).normal(size=(5, 4, 4, 1)).astype(np.float32)
    expected = start.predict(faces, verbose=0)
    interpolate_weights(tuned, start, 0.0)
    np.testing.assert_allclose(tuned.predict(faces, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_another_architecture_or_alpha_is_refused():
    with pytest.raises(ValueError, match="no layer of that name and shape"):
        interpolate_weights(small_model(1, width=4), small_model(0, width=3), 0.5)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        interpolate_weights(small_model(1), small_model(0), 1.5)
