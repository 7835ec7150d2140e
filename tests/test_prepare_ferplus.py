import numpy as np
import pytest
from conftest import write_gray

from ferkit.classes import FERPLUS_EMOTIONS
from ferkit.data.dataset import PreparedDataset
from ferkit.data.prepare import NoUsableImagesError, PrepareConfig, prepare
from ferkit.data.sources import ferplus_label, list_source

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
    source = tmp_path / "ferplus"
    _write_split(
        source / "FER2013Train",
        ROWS,
        extra_lines=[
            'fer0000099.png,"(0, 0, 48, 48)",1,2,3',  # too few columns
            'fer0000098.png,"(0, 0, 48, 48)",1,2,3,x,0,0,0,0,0,0',  # not a number
            'fer0000097.png,"(0, 0, 48, 48)",9,1,0,0,0,0,0,0,0,0',  # file missing
        ],
    )
    write_gray(source / "FER2013Train" / "fer0000050.png", 1)  # no row in label.csv
    _write_split(source / "FER2013Valid", {"fer0000100.png": [0, 0, 7, 0, 0, 0, 3, 0, 0, 0]})
    config = PrepareConfig(soft_labels=True)
    result = prepare(source, tmp_path / "out", config, progress=False)
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
    _write_split(tmp_path / "ferplus" / "FER2013Train", ROWS)
    manifest = prepare(
        tmp_path / "ferplus",
        tmp_path / "out",
        PrepareConfig(ferplus_mode="majority"),
        progress=False,
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


GOOD_ROWS = {name: ROWS[name] for name in ("fer0000001.png", "fer0000002.png")}
BOX = '"(0, 0, 48, 48)"'
VOTE_RULE = "vote counts must be finite numbers >= 0"


def _bad_vote_line(name, value):
    return f"{name},{BOX},{value},5,0,0,0,0,0,0,0,0"


def _prepared_train(result):
    return PreparedDataset(result.out_dir).split("train")


def test_ferplus_non_finite_votes_are_malformed_rows(tmp_path):
    split = tmp_path / "ferplus" / "FER2013Train"
    bad_values = ["nan", "inf", "-inf", "1e400", "9" * 400, "-1"]
    bad_lines = []
    for number, value in enumerate(bad_values, start=10):
        name = f"fer00000{number}.png"
        write_gray(split / name, value=number, seed=number)  # the file is fine, its votes not
        bad_lines.append(_bad_vote_line(name, value))
    _write_split(split, GOOD_ROWS, extra_lines=bad_lines)
    result = prepare(
        tmp_path / "ferplus", tmp_path / "out", PrepareConfig(soft_labels=True), progress=False
    )
    skipped = result.manifest["skipped"]
    assert [(entry["path"], entry["kind"]) for entry in skipped] == [
        (f"FER2013Train/label.csv:row {n}", "malformed_row") for n in range(3, 9)
    ]
    assert all(entry["reason"].startswith(VOTE_RULE) for entry in skipped)
    train = _prepared_train(result)
    assert sorted(train.paths) == [f"FER2013Train/{name}" for name in GOOD_ROWS]
    assert np.isfinite(train.soft_labels).all()
    np.testing.assert_allclose(train.soft_labels.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        *(
            pytest.param(_bad_vote_line("fer0000009.png", value), VOTE_RULE, id=f"vote-{name}")
            for name, value in [
                ("nan", "nan"),
                ("NaN", "NaN"),
                ("inf", "inf"),
                ("Infinity", "Infinity"),
                ("1e400", "1e400"),
                ("400-digits", "9" * 400),
                ("negative", "-1"),
                ("over-1000-in-all", "1001"),
                ("full-width-digit", "３"),
                ("underscore", "1_0"),
            ]
        ),
        pytest.param(
            'fer0000009.png,"(0, 0, inf, 48)",9,1,0,0,0,0,0,0,0,0', "face box", id="box-inf"
        ),
        pytest.param(
            'fer0000009.png,"(0, 0, nan, 48)",9,1,0,0,0,0,0,0,0,0', "face box", id="box-nan"
        ),
    ],
)
def test_ferplus_bad_row_costs_that_row_only(tmp_path, line, reason):
    split = tmp_path / "FER2013Train"
    write_gray(split / "fer0000009.png", 1)
    _write_split(split, GOOD_ROWS, extra_lines=[line, f"fer0000003.png,{BOX},0,0,9,0,0,0,0,0,0,1"])
    write_gray(split / "fer0000003.png", 2)
    listing = list_source(split)
    assert sorted(item.name for item in listing.items) == [
        "fer0000001.png",
        "fer0000002.png",
        "fer0000003.png",
    ]
    [skipped] = listing.skipped
    assert (skipped.name, skipped.kind) == ("label.csv:row 3", "malformed_row")
    assert skipped.reason.startswith(reason)
    assert len(skipped.reason) < 200  # a huge value is quoted shortened


def test_ferplus_image_names_must_stay_inside_the_split_folder(tmp_path):
    split = tmp_path / "ferplus" / "FER2013Train"
    outside = write_gray(tmp_path / "other" / "fer0000001.png", 200, seed=5)
    write_gray(split / "sub" / "fer0000001.png", 100, seed=6)
    names = [
        "../../other/fer0000001.png",
        str(outside),
        "/etc/passwd",
        "C:\\x.png",
        "C:x.png",
        "sub/fer0000001.png",
        "sub\\fer0000001.png",
        "..",
    ]
    bad_lines = [f'"{name}",{BOX},9,1,0,0,0,0,0,0,0,0' for name in names]
    _write_split(split, GOOD_ROWS, extra_lines=bad_lines)
    result = prepare(
        tmp_path / "ferplus", tmp_path / "out", PrepareConfig(soft_labels=True), progress=False
    )
    skipped = result.manifest["skipped"]
    assert [(entry["path"], entry["kind"]) for entry in skipped] == [
        (f"FER2013Train/label.csv:row {n}", "malformed_row") for n in range(3, 3 + len(names))
    ]
    assert all(
        entry["reason"].startswith(
            "image name must be a file name inside the split folder, not a path"
        )
        for entry in skipped
    )
    train = _prepared_train(result)
    assert sorted(train.paths) == [f"FER2013Train/{name}" for name in GOOD_ROWS]
    assert np.isfinite(train.soft_labels).all()


def test_ferplus_label_csv_with_byte_order_mark(tmp_path):
    split = tmp_path / "FER2013Train"
    _write_split(split, GOOD_ROWS)
    text = (split / "label.csv").read_text()
    (split / "label.csv").write_bytes(text.encode("utf-8-sig"))
    listing = list_source(split)
    assert sorted(item.name for item in listing.items) == sorted(GOOD_ROWS)
    assert listing.skipped == []


def test_ferplus_empty_or_all_malformed_label_csv(tmp_path):
    source = tmp_path / "ferplus"
    _write_split(source / "FER2013Train", GOOD_ROWS)
    (source / "FER2013Valid").mkdir()
    (source / "FER2013Valid" / "label.csv").write_text("")
    write_gray(source / "FER2013Test" / "fer0000009.png", 1)
    (source / "FER2013Test" / "label.csv").write_text(
        _bad_vote_line("fer0000009.png", "nan") + "\n" + _bad_vote_line("../x.png", "1") + "\n"
    )
    result = prepare(source, tmp_path / "out", PrepareConfig(soft_labels=True), progress=False)
    assert list(result.manifest["splits"]) == ["train"]
    assert [(entry["path"], entry["kind"]) for entry in result.manifest["skipped"]] == [
        ("FER2013Test/label.csv:row 1", "malformed_row"),
        ("FER2013Test/label.csv:row 2", "malformed_row"),
    ]
    # Alone, neither split has anything to prepare: a clear error, not a crash.
    empty = list_source(source / "FER2013Valid")
    assert (empty.items, empty.skipped) == ([], [])
    with pytest.raises(NoUsableImagesError):
        prepare(source / "FER2013Valid", tmp_path / "out-valid", progress=False)
    with pytest.raises(NoUsableImagesError, match="malformed_row"):
        prepare(source / "FER2013Test", tmp_path / "out-test", progress=False)
