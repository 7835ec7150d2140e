"""ferkit evaluate and compare: metrics against scikit-learn, the report on real data,
photos through the detector, and class mapping."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
from conftest import require_shared, write_gray
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    top_k_accuracy_score,
)

from ferkit.cli import main
from ferkit.evaluation.evaluate import compute_metrics, map_classes, tta_views

CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("present", [list(range(7)), [0, 3, 5]])
def test_metrics_match_scikit_learn(present):
    rng = np.random.default_rng(0)
    labels = rng.choice(present, size=400)
    logits = rng.normal(size=(400, 7))
    logits[np.arange(400), labels] += rng.normal(1.0, 1.0, size=400)  # better than chance
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    predicted = probabilities.argmax(axis=1)
    metrics = compute_metrics(labels, probabilities, CLASSES)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(labels, predicted, labels=present, average="macro")
    )
    assert metrics["top2_accuracy"] == pytest.approx(
        top_k_accuracy_score(labels, probabilities, k=2, labels=range(7))
    )
    full = confusion_matrix(labels, predicted, labels=range(7))
    assert metrics["confusion_matrix"]["counts"] == full[present].tolist()
    assert metrics["confusion_matrix"]["rows"] == [CLASSES[c] for c in present]
    assert list(metrics["per_class"]) == [CLASSES[c] for c in present]
    assert sum(row["support"] for row in metrics["per_class"].values()) == 400


def test_class_mapping_through_synonyms():
    mapping, unknown = map_classes(["anger", "happiness", "pain", "Sadness"], CLASSES)
    assert mapping == {0: 0, 1: 3, 3: 5}
    assert unknown == ["pain"]


def test_tta_views():
    faces = np.arange(2 * 6 * 6).reshape(2, 6, 6, 1).astype(np.uint8)
    views = tta_views(faces, shift=1)
    assert len(views) == 6 and all(v.shape == faces.shape for v in views)
    assert np.array_equal(views[1], faces[:, :, ::-1])
    assert np.array_equal(views[2][:, 1:, :], faces[:, :-1, :])  # shifted down by one


def test_ck_style_folder_with_an_unknown_class(tmp_path):
    """anger/sadness/happiness map onto the model's classes; 'pain' is reported apart."""
    for index, name in enumerate(["anger", "sadness", "happiness", "pain"]):
        for k in range(6):
            write_gray(tmp_path / "src" / name / f"{k}.png", 40 * index + 20, seed=k)
    out = tmp_path / "eval"
    argv = ["evaluate", "--data", str(tmp_path / "src"), "--out", str(out), "--faces", "crop"]
    assert main([*argv, "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"]["covered"] == ["angry", "happy", "sad"]
    assert metrics["classes"]["data_classes_unknown_to_model"] == ["pain"]
    assert "neutral" in metrics["classes"]["model_classes_absent_from_data"]
    assert metrics["faces"] == 18 and metrics["faces_of_unknown_classes"]["pain"]["faces"] == 6
    assert sum(metrics["faces_of_unknown_classes"]["pain"]["predicted_as"].values()) == 6
    assert metrics["data"]["split"] == "all"
    assert "pain" in (out / "report.html").read_text()


def test_missing_split_names_the_choices(tmp_path, capsys):
    for name in ("happy", "sad"):
        for k in range(3):
            write_gray(tmp_path / "src" / "train" / name / f"{k}.png", 100, seed=k)
    argv = ["evaluate", "--data", str(tmp_path / "src"), "--out", str(tmp_path / "o"), "--quiet"]
    assert main(argv) == 2
    assert "no test split; choose one with --split (train)" in capsys.readouterr().err


@pytest.mark.real_data
@pytest.mark.slow
class TestRealData:
    @pytest.fixture(scope="class")
    def val_report(self, fer2013_subset, tmp_path_factory):
        """``ferkit evaluate --tta`` of the bundled model on real FER2013 val faces: the
        session's small subset (every class, ~50 faces each; the bundled model's accuracy
        on all of val is test_bundled_model's)."""
        result = fer2013_subset.fer2013
        out = tmp_path_factory.mktemp("eval") / "fer2013_val"
        argv = ["evaluate", "--data", str(result.out_dir), "--split", "val", "--out", str(out)]
        bars = io.StringIO()
        with contextlib.redirect_stderr(bars):  # progress bars go to stderr
            assert main([*argv, "--tta"]) == 0
        type(self).progress = bars.getvalue()
        return result, out, json.loads((out / "metrics.json").read_text())

    def test_every_stage_shows_progress(self, val_report):
        # classification batches, the TTA views, then each plot (Grad-CAM included)
        for stage in ("classify", "TTA views", "plots"):
            assert f"{stage}:" in type(self).progress, stage
        assert "saliency" in type(self).progress

    def test_accuracy_equals_an_independent_count(self, val_report):
        from ferkit.data.dataset import load_split
        from ferkit.inference.runtimes import load_classifier

        result, _, metrics = val_report
        val = load_split(result.out_dir, "val")
        predicted = load_classifier().predict_proba(val.images).argmax(axis=1)
        assert metrics["faces"] == len(val) == result.manifest["splits"]["val"]["count"]
        assert sorted(set(val.labels.tolist())) == list(range(7))  # every class present
        assert metrics["accuracy"] == pytest.approx(float(np.mean(predicted == val.labels)))
        assert metrics["end_to_end"]["accuracy"] == metrics["accuracy"]
        assert metrics["tta"]["accuracy_gain"] == pytest.approx(
            metrics["tta"]["accuracy"] - metrics["accuracy"]
        )
        assert metrics["data"]["hash"].startswith("sha256:")
        assert metrics["model"]["sha256"].startswith("sha256:")

    def test_every_plot_and_the_report(self, val_report):
        result, out, metrics = val_report
        expected = {
            "confusion_counts",
            "confusion_normalised",
            "per_class_f1",
            "reliability",
            "training_curves",
            "confident_mistakes",
            "saliency",
        }
        assert set(metrics["plots"]) == expected
        for relative in metrics["plots"].values():
            assert (out / relative).stat().st_size > 5000
        report = (out / "report.html").read_text()
        assert report.count("data:image/png;base64,") == len(expected)
        assert f"{metrics['accuracy']:.4f}" in report
        rows = (out / "classification_report.csv").read_text().splitlines()
        assert rows[0] == "class,precision,recall,f1,support" and len(rows) == 1 + 7 + 2
        faces = result.manifest["splits"]["val"]["count"]
        assert len((out / "predictions.csv").read_text().splitlines()) == 1 + faces

    def test_photos_go_through_the_detector_and_every_file_is_counted(self, tmp_path):
        samples = require_shared("samples")
        layout = {
            "happy/justin.jpg": "justin.jpg",
            "happy/couple.jpg": "couple.jpg",
            "neutral/no-faces.jpg": "no-faces.jpg",
            "sad/readme.jpg": "README.md",  # not an image, whatever its name says
        }
        for name, target in layout.items():
            (tmp_path / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(samples / target, tmp_path / "photos" / name)  # read in place
        out = tmp_path / "eval"
        argv = ["evaluate", "--data", str(tmp_path / "photos"), "--out", str(out), "--quiet"]
        assert main(argv) == 3  # completed; the file that is not an image is a failed input
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["faces"] == 2
        assert metrics["skipped"]["counts"] == {"no_face": 1, "not_image": 1}
        assert metrics["end_to_end"] == {
            "accuracy": pytest.approx(metrics["accuracy"] * 2 / 3),
            "faces_evaluated": 2,
            "no_face_found": 1,
        }
        assert metrics["accuracy"] == 1.0  # both smiles are happy

    def test_compare(self, val_report, tmp_path):
        _, out, metrics = val_report
        other = tmp_path / "again"
        argv = ["evaluate", "--data", metrics["data"]["source"], "--split", "val"]
        assert main([*argv, "--out", str(other), "--backend", "onnx-int8", "--quiet"]) == 0
        assert main(["compare", str(out), str(other), "--out", str(tmp_path / "cmp")]) == 0
        import pandas as pd

        table = pd.read_csv(tmp_path / "cmp" / "comparison.csv", index_col=0)
        assert table.loc["fer2013_val", "accuracy"] == pytest.approx(metrics["accuracy"])
        assert table.loc["again", "accuracy"] == pytest.approx(
            json.loads((other / "metrics.json").read_text())["accuracy"]
        )
        assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 5000
        assert "| fer2013_val |" in (tmp_path / "cmp" / "comparison.md").read_text()
