"""Training never loses or silently corrupts a run: atomic checkpoints, verified resume,
no silent restart, refused changes on --resume, --overwrite that keeps the user's files,
and a validation split carved from train when the data has none."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_MODEL, tiny_train_config

from ferkit.cli import main
from ferkit.data.prepare import PrepareConfig, prepare
from ferkit.data.synthetic import make_image_folder
from ferkit.training.config import TrainConfig
from ferkit.training.run_folder import LAST_CHECKPOINT, STATE_NAME, read_history
from ferkit.training.trainer import train


@pytest.fixture(scope="module")
def stopped_run(drawn, tmp_path_factory):
    """A 3-epoch run stopped after its first epoch (as if killed), kept pristine."""
    run = tmp_path_factory.mktemp("runs") / "stopped"
    train(tiny_train_config(drawn, epochs=3, seed=3), run, verbose=0, stop_after_epochs=1)
    return run


def _copy(run, folder):
    import shutil

    return shutil.copytree(run, folder / run.name)


def test_state_records_the_checkpoint_it_belongs_to(stopped_run):
    from ferkit.models.folder import sha256_file

    state = json.loads((stopped_run / STATE_NAME).read_text())
    assert state["epoch"] == 1
    assert state["checkpoint"]["sha256"] == sha256_file(stopped_run / LAST_CHECKPOINT)
    assert not list((stopped_run / "checkpoints").glob(".pending-*"))


def test_truncated_checkpoint_is_refused_with_the_fix(stopped_run, tmp_path, capsys):
    run = _copy(stopped_run, tmp_path)
    checkpoint = run / LAST_CHECKPOINT
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    assert main(["train", "--out", str(run), "--resume"]) == 2
    error = capsys.readouterr().err
    assert "last.keras" in error and "cannot be resumed" in error and "--overwrite" in error
    assert "File not found" not in error


def test_missing_checkpoint_never_restarts_silently(stopped_run, tmp_path):
    run = _copy(stopped_run, tmp_path)
    (run / LAST_CHECKPOINT).unlink()
    with pytest.raises(ValueError, match="missing"):
        train(TrainConfig(), run, resume=True, verbose=0)
    # an older run whose state did not record the checkpoint is refused the same way
    state = json.loads((run / STATE_NAME).read_text())
    del state["checkpoint"]
    (run / STATE_NAME).write_text(json.dumps(state))
    with pytest.raises(ValueError, match="silently restart from random weights"):
        train(TrainConfig(), run, resume=True, verbose=0)
    assert [row["epoch"] for row in read_history(run)] == [1]


def test_a_kill_between_state_and_rename_is_completed_on_resume(stopped_run, tmp_path):
    """The new checkpoint was saved and recorded, but the rename never happened."""
    run = _copy(stopped_run, tmp_path)
    last = run / LAST_CHECKPOINT
    pending = last.with_name(f".pending-{last.name}")
    last.rename(pending)
    last.write_bytes(b"an older checkpoint")
    result = train(TrainConfig(), run, resume=True, verbose=0)
    assert result.metrics["epochs_trained"] == 3
    assert [row["epoch"] for row in read_history(run)] == [1, 2, 3]


def test_a_failed_save_keeps_the_previous_checkpoint(stopped_run, tmp_path, monkeypatch):
    import keras

    run = _copy(stopped_run, tmp_path)
    before = (run / LAST_CHECKPOINT).read_bytes()
    original = keras.Model.save

    def full_disk(self, path, *args, **kwargs):
        original(self, path, *args, **kwargs)
        with open(path, "r+b") as handle:  # half written, then the disk is full
            handle.truncate(500)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        train(TrainConfig(), run, resume=True, verbose=0)
    monkeypatch.undo()
    assert (run / LAST_CHECKPOINT).read_bytes() == before
    assert not list((run / "checkpoints").glob(".pending-*"))
    state = json.loads((run / STATE_NAME).read_text())
    assert state["epoch"] == 1
    assert train(TrainConfig(), run, resume=True, verbose=0).metrics["epochs_trained"] == 3


def _state_epoch(run: Path) -> int:
    try:
        return json.loads((run / STATE_NAME).read_text())["epoch"]
    except (OSError, ValueError, KeyError):  # not written yet
        return 0


@pytest.mark.parametrize("engine", ["keras", "torch"])
def test_a_run_killed_with_sigkill_resumes_in_a_new_process(engine, drawn, tmp_path):
    """``kill -9`` after epoch 2, then ``--resume`` in a fresh interpreter: the resuming
    process has registered nothing the checkpoint needs until it loads it."""
    if engine == "torch":
        from test_torch_engine import require_torch

        require_torch()
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": TINY_MODEL, "batch_size": 32, "warmup_epochs": 1}))
    run = tmp_path / "run"
    ferkit = [sys.executable, "-m", "ferkit", "train", "--out", str(run)]
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        [*ferkit, "--config", str(config), "--data", str(drawn), "--epochs", "5",
         "--engine", engine],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while _state_epoch(run) < 2 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)  # kill -9: no handler runs, nothing is flushed
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()
        log.close()
    killed_after = _state_epoch(run)
    assert 2 <= killed_after < 5, (tmp_path / "first.log").read_text()[-3000:]
    resumed = subprocess.run([*ferkit, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [row["epoch"] for row in read_history(run)] == list(range(1, 6))
    state = json.loads((run / STATE_NAME).read_text())
    assert state["finished"] and (run / "metrics.json").is_file()


def test_a_checkpoint_that_fails_to_load_is_not_called_damaged(
    stopped_run, tmp_path, capsys, monkeypatch
):
    """Its checksum matches state.json, so the failure is reported as what it is."""
    import keras

    def cannot_deserialize(*args, **kwargs):
        raise TypeError("<class 'AdamW'> could not be deserialized properly.\nmore detail")

    monkeypatch.setattr(keras.models, "load_model", cannot_deserialize)
    assert main(["train", "--out", str(_copy(stopped_run, tmp_path)), "--resume"]) == 2
    error = capsys.readouterr().err
    assert "TypeError: <class 'AdamW'> could not be deserialized properly" in error, error
    assert "intact" in error and "damaged" not in error and "more detail" not in error


def test_resume_refuses_changed_settings(stopped_run, capsys):
    status = main(["train", "--out", str(stopped_run), "--resume", "--epochs", "10"])
    assert status == 2
    error = capsys.readouterr().err
    assert "epochs 3 -> 10" in error and "--init-from" in error
    assert main(["train", "--out", str(stopped_run), "--resume", "--batch-size", "64"]) == 2
    assert "batch_size 32 -> 64" in capsys.readouterr().err
    assert json.loads((stopped_run / STATE_NAME).read_text())["epoch"] == 1


def test_overwrite_replaces_the_run_and_keeps_the_users_files(drawn, drawn_run, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("my notes")
    (mine / "config.yaml").write_text("my: own settings\n")
    argv = ["train", "--data", str(drawn), "--epochs", "1", "--out", str(mine)]
    assert main(argv) == 2  # a folder of the user's is not a run
    assert main([*argv, "--overwrite"]) == 2
    assert "did not write" in capsys.readouterr().err
    (mine / "config.yaml").unlink()
    assert main(argv) == 2
    assert "holds files but no ferkit run" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.md"]

    run = _copy(drawn_run, tmp_path)  # a finished run of tiny_train_config(drawn, seed=7)
    (run / "notes.md").write_text("my notes")
    assert main(["train", "--out", str(run), "--data", str(drawn), "--epochs", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    config = tiny_train_config(drawn, epochs=1, seed=5)
    result = train(config, run, overwrite=True, verbose=0)
    assert result.metrics["epochs_trained"] == 1
    assert TrainConfig.from_yaml(run / "config.yaml").seed == 5
    assert (run / "notes.md").read_text() == "my notes"


def test_train_carves_validation_when_the_data_has_none(tmp_path, caplog):
    source = make_image_folder(tmp_path / "src", per_class=4)
    prepared = prepare(source, tmp_path / "prepared", PrepareConfig(faces="crop"), progress=False)
    assert list(prepared.manifest["splits"]) == ["train"]
    warnings = prepared.manifest["warnings"]
    assert any("val split is empty" in w for w in warnings)
    assert any("test split is empty" in w for w in warnings)
    with caplog.at_level("WARNING", logger="ferkit"):
        result = train(tiny_train_config(prepared.out_dir), tmp_path / "run", verbose=0)
    assert "carved from 'train'" in caplog.text
    assert result.metrics["val_faces"] == 4  # one of each class's four
    # resume, finish and bundle see the same split
    from ferkit.data.dataset import PreparedDataset
    from ferkit.training.sampling import run_splits

    config = TrainConfig.from_yaml(tmp_path / "run" / "config.yaml")
    train_split, val_split = run_splits(config, PreparedDataset(prepared.out_dir))
    assert len(val_split) == 4
    assert len(train_split) == prepared.manifest["splits"]["train"]["count"] - 4


def test_resume_accepts_unchanged_settings_and_refuses_a_config_file(stopped_run, tmp_path, capsys):
    run = _copy(stopped_run, tmp_path)
    config = TrainConfig.from_yaml(run / "config.yaml")
    argv = ["train", "--out", str(run), "--resume", "--epochs", "3", "--data", config.data]
    assert main([*argv, "--batch-size", "32"]) == 0  # the run's own values: fine
    assert [row["epoch"] for row in read_history(run)] == [1, 2, 3]
    assert main(["train", "--out", str(run), "--resume", "--config", str(run / "config.yaml")]) == 2
    assert "drop --config" in capsys.readouterr().err


def test_damaged_run_files_are_named_with_the_fix(stopped_run, tmp_path, capsys):
    for content in ("[1, 2]", '{"epoch": "x"}', '{"epoch": -4}', "{bad json"):
        run = _copy(stopped_run, tmp_path / f"case{abs(hash(content))}")
        (run / STATE_NAME).write_text(content)
        assert main(["train", "--out", str(run), "--resume"]) == 2
        error = capsys.readouterr().err
        assert "state.json: damaged" in error and "--overwrite" in error, error
    run = _copy(stopped_run, tmp_path / "yaml")
    (run / "config.yaml").write_text("epochs: [1,\n")
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert "config.yaml: not valid YAML" in capsys.readouterr().err


def test_a_run_never_goes_into_its_data_and_overwrite_spares_user_checkpoints(
    drawn, drawn_copy, stopped_run, tmp_path, capsys
):
    before = sorted(p.name for p in drawn_copy.iterdir())
    assert main(["train", "--data", str(drawn_copy), "--out", str(drawn_copy / "run")]) == 2
    assert "lies inside the input" in capsys.readouterr().err
    assert sorted(p.name for p in drawn_copy.iterdir()) == before
    run = _copy(stopped_run, tmp_path)
    (run / "checkpoints" / "my_backup.keras").write_bytes(b"mine")
    train(tiny_train_config(drawn, epochs=1), run, overwrite=True, verbose=0)
    assert (run / "checkpoints" / "my_backup.keras").read_bytes() == b"mine"
