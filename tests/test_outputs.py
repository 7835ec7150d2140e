"""The output policy: no command destroys a user's files, outputs appear whole or not at
all, one writer at a time, and a killed run leaves nothing behind that the next run keeps."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import require_shared, write_gray

from ferkit.cli import main
from ferkit.data.synthetic import make_image_folder
from ferkit.outputs import (
    MARKER,
    OutputExistsError,
    OutputLockedError,
    locked,
    output_folder,
    path_hex,
    path_text,
)


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def dataset(tmp_path):
    return make_image_folder(tmp_path / "data", per_class=6)


@pytest.mark.parametrize("where", ["same", "parent", "inside"])
def test_prepare_refuses_an_out_overlapping_the_source(dataset, where, capsys):
    before = _tree(dataset)
    out = {"same": dataset, "parent": dataset.parent, "inside": dataset / "prepared"}[where]
    status = main(["prepare", str(dataset), "--out", str(out), "--overwrite", "--quiet"])
    assert status == 2
    error = capsys.readouterr().err
    assert str(out) in error and str(dataset) in error
    assert _tree(dataset) == before  # nothing read, moved or removed
    assert not list(dataset.parent.glob(".*.tmp-*"))


def test_overwrite_replaces_only_what_the_same_command_wrote(dataset, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("irreplaceable")
    assert main(["prepare", str(dataset), "--out", str(mine), "--overwrite", "--quiet"]) == 2
    assert "ferkit did not write" in capsys.readouterr().err
    assert (mine / "thesis.txt").read_text() == "irreplaceable"

    out = tmp_path / "prepared"
    assert main(["prepare", str(dataset), "--out", str(out), "--faces", "crop", "--quiet"]) == 0
    assert json.loads((out / MARKER).read_text())["command"] == "prepare"
    assert main(["prepare", str(dataset), "--out", str(out), "--quiet"]) == 2  # no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    flag = ["--faces", "crop", "--overwrite", "--quiet"]
    assert main(["prepare", str(dataset), "--out", str(out), *flag]) == 0
    # a prepared folder is not a predict output: predict may not replace it
    photo = write_gray(tmp_path / "face.png", 90, seed=1)
    argv = ["predict", str(photo), "--out", str(out), "--overwrite", "--quiet"]
    assert main(argv) == 2
    assert "'ferkit prepare'" in capsys.readouterr().err
    assert (out / "manifest.json").is_file()


def test_output_folder_is_whole_or_absent(tmp_path):
    out = tmp_path / "results"
    with pytest.raises(RuntimeError), output_folder(out, "predict") as staging:
        (staging / "half.csv").write_text("a,b\n1,")
        raise RuntimeError("disk full")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no staging folder, no lock file left

    with output_folder(out, "predict") as staging:
        (staging / "predictions.csv").write_text("a\n1\n")
        assert not out.exists()  # nothing visible until complete
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "predictions.csv"]


def test_a_second_writer_fails_fast(tmp_path):
    out = tmp_path / "results"
    with locked(out):
        started = time.perf_counter()
        with (
            pytest.raises(OutputLockedError, match="another ferkit process"),
            output_folder(out, "predict"),
        ):
            pass
        assert time.perf_counter() - started < 1
    with output_folder(out, "predict") as staging:  # free again
        (staging / "x").write_text("")


def test_concurrent_predict_runs_into_one_out(tmp_path):
    """Two processes predicting into one --out: one writes, the other is refused at
    once; the CSV holds one whole run (no NUL bytes, no interleaving)."""
    samples = require_shared("samples")
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "ferkit", "predict", str(samples / "justin.jpg"), "--out"]
    first = subprocess.Popen([*argv, str(out), "--quiet"], stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen([*argv, str(out), "--quiet"], stderr=subprocess.PIPE, text=True)
    codes = sorted([first.wait(timeout=120), second.wait(timeout=120)])
    errors = first.stderr.read() + second.stderr.read()
    assert codes == [0, 2], errors
    assert "another ferkit process" in errors or "already holds files" in errors
    text = (out / "predictions.csv").read_text()
    assert "\x00" not in text and text.count("justin.jpg") == 1


def test_default_predict_out_is_a_new_folder_each_run(tmp_path, monkeypatch):
    samples = require_shared("samples")
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["predict", str(samples / "no-faces.jpg"), "--quiet"]) == 0
    runs = sorted((tmp_path / "results" / "predictions").iterdir())
    assert len(runs) == 2
    assert all((run / "summary.json").is_file() for run in runs)


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        found[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), command)
    return found


def _descendants(root: int) -> set[int]:
    table, family = _processes(), {root}
    changed = True
    while changed:
        changed = False
        for pid, (parent, _) in table.items():
            if parent in family and pid not in family:
                family.add(pid)
                changed = True
    return family - {root}


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.slow
def test_kill_9_of_prepare_leaves_no_workers_and_no_stale_folders(tmp_path):
    source = require_shared("datasets", "fer2013", "val")
    out = tmp_path / "prepared"
    command = [sys.executable, "-m", "ferkit", "prepare", str(source), "--out", str(out)]
    slow = ["--faces", "detect", "--detector", "mtcnn", "--workers", "2", "--quiet"]
    parent = subprocess.Popen([*command, *slow], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        workers: set[int] = set()
        while time.monotonic() < deadline and len(workers) < 2:
            time.sleep(0.5)
            workers = {
                pid
                for pid in _descendants(parent.pid)
                if "multiprocessing" in _processes().get(pid, (0, ""))[1]
            }
        assert len(workers) >= 2, "the worker pool did not start"
        assert list(tmp_path.glob(".prepared.tmp-*"))  # the staging folder exists
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
            time.sleep(0.5)
        alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
        assert not alive, f"orphaned workers still running: {alive}"
    finally:
        if parent.poll() is None:
            parent.kill()
    assert not out.exists()
    # the next run into the same --out removes what the killed one left
    small = make_image_folder(tmp_path / "small", per_class=3)
    assert main(["prepare", str(small), "--out", str(out), "--faces", "crop", "--quiet"]) == 0
    assert not list(tmp_path.glob(".prepared.tmp-*"))


def test_path_text_is_readable_and_exact():
    raw = b"caf\xe9 \xff.jpg"
    name = os.fsdecode(raw)
    text = path_text(name)
    assert text == "caf\\xe9 \\xff.jpg"
    text.encode("utf-8")  # printable and writable in any UTF-8 output
    assert bytes.fromhex(path_hex(name)) == raw
    assert path_text("journée.jpg") == "journée.jpg" and path_hex("journée.jpg") is None


def test_refusals_come_before_any_work(dataset, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "a").write_text("")
    with pytest.raises(OutputExistsError):
        from ferkit.data.prepare import prepare

        prepare(dataset, out)


def test_overwrite_never_takes_a_users_folder_for_an_old_output(tmp_path):
    """A folder of the user's that happens to hold a file named like one of ferkit's."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "summary.json").write_text("{}")
    (folder / "thesis.docx").write_text("irreplaceable")
    with (
        pytest.raises(OutputExistsError, match="ferkit did not write"),
        output_folder(folder, "predict", overwrite=True),
    ):
        pass
    assert (folder / "thesis.docx").read_text() == "irreplaceable"


def test_stale_cleanup_touches_only_its_own_folder(tmp_path):
    """An --out whose name holds glob characters removes only its own stale folders."""
    other = tmp_path / ".run1.tmp-12345"
    other.mkdir()
    mine = tmp_path / ".run[1].tmp-99999"
    mine.mkdir()
    with output_folder(tmp_path / "run[1]", "predict") as staging:
        (staging / "x").write_text("")
    assert other.is_dir() and not mine.exists()


def test_a_non_utf8_glob_or_url_is_recorded(tmp_path):
    raw_glob = os.fsdecode(tmp_path.as_posix().encode() + b"/caf\xe9*.jpg")
    raw_url = os.fsdecode(b"ftp://host/caf\xe9.jpg")
    out = tmp_path / "out"
    assert main(["predict", raw_glob, raw_url, "--out", str(out), "--quiet"]) == 3
    sources = json.loads((out / "summary.json").read_text())["sources"]
    assert [s["status"] for s in sources] == ["error", "error"]
    assert "caf\\xe9" in sources[0]["source"] and "matched no file" in sources[0]["reason"]


def test_ferkits_own_warnings_reach_the_terminal(tmp_path):
    """Library noise is hidden, but ferkit's warnings are not (an unverified model)."""
    import shutil

    from ferkit.models.folder import DEFAULT_MODEL_DIR

    model = tmp_path / "model"
    model.mkdir()
    for name in ("model.onnx", "labels.json", "calibration.json"):
        shutil.copy(DEFAULT_MODEL_DIR / name, model / name)
    photo = write_gray(tmp_path / "face.png", 90, seed=3)
    run = subprocess.run(
        [sys.executable, "-m", "ferkit", "predict", str(photo), "--model", str(model),
         "--out", str(tmp_path / "o"), "--quiet"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "unverified" in run.stderr and "Traceback" not in run.stderr


def test_overwrite_refuses_to_delete_files_added_to_an_earlier_output(tmp_path, capsys):
    photo = write_gray(tmp_path / "face.png", 90, seed=2)
    out = tmp_path / "out"
    argv = ["predict", str(photo), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    (out / "my_analysis").mkdir()
    (out / "my_analysis" / "notes.md").write_text("work")
    assert main([*argv, "--overwrite"]) == 2
    assert "my_analysis/notes.md" in capsys.readouterr().err
    assert (out / "my_analysis" / "notes.md").read_text() == "work"
    (out / "my_analysis" / "notes.md").unlink()
    (out / "my_analysis").rmdir()
    assert main([*argv, "--overwrite"]) == 0  # only ferkit's own files: replaced


def test_bad_out_paths_are_refused_before_any_work(tmp_path, capsys):
    photo = write_gray(tmp_path / "face.png", 90, seed=2)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    for out in (dangling, link):
        assert main(["predict", str(photo), "--out", str(out), "--quiet"]) == 2
        assert "symbolic link" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*.tmp-*")) and list(real.iterdir()) == []


def test_a_closed_stdout_does_not_lose_the_results(tmp_path):
    samples = require_shared("samples")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ferkit", "predict", str(samples / "justin.jpg"),
               str(samples / "couple.jpg"), "--out", str(out), "--quiet"]  # fmt: skip
    reader = subprocess.Popen(["head", "-c", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    run = subprocess.run(
        command, stdout=reader.stdin, stderr=subprocess.PIPE, text=True, timeout=120
    )
    reader.stdin.close()
    reader.wait()
    assert run.returncode == 0, run.stderr
    assert "Broken pipe" not in run.stderr
    assert len(json.loads((out / "summary.json").read_text())["sources"]) == 2


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_do_not_flood_a_log():
    """Written to a file or a pipe, a bar redraws every half minute, not ten times a
    second; on a terminal it keeps redrawing as a person watches."""
    import time

    from ferkit.outputs import progress_bar

    def redraws(stream: io.StringIO) -> int:
        for _ in progress_bar(range(30), desc="work", file=stream):
            time.sleep(0.04)
        return stream.getvalue().count("\r")

    assert redraws(io.StringIO()) <= 3  # the first line and the last
    assert redraws(_Terminal()) >= 6
