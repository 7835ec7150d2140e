"""The torch engine (``ferkit train --engine torch``): its module must compute what the Keras
``ferkit_cnn`` computes, train and resume like the Keras engine, and finish into a Keras run.

PyTorch crashes when it loads its compiler after TensorFlow in one process, and this test
process has TensorFlow loaded, so everything that runs PyTorch runs in a subprocess.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict

import numpy as np
import pytest
import yaml
from conftest import TINY_MODEL

from ferkit.models.config import AugmentConfig
from ferkit.training.config import TrainConfig
from ferkit.training.keras_engine import _learning_rate
from ferkit.training.run_folder import read_history
from ferkit.training.schedule import learning_rate_at
from ferkit.training.torch_engine import check_supported

NO_AUGMENT = asdict(AugmentConfig.off())


def require_torch() -> None:
    if importlib.util.find_spec("torch") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("PyTorch is missing in CI: scripts/test.sh installs the torch extra")
        pytest.skip("PyTorch not installed (pip install 'ferkit[torch]')")


def run_python(script: str, timeout: int = 600) -> dict:
    """Run ``script`` in a fresh interpreter (PyTorch before TensorFlow); it prints JSON last."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_schedule_matches_the_keras_engine():
    steps_per_epoch = 7
    for config in (
        TrainConfig(epochs=10, warmup_epochs=2, learning_rate=0.01),
        TrainConfig(epochs=5, warmup_epochs=0, learning_rate=0.003),
        TrainConfig(epochs=5, schedule="constant", learning_rate=0.004),
    ):
        keras_rate = _learning_rate(config, steps_per_epoch, phase=1)
        for step in (0, 1, 6, 13, 14, 15, 30, 49, 69, 80):
            expected = float(keras_rate(step)) if callable(keras_rate) else keras_rate
            assert learning_rate_at(config, step, steps_per_epoch) == pytest.approx(
                expected, rel=1e-5
            ), (config.schedule, config.warmup_epochs, step)


def test_unsupported_settings_are_refused_with_the_alternative():
    for overrides in (
        {"model": {"arch": "vgg16"}},
        {"distribute": "mirrored"},
        {"init_from": "default"},
    ):
        with pytest.raises(ValueError, match="--engine keras"):
            check_supported(TrainConfig(engine="torch", **overrides))
    check_supported(TrainConfig(engine="torch", model=dict(TINY_MODEL)))


def test_torch_after_tensorflow_in_one_process_is_refused():
    import tensorflow  # noqa: F401  (the state the guard is for)

    from ferkit.extras import import_torch

    if "torch._dynamo" in sys.modules:
        pytest.skip("PyTorch's compiler is already loaded in this process")
    with pytest.raises(RuntimeError, match="before TensorFlow"):
        import_torch()


def test_time_budget_needs_the_torch_engine(tmp_path, capsys):
    from ferkit.cli import main
    from ferkit.training.trainer import train

    with pytest.raises(ValueError, match="--engine torch"):
        train(TrainConfig(), tmp_path / "api", time_budget=10)
    assert main(["train", "--out", str(tmp_path / "run"), "--time-budget", "10"]) == 2
    assert "--time-budget needs --engine torch" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "api").exists()


def test_sgd_option_on_the_keras_engine():
    import keras

    from ferkit.models.keras_nets import ModelConfig, build_model
    from ferkit.training.keras_engine import compile_model

    model = build_model(ModelConfig(**TINY_MODEL))
    compile_model(model, TrainConfig(optimizer="sgd", learning_rate=0.05), steps_per_epoch=10)
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert model.optimizer.nesterov and model.optimizer.momentum == 0.9
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop").validate()


@pytest.fixture(scope="module")
def torch_against_keras(tmp_path_factory):
    """What PyTorch and Keras compute on the same inputs, in one fresh interpreter (each
    comparison would otherwise pay for its own start of both): ``logits``, a torch
    ``ferkit_cnn`` with trained-looking batch norm against the Keras model given its
    weights; ``sharpening``, the torch engine's ``sharpen`` against Keras's
    ``RandomSharpness``."""
    require_torch()
    folder = tmp_path_factory.mktemp("torch_against_keras")
    return run_python(
        f"""
        import json
        import numpy as np
        import torch
        from ferkit.models.config import ModelConfig
        from ferkit.models.torch_net import build_torch_model, save_keras_weights
        from ferkit.training.torch_engine import sharpen

        config = ModelConfig(widths=(8, 12, 16, 24), blocks_per_stage=3, n_classes=5)
        torch.manual_seed(0)
        module = build_torch_model(config)
        with torch.no_grad():  # trained-looking batch norm statistics and affine terms
            for norm in module.norms.values():
                norm.running_mean.uniform_(-0.5, 0.5)
                norm.running_var.uniform_(0.5, 2.0)
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.2, 0.2)
        module.eval()
        faces = np.random.default_rng(0).integers(0, 256, (16, 48, 48, 1)).astype(np.uint8)
        with torch.no_grad():
            expected = module(torch.from_numpy(faces).permute(0, 3, 1, 2).float()).numpy()
        save_keras_weights(module, "{folder}/w.npz")
        from ferkit.models.torch_net import load_torch_from_keras_weights

        reloaded = build_torch_model(config)  # init_from's path: Keras layout back to torch
        load_torch_from_keras_weights(reloaded, "{folder}/w.npz")
        reloaded.eval()
        with torch.no_grad():
            round_trip = reloaded(torch.from_numpy(faces).permute(0, 3, 1, 2).float()).numpy()

        to_sharpen = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 1)).astype(np.float32)
        factors = [0.0, 0.3, 1.0]
        sharpened = sharpen(
            torch.from_numpy(to_sharpen).permute(0, 3, 1, 2), 2 * torch.tensor(factors)
        ).permute(0, 2, 3, 1).numpy()

        import keras
        from ferkit.models.keras_nets import build_model
        from ferkit.models.keras_nets import load_keras_weights

        model = build_model(config)
        load_keras_weights(model, "{folder}/w.npz")
        got = np.asarray(model(faces.astype("float32"), training=False))
        try:
            load_keras_weights(build_model(ModelConfig(widths=(8, 12, 16, 32))), "{folder}/w.npz")
            mismatch = None
        except ValueError as error:
            mismatch = str(error)
        keras_sharpened = np.concatenate([
            np.asarray(keras.layers.RandomSharpness((f, f), value_range=(0, 255))(
                to_sharpen[i : i + 1], training=True
            ))
            for i, f in enumerate(factors)
        ])
        print(json.dumps({{
            "logits": {{
                "max_diff": float(np.abs(got - expected).max()),
                "scale": float(np.abs(expected).max()),
                "mismatch": mismatch,
                "round_trip": float(np.abs(round_trip - expected).max()),
            }},
            "sharpening": {{
                "max_diff": float(np.abs(sharpened - keras_sharpened).max()),
                "changed": float(np.abs(sharpened - to_sharpen).max()),
            }},
        }}))
        """
    )


def test_torch_module_and_keras_model_compute_the_same_logits(torch_against_keras):
    result = torch_against_keras["logits"]
    assert result["scale"] > 0.1
    assert result["max_diff"] < 1e-4, result
    assert result["mismatch"] and "shapes" in result["mismatch"], result
    assert result["round_trip"] == 0.0, result


def test_sharpening_matches_keras_random_sharpness(torch_against_keras):
    result = torch_against_keras["sharpening"]
    assert result["changed"] > 10  # the factors do something
    assert result["max_diff"] < 1e-3, result


@pytest.fixture(scope="module")
def drawn_torch_runs(drawn, tmp_path_factory):
    """Every torch run on the drawn faces that the tests below check, trained in one
    fresh interpreter (each would otherwise pay for its own start of PyTorch and Keras):

    - ``whole``: 3 epochs with warm-up and mixup; ``parts``: the same settings stopped
      after its first epoch, then resumed;
    - ``first``: 3 epochs; ``scratch``: 1 epoch; ``second``: that epoch started from
      ``first``;
    - ``budget``: 1000 epochs planned with a 4 s time budget; ``short``: the same with a
      budget shorter than one epoch.

    Returns (their folder, what the script reported).
    """
    require_torch()
    root = tmp_path_factory.mktemp("torch_runs")
    config = {
        "data": str(drawn),
        "model": dict(TINY_MODEL),
        "epochs": 3,
        "batch_size": 32,
        "warmup_epochs": 1,
        "mixup_alpha": 0.2,
        "seed": 7,
        "engine": "torch",
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    reported = run_python(
        f"""
        import json, time, torch
        from ferkit.training.config import TrainConfig
        from ferkit.training.torch_engine import train_torch

        resumable = lambda: TrainConfig.from_yaml("{root}/config.yaml")
        train_torch(resumable(), "{root}/whole")
        stopped = train_torch(resumable(), "{root}/parts", stop_after_epochs=1)
        train_torch(resumable(), "{root}/parts", resume=True)

        def config(**overrides):
            values = dict(data="{drawn}", model={TINY_MODEL!r}, epochs=3, batch_size=32,
                          warmup_epochs=0, learning_rate=3e-3, engine="torch")
            return TrainConfig(**{{**values, **overrides}})

        train_torch(config(), "{root}/first")
        train_torch(config(epochs=1), "{root}/scratch")
        train_torch(config(epochs=1, init_from="{root}/first"), "{root}/second")

        budgeted = TrainConfig(data="{drawn}", model={TINY_MODEL!r}, epochs=1000,
                               batch_size=32, warmup_epochs=1, engine="torch")
        started = time.perf_counter()
        train_torch(budgeted, "{root}/budget", time_budget=4)
        wall = time.perf_counter() - started
        train_torch(budgeted, "{root}/short", time_budget=1e-3)
        print(json.dumps({{
            "stopped": stopped.metrics, "budget_wall": wall, "budget_epochs": budgeted.epochs
        }}))
        """
    )
    return root, reported


def test_torch_run_resumes_exactly_and_finishes_into_a_keras_run(drawn_torch_runs):
    root, reported = drawn_torch_runs
    assert reported["stopped"] == {"interrupted_after_epoch": 1}, reported
    whole, parts = read_history(root / "whole"), read_history(root / "parts")
    assert [row["epoch"] for row in parts] == [1, 2, 3]
    for key in ("loss", "accuracy", "val_loss", "learning_rate"):
        np.testing.assert_allclose(
            [row[key] for row in parts], [row[key] for row in whole], rtol=1e-5, err_msg=key
        )
    for run in ("whole", "parts"):
        folder = root / run
        state = json.loads((folder / "state.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        assert state["finished"] and (folder / "checkpoints/best.keras").is_file()
        assert "torch engine" in metrics["trained_on"]
        # The Keras model rebuilt from the stored weights scores what PyTorch measured.
        assert metrics["val_accuracy"] == pytest.approx(
            state["best_score"], abs=1.01 / metrics["val_faces"]
        )
        assert yaml.safe_load((folder / "config.yaml").read_text())["engine"] == "torch"


def test_time_budget_fits_the_planned_epochs(drawn_torch_runs):
    root, reported = drawn_torch_runs
    assert reported["budget_epochs"] == 1000  # the plan went into the run, not the caller's
    # a budget shorter than one epoch: the plan is made after the first, which it ends
    short = yaml.safe_load((root / "short/config.yaml").read_text())
    assert short["epochs"] == 1 and len(read_history(root / "short")) == 1
    planned = yaml.safe_load((root / "budget/config.yaml").read_text())["epochs"]
    state = json.loads((root / "budget/state.json").read_text())
    history = read_history(root / "budget")
    assert 2 <= planned < 1000
    assert len(history) == state["epoch"] <= planned
    assert state["seconds"] <= 4 + max(row["seconds"] for row in history), (state, reported)


@pytest.mark.real_data
@pytest.mark.slow
def test_torch_engine_on_real_fer2013_beats_the_majority_class(fer2013_prepared, tmp_path):
    require_torch()
    _, prepared = fer2013_prepared
    config = {
        "data": str(prepared.out_dir),
        "model": {
            "arch": "ferkit_cnn",
            "widths": [16, 32, 64, 128],
            "bn_momentum": 0.9,
            "augment": NO_AUGMENT,
        },
        "epochs": 2,
        "batch_size": 32,
        "learning_rate": 1e-3,
        "warmup_epochs": 0,
        "label_smoothing": 0.0,
        "limit_val": 1000,
    }  # the Keras engine's test_short_run_on_real_fer2013_beats_the_majority_class
    # 5000 train faces: 38-42% on val over six seeds, 5-9 points above the bar.
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "ferkit", "train", "--engine", "torch", "--config",
         str(tmp_path / "config.yaml"), "--limit-train", "5000", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    val_labels = np.load(prepared.out_dir / "val.npz")["labels"]
    majority_rate = np.bincount(val_labels).max() / len(val_labels)
    print("torch short run val accuracy", metrics["val_accuracy"], "majority", majority_rate)
    assert metrics["val_accuracy"] > majority_rate + 0.08, (metrics, majority_rate)


def test_torch_run_starts_from_another_torch_run(drawn_torch_runs):
    root, _ = drawn_torch_runs
    first, scratch = read_history(root / "first"), read_history(root / "scratch")
    second = read_history(root / "second")
    assert second[0]["loss"] < scratch[0]["loss"] - 0.1, (second, scratch)
    init = json.loads((root / "second" / "init.json").read_text())
    assert init["source"].endswith("checkpoints/best.weights.npz")
    assert first[-1]["epoch"] == 3
