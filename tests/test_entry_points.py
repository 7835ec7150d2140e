"""The seed project's entry points, python src/data_preprocessing.py, src/train_model.py and
src/evaluate_model.py: the same commands as ferkit prepare|train|evaluate, run from a
checkout with the source folder (not the installed package) on the path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ""}  # the script's own folder puts src/ on the path
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / script), *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )  # fmt: skip


@pytest.mark.parametrize(
    "script, command",
    [("data_preprocessing.py", "prepare"), ("train_model.py", "train"),
     ("evaluate_model.py", "evaluate")],
)  # fmt: skip
def test_entry_point_has_the_commands_flags(script, command):
    from ferkit.cli import build_parser

    result = run(script, "--help")
    assert result.returncode == 0, result.stderr
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    flags = {s for a in subparsers.choices[command]._actions for s in a.option_strings}
    missing = [flag for flag in flags if flag not in result.stdout]
    assert flags and missing == []


@pytest.mark.slow
def test_seed_workflow_prepares_trains_and_evaluates(tmp_path):
    """The seed's three steps end to end on drawn faces: a prepared dataset, a finished run
    and an evaluation of that run, each checked by what it wrote."""
    from ferkit.data.synthetic import make_image_folder

    synthetic_folder = tmp_path / "faces"
    make_image_folder(synthetic_folder, per_class=24, seed=5)
    prepared, run_dir, report = tmp_path / "prepared", tmp_path / "run", tmp_path / "eval"
    result = run("data_preprocessing.py", str(synthetic_folder), "--out", str(prepared),
                 "--faces", "crop", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert set(manifest["splits"]) >= {"train", "val"}
    config = tmp_path / "tiny.yaml"  # a tiny network: the workflow, not the model, is tested
    config.write_text(yaml.safe_dump({"model": TINY_MODEL, "warmup_epochs": 0}))
    result = run("train_model.py", "--data", str(prepared), "--out", str(run_dir),
                 "--config", str(config), "--epochs", "1", "--batch-size", "32",
                 "--seed", "3")  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 1 and metrics["val_faces"] > 0
    result = run("evaluate_model.py", "--model", str(run_dir), "--data", str(prepared),
                 "--split", "val", "--out", str(report), "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    evaluated = json.loads((report / "metrics.json").read_text())
    assert evaluated["faces"] == metrics["val_faces"]
    assert evaluated["accuracy"] == pytest.approx(metrics["val_accuracy"], abs=1e-6)
