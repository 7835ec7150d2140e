"""Batch-norm statistics re-estimated on clean faces: augmentation off, weights kept,
each layer's statistics the mean over the batches."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from ferkit.training.batchnorm import recalibrate_batchnorm  # noqa: E402


class ShiftWhenTraining(keras.layers.Layer):
    """Stands in for an augmentation that moves the statistics: +100 in training mode."""

    def call(self, inputs, training=None):
        return inputs + 100.0 if training else inputs


def model_with_augmentation() -> keras.Model:
    inputs = keras.Input((4, 4, 1))
    augmentation = keras.Sequential([ShiftWhenTraining()], name="augmentation")
    x = augmentation(inputs)
    x = keras.layers.BatchNormalization(momentum=0.99, name="bn")(x)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


def test_statistics_are_those_of_the_clean_faces_and_nothing_else_changes():
    model = model_with_augmentation()
    bn = model.get_layer("bn")
    rng = np.random.default_rng(0)
    faces = rng.normal(20.0, 3.0, (1000, 4, 4, 1)).astype(np.float32)
    model(faces[:256], training=True)  # training-mode statistics, shifted by +100
    assert float(bn.moving_mean.numpy()[0]) > 1.0
    weights = [w.numpy().copy() for w in model.trainable_weights]

    assert recalibrate_batchnorm(model, faces, max_images=512, batch_size=100) == 1
    used = faces[np.random.default_rng(0).permutation(1000)[:512]]
    batches = [used[i : i + 100] for i in range(0, 512, 100)]
    assert float(bn.moving_mean.numpy()[0]) == pytest.approx(
        np.mean([b.mean() for b in batches]), rel=1e-4
    )
    assert float(bn.moving_variance.numpy()[0]) == pytest.approx(
        np.mean([b.var() for b in batches]), rel=1e-3
    )
    assert bn.momentum == 0.99
    for before, after in zip(weights, model.trainable_weights, strict=True):
        np.testing.assert_array_equal(before, after.numpy())
    # the augmentation works again afterwards
    assert float(model.get_layer("augmentation")(faces[:1], training=True).numpy().mean()) > 100


def test_faces_sorted_by_class_are_drawn_in_random_order():
    """Two groups far apart, stored one after the other (as prepared splits are, by
    class): the variance is the whole set's, not that of batches of one group."""
    model = model_with_augmentation()
    faces = np.concatenate([np.full((400, 4, 4, 1), 0.0), np.full((400, 4, 4, 1), 10.0)])
    faces += np.random.default_rng(1).normal(0, 1, faces.shape)
    recalibrate_batchnorm(model, faces.astype(np.float32), batch_size=100)
    variance = float(model.get_layer("bn").moving_variance.numpy()[0])
    assert variance == pytest.approx(faces.var(), rel=0.1)  # about 26, not about 1


def test_no_images_is_an_error():
    with pytest.raises(ValueError, match="at least one image"):
        recalibrate_batchnorm(model_with_augmentation(), np.zeros((0, 4, 4, 1)))
