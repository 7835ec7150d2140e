"""The robustness benchmark (``ferkit evaluate --corruptions``) and second labels by pixel
matching (``--votes``, ``soft-labels --votes``)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ferkit.cli import main
from ferkit.data.dataset import PreparedDataset, Split
from ferkit.data.matching import match_faces, matched_votes
from ferkit.evaluation.robustness import SEVERITIES, SHIFTS, robustness, shift_faces


def _faces(n: int = 10, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(n, 6, 6, channels)).repeat(8, axis=1).repeat(8, axis=2)
    fine = rng.normal(size=(n, 48, 48, channels))
    return np.clip(128 + 45 * coarse + 20 * fine, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(SHIFTS))
def test_every_shift_changes_faces_more_at_higher_severity(name):
    faces = _faces()
    changes = []
    for severity in SEVERITIES:
        shifted = shift_faces(faces, name, severity, seed=3)
        assert shifted.shape == faces.shape and shifted.dtype == np.uint8
        np.testing.assert_array_equal(shifted, shift_faces(faces, name, severity, seed=3))
        changes.append(np.abs(shifted.astype(float) - faces).mean())
    assert changes[0] > 0.3, name
    if name != "grey":  # the three weightings are alternatives, not steps
        assert changes[0] < changes[2], (name, changes)


def test_shifts_work_on_colour_faces_and_grey_reweights_channels():
    faces = _faces(4, channels=3)
    for name in SHIFTS:
        assert shift_faces(faces, name, 2).shape == faces.shape
    red_only = shift_faces(faces, "grey", 3)
    np.testing.assert_array_equal(red_only[..., 0], faces[..., 0])  # weights (1, 0, 0)
    np.testing.assert_array_equal(red_only[..., 1], faces[..., 0])


def test_bad_shift_requests_are_refused():
    faces = _faces(2)
    with pytest.raises(ValueError, match="unknown shift 'fog'"):
        shift_faces(faces, "fog", 1)
    with pytest.raises(ValueError, match="severity must be one of"):
        shift_faces(faces, "blur", 4)
    with pytest.raises(ValueError, match="uint8"):
        shift_faces(faces.astype(np.float32), "blur", 1)
    assert shift_faces(faces[:0], "blur", 1).shape == (0, 48, 48, 1)


class _Biased:
    """A stand-in classifier: class 1 when the face's top half is brighter than its
    bottom half, else 0; confident in proportion to the gap."""

    temperature = 1.0
    classes = ("a", "b")

    def predict_logits(self, faces: np.ndarray) -> np.ndarray:
        top = faces[:, :24].mean(axis=(1, 2, 3))
        bottom = faces[:, 24:].mean(axis=(1, 2, 3))
        gap = (top - bottom) / 10.0
        return np.stack([-gap, gap], axis=1)


def test_report_means_and_calibration_are_consistent():
    faces = _faces(40, seed=1)
    classifier = _Biased()
    labels = classifier.predict_logits(faces).argmax(axis=1)  # clean accuracy 100%
    report = robustness(classifier, faces, labels, shifts=["mask", "blur"], progress=False)
    assert report["clean"]["accuracy"] == 1.0
    assert len(report["conditions"]) == 2 * len(SEVERITIES)
    accuracies = [row["accuracy"] for row in report["conditions"]]
    assert report["mean"]["accuracy"] == pytest.approx(np.mean(accuracies))
    mask = [row for row in report["conditions"] if row["shift"] == "mask"]
    assert mask[-1]["accuracy"] < 1.0  # a bright band over the lower half flips the rule
    assert mask[-1]["agreement"] == mask[-1]["accuracy"]  # clean predictions are the labels
    calibration = report["calibration"]
    assert calibration["shift_fitted_temperature"] > 0
    for fitted in ("clean_fitted_cross_validated", "shift_fitted_cross_validated"):
        assert 0 <= calibration[fitted]["ece_shifted_mean"] <= 1
    with pytest.raises(ValueError, match="unknown shift"):
        robustness(classifier, faces, labels, shifts=["fog"], progress=False)


def test_match_faces_without_mutuality_pairs_every_duplicate():
    faces = _faces(6, seed=4)
    twice = np.concatenate([faces, faces[:2]])  # two faces appear twice
    in_a, in_b = match_faces(twice, faces[::-1].copy())
    assert sorted(in_a.tolist()) == [0, 1, 2, 3, 4, 5]  # mutual: second copies drop out
    in_a, in_b = match_faces(twice, faces[::-1].copy(), mutual=False)
    assert in_a.tolist() == list(range(8))
    np.testing.assert_array_equal(in_b, [5, 4, 3, 2, 1, 0, 5, 4])
    with pytest.raises(ValueError, match="same --size"):
        match_faces(faces, faces[:, :32, :32])


def test_matched_votes_map_classes_by_name_and_drop_the_rest():
    faces = _faces(5, seed=5)
    split = Split("train", faces, np.zeros(5, np.int64), np.array(["x"] * 5), ["angry", "happy"])
    other_classes = ["angry", "contempt", "happy"]
    votes = np.array(
        [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.2, 0.0, 0.8]], dtype=np.float32
    )  # faces 2, 0, 4 in that order
    other = Split("val", faces[[2, 0, 4]], np.zeros(3, np.int64), np.array(["y"] * 3),
                  other_classes, soft_labels=votes)  # fmt: skip
    found = matched_votes(split, [other])
    np.testing.assert_allclose(found[2], [1.0, 0.0])  # contempt dropped, renormalised
    assert np.isnan(found[0]).all()  # all of its votes went to contempt
    np.testing.assert_allclose(found[4], [0.2, 0.8])
    assert np.isnan(found[[1, 3]]).all()  # no copy
    other.soft_labels = None
    with pytest.raises(ValueError, match="--soft-labels"):
        matched_votes(split, [other])


@pytest.mark.real_data
def test_soft_labels_with_ferplus_votes_on_real_faces(
    fer2013_subset, ferplus_val_prepared, tmp_path
):
    fer = fer2013_subset.fer2013.out_dir
    votes = ferplus_val_prepared[1].out_dir
    out = tmp_path / "voted"
    code = main(["soft-labels", str(fer), "--votes", str(votes), "--split", "val",
                 "--out", str(out), "--label-weight", "0.4"])  # fmt: skip
    assert code == 0
    source, voted = PreparedDataset(fer).split("val"), PreparedDataset(out).split("val")
    record = json.loads((out / "manifest.json").read_text())["teacher_labels"]
    assert record["votes_matched"]["val"] == len(source)  # the subset's val faces all have votes
    plus = PreparedDataset(votes).split("val")
    in_fer, in_plus = match_faces(source.images, plus.images)
    columns = [plus.classes.index(name) for name in source.classes]
    expected = plus.soft_labels[in_plus][:, columns]
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(
        voted.soft_labels[in_fer], 0.4 * source.one_hot()[in_fer] + 0.6 * expected, atol=1e-5
    )
    np.testing.assert_allclose(voted.soft_labels.sum(axis=1), 1.0, atol=1e-5)
    # only the splits named with --split get votes: train keeps its one-hot targets
    np.testing.assert_array_equal(
        PreparedDataset(out).split("train").soft_labels,
        source_train := PreparedDataset(fer).split("train").one_hot(),
    )
    assert source_train.shape[0] > 0


@pytest.mark.real_data
@pytest.mark.slow
def test_evaluate_with_corruptions_and_votes_on_real_faces(
    fer2013_subset, ferplus_val_prepared, tmp_path, capsys
):
    from conftest import write_prepared_subset

    subset = fer2013_subset.fer2013.out_dir
    labels = PreparedDataset(subset).split("val").labels
    rng = np.random.default_rng(0)
    keep = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:10] for c in range(7)])
    fer = write_prepared_subset(subset, tmp_path / "small", {"val": np.sort(keep)})  # 70 faces
    out = tmp_path / "eval"
    code = main(["evaluate", "--data", str(fer), "--split", "val", "--out", str(out),
                 "--corruptions", "--votes", str(ferplus_val_prepared[1].out_dir), "--quiet"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "robustness (accuracy)" in printed and "against votes" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    report = metrics["robustness"]
    assert report["faces"] == metrics["faces"]
    assert report["clean"]["accuracy"] == pytest.approx(metrics["accuracy"])
    by_condition = {(r["shift"], r["severity"]): r["accuracy"] for r in report["conditions"]}
    assert len(by_condition) == len(SHIFTS) * len(SEVERITIES)
    # the bundled model loses accuracy to heavy noise and blur, and the mean is below clean
    assert by_condition[("noise", 3)] < report["clean"]["accuracy"] - 0.1
    assert by_condition[("blur", 3)] < report["clean"]["accuracy"] - 0.1
    assert report["mean"]["accuracy"] < report["clean"]["accuracy"]
    with open(out / "robustness.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 + len(SHIFTS) * len(SEVERITIES) and rows[0]["shift"] == "clean"
    assert (out / "plots" / "robustness.png").stat().st_size > 10_000
    assert "<h2>Robustness</h2>" in (out / "report.html").read_text()
    votes = metrics["votes"]
    assert votes["faces_matched"] == metrics["faces"]
    assert 0.5 < votes["accuracy"] < 0.95
    # ferkit compare shows both figures
    assert main(["compare", str(out), "--out", str(tmp_path / "cmp")]) == 0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert f"{report['mean']['accuracy']:.4f}" in table and f"{votes['accuracy']:.4f}" in table


def test_colour_consistency_measures_label_changes_between_weightings():
    from ferkit.evaluation.robustness import GREY_WEIGHTS, colour_consistency

    grey = np.repeat(_faces(6, seed=6), 3, axis=-1)  # R = G = B: every weighting agrees
    report = colour_consistency(_Biased(), grey)
    assert report["faces"] == 6 and len(report["weightings"]) == len(GREY_WEIGHTS)
    for row in report["weightings"].values():
        assert row["agreement"] == 1.0 and row["total_variation"] < 1e-6
    # red above, green below: BT.601 sees a darker top (class 0), the red channel a
    # brighter top (class 1)
    faces = np.zeros((4, 48, 48, 3), np.uint8)
    faces[:, :24, :, 0] = 200
    faces[:, 24:, :, 1] = 150
    rows = colour_consistency(_Biased(), faces)["weightings"]
    assert rows["red channel"]["agreement"] == 0.0
    assert rows["red channel"]["total_variation"] > 0.5
    with pytest.raises(ValueError, match="RGB"):
        colour_consistency(_Biased(), faces[..., :1])


@pytest.mark.real_data
def test_colour_benchmark_on_the_real_sample_photos_and_videos(shared, capsys):
    from ferkit.evaluation.benchmark import colour_faces

    photos = [shared / "samples" / name for name in ("justin.jpg", "couple.jpg")]
    faces, where = colour_faces(photos)
    assert faces.shape == (3, 48, 48, 3) and where[0] == "justin.jpg#0"
    assert np.abs(faces[..., 0].astype(int) - faces[..., 2]).mean() > 5  # really in colour
    assert main(["benchmark", "colour"]) == 0
    printed = capsys.readouterr().out
    assert "in video frames" in printed
    for name in ("BT.709", "channel mean", "red channel"):
        assert name in printed


@pytest.mark.real_data
def test_colour_benchmark_records_a_bad_file_and_goes_on(shared, tmp_path, capsys):
    import shutil

    shutil.copy(shared / "samples" / "justin.jpg", tmp_path / "justin.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not a picture")
    assert main(["benchmark", "colour", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "colour faces from" in printed and ": 1 (1 in photos" in printed
    assert "skipped: " in printed and "broken.jpg" in printed
    (tmp_path / "justin.jpg").unlink()
    assert main(["benchmark", "colour", str(tmp_path)]) == 2
    assert "no face found" in capsys.readouterr().err


def test_evaluate_refuses_a_votes_folder_before_any_work(drawn, tmp_path, capsys):
    code = main(["evaluate", "--data", str(drawn), "--split", "val", "--quiet",
                 "--out", str(tmp_path / "e"), "--votes", str(drawn)])  # fmt: skip
    assert code == 2
    assert "has no vote distributions" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
