"""scripts/setup.sh: one editable environment that the demo and the tests share."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def checkout(tmp_path):
    """The setup script beside the project's files, with a stand-in environment whose
    python logs every pip install instead of running it."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    for name in ("pyproject.toml", "requirements.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "pip.log"
    python = bin_dir / "python"
    python.write_text(
        f'#!/bin/sh\nif [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "$@" >> {log}; fi\n'
    )
    python.chmod(0o755)
    return tmp_path, log


def setup(root: Path, extras: str) -> None:
    env = {**os.environ, "FERKIT_VENV": "venv", "FERKIT_EXTRAS": extras}
    subprocess.run(["bash", "scripts/setup.sh"], cwd=root, env=env, check=True,
                   capture_output=True, timeout=60)  # fmt: skip


def installs(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [line.split()[-1] for line in lines if " -e " in f" {line} "]


def test_the_demo_reuses_the_test_environment_and_keeps_it_editable(checkout):
    root, log = checkout
    setup(root, "dev,all")
    assert installs(log) == [".[dev,openvino,ray,report,serve,torch,train]"]
    setup(root, "")  # the demo's core install: the environment already has more
    setup(root, "train")
    assert len(installs(log)) == 1
    setup(root, "dev,all")  # and the tests after the demo: nothing to do either
    assert len(installs(log)) == 1


def test_a_missing_extra_or_a_changed_project_reinstalls_keeping_the_extras(checkout):
    root, log = checkout
    setup(root, "")
    setup(root, "serve")
    assert installs(log) == [".", ".[serve]"]  # always -e: edits to src/ take effect
    with open(root / "pyproject.toml", "a") as handle:
        handle.write("\n# changed\n")
    setup(root, "")
    assert installs(log)[-1] == ".[serve]"  # asking for fewer never drops an extra
