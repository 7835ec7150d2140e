"""Training corruptions (``augment.corruption``): one function for Keras and PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from ferkit.models import corruption

SIDE = 48


def _faces(n: int = 12, seed: int = 0) -> np.ndarray:
    """Smooth random 'faces' with structure at several scales (blur and JPEG change them)."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(n, 6, 6)).repeat(8, axis=1).repeat(8, axis=2)
    fine = rng.normal(size=(n, SIDE, SIDE))
    return np.clip(128 + 45 * coarse + 25 * fine, 0, 255).astype(np.float32)[..., None]


def _draws(n: int, kind: int, strength: float = 0.5) -> np.ndarray:
    draws = np.full((n, corruption.DRAWS), strength, dtype=np.float32)
    draws[:, 0] = 0.0  # apply
    draws[:, 1] = (kind + 0.5) / len(corruption.KINDS)
    return draws


def _numpy_corrupt(images, draws, noise, rate=1.0, channels_last=True):
    return corruption.corrupt(
        np, images, draws, noise, rate, corruption.constants(SIDE), channels_last=channels_last
    )


@pytest.mark.parametrize("kind", range(len(corruption.KINDS)))
def test_each_kind_changes_faces_within_range(kind):
    faces = _faces()
    noise = np.random.default_rng(1).normal(size=faces.shape).astype(np.float32)
    out = _numpy_corrupt(faces, _draws(len(faces), kind, 0.85), noise)  # gamma 1 at 0.5
    assert out.shape == faces.shape
    assert out.min() >= 0 and out.max() <= 255
    assert np.abs(out - faces).mean() > 1.0, corruption.KINDS[kind]


def test_rate_zero_and_unchosen_faces_are_untouched():
    faces = _faces()
    noise = np.ones_like(faces)
    draws = _draws(len(faces), kind=3)
    assert np.array_equal(_numpy_corrupt(faces, draws, noise, rate=0.0), faces)
    draws[::2, 0] = 0.9  # these faces draw above the rate
    out = _numpy_corrupt(faces, draws, noise, rate=0.5)
    assert np.array_equal(out[::2], faces[::2])
    assert not np.array_equal(out[1::2], faces[1::2])


def test_stronger_blur_and_downscale_remove_more_detail():
    faces = _faces()
    noise = np.zeros_like(faces)
    for kind in (corruption.KINDS.index("blur"), corruption.KINDS.index("downscale")):
        weak = _numpy_corrupt(faces, _draws(len(faces), kind, 0.1), noise)
        strong = _numpy_corrupt(faces, _draws(len(faces), kind, 0.9), noise)
        assert np.abs(np.diff(strong, axis=2)).mean() < np.abs(np.diff(weak, axis=2)).mean()


def test_jpeg_kind_follows_the_real_codec():
    import cv2

    faces = _faces(6)
    quality = 20.0
    c = corruption.constants(SIDE)
    ours = np.clip(corruption._jpeg(np, faces, np.full(6, quality, np.float32), c, True), 0, 255)
    for face, approximation in zip(faces, ours, strict=True):
        _, encoded = cv2.imencode(
            ".jpg", face[..., 0].astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 20]
        )
        real = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE).astype(np.float32)
        codec_error = np.abs(real - face[..., 0]).mean()
        assert np.abs(real - approximation[..., 0]).mean() < 0.25 * codec_error


def test_downscale_matrices_keep_flat_images_flat():
    for name, matrix in corruption.constants(SIDE).items():
        if name.startswith(("blur", "down")):
            assert np.allclose(matrix.sum(axis=1), 1.0, atol=1e-5), name


def test_keras_and_torch_engines_give_the_same_corruption():
    """The Keras layer's function and the torch engine's agree on the same random draws,
    and the torch engine's augmentation applies it, seeded (a resumed run repeats it)."""
    from test_torch_engine import require_torch, run_python

    require_torch()
    result = run_python(
        """
        import json
        import numpy as np
        from ferkit.extras import import_torch
        torch = import_torch()  # before TensorFlow
        from ferkit.extras import import_keras
        from ferkit.models import corruption
        from ferkit.models.config import AugmentConfig
        from ferkit.training.torch_engine import augment_batch

        rng = np.random.default_rng(2)
        coarse = rng.normal(size=(12, 6, 6, 3)).repeat(8, axis=1).repeat(8, axis=2)
        fine = rng.normal(size=(12, 48, 48, 3))  # detail inside the JPEG blocks
        faces = np.clip(128 + 45 * coarse + 25 * fine, 0, 255).astype(np.float32)
        draws = rng.random((12, corruption.DRAWS)).astype(np.float32)
        draws[:, 0] = 0.0
        draws[:, 1] = (np.arange(12) % len(corruption.KINDS) + 0.5) / len(corruption.KINDS)
        noise = rng.normal(size=faces.shape).astype(np.float32)
        c = corruption.constants(48)
        ops = import_keras().ops
        with_keras = ops.convert_to_numpy(corruption.corrupt(
            ops, ops.convert_to_tensor(faces), ops.convert_to_tensor(draws),
            ops.convert_to_tensor(noise), 1.0,
            {k: ops.convert_to_tensor(v) for k, v in c.items()}))
        with_torch = corruption.corrupt(
            torch, torch.as_tensor(faces).permute(0, 3, 1, 2), torch.as_tensor(draws),
            torch.as_tensor(noise).permute(0, 3, 1, 2), 1.0,
            {k: torch.as_tensor(v) for k, v in c.items()}, channels_last=False,
        ).permute(0, 2, 3, 1).numpy()

        batch = torch.as_tensor(faces).permute(0, 3, 1, 2)
        augment = AugmentConfig.off()
        off = augment_batch(batch.clone(), augment, torch.Generator().manual_seed(0))
        augment.corruption = 1.0
        on = augment_batch(batch.clone(), augment, torch.Generator().manual_seed(0))
        again = augment_batch(batch.clone(), augment, torch.Generator().manual_seed(0))
        print(json.dumps({
            "engines_differ": float(np.abs(with_keras - with_torch).max()),
            "changed": float(np.abs(with_keras - faces).mean()),
            "off_changed": float((off - batch).abs().max()),
            "on_changed": float((on - batch).abs().mean()),
            "repeatable": bool(torch.equal(on, again)),
        }))
        """
    )
    assert result["engines_differ"] < 1e-3
    assert result["changed"] > 1.0
    assert result["off_changed"] == 0.0
    assert result["on_changed"] > 1.0
    assert result["repeatable"]


def test_three_channel_faces_in_a_graph_with_an_unknown_batch():
    import tensorflow as tf

    from ferkit.models.keras_nets import custom_layers

    layer = custom_layers()["RandomCorruption"](1.0, seed=0)
    spec = tf.TensorSpec((None, SIDE, SIDE, 3), tf.float32)
    run = tf.function(lambda faces: layer(faces, training=True), input_signature=[spec])
    faces = np.repeat(_faces(6), 3, axis=-1)
    out = run(faces).numpy()
    assert out.shape == faces.shape and np.abs(out - faces).mean() > 1.0
    # JPEG on colour faces is JPEG on each channel
    quality = np.array([10, 20, 30, 40, 50, 60], np.float32)
    c = corruption.constants(SIDE)
    colour = corruption._jpeg(np, faces, quality, c, True)
    each = [corruption._jpeg(np, faces[..., i : i + 1], quality, c, True) for i in range(3)]
    np.testing.assert_allclose(colour, np.concatenate(each, axis=-1), atol=1e-3)


def test_sides_that_are_not_a_multiple_of_8_are_refused():
    with pytest.raises(ValueError, match="multiple of 8"):
        corruption.constants(44)


def test_layer_is_active_in_training_only_and_survives_saving(tmp_path):
    from ferkit.extras import import_keras
    from ferkit.models.config import AugmentConfig, ModelConfig
    from ferkit.models.keras_nets import build_model, custom_layers

    keras = import_keras()
    augment = AugmentConfig.off()
    augment.corruption = 1.0
    config = ModelConfig(widths=(8, 16, 32, 64), augment=augment)
    model = build_model(config)
    layer = model.get_layer("augmentation").layers[0]
    assert type(layer).__name__ == "RandomCorruption"
    faces = _faces(8)
    assert np.array_equal(np.asarray(layer(faces, training=False)), faces)
    trained = np.asarray(layer(faces, training=True))
    assert np.abs(trained - faces).mean() > 1.0
    path = tmp_path / "model.keras"
    model.save(path)
    custom_layers()
    loaded = keras.models.load_model(path)
    assert np.allclose(loaded.predict(faces, verbose=0), model.predict(faces, verbose=0), atol=1e-5)
    assert loaded.get_layer("augmentation").layers[0].rate == 1.0
