"""``ferkit soft-labels``: distillation targets from teacher models."""

import json
import shutil

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
    # A teacher must know every class of the dataset (one renamed to contempt here).
    renamed = _copy_dataset(data, tmp_path / "renamed")
    manifest = json.loads((renamed / "manifest.json").read_text())
    manifest["classes"][0] = "contempt"
    (renamed / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"lack \['contempt'\]"):
        write_teacher_labels(renamed, runs, tmp_path / "d")
    with pytest.raises(ValueError, match="2 teacher weights for 1 teacher"):
        write_teacher_labels(data, runs[:1], tmp_path / "e", teacher_weights=[1, 2])
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("a file of the user's")
    with pytest.raises(FileExistsError, match="already holds files"):
        write_teacher_labels(data, runs, tmp_path / "taken")
    assert not list(tmp_path.glob(".soft-labels-*"))  # no half-written folder left


def _copy_dataset(data, out):
    shutil.copytree(data, out, ignore=shutil.ignore_patterns(".ferkit-output.json"))
    return out


@pytest.fixture(scope="module")
def colour_teacher(tmp_path_factory):
    """A model folder of another input shape (32x32 colour) and more classes: a stand-in
    for face-api's network (and ferplus's contempt) beside 48x48 grey faces."""
    import keras

    from ferkit.classes import CANONICAL_CLASSES

    folder = tmp_path_factory.mktemp("colour_teacher")
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, kernel_initializer=keras.initializers.GlorotUniform(1))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    classes = list(CANONICAL_CLASSES)  # eight, contempt too, as ferplus
    logits = keras.layers.Dense(
        len(classes), kernel_initializer=keras.initializers.GlorotUniform(2)
    )(x)
    keras.Model(inputs, logits).save(folder / "model.keras")
    (folder / "labels.json").write_text(json.dumps(classes))
    (folder / "calibration.json").write_text(json.dumps({"temperature": 0.5}))
    return folder


def test_teachers_of_other_classes_and_shapes_weighted_and_kept(teachers, colour_teacher, tmp_path):
    """An eight-class 32x32 colour teacher beside a four-class run on 48x48 grey faces:
    the faces are resized for it, its extra classes dropped, the opinions weighted, and
    each kept so another mixture needs no model."""
    from ferkit.calibration import softmax
    from ferkit.images import resize_face
    from ferkit.training.distill import remix_teacher_labels

    data, runs = teachers
    out = write_teacher_labels(
        data, [colour_teacher, runs[0]], tmp_path / "mixed", label_weight=0.2,
        teacher_weights=[3.0, 1.0],
    )  # fmt: skip
    source = PreparedDataset(data).split("train")
    colour = load_model(colour_teacher)
    faces = np.stack([resize_face(face, 32, 3) for face in source.images])
    assert faces.shape[1:] == (32, 32, 3) and source.images.shape[1:] != faces.shape[1:]
    every = softmax(colour.predict_logits(faces), 0.5)
    columns = [colour.classes.index(name) for name in PreparedDataset(data).classes]
    expected_colour = every[:, columns] / every[:, columns].sum(axis=1, keepdims=True)
    expected_run = load_model(runs[0]).predict_proba(source.images)
    with np.load(out / "train.npz") as arrays:
        kept = arrays["teacher_probabilities"]
    np.testing.assert_allclose(kept[0], expected_colour, atol=1e-5)
    np.testing.assert_allclose(kept[1], expected_run, atol=1e-5)
    got = PreparedDataset(out).split("train").soft_labels
    teacher = 0.75 * expected_colour + 0.25 * expected_run
    np.testing.assert_allclose(got, 0.2 * source.one_hot() + 0.8 * teacher, atol=1e-5)
    record = json.loads((out / "manifest.json").read_text())["teacher_labels"]
    assert record["teacher_weights"] == [3.0, 1.0]
    dropped = record["teacher_classes_dropped"][str(colour_teacher)]
    assert sorted(dropped) == ["contempt", "disgust", "fear", "neutral"]
    assert record["teacher_input_shapes"][str(colour_teacher)] == [32, 32, 3]

    # Another mixture from the kept probabilities: the second teacher alone, half and half
    # with the label; through the command line, with no --teacher.
    args = ["soft-labels", str(out), "--out", str(tmp_path / "remixed"), "--label-weight", "0.5"]
    assert main([*args, "--teacher-weight", "0", "--teacher-weight", "1"]) == 0
    remixed = PreparedDataset(tmp_path / "remixed").split("train").soft_labels
    np.testing.assert_allclose(remixed, 0.5 * source.one_hot() + 0.5 * expected_run, atol=1e-5)
    record = json.loads((tmp_path / "remixed" / "manifest.json").read_text())["teacher_labels"]
    assert record["teacher_weights"] == [0.0, 1.0] and record["remixed_from"] == str(out)
    with pytest.raises(ValueError, match="keeps no teacher probabilities"):
        remix_teacher_labels(data, tmp_path / "nothing")
