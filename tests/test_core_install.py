"""The core install (``pip install ferkit``, no extras), in its own environment .venv-core
(made by scripts/test.sh): it predicts on the real sample photos and video with ONNX
Runtime and LiteRT, imports no TensorFlow, Keras, PyTorch or JAX, stays under its size
target, and a command that needs an extra names it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_shared

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / ".venv-core"
SIZE_TARGET_MB = 450

pytestmark = pytest.mark.skipif(
    not (CORE / "bin" / "python").exists() and not os.environ.get("CI"),
    reason=".venv-core missing: FERKIT_VENV=.venv-core FERKIT_EXTRAS= bash scripts/setup.sh",
)


def core(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CORE / "bin" / args[0]), *args[1:]],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip


def test_core_environment_has_no_deep_learning_framework():
    listed = core("python", "-m", "pip", "list", "--format", "json")
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "ferkit" in names and "onnxruntime" in names and "ai-edge-litert" in names
    heavy = {"tensorflow", "tensorflow-cpu", "keras", "torch", "jax", "jaxlib", "scikit-learn"}
    assert names & heavy == set()
    assert names & {"pandas", "matplotlib"} == set()  # the report extra's


def tree_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def test_core_environment_size_is_under_target():
    total = tree_bytes(CORE)
    print(f"core environment (editable): {total / 2**20:.0f} MB")
    assert total < SIZE_TARGET_MB * 2**20


def test_importing_the_inference_code_imports_no_tensorflow():
    script = (
        "import sys, ferkit, ferkit.inference.predict, ferkit.inference.recognizer, "
        "ferkit.inference.runtimes, ferkit.evaluation.evaluate, ferkit.cli\n"
        "from ferkit import EmotionRecognizer\n"
        "r = EmotionRecognizer()\n"
        "print([m for m in ('tensorflow', 'keras', 'torch', 'jax') if m in sys.modules])"
    )
    result = core("python", "-c", script)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.real_data
def test_core_install_predicts_on_the_samples(tmp_path):
    samples = require_shared("samples")
    out = tmp_path / "out"
    inputs = [samples / "justin.jpg", samples / "no-faces.jpg", samples / "woman2.mp4"]
    result = core("ferkit", "predict", *map(str, inputs), "--out", str(out), "--quiet",
                  "--max-frames", "60")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    by_name = {Path(entry["source"]).name: entry for entry in summary["sources"]}
    assert by_name["justin.jpg"]["status"] == "ok"
    assert by_name["justin.jpg"]["labels"] == ["happy"]
    assert by_name["no-faces.jpg"]["status"] == "no_face"
    assert by_name["woman2.mp4"]["frames"] == 60 and by_name["woman2.mp4"]["faces"] > 0
    assert summary["model"].endswith("model.int8.tflite")  # the default model's runtime


@pytest.mark.real_data
def test_core_install_lists_and_runs_the_installed_ferplus_model(tmp_path):
    """The installed package (not the checkout) holds both models, and the FER+ one
    predicts by name without TensorFlow."""
    listed = core("ferkit", "models", "--json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    models = {entry["name"]: entry for entry in json.loads(listed.stdout)}
    assert (
        set(models) == {"default", "fast", "ferplus"} and "contempt" in models["ferplus"]["classes"]
    )
    justin = require_shared("samples") / "justin.jpg"
    out = tmp_path / "out"
    result = core("ferkit", "predict", str(justin), "--model", "ferplus", "--out", str(out), "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sources"][0]["labels"] == ["happy"]
    assert summary["model"].endswith("ferplus/model.onnx")


def test_a_command_that_needs_an_extra_names_it(tmp_path):
    result = core("ferkit", "train", "--data", str(tmp_path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "pip install -e '.[train]'" in result.stderr
    result = core("ferkit", "predict", str(ROOT / "src/ferkit/assets/samples/justin.jpg"),
                  "--detector", "mtcnn", "--out", str(tmp_path / "p"), "--quiet")  # fmt: skip
    assert result.returncode == 2
    assert "'.[train]'" in result.stderr
    result = core("ferkit", "serve", "--port", "9")
    assert result.returncode == 2
    assert "pip install -e '.[serve]'" in result.stderr


def test_core_install_evaluates_the_bundled_model(tmp_path):
    """Metrics and the report on the core install; the plots, which need Matplotlib (the
    report extra), are left out with the extra named in the warning and the report."""
    from ferkit.data.synthetic import make_image_folder

    faces = make_image_folder(tmp_path / "faces", per_class=6, seed=2)
    out = tmp_path / "eval"
    result = core("ferkit", "evaluate", "--data", str(faces), "--faces", "crop", "--out",
                  str(out), "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["faces"] > 0 and metrics["model"]["runtime"] == "TFLiteModel"
    assert metrics["plots"] == {} and "pip install -e '.[report]'" in metrics["plots_skipped"]
    assert "'.[report]'" in result.stderr
    assert "No plots" in (out / "report.html").read_text()


def test_a_dataframe_on_the_core_install_names_the_report_extra():
    script = (
        "from ferkit import EmotionRecognizer\n"
        "from ferkit.inference.results import results_to_dataframe\n"
        "try:\n"
        "    results_to_dataframe([])\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = core("python", "-c", script)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "needs pandas" in result.stdout and "'.[report]'" in result.stdout


def test_prepare_of_photos_refuses_a_missing_detector_before_any_work(tmp_path):
    """On the core install, prepare --detector mtcnn stops once, before reading a photo,
    naming the extra; the default detector needs nothing beyond the core install."""
    samples = ROOT / "src" / "ferkit" / "assets" / "samples"
    source = tmp_path / "photos" / "happy"
    source.mkdir(parents=True)
    for name in ("justin.jpg", "selfie-many-people.jpg"):
        (source / name).symlink_to(samples / name)
    result = core("ferkit", "prepare", str(tmp_path / "photos"), "--out", str(tmp_path / "p"),
                  "--detector", "mtcnn", "--quiet")  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("pip install -e '.[train]'") == 1
    assert "the mtcnn detector needs" in result.stderr
    assert not (tmp_path / "p").exists()
    ok = core("ferkit", "prepare", str(tmp_path / "photos"), "--out", str(tmp_path / "q"),
              "--val-fraction", "0", "--test-fraction", "0", "--quiet")  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]
    health = core("python", "-c", "from ferkit.faces import available_detectors; "
                  "print(available_detectors())")  # fmt: skip
    assert "mtcnn" not in health.stdout and "blazeface-full" in health.stdout


def test_a_wheel_built_from_the_checkout_installs_predicts_and_fits_the_size_target(tmp_path):
    """The README's other way in: `pip wheel . --no-deps -w dist`, then the wheel installed
    elsewhere predicts with its bundled model (here on the core environment's libraries,
    the wheel's ferkit first on the path). The core environment with the wheel's copy of
    ferkit (its models included) in place of the editable link, what `pip install .`
    makes, stays under the size target."""
    built = core("python", "-m", "pip", "wheel", str(ROOT), "--no-deps", "--quiet",
                 "--wheel-dir", str(tmp_path / "dist"), timeout=600)  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("ferkit-*-py3-none-any.whl")
    target = tmp_path / "site"
    installed = core("python", "-m", "pip", "install", "--no-deps", "--quiet", "--target",
                     str(target), str(wheel), timeout=600)  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-2000:]
    total = tree_bytes(CORE) + tree_bytes(target)
    print(f"core environment with the wheel installed: {total / 2**20:.0f} MB")
    assert tree_bytes(target / "ferkit") > 30 * 2**20  # the bundled models came with it
    assert total < SIZE_TARGET_MB * 2**20
    script = (
        "import ferkit, json\n"
        "from ferkit import EmotionRecognizer\n"
        f"faces = EmotionRecognizer().predict({str(ROOT / 'src/ferkit/assets/samples/justin.jpg')!r})\n"
        "print(json.dumps([ferkit.__file__, [f.label for f in faces]]))"
    )
    result = subprocess.run(
        [str(CORE / "bin" / "python"), "-c", script], capture_output=True, text=True,
        timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(target)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    where, labels = json.loads(result.stdout.strip().splitlines()[-1])
    assert where.startswith(str(target)) and labels == ["happy"]


@pytest.mark.real_data
def test_core_install_reads_csv_manifests_and_annotates_video_without_the_report_extra(tmp_path):
    """A .csv manifest needs no pandas; an annotated video is written, and its emotion
    chart, which needs Matplotlib, is skipped with the extra named."""
    video = require_shared("samples") / "woman2.mp4"
    manifest = tmp_path / "list.csv"
    manifest.write_text(f"id,path\n1,{ROOT / 'src/ferkit/assets/samples/justin.jpg'}\n2,{video}\n")
    (tmp_path / "list.parquet").write_bytes(b"PAR1")  # read with pandas: the report extra
    out = tmp_path / "out"
    result = core("ferkit", "predict", str(manifest), str(tmp_path / "list.parquet"), "--annotate",
                  "--max-frames", "10", "--out", str(out))  # fmt: skip
    assert result.returncode == 3, result.stderr[-2000:]
    assert "no emotion-over-time chart for 1 video(s)" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    by_name = {Path(entry["source"]).name: entry for entry in summary["sources"]}
    assert by_name["justin.jpg"]["labels"] == ["happy"]
    clip = by_name["woman2.mp4"]
    assert (out / clip["annotated"]).is_file() and "emotion_plot" not in clip
    assert "'.[report]'" in clip["emotion_plot_skipped"]
    parquet = by_name["list.parquet"]
    assert parquet["status"] == "error" and "needs pandas" in parquet["reason"]
    assert "with a column named" not in parquet["reason"]  # not a malformed file
