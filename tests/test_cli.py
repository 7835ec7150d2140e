import argparse
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
    assert status == 3  # completed, with the broken file listed
    output = capsys.readouterr().out
    assert "classes (2): angry, happy" in output
    assert "anger/broken.jpg" in output and "unreadable: 1" in output
    assert "exit status 3" in output and "peak memory" in output
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


def test_demo_runs_on_the_shipped_photos_and_says_what_next(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    output = capsys.readouterr().out
    assert "justin.jpg: 1 face: happy" in output
    assert "selfie-many-people.jpg" in output
    assert f"Results are in {out}" in output and "Next, try:" in output
    assert output.count("  ferkit ") >= 3
    assert (out / "annotated" / "justin.jpg").is_file()
    assert (out / "annotated" / "selfie-many-people.jpg").is_file()


def test_demo_takes_an_installed_model_by_name(tmp_path, capsys):
    import csv

    out = tmp_path / "demo"
    assert main(["demo", "--model", "ferplus", "--out", str(out), "--quiet"]) == 0
    assert "with the model ferplus:" in capsys.readouterr().out
    with open(out / "predictions.csv", newline="") as handle:
        faces = [row for row in csv.DictReader(handle) if row["label"]]
    assert len(faces) == 7 and all("p_contempt" in row for row in faces)


def test_help_shows_every_default():
    from ferkit.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if not action.option_strings or action.required or action.help == argparse.SUPPRESS:
                continue
            if isinstance(action, argparse._StoreTrueAction | argparse._HelpAction):
                continue
            text = sub.formatter_class(name)._get_help_string(action)
            if "default" not in text:
                missing.append(f"ferkit {name} {action.option_strings[0]}: {text}")
    assert not missing, "\n".join(missing)
    train_help = subparsers.choices["train"].format_help()
    assert "(default: 60, or the --config file's)" in " ".join(train_help.split())
    predict_help = " ".join(subparsers.choices["predict"].format_help().split())
    assert "results/predictions/YYYYmmdd-HHMMSS" in predict_help and "exit status" in predict_help


def test_only_ferkits_own_messages_reach_the_terminal(tmp_path):
    from conftest import require_shared

    photo = require_shared("samples") / "justin.jpg"
    argv = ["-m", "ferkit", "predict", str(photo), "--out", str(tmp_path / "a"), "--quiet"]
    quiet = _run(*argv, cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""  # no TensorFlow, CUDA or LiteRT start-up lines
    mtcnn = _run(*argv[:-3], "--out", str(tmp_path / "b"), "--detector", "mtcnn", "--quiet")
    assert mtcnn.returncode == 0 and mtcnn.stderr == "", mtcnn.stderr
    verbose = _run("-m", "ferkit", "-v", *argv[2:4], "--out", str(tmp_path / "c"), "--quiet")
    assert verbose.returncode == 0
    assert "INFO" in verbose.stderr  # the libraries' lines are there when asked for


def test_predict_engine_options_are_checked_before_any_work(tmp_path, capsys):
    photo = write_gray(tmp_path / "in" / "face.png", 120, seed=1)
    out = tmp_path / "out"
    cases = [
        (["--resume"], "--resume: only with --engine ray"),
        (["--workers", "2", "--address", "auto"], "--address, --workers: only with --engine ray"),
        (["--engine", "ray", "--annotate"], "--annotate: not with --engine ray"),
        (["--engine", "ray", "--annotate-geometry", "mesh"], "--annotate-geometry: not with"),
        (["--engine", "ray", "--format", "json"], "--format json: not with --engine ray"),
    ]
    for extra, message in cases:
        assert main(["predict", str(photo), "--out", str(out), *extra]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
    for value in ("0", "often"):
        try:
            main(["predict", str(photo), "--out", str(out), "--detect-every", value])
        except SystemExit as stop:
            assert stop.code == 2
        assert "'auto' or a whole number of frames >= 1" in capsys.readouterr().err


def test_only_the_parser_of_the_command_run_is_built():
    from ferkit.cli import COMMANDS, _command_of, build_parser

    assert _command_of(["-v", "predict", "x.jpg"]) == "predict"
    assert _command_of(["--version"]) is None and _command_of(["nonsense"]) is None
    whole = build_parser()
    subcommands = next(a for a in whole._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subcommands.choices) == set(COMMANDS)
    one = build_parser("predict")
    subcommands = next(a for a in one._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subcommands.choices) == {"predict"}
