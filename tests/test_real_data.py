"""Preparation on the real shared data: FER2013, FER+ and photos of real faces."""

import csv

import numpy as np
import pytest
from conftest import require_shared
from PIL import Image

from ferkit.classes import FERPLUS_VOTE_COLUMNS, canonical_name
from ferkit.data.dataset import PreparedDataset
from ferkit.data.prepare import PrepareConfig, prepare

pytestmark = pytest.mark.real_data

# Per-class counts as ../shared/datasets/README.md states them.
FER2013_COUNTS = {
    "train": {
        "angry": 3995,
        "disgust": 436,
        "fear": 4097,
        "happy": 7215,
        "neutral": 4965,
        "sad": 4830,
        "surprise": 3171,
    },
    "val": {
        "angry": 467,
        "disgust": 56,
        "fear": 496,
        "happy": 895,
        "neutral": 607,
        "sad": 653,
        "surprise": 415,
    },
}


def test_fer2013_counts_match_the_readme(fer2013_prepared):
    _, result = fer2013_prepared
    manifest = result.manifest
    assert manifest["classes"] == sorted(FER2013_COUNTS["train"])
    assert {
        split: info["per_class"] for split, info in manifest["splits"].items()
    } == FER2013_COUNTS
    assert (
        manifest["splits"]["train"]["count"] == 28709 and manifest["splits"]["val"]["count"] == 3589
    )
    assert manifest["skipped"] == []
    assert manifest["face_modes"] == {"crop": 28709 + 3589}
    # FER2013 repeats some faces, a few across train and val: they must be reported.
    assert manifest["duplicates"]["groups_across_splits"] > 0


def test_fer2013_pixels_and_labels_match_the_files(fer2013_prepared):
    source, result = fer2013_prepared
    data = PreparedDataset(result.out_dir)
    val = data.split("val")
    assert val.images.shape == (3589, 48, 48, 1)
    rng = np.random.default_rng(0)
    for index in rng.choice(len(val), 25, replace=False):
        path = source / val.paths[index]
        assert val.paths[index].split("/")[1] == data.classes[val.labels[index]]
        np.testing.assert_array_equal(
            val.images[index, :, :, 0], np.asarray(Image.open(path).convert("L"))
        )


def _independent_ferplus_counts(label_file):
    """Count plurality labels straight from label.csv, without ferkit's reader."""
    counts = {}
    with open(label_file, newline="") as handle:
        for row in csv.reader(handle):
            votes = [int(value) for value in row[2:]]
            top = max(votes)
            if votes.count(top) > 1:
                continue
            column = FERPLUS_VOTE_COLUMNS[votes.index(top)]
            if column in ("unknown", "NF"):
                continue
            counts[canonical_name(column)] = counts.get(canonical_name(column), 0) + 1
    return counts


def test_ferplus_validation_majority_counts(ferplus_val_prepared):
    source, result = ferplus_val_prepared
    manifest = result.manifest
    expected = _independent_ferplus_counts(source / "label.csv")
    counted = {
        name: count for name, count in manifest["splits"]["val"]["per_class"].items() if count
    }
    assert counted == expected
    with open(source / "label.csv") as handle:
        rows = sum(1 for line in handle if line.strip())
    dropped = [entry for entry in manifest["skipped"] if entry["kind"] == "vote_dropped"]
    assert sum(expected.values()) + len(dropped) == rows
    val = PreparedDataset(result.out_dir).split("val")
    np.testing.assert_allclose(val.soft_labels.sum(axis=1), 1.0, rtol=1e-5)
    # The hard label is the largest soft label.
    np.testing.assert_array_equal(val.soft_labels.argmax(axis=1), val.labels)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    samples = require_shared("samples")
    root = tmp_path_factory.mktemp("photos") / "src"
    (root / "happy").mkdir(parents=True)
    (root / "neutral").mkdir()
    # Links, not copies: the shared samples are read in place.
    (root / "happy" / "justin.jpg").symlink_to(samples / "justin.jpg")
    (root / "neutral" / "no-faces.jpg").symlink_to(samples / "no-faces.jpg")
    return root


@pytest.mark.slow
def test_photos_go_through_detection(photos, tmp_path):
    config = PrepareConfig(size=160, channels=3, val_fraction=0, test_fraction=0)
    result = prepare(photos, tmp_path / "out", config, progress=False)
    manifest = result.manifest
    assert manifest["face_modes"] == {"detect": 1}
    assert manifest["skipped"] == [
        {
            "path": "neutral/no-faces.jpg",
            "split": None,
            "kind": "no_face",
            "reason": "no face found by the blazeface-full detector",
            "label": "neutral",
        }
    ]
    train = PreparedDataset(result.out_dir).split("train")
    assert train.paths.tolist() == ["happy/justin.jpg"]
    face = train.images[0]
    assert face.shape == (160, 160, 3)

    # The crop is aligned: detecting again inside it (framed by a grey border, since the
    # tight training framing leaves a detector no context) finds one centred face, eyes
    # level, filling the crop.
    from ferkit.faces import make_detector
    from ferkit.framing import eye_angle

    detector = make_detector("mtcnn")
    original = detector.detect(
        np.asarray(Image.open(photos / "happy" / "justin.jpg").convert("RGB"))
    )
    assert abs(eye_angle(original[0])) > 0.5  # the photo itself is slightly tilted
    framed = np.pad(face, ((80, 80), (80, 80), (0, 0)), constant_values=128)
    (found,) = detector.detect(framed)
    assert abs(eye_angle(found)) < abs(eye_angle(original[0]))
    x, y, w, h = found.box
    assert abs((x + w / 2) - 160) < 16 and abs((y + h / 2) - 160) < 24
    assert w > 110  # the face fills the crop


@pytest.mark.slow
def test_haar_detector_finds_the_frontal_face(photos, tmp_path):
    config = PrepareConfig(detector="haar", val_fraction=0, test_fraction=0)
    manifest = prepare(photos, tmp_path / "out", config, progress=False).manifest
    assert manifest["splits"]["train"]["per_class"] == {"happy": 1}
    assert [entry["kind"] for entry in manifest["skipped"]] == ["no_face"]
