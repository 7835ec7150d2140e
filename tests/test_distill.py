"""``ferkit soft-labels``: distillation targets from teacher models."""

import json

import numpy as np
import pytest
from conftest import tiny_train_config

from ferkit.cli import main
from ferkit.data.dataset import PreparedDataset
from ferkit.models.folder import load_model
from ferkit.release.model_card import write_model_card
from ferkit.training.distill import write_teacher_labels
from ferkit.training.trainer import train


@pytest.fixture(scope="module")
def teachers(drawn, drawn_run, tmp_path_factory):
    """The shared drawn dataset and two tiny teacher runs trained on it: the session's
    run (seed 7) and one of seed 2."""
    other = tmp_path_factory.mktemp("distill") / "teacher2"
    train(tiny_train_config(drawn, seed=2), other, verbose=0)
    return drawn, [drawn_run, other]


def test_targets_mix_the_label_with_the_mean_teacher(teachers, tmp_path):
    data, runs = teachers
    out = write_teacher_labels(data, runs, tmp_path / "soft", label_weight=0.25)
    source, labelled = PreparedDataset(data), PreparedDataset(out)
    train_split = source.split("train")
    expected_teacher = np.mean(
        [load_model(run).predict_proba(train_split.images) for run in runs], axis=0
    )
    got = labelled.split("train")
    np.testing.assert_allclose(
        got.soft_labels, 0.25 * train_split.one_hot() + 0.75 * expected_teacher, atol=1e-5
    )
    np.testing.assert_allclose(got.soft_labels.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(got.images, train_split.images)
    np.testing.assert_array_equal(got.labels, train_split.labels)
    val = labelled.split("val")  # validation keeps the truth
    np.testing.assert_array_equal(val.soft_labels, source.split("val").one_hot())
    record = json.loads((out / "manifest.json").read_text())["teacher_labels"]
    assert record["label_weight"] == 0.25 and record["splits"] == ["train"]
    assert record["teachers"] == [str(run) for run in runs]


def test_training_on_teacher_targets(teachers, tmp_path):
    data, runs = teachers
    assert (
        main(["soft-labels", str(data), "--teacher", str(runs[0]), "--out", str(tmp_path / "s")])
        == 0
    )
    config = tiny_train_config(tmp_path / "s", soft_labels=True)
    result = train(config, tmp_path / "student", verbose=0)
    # The student's targets blend its label with the teacher: not one-hot.
    targets = PreparedDataset(tmp_path / "s").split("train").soft_labels
    assert (targets.max(axis=1) < 0.99).mean() > 0.5
    # Its metrics are those of its best checkpoint, recounted here.
    val = PreparedDataset(tmp_path / "s").split("val")
    student = load_model(tmp_path / "student")
    predicted = student.predict_proba(val.images).argmax(axis=1)
    assert result.metrics["val_faces"] == len(val)
    assert result.metrics["val_accuracy"] == pytest.approx(np.mean(predicted == val.labels))
    # The model card says what the targets were and which teachers gave them.
    card = write_model_card(tmp_path / "student", val, student)
    teacher = json.loads((runs[0] / "metrics.json").read_text())["val_accuracy"]
    assert (
        "Targets (knowledge distillation, `ferkit soft-labels`): 0.5 x the label + 0.5 x the mean"
        f" calibrated probabilities of 1 teacher model(s): `{runs[0]}` ({teacher:.2%} on val)."
    ) in card
    card = write_model_card(runs[0], val, load_model(runs[0]))  # trained on plain labels
    assert "Targets" not in card


def test_bad_requests_are_refused_with_the_reason(teachers, tmp_path):
    data, runs = teachers
    with pytest.raises(ValueError, match="at least one teacher"):
        write_teacher_labels(data, [], tmp_path / "a")
    with pytest.raises(ValueError, match="between 0 and 1"):
        write_teacher_labels(data, runs, tmp_path / "b", label_weight=1.5)
    with pytest.raises(ValueError, match="no split"):
        write_teacher_labels(data, runs, tmp_path / "c", splits=("nope",))
    # The drawn set has four classes, the bundled model seven.
    assert len(PreparedDataset(data).classes) < len(load_model(None).classes)
    with pytest.raises(ValueError, match="classes"):
        write_teacher_labels(data, ["default"], tmp_path / "d")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("a file of the user's")
    with pytest.raises(FileExistsError, match="already holds files"):
        write_teacher_labels(data, runs, tmp_path / "taken")
    assert not list(tmp_path.glob(".soft-labels-*"))  # no half-written folder left
