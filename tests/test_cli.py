import json
import subprocess
import sys

from conftest import write_gray

from ferkit.cli import main


def _run(*args, **kwargs):
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, **kwargs
    )


def test_help_does_not_import_tensorflow():
    code = (
        "import sys, contextlib, io\n"
        "from ferkit.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try: main(['--help'])\n"
        "    except SystemExit: pass\n"
        "    try: main(['prepare', '--help'])\n"
        "    except SystemExit: pass\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'cv2', 'mtcnn') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = _run("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_python_dash_m_ferkit():
    result = _run("-m", "ferkit", "--version")
    assert result.returncode == 0 and result.stdout.startswith("ferkit ")


def test_prepare_command_writes_manifest_and_prints_summary(tmp_path, capsys):
    for number in range(4):
        write_gray(tmp_path / "src" / "Happy" / f"{number}.png", 100, seed=number)
        write_gray(tmp_path / "src" / "anger" / f"{number}.png", 30, seed=10 + number)
    (tmp_path / "src" / "anger" / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    status = main(
        [
            "prepare",
            str(tmp_path / "src"),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
            "--val-fraction",
            "0.25",
            "--test-fraction",
            "0",
        ]
    )
    assert status == 0
    output = capsys.readouterr().out
    assert "classes (2): angry, happy" in output
    assert "anger/broken.jpg" in output and "unreadable: 1" in output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["splits"]["val"]["count"] == 2


def test_prepare_command_errors_name_the_problem(tmp_path, capsys):
    assert main(["prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "missing" in error and "source not found" in error
    (tmp_path / "empty" / "happy").mkdir(parents=True)
    assert main(["prepare", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "no usable image" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_demo_command(tmp_path, capsys):
    assert main(["demo", "--dir", str(tmp_path), "--per-class", "10"]) == 0
    output = capsys.readouterr().out
    assert "classes (4): angry, happy, sad, surprise" in output
    assert (tmp_path / "prepared" / "manifest.json").is_file()
