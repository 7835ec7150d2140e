import numpy as np
import pytest

from ferkit.models.keras_nets import (
    ARCHITECTURES,
    AugmentConfig,
    ModelConfig,
    build_model,
    set_vgg16_trainable_blocks,
    vgg16_backbone,
)

SMALL = {"ferkit_cnn": {"widths": (8, 16, 32, 64)}, "vgg16": {"weights": None, "head_units": 32}}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_gives_finite_logits_of_the_right_shape(arch):
    model = build_model(ModelConfig(arch=arch, n_classes=5, **SMALL[arch]))
    images = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 1)).astype("float32")
    logits = np.asarray(model(images, training=False))
    assert logits.shape == (3, 5)
    assert np.isfinite(logits).all()
    # Augmentation is active in training only: inference is deterministic.
    np.testing.assert_allclose(np.asarray(model(images, training=False)), logits, rtol=1e-5)


def test_ferkit_cnn_gradients_reach_every_weight():
    import tensorflow as tf

    model = build_model(
        ModelConfig(widths=(8, 16, 32, 64), n_classes=3, augment=AugmentConfig(erasing=0))
    )
    images = tf.random.uniform((4, 48, 48, 1), 0, 255)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(images, training=True) ** 2)
    gradients = tape.gradient(loss, model.trainable_weights)
    assert len(gradients) == len(model.trainable_weights)
    for weight, gradient in zip(model.trainable_weights, gradients, strict=True):
        assert gradient is not None, weight.path
        values = np.asarray(gradient)
        assert np.isfinite(values).all() and np.abs(values).max() > 0, weight.path


def _trainable_count(model):
    return len(model.trainable_weights)


def test_vgg16_phases_freeze_and_unfreeze_the_intended_layers():
    model = build_model(ModelConfig(arch="vgg16", n_classes=7, weights=None, head_units=32))
    backbone = vgg16_backbone(model)
    # Phase one: only the new head (dense + logits: 2 kernels, 2 biases) trains.
    assert _trainable_count(model) == 4
    assert not backbone.trainable
    set_vgg16_trainable_blocks(model, 1)  # block5: three convolutions
    assert _trainable_count(model) == 4 + 6
    trainable_layers = {w.path.split("/")[0] for w in backbone.trainable_weights}
    assert trainable_layers == {"block5_conv1", "block5_conv2", "block5_conv3"}
    set_vgg16_trainable_blocks(model, 2)  # block4 and block5
    assert _trainable_count(model) == 4 + 12
    set_vgg16_trainable_blocks(model, 0)
    assert _trainable_count(model) == 4


def test_vgg16_loads_a_local_weights_file(tmp_path):
    import keras

    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(48, 48, 3))
    path = tmp_path / "vgg16_notop.weights.h5"
    reference.save_weights(path)
    model = build_model(ModelConfig(arch="vgg16", weights=str(path), head_units=16, seed=123))
    for loaded, expected in zip(vgg16_backbone(model).weights, reference.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(expected))


def test_vgg16_imagenet_weights_come_through_keras_download(tmp_path, monkeypatch):
    """``--weights imagenet`` loads the file Keras downloads (the download itself is
    replaced by a local file: no test may fetch weights); a failed download is a clear
    error that names the fix."""
    import h5py
    import keras
    from keras.src.applications import vgg16 as keras_vgg16
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    from ferkit.models.keras_nets import VGG16_NOTOP_FILE

    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(48, 48, 3))
    path = tmp_path / VGG16_NOTOP_FILE  # Keras's file and its legacy HDF5 layout,
    with h5py.File(path, "w") as handle:  # random weights standing in for ImageNet's
        save_weights_to_hdf5_group(handle, reference)
    requested = []

    def fake_get_file(fname, origin, **kwargs):
        requested.append((fname, origin))
        return str(path)

    monkeypatch.setattr(keras_vgg16.file_utils, "get_file", fake_get_file)
    model = build_model(ModelConfig(arch="vgg16", weights="imagenet", head_units=16))
    assert requested == [(VGG16_NOTOP_FILE, keras_vgg16.WEIGHTS_PATH_NO_TOP)]
    for loaded, expected in zip(vgg16_backbone(model).weights, reference.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(expected))

    def offline(fname, origin, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name not known")

    monkeypatch.setattr(keras_vgg16.file_utils, "get_file", offline)
    with pytest.raises(OSError, match=f"fetch {VGG16_NOTOP_FILE}.*--weights PATH"):
        build_model(ModelConfig(arch="vgg16", weights="imagenet"))


def test_vgg16_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--weights imagenet"):
        build_model(ModelConfig(arch="vgg16", weights=str(tmp_path / "nope.h5")))


def test_unknown_architecture():
    with pytest.raises(ValueError, match="ferkit_cnn"):
        build_model(ModelConfig(arch="resnet9000"))


def test_sharpness_augmentation_is_opt_in_and_symmetric():
    import keras

    from ferkit.models.keras_nets import augmentation

    def sharpness_layers(config):
        return [
            layer
            for layer in augmentation(config).layers
            if isinstance(layer, keras.layers.RandomSharpness)
        ]

    assert sharpness_layers(AugmentConfig()) == []
    (layer,) = sharpness_layers(AugmentConfig(sharpness=0.6))
    assert tuple(layer.factor) == pytest.approx((0.2, 0.8))
    (layer,) = sharpness_layers(AugmentConfig(sharpness=1.0))
    assert tuple(layer.factor) == pytest.approx((0.0, 1.0))
    faces = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 1)).astype("float32")
    model = build_model(ModelConfig(widths=(8, 16, 32, 64), augment=AugmentConfig(sharpness=1)))
    np.testing.assert_array_equal(model(faces, training=False), model(faces, training=False))
