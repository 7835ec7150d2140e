import json
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
from conftest import TINY_MODEL, tiny_train_config

from ferkit.calibration import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    softmax,
)
from ferkit.models.config import AugmentConfig
from ferkit.training.config import TrainConfig
from ferkit.training.run_folder import read_history
from ferkit.training.sampling import class_weights, stratified_subset
from ferkit.training.trainer import train

NO_AUGMENT = asdict(AugmentConfig.off())


def _config(data, **overrides):
    return tiny_train_config(data, **{"epochs": 3, "seed": 7, **overrides})


def test_run_folder_describes_itself(drawn, tmp_path):
    result = train(_config(drawn, epochs=2), tmp_path / "run", verbose=0)
    run = tmp_path / "run"
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
    assert [row["epoch"] for row in read_history(run)] == [1, 2]
    assert result.metrics["epochs_trained"] == 2
    calibration = result.metrics["calibration"]
    assert calibration["temperature"] > 0 and 0 <= calibration["ece_after"] <= 1


def test_existing_run_needs_resume(drawn, tmp_path):
    train(_config(drawn, epochs=1), tmp_path / "run", verbose=0)
    with pytest.raises(FileExistsError, match="--resume"):
        train(_config(drawn, epochs=1), tmp_path / "run", verbose=0)
    with pytest.raises(FileNotFoundError, match="no run to resume"):
        train(_config(drawn), tmp_path / "other", resume=True, verbose=0)


def test_resume_continues_exactly_where_the_run_stopped(drawn, tmp_path):
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    config = _config(drawn, epochs=3)
    train(config, tmp_path / "whole", verbose=0)
    interrupted = train(config, tmp_path / "split", verbose=0, stop_after_epochs=1)
    assert interrupted.metrics == {"interrupted_after_epoch": 1}
    assert [row["epoch"] for row in read_history(tmp_path / "split")] == [1]
    train(config, tmp_path / "split", resume=True, verbose=0)
    whole, split = read_history(tmp_path / "whole"), read_history(tmp_path / "split")
    assert [row["epoch"] for row in split] == [1, 2, 3]  # nothing repeated or skipped
    for a, b in zip(whole, split, strict=True):
        # Same data order, augmentation and optimizer state: the same numbers.
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
        assert a["learning_rate"] == pytest.approx(b["learning_rate"], rel=1e-6)


def test_finish_ends_a_stopped_run_early(drawn, tmp_path):
    from ferkit.cli import main

    train(_config(drawn, epochs=3), tmp_path / "run", verbose=0, stop_after_epochs=1)
    assert main(["train", "--out", str(tmp_path / "run"), "--finish"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["finished_early"] == "after epoch 1 of 3"
    assert metrics["epochs_trained"] == 1 and 0 <= metrics["val_accuracy"] <= 1
    assert json.loads((tmp_path / "run" / "state.json").read_text())["finished"] is True


def test_options_balanced_sampling_class_weights_and_mixup(drawn, tmp_path):
    config = _config(
        drawn, epochs=1, sampling="balanced", class_weighting="balanced", mixup_alpha=0.2
    )
    result = train(config, tmp_path / "run", verbose=0)
    assert np.isfinite(read_history(tmp_path / "run")[0]["loss"])
    assert result.metrics["epochs_trained"] == 1


def test_soft_labels_as_targets(drawn, tmp_path):
    from conftest import write_gray

    from ferkit.data.prepare import PrepareConfig, prepare

    rng = np.random.default_rng(0)
    for split in ("FER2013Train", "FER2013Valid"):
        lines = []
        for number in range(40):
            votes = rng.multinomial(10, [0.5, 0.3, 0.1, 0.1, 0, 0, 0, 0, 0, 0])
            name = f"fer{number:07d}.png"
            write_gray(tmp_path / "src" / split / name, 30 + 40 * int(votes.argmax()), seed=number)
            lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, votes)))
        (tmp_path / "src" / split / "label.csv").write_text("\n".join(lines) + "\n")
    data = prepare(
        tmp_path / "src", tmp_path / "prep", PrepareConfig(soft_labels=True), progress=False
    ).out_dir
    result = train(_config(data, epochs=1, soft_labels=True), tmp_path / "run", verbose=0)
    assert result.metrics["epochs_trained"] == 1
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
config = TrainConfig(data={str(drawn)!r}, model={TINY_MODEL!r}, epochs=1, batch_size=32, distribute="mirrored")
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
        limit_train=8000,
        limit_val=1000,
    )
    result = train(config, tmp_path / "run", verbose=0)
    val_labels = np.load(prepared.out_dir / "val.npz")["labels"]
    majority_rate = np.bincount(val_labels).max() / len(val_labels)
    print("short run val accuracy", result.metrics["val_accuracy"], "majority", majority_rate)
    assert result.metrics["val_accuracy"] > majority_rate + 0.08, (result.metrics, majority_rate)
