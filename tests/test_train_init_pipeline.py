"""NumPy input batches (the pipeline of backends without tf.data) and init_from."""

import json

import numpy as np
import pytest
from conftest import TINY_MODEL, tiny_train_config
from test_train import _config

from ferkit.data.dataset import Split
from ferkit.training.config import TrainConfig
from ferkit.training.keras_engine import _array_batches, initialise_from, make_train_dataset
from ferkit.training.run_folder import read_history
from ferkit.training.sampling import epoch_order, epoch_seed, mix, mixup_pairs
from ferkit.training.trainer import train


def _split(labels):
    labels = np.asarray(labels)
    images = np.arange(len(labels) * 4, dtype=np.uint8).reshape(len(labels), 2, 2, 1)
    return Split(
        "train", images, labels, np.array([f"{i}.png" for i in range(len(labels))]), ["a", "b", "c"]
    )


def test_epoch_order_is_a_seeded_permutation():
    split = _split([0, 1, 2] * 30)
    config = TrainConfig(batch_size=16)
    first = epoch_order(split, config, epoch_seed=5)
    assert sorted(first) == list(range(90))
    assert np.array_equal(first, epoch_order(split, config, epoch_seed=5))
    assert not np.array_equal(first, epoch_order(split, config, epoch_seed=6))


def test_balanced_sampling_draws_classes_equally():
    split = _split([0] * 400 + [1] * 40 + [2] * 8)
    order = epoch_order(split, TrainConfig(batch_size=32, sampling="balanced"), epoch_seed=1)
    assert len(order) == 14 * 32  # whole batches: ceil(448 / 32) steps
    counts = np.bincount(split.labels[order], minlength=3)
    assert counts.min() > 0.8 * len(order) / 3 and counts.max() < 1.2 * len(order) / 3
    rare = order[split.labels[order] == 2]
    assert set(rare) == set(np.flatnonzero(split.labels == 2))  # cycles through every face


def test_shuffled_order_keeps_the_skew():
    split = _split([0] * 400 + [1] * 40 + [2] * 8)
    order = epoch_order(split, TrainConfig(batch_size=32, sampling="shuffle"), epoch_seed=1)
    assert sorted(order) == list(range(448))  # every face once: the classes as they are
    assert np.bincount(split.labels[order]).tolist() == [400, 40, 8]
    assert not np.array_equal(order, np.arange(448))


def _trained_labels(dataset):
    """The labels of every batch of an engine input (tf.data or NumPy batches)."""
    if hasattr(dataset, "__getitem__"):  # keras.utils.PyDataset
        batches = [dataset[i] for i in range(len(dataset))]
    else:
        batches = list(dataset)
    return np.concatenate([np.asarray(y).argmax(axis=1) for _, y in batches])


@pytest.mark.parametrize("pipeline", ["tf.data", "numpy"])
def test_keras_input_is_balanced_only_when_asked(pipeline):
    split = _split([0] * 400 + [1] * 40 + [2] * 8)
    counts = {}
    for sampling in ("shuffle", "balanced"):
        config = TrainConfig(batch_size=32, sampling=sampling, input_pipeline=pipeline, seed=3)
        dataset, steps = make_train_dataset(split, config, epoch=0)
        assert steps == 14
        counts[sampling] = np.bincount(_trained_labels(dataset), minlength=3)
    assert counts["shuffle"].tolist() == [400, 40, 8]
    balanced = counts["balanced"]
    assert balanced.sum() == 14 * 32
    assert balanced.min() > 0.8 * 448 / 3 and balanced.max() < 1.2 * 448 / 3, balanced


def test_mixup_blends_faces_and_targets_convexly_and_reproducibly():
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (32, 6, 6, 1)).astype(np.float32)
    targets = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 32)]
    lam, partner = mixup_pairs(32, 0.4, seed=11, step=2)
    assert lam.shape == (32,) and ((lam >= 0) & (lam <= 1)).all()
    assert sorted(partner) == list(range(32))
    x, y = mix(faces, lam, partner), mix(targets, lam, partner)
    np.testing.assert_allclose(
        x,
        lam[:, None, None, None] * faces + (1 - lam[:, None, None, None]) * faces[partner],
        rtol=1e-6,
    )
    np.testing.assert_allclose(y, lam[:, None] * targets + (1 - lam[:, None]) * targets[partner])
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
    # Convex: every pixel lies between the two faces it was blended from.
    low, high = np.minimum(faces, faces[partner]), np.maximum(faces, faces[partner])
    assert ((x >= low - 1e-3) & (x <= high + 1e-3)).all()
    # Changed: faces paired with another class carry both classes in their targets.
    other = targets.argmax(1) != targets[partner].argmax(1)
    assert other.any() and not np.allclose(x, faces)
    assert ((y[other] > 1e-6).sum(axis=1) == 2).mean() > 0.5
    # Seeded by the epoch's seed and the step: repeatable, different at another step.
    again = mixup_pairs(32, 0.4, seed=11, step=2)
    assert np.array_equal(again[0], lam) and np.array_equal(again[1], partner)
    for other_seed, other_step in ((11, 3), (12, 2)):
        lam2, partner2 = mixup_pairs(32, 0.4, seed=other_seed, step=other_step)
        assert not np.array_equal(lam2, lam) and not np.array_equal(partner2, partner)


def test_keras_mixup_batches_are_the_shared_mixup_of_the_epoch_order():
    split = _split([0, 1, 2] * 30)
    config = TrainConfig(batch_size=16, mixup_alpha=0.3, seed=5)
    dataset, steps = make_train_dataset(split, config, epoch=2)
    seed = epoch_seed(5, 2)
    order = epoch_order(split, config, seed)
    targets = split.one_hot()
    for step in range(steps):
        chosen = order[step * 16 : (step + 1) * 16]
        lam, partner = mixup_pairs(len(chosen), 0.3, seed, step)
        x, y = dataset[step]
        np.testing.assert_allclose(x, mix(split.images[chosen].astype(np.float32), lam, partner))
        np.testing.assert_allclose(y, mix(targets[chosen], lam, partner))
    # The same epoch again: the same batches; the next epoch: others.
    again, _ = make_train_dataset(split, config, epoch=2)
    nxt, _ = make_train_dataset(split, config, epoch=3)
    assert all(np.array_equal(dataset[i][1], again[i][1]) for i in range(steps))
    assert not all(np.array_equal(dataset[i][1], nxt[i][1]) for i in range(steps))


def test_array_batches_with_and_without_mixup():
    split = _split([0, 1, 2] * 10)
    targets = split.one_hot()
    order = np.arange(30)[::-1]
    plain = _array_batches(split.images, targets, order, batch_size=8)
    assert len(plain) == 4
    x, y = plain[1]
    assert x.dtype == np.float32 and np.array_equal(x, split.images[order[8:16]])
    assert np.array_equal(y, targets[order[8:16]])
    assert len(plain[3][0]) == 6  # the last, partial batch
    mixed = _array_batches(split.images, targets, order, 8, mixup_alpha=0.4, seed=3)
    x1, y1 = mixed[0]
    x2, y2 = _array_batches(split.images, targets, order, 8, mixup_alpha=0.4, seed=3)[0]
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)  # seeded per batch
    assert np.allclose(y1.sum(axis=1), 1.0) and (y1 >= 0).all()
    assert (y1.max(axis=1) < 1.0).any()  # some rows are blends of two faces


def test_numpy_pipeline_trains_and_resumes_exactly(drawn, tmp_path):
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    config = _config(drawn, epochs=2, input_pipeline="numpy", mixup_alpha=0.2)
    train(config, tmp_path / "whole", verbose=0)
    train(config, tmp_path / "split", verbose=0, stop_after_epochs=1)
    train(config, tmp_path / "split", resume=True, verbose=0)
    whole, split = read_history(tmp_path / "whole"), read_history(tmp_path / "split")
    assert [row["epoch"] for row in split] == [1, 2]
    for a, b in zip(whole, split, strict=True):
        assert np.isfinite(a["loss"]) and a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


def test_init_from_default_copies_the_shipped_model():
    import keras

    from ferkit.models.folder import DEFAULT_MODEL_DIR
    from ferkit.models.keras_nets import ModelConfig, build_model

    shipped = keras.models.load_model(DEFAULT_MODEL_DIR / "model.keras", compile=False)
    bundle_config = TrainConfig.from_yaml(DEFAULT_MODEL_DIR / "config.yaml")
    model = build_model(ModelConfig(**{**bundle_config.model, "seed": 11}))
    faces = np.random.default_rng(0).integers(0, 256, (16, 48, 48, 1)).astype(np.float32)
    before = model.predict(faces, verbose=0)
    report = initialise_from(model, "default")
    assert report["source"] == str(DEFAULT_MODEL_DIR / "model.keras") and not report["fresh"]
    after = model.predict(faces, verbose=0)
    assert not np.allclose(before, after, atol=1e-3)
    np.testing.assert_allclose(after, shipped.predict(faces, verbose=0), atol=1e-5)

    # Another class list: everything but the classifier comes from the shipped model.
    three = build_model(ModelConfig(**{**bundle_config.model, "n_classes": 3}))
    report = initialise_from(three, "default")
    assert report["fresh"] == ["logits"] and "s3_conv1" in report["loaded"]
    assert report["unused"] == ["logits"]  # init.json names every layer not copied
    np.testing.assert_array_equal(
        three.get_layer("s0_conv0").get_weights()[0],
        shipped.get_layer("s0_conv0").get_weights()[0],
    )

    vgg = build_model(ModelConfig(arch="vgg16", weights=None))
    with pytest.raises(ValueError, match="same architecture"):
        initialise_from(vgg, "default")


def test_init_source_resolution(tmp_path):
    from ferkit.models.folder import model_location

    with pytest.raises(FileNotFoundError, match="no model found"):
        initialise_from(None, tmp_path / "missing")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "best.keras").write_bytes(b"")
    run = tmp_path / "run"
    assert model_location(run) == (run, run / "checkpoints" / "best.keras")


def test_training_run_starts_from_another_run(drawn, drawn_run, tmp_path):
    from ferkit.cli import main

    first = drawn_run  # one epoch of the settings below, from random weights
    settings = TrainConfig.from_yaml(first / "config.yaml")
    assert settings.init_from is None and settings.model["widths"] == TINY_MODEL["widths"]
    assert [settings.epochs, settings.batch_size, settings.seed, settings.warmup_epochs] == [
        1, 32, 7, 0
    ]  # fmt: skip
    args = ["train", "--data", str(drawn), "--epochs", "1", "--batch-size", "32", "--seed", "7"]
    # Same settings and seed: without the initial weights the two first epochs would match.
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps({"model": TINY_MODEL, "warmup_epochs": 0}))
    init = ["--init-from", str(first)]
    assert main([*args, "--config", str(config), "--out", str(tmp_path / "second"), *init]) == 0
    report = json.loads((tmp_path / "second" / "init.json").read_text())
    assert "logits" in report["loaded"] and report["fresh"] == []
    assert TrainConfig.from_yaml(tmp_path / "second" / "config.yaml").init_from == str(first)
    scratch, started = read_history(first), read_history(tmp_path / "second")
    assert started[0]["loss"] < scratch[0]["loss"] - 0.05


def test_init_from_refuses_to_drop_layers_of_the_source():
    """The config's default depth (2 blocks a stage) under the shipped model (3): the 22
    layers that fit used to be copied and the other 8 dropped without a word."""
    from ferkit.models.folder import DEFAULT_MODEL_DIR
    from ferkit.models.keras_nets import ModelConfig, build_model

    bundle_config = TrainConfig.from_yaml(DEFAULT_MODEL_DIR / "config.yaml")
    shallower = build_model(ModelConfig(**{**bundle_config.model, "blocks_per_stage": 2}))
    with pytest.raises(ValueError, match=r"8 layers with weights .*s0_conv2.*same architecture"):
        initialise_from(shallower, "default")
    narrower = build_model(ModelConfig(**{**bundle_config.model, "widths": [32, 64, 128, 128]}))
    with pytest.raises(ValueError, match="would start fresh"):
        initialise_from(narrower, "default")


def test_init_from_takes_the_architecture_of_its_source(drawn, drawn_run, tmp_path):
    from ferkit.cli import main
    from ferkit.training.init_from import source_config_file, source_model_settings

    assert source_config_file(drawn_run / "checkpoints" / "best.keras") == drawn_run / "config.yaml"
    assert source_model_settings("default")["blocks_per_stage"] == 3
    # No model settings given: the run builds its source's (tiny) network, not the
    # built-in default architecture, and every layer is copied.
    args = ["train", "--data", str(drawn), "--epochs", "1", "--batch-size", "32"]
    assert main([*args, "--init-from", str(drawn_run), "--out", str(tmp_path / "run")]) == 0
    run_model = TrainConfig.from_yaml(tmp_path / "run" / "config.yaml").model
    source_model = TrainConfig.from_yaml(drawn_run / "config.yaml").model
    assert run_model["widths"] == TINY_MODEL["widths"]
    assert {k: v for k, v in run_model.items() if k != "seed"} == {
        k: v for k, v in source_model.items() if k != "seed"
    }
    report = json.loads((tmp_path / "run" / "init.json").read_text())
    assert report["fresh"] == [] and report["unused"] == [] and "logits" in report["loaded"]
    # Told otherwise (other widths): refused before any training, nothing left behind.
    other = tmp_path / "wide.yaml"
    other.write_text(json.dumps({"model": {**TINY_MODEL, "widths": [8, 16, 32, 32]}}))
    out = tmp_path / "refused"
    code = main([*args, "--config", str(other), "--init-from", str(drawn_run), "--out", str(out)])
    assert code == 2 and not out.exists()


def test_every_epoch_is_kept_when_asked(drawn, tmp_path):
    import keras

    config = tiny_train_config(drawn, epochs=2, keep_epoch_checkpoints=True)
    train(config, tmp_path / "run", verbose=0)
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("epoch_*"))
    assert kept == ["epoch_001.keras", "epoch_002.keras"]
    last = keras.models.load_model(tmp_path / "run" / "checkpoints" / "epoch_002.keras")
    assert last.output_shape[-1] == 4
