import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL, tiny_train_config, write_gray, write_prepared_subset

from ferkit.calibration import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    softmax,
)
from ferkit.data.dataset import PreparedDataset
from ferkit.models.config import AugmentConfig
from ferkit.training.config import TrainConfig
from ferkit.training.run_folder import read_history
from ferkit.training.sampling import class_weights, run_splits, stratified_subset
from ferkit.training.trainer import train

NO_AUGMENT = asdict(AugmentConfig.off())


def _config(data, **overrides):
    return tiny_train_config(data, **{"epochs": 3, "seed": 7, **overrides})


def _best_model_on_val(run):
    """Logits of the run's best checkpoint on its validation faces, and their labels:
    computed here, apart from the run's own finish step."""
    import keras

    config = TrainConfig.from_yaml(run / "config.yaml")
    _, val = run_splits(config, PreparedDataset(config.data))
    model = keras.models.load_model(run / "checkpoints" / "best.keras")
    return np.asarray(model.predict(val.images.astype(np.float32), verbose=0)), val.labels


@pytest.fixture(scope="module")
def three_epochs(drawn, tmp_path_factory):
    """``_config(drawn, epochs=3)`` trained whole, and again stopped after its first
    epoch (as if killed), with op determinism on: (config, whole result, stopped result).
    Both folders stay pristine: tests copy them."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    root = tmp_path_factory.mktemp("three_epochs")
    config = _config(drawn, epochs=3)
    whole = train(config, root / "whole", verbose=0)
    stopped = train(config, root / "stopped", verbose=0, stop_after_epochs=1)
    return config, whole, stopped


def _copy(run, folder):
    import shutil

    return Path(shutil.copytree(run, folder / run.name))


def test_run_folder_describes_itself(three_epochs):
    _, result, _ = three_epochs
    run = result.run_dir
    for name in (
        "config.yaml",
        "labels.json",
        "history.csv",
        "state.json",
        "calibration.json",
        "metrics.json",
    ):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "best.keras").is_file() and (
        run / "checkpoints" / "last.keras"
    ).is_file()
    assert json.loads((run / "labels.json").read_text()) == ["angry", "happy", "sad", "surprise"]
    resolved = TrainConfig.from_yaml(run / "config.yaml")
    assert resolved.model["n_classes"] == 4 and resolved.model["widths"] == [8, 16, 32, 64]
    assert [row["epoch"] for row in read_history(run)] == [1, 2, 3]
    assert result.metrics["epochs_trained"] == 3
    # The metrics are those of the best checkpoint on val, recounted here.
    logits, labels = _best_model_on_val(run)
    assert result.metrics["val_faces"] == len(labels)
    assert result.metrics["val_accuracy"] == pytest.approx(np.mean(logits.argmax(1) == labels))
    calibration = result.metrics["calibration"]
    assert json.loads((run / "calibration.json").read_text()) == calibration
    temperature = calibration["temperature"]
    # The fitted temperature is no worse than none on the data it was fitted to.
    assert negative_log_likelihood(logits, labels, temperature) <= (
        negative_log_likelihood(logits, labels, 1.0) + 1e-6
    )
    assert calibration["ece_before"] == pytest.approx(
        expected_calibration_error(softmax(logits), labels), abs=1e-6
    )
    assert calibration["ece_after"] == pytest.approx(
        expected_calibration_error(softmax(logits, temperature), labels), abs=1e-6
    )


def test_existing_run_needs_resume(drawn, drawn_run, tmp_path):
    with pytest.raises(FileExistsError, match="--resume"):
        train(_config(drawn, epochs=1), drawn_run, verbose=0)  # the run stays as it was
    with pytest.raises(FileNotFoundError, match="no run to resume"):
        train(_config(drawn), tmp_path / "other", resume=True, verbose=0)


def test_resume_continues_exactly_where_the_run_stopped(three_epochs, tmp_path):
    config, whole_run, stopped = three_epochs
    assert stopped.metrics == {"interrupted_after_epoch": 1}
    assert [row["epoch"] for row in read_history(stopped.run_dir)] == [1]
    split_run = _copy(stopped.run_dir, tmp_path)
    train(config, split_run, resume=True, verbose=0)
    whole, split = read_history(whole_run.run_dir), read_history(split_run)
    assert [row["epoch"] for row in split] == [1, 2, 3]  # nothing repeated or skipped
    for a, b in zip(whole, split, strict=True):
        # Same data order, augmentation and optimizer state: the same numbers.
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
        assert a["learning_rate"] == pytest.approx(b["learning_rate"], rel=1e-6)


def test_finish_ends_a_stopped_run_early(three_epochs, tmp_path):
    import subprocess
    import sys

    run = _copy(three_epochs[2].run_dir, tmp_path)
    # In a process of its own, as a user runs it: one that has not trained (so has not
    # registered the learning-rate schedule the checkpoint's optimizer names).
    finished = subprocess.run(
        [sys.executable, "-m", "ferkit", "train", "--out", str(run), "--finish"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["finished_early"] == "after epoch 1 of 3"
    assert metrics["epochs_trained"] == 1
    logits, labels = _best_model_on_val(run)  # the one epoch's checkpoint
    assert metrics["val_accuracy"] == pytest.approx(np.mean(logits.argmax(1) == labels))
    assert json.loads((run / "state.json").read_text())["finished"] is True


def _skewed(drawn, folder):
    """The drawn dataset with a skewed train split (all of one class, a half, a quarter
    and an eighth of the others); val as it was."""
    data = PreparedDataset(drawn)
    labels = data.split("train").labels
    keep = np.concatenate(
        [np.flatnonzero(labels == c)[: max(1, (labels == c).sum() >> c)] for c in range(4)]
    )
    val = np.arange(len(data.split("val")))
    return write_prepared_subset(drawn, folder / "skewed", {"train": np.sort(keep), "val": val})


class _FitRecorder:
    """Records the input and class weights of each ``keras.Model.fit`` call."""

    def __init__(self, monkeypatch):
        import keras

        self.calls = []
        original = keras.Model.fit

        def fit(model, x=None, *args, **kwargs):
            self.calls.append({"x": x, "class_weight": kwargs.get("class_weight")})
            return original(model, x, *args, **kwargs)

        monkeypatch.setattr(keras.Model, "fit", fit)

    def targets(self, index=0):
        """Every target row the recorded call trained on, in order."""
        x = self.calls[index]["x"]
        if hasattr(x, "__getitem__") and hasattr(x, "__len__"):  # NumPy batches
            return np.concatenate([np.asarray(x[i][1]) for i in range(len(x))])
        return np.concatenate([np.asarray(y) for _, y in x])  # tf.data


def test_balanced_sampling_class_weights_and_mixup_shape_what_keras_trains_on(
    drawn, tmp_path, monkeypatch
):
    skewed = _skewed(drawn, tmp_path)
    counts = np.bincount(PreparedDataset(skewed).split("train").labels, minlength=4)
    assert counts[3] * 6 < counts[0]  # rare against common

    recorder = _FitRecorder(monkeypatch)
    train(_config(skewed, epochs=1), tmp_path / "plain", verbose=0)
    plain = recorder.targets(0)
    # Shuffled: every face once, so the batches keep the skew; no weights; no mixing.
    assert recorder.calls[0]["class_weight"] is None
    assert np.bincount(plain.argmax(1), minlength=4).tolist() == counts.tolist()
    assert set(np.unique(plain)) == {0.0, 1.0}

    options = {"sampling": "balanced", "class_weighting": "balanced", "mixup_alpha": 0.4}
    result = train(_config(skewed, epochs=1, **options), tmp_path / "run", verbose=0)
    assert result.metrics["epochs_trained"] == 1
    weights = recorder.calls[1]["class_weight"]
    # n / (k * count_c): the rarer the class, the more its faces weigh, and every class
    # weighs the same in all.
    assert [weights[c] for c in range(4)] == pytest.approx(counts.sum() / (4 * counts))
    assert weights[3] > weights[2] > weights[1] > weights[0]
    mixed = recorder.targets(1)
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0, rtol=1e-6)
    assert (mixed.max(axis=1) < 0.999).mean() > 0.3  # rows blending two classes' targets
    # Balanced draws (96 of them, so only roughly): each class holds about a quarter of
    # the target mass, where a shuffled epoch gives the rare class 6/90 and the common 48/90.
    share = mixed.sum(axis=0) / len(mixed)
    assert share.min() > 0.1 and share.max() < 0.4, share
    assert len(mixed) == len(plain) + (-len(plain)) % 32  # whole batches


def test_class_weights_give_each_class_an_equal_share_of_the_loss():
    labels = np.array([0] * 80 + [1] * 15 + [2] * 5)
    weights = class_weights(labels, 3)
    assert weights[2] > weights[1] > weights[0]
    for label, count in enumerate([80, 15, 5]):
        assert weights[label] * count == pytest.approx(100 / 3)
    # Per-face losses: the model does well on the common class, badly on the rare ones.
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.0, 0.4, 100) + np.array([0.0, 1.0, 2.0])[labels]
    per_face = np.array([weights[label] for label in labels])
    weighted, plain = np.mean(per_face * losses), np.mean(losses)
    # The weighted mean is the mean of the classes' mean losses: the rare classes' high
    # losses count as much as the common class's low one.
    class_means = [losses[labels == c].mean() for c in range(3)]
    assert weighted == pytest.approx(np.mean(class_means))
    assert weighted > plain + 0.5
    # With equal losses everywhere the weights change nothing (they average to one).
    assert np.mean(per_face * 1.3) == pytest.approx(1.3)
    # An absent class gets a weight, not a division by zero.
    assert np.isfinite(class_weights(np.array([0, 0, 1]), 3)[2])


def _ferplus_like(folder):
    """A small FER+ layout (train and valid) whose votes spread over four emotions, so
    that most vote distributions are far from one-hot; returns its votes by path."""
    rng = np.random.default_rng(0)
    votes_of = {}
    for split in ("FER2013Train", "FER2013Valid"):
        lines = []
        for number in range(40):
            votes = rng.multinomial(10, [0.5, 0.3, 0.1, 0.1, 0, 0, 0, 0, 0, 0])
            name = f"fer{number:07d}.png"
            write_gray(folder / split / name, 30 + 40 * int(votes.argmax()), seed=number)
            lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, votes)))
            votes_of[f"{split}/{name}"] = votes
        (folder / split / "label.csv").write_text("\n".join(lines) + "\n")
    return votes_of


def _vote_shares(split, votes_of):
    """Each face's share of the emotion votes, by class: worked out here from label.csv."""
    from ferkit.classes import FERPLUS_EMOTIONS, canonical_name

    shares = np.zeros((len(split), len(split.classes)))
    for row, path in enumerate(split.paths):
        for column, count in zip(FERPLUS_EMOTIONS, votes_of[path], strict=False):
            shares[row, split.classes.index(canonical_name(column))] += count
    return shares / shares.sum(axis=1, keepdims=True)


def _cross_entropy(logits, targets, smoothing):
    """Keras's CategoricalCrossentropy(from_logits=True, label_smoothing), averaged."""
    targets = targets * (1 - smoothing) + smoothing / targets.shape[1]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-(targets * log_p).sum(axis=1).mean())


def _rows(array):
    """The rows of ``array`` as a sorted list of tuples (order-free comparison)."""
    return sorted(map(tuple, np.round(np.asarray(array, np.float64), 5)))


def test_soft_labels_are_the_targets_the_engine_trains_on(drawn, tmp_path, monkeypatch):
    import keras

    from ferkit.data.prepare import PrepareConfig, prepare
    from ferkit.training.sampling import split_targets

    votes_of = _ferplus_like(tmp_path / "src")
    data = prepare(
        tmp_path / "src", tmp_path / "prep", PrepareConfig(soft_labels=True), progress=False
    ).out_dir
    soft_config = _config(data, epochs=1, soft_labels=True, learning_rate=1e-2, batch_size=8)
    train_split, val_split = run_splits(soft_config, PreparedDataset(data))
    targets = split_targets(train_split, soft=True)
    # The targets are the stored vote distributions, not one-hot rows.
    np.testing.assert_allclose(targets, _vote_shares(train_split, votes_of), atol=1e-6)
    assert (targets.max(axis=1) < 0.95).mean() > 0.8
    np.testing.assert_array_equal(targets.argmax(axis=1), train_split.labels)
    np.testing.assert_array_equal(split_targets(train_split, soft=False), train_split.one_hot())

    recorder = _FitRecorder(monkeypatch)
    train(soft_config, tmp_path / "soft", verbose=0)
    hard_config = _config(data, epochs=1, learning_rate=1e-2, batch_size=8)
    train(hard_config, tmp_path / "hard", verbose=0)
    # What Keras was fed: the vote distributions (shuffled) against one-hot rows.
    assert _rows(recorder.targets(0)) == _rows(targets)
    assert _rows(recorder.targets(1)) == _rows(train_split.one_hot())
    soft, hard = read_history(tmp_path / "soft")[0], read_history(tmp_path / "hard")[0]
    assert soft["loss"] != pytest.approx(hard["loss"], rel=0.02), (soft, hard)
    # Validation loss is measured against the votes too: recomputed from the epoch's
    # checkpoint, it matches the soft targets and not the one-hot labels.
    model = keras.models.load_model(tmp_path / "soft" / "checkpoints" / "last.keras")
    logits = np.asarray(model.predict(val_split.images.astype(np.float32), verbose=0))
    smoothing = soft_config.label_smoothing
    against_votes = _cross_entropy(logits, _vote_shares(val_split, votes_of), smoothing)
    against_labels = _cross_entropy(logits, val_split.one_hot(), smoothing)
    assert soft["val_loss"] == pytest.approx(against_votes, rel=1e-3)
    assert abs(against_votes - against_labels) > 0.05, (against_votes, against_labels)

    with pytest.raises(ValueError, match=r"prepare FER\+ with --soft-labels"):
        train(_config(drawn, epochs=1, soft_labels=True), tmp_path / "r2", verbose=0)


def test_mirrored_strategy_on_two_logical_cpus(drawn, tmp_path):
    code = f"""
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from ferkit.training.config import TrainConfig
from ferkit.training.trainer import train
from ferkit.training.keras_engine import _strategy
import json
config = TrainConfig(data={str(drawn)!r}, model={TINY_MODEL!r}, epochs=1, batch_size=32,
                     limit_train=128, distribute="mirrored")
assert _strategy(config).num_replicas_in_sync == 2
result = train(config, {str(tmp_path / "run")!r}, verbose=0)
print(json.dumps(result.metrics["epochs_trained"]))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "1"


def test_vgg16_two_phases_train(drawn, tmp_path):
    config = _config(
        drawn,
        model={"arch": "vgg16", "weights": None, "head_units": 16},
        epochs=1,
        fine_tune_epochs=1,
        fine_tune_blocks=1,
        limit_train=64,
    )
    result = train(config, tmp_path / "run", verbose=0)
    history = read_history(tmp_path / "run")
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[1]["learning_rate"] == pytest.approx(config.fine_tune_learning_rate)
    assert result.metrics["epochs_trained"] == 2


def test_a_run_whose_weights_cannot_load_leaves_nothing_behind(drawn, tmp_path, monkeypatch):
    """An offline ``--weights imagenet`` fails with the fix in the message, exit status 2,
    and no half-made run folder, so the corrected command can reuse the same --out."""
    from keras.src.applications import vgg16 as keras_vgg16

    from ferkit.cli import main

    def offline(fname, origin, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name not known")

    monkeypatch.setattr(keras_vgg16.file_utils, "get_file", offline)
    argv = ["train", "--data", str(drawn), "--arch", "vgg16", "--weights", "imagenet"]
    assert main([*argv, "--epochs", "1", "--out", str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made stays, empty again
    with pytest.raises(OSError, match="--weights PATH"):
        train(_config(drawn, model={"arch": "vgg16", "weights": "imagenet"}), tmp_path / "mine")
    assert list((tmp_path / "mine").iterdir()) == []
    # The same folder then takes a run that works.
    config = _config(drawn, model={"arch": "vgg16", "weights": None, "head_units": 16})
    config.epochs, config.limit_train = 1, 32
    assert train(config, tmp_path / "mine", verbose=0).metrics["epochs_trained"] == 1


def test_stratified_subset_and_class_weights():
    labels = np.array([0] * 80 + [1] * 20)
    subset = stratified_subset(labels, 10, seed=0)
    assert np.bincount(labels[subset]).tolist() == [8, 2]
    weights = class_weights(labels, 2)
    assert weights[1] == pytest.approx(4 * weights[0])


def test_temperature_scaling_calibrates_overconfident_logits():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 2000)
    logits = rng.normal(0, 1, (2000, 4))
    logits[np.arange(2000), labels] += 1.0
    logits *= 5  # far too confident
    temperature = fit_temperature(logits, labels)
    assert temperature > 2
    assert negative_log_likelihood(logits, labels, temperature) < negative_log_likelihood(
        logits, labels, 1.0
    )
    assert expected_calibration_error(
        softmax(logits, temperature), labels
    ) < 0.5 * expected_calibration_error(softmax(logits), labels)


@pytest.mark.real_data
@pytest.mark.slow
def test_short_run_on_real_fer2013_beats_the_majority_class(fer2013_prepared, tmp_path):
    _, prepared = fer2013_prepared
    config = TrainConfig(
        data=str(prepared.out_dir),
        model={
            "arch": "ferkit_cnn",
            "widths": [16, 32, 64, 128],
            "bn_momentum": 0.9,
            "augment": NO_AUGMENT,
        },
        epochs=2,
        batch_size=32,
        learning_rate=1e-3,
        warmup_epochs=0,
        label_smoothing=0.0,
        limit_train=4000,
        limit_val=1000,
    )
    result = train(config, tmp_path / "run", verbose=0)
    val_labels = np.load(prepared.out_dir / "val.npz")["labels"]
    majority_rate = np.bincount(val_labels).max() / len(val_labels)
    print("short run val accuracy", result.metrics["val_accuracy"], "majority", majority_rate)
    assert result.metrics["val_accuracy"] > majority_rate + 0.08, (result.metrics, majority_rate)


def test_yaml_numbers_are_read_as_numbers_and_wrong_types_name_the_setting(tmp_path):
    """YAML 1.1 reads ``1e-3`` as a string; a settings file with it sets 0.001, and a
    value of the wrong type is refused with the file and the setting named."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "learning_rate: 1e-3\nepochs: 3.0\nbatch_size: '64'\nsoft_labels: true\n"
        "seed: '9007199254740993'\n"
        "model: {dropout_rate: 5e-1, widths: [8, 16], augment: {zoom: 1e-1}}\n"
    )
    settings = TrainConfig.from_yaml(config)
    assert settings.learning_rate == 0.001 and isinstance(settings.learning_rate, float)
    assert (settings.epochs, settings.batch_size, settings.soft_labels) == (3, 64, True)
    assert settings.seed == 9007199254740993  # exactly: whole numbers are not floats
    assert settings.model == {"dropout_rate": 0.5, "widths": [8, 16], "augment": {"zoom": 0.1}}
    for line, words in [
        ("learning_rate: fast", "learning_rate must be a number, not 'fast'"),
        ("epochs: 2.5", "epochs must be a whole number, not 2.5"),
        ("soft_labels: 1", "soft_labels must be true or false, not 1"),
        ("epochs:", "epochs must be a whole number, not None"),
        ("learning_rate: nan", "learning_rate must be a number, not 'nan'"),
        ("learning_rate: .inf", "learning_rate must be a number, not inf"),
        ("model: {blocks_per_stage: two}", "model: blocks_per_stage must be a whole number"),
        ("model: {augment: {flip: 'no'}}", "model: augment: flip must be true or false"),
    ]:
        config.write_text(line + "\n")
        with pytest.raises(ValueError, match=f"config.yaml: {words}"):
            TrainConfig.from_yaml(config)
