import numpy as np
import pytest
from conftest import write_gray

from ferkit.classes import FERPLUS_EMOTIONS
from ferkit.data import PreparedDataset
from ferkit.prepare import PrepareConfig, prepare
from ferkit.sources import ferplus_label

# neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF
ROWS = {
    "fer0000001.png": [8, 2, 0, 0, 0, 0, 0, 0, 0, 0],  # neutral
    "fer0000002.png": [0, 6, 3, 0, 0, 0, 0, 0, 1, 0],  # happy
    "fer0000003.png": [4, 4, 0, 0, 0, 0, 0, 0, 2, 0],  # tie -> dropped
    "fer0000004.png": [1, 0, 0, 0, 0, 0, 0, 0, 6, 3],  # unknown -> dropped
    "fer0000005.png": [0, 0, 0, 0, 0, 0, 0, 0, 1, 9],  # not a face -> dropped
    "fer0000006.png": [3, 0, 0, 0, 0, 0, 0, 4, 3, 0],  # contempt by plurality, not majority
    "fer0000007.png": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # no votes
}


def _write_split(folder, rows, extra_lines=()):
    lines = []
    for index, (name, votes) in enumerate(rows.items()):
        write_gray(folder / name, value=10 * index, seed=index)
        lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, votes)))
    lines += list(extra_lines)
    (folder / "label.csv").write_text("\n".join(lines) + "\n")


def test_ferplus_votes_labels_and_soft_labels(tmp_path):
    _write_split(
        tmp_path / "FER2013Train",
        ROWS,
        extra_lines=[
            'fer0000099.png,"(0, 0, 48, 48)",1,2,3',  # too few columns
            'fer0000098.png,"(0, 0, 48, 48)",1,2,3,x,0,0,0,0,0,0',  # not a number
            'fer0000097.png,"(0, 0, 48, 48)",9,1,0,0,0,0,0,0,0,0',  # file missing
        ],
    )
    write_gray(tmp_path / "FER2013Train" / "fer0000050.png", 1)  # no row in label.csv
    _write_split(tmp_path / "FER2013Valid", {"fer0000100.png": [0, 0, 7, 0, 0, 0, 3, 0, 0, 0]})
    config = PrepareConfig(soft_labels=True)
    result = prepare(tmp_path, tmp_path / "out", config, progress=False)
    manifest = result.manifest
    assert manifest["format"] == "ferplus"
    assert manifest["classes"] == sorted(FERPLUS_EMOTIONS)
    data = PreparedDataset(result.out_dir)
    train = data.split("train")
    labels = {
        path: data.classes[label] for path, label in zip(train.paths, train.labels, strict=True)
    }
    assert labels == {
        "FER2013Train/fer0000001.png": "neutral",
        "FER2013Train/fer0000002.png": "happy",
        "FER2013Train/fer0000006.png": "contempt",
    }
    kinds = {entry["path"]: entry["kind"] for entry in manifest["skipped"]}
    assert kinds == {
        "FER2013Train/fer0000003.png": "vote_dropped",
        "FER2013Train/fer0000004.png": "vote_dropped",
        "FER2013Train/fer0000005.png": "vote_dropped",
        "FER2013Train/fer0000007.png": "vote_dropped",
        "FER2013Train/label.csv:row 8": "malformed_row",
        "FER2013Train/label.csv:row 9": "malformed_row",
        "FER2013Train/fer0000097.png": "missing_file",
        "FER2013Train/fer0000050.png": "unlabelled",
    }
    # Soft labels are the eight emotion votes, normalised, in the class order.
    row = train.paths.tolist().index("FER2013Train/fer0000002.png")
    expected = np.zeros(8)
    expected[data.classes.index("happy")] = 6 / 9
    expected[data.classes.index("surprise")] = 3 / 9
    np.testing.assert_allclose(train.soft_labels[row], expected, rtol=1e-6)
    np.testing.assert_allclose(train.soft_labels.sum(axis=1), 1.0, rtol=1e-6)
    val = data.split("val")
    assert [data.classes[label] for label in val.labels] == ["surprise"]


def test_strict_majority_rule(tmp_path):
    _write_split(tmp_path / "FER2013Train", ROWS)
    manifest = prepare(
        tmp_path, tmp_path / "out", PrepareConfig(ferplus_mode="majority"), progress=False
    ).manifest
    assert manifest["splits"]["train"]["per_class"]["contempt"] == 0
    assert manifest["splits"]["train"]["count"] == 2


@pytest.mark.parametrize(
    ("votes", "label", "reason"),
    [
        ([0, 10, 0, 0, 0, 0, 0, 0, 0, 0], 1, None),
        ([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], None, "tied vote (neutral, happy)"),
        ([1, 0, 0, 0, 0, 0, 0, 0, 9, 0], None, "majority vote is unknown"),
        ([1, 0, 0, 0, 0, 0, 0, 0, 0, 9], None, "majority vote is not a face (NF)"),
    ],
)
def test_ferplus_label_rule(votes, label, reason):
    assert ferplus_label(np.array(votes, dtype=float)) == (label, reason)


def test_single_ferplus_split_folder(tmp_path):
    _write_split(tmp_path / "FER2013Valid", ROWS)
    manifest = prepare(tmp_path / "FER2013Valid", tmp_path / "out", progress=False).manifest
    assert list(manifest["splits"]) == ["val"]
