import numpy as np

from ferkit.classes import FER2013_CSV_CLASSES
from ferkit.data import PreparedDataset
from ferkit.prepare import PrepareConfig, prepare


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, 48 * 48)


def _row(emotion, pixels, usage):
    return f"{emotion},{' '.join(map(str, pixels))},{usage}"


def test_fer2013_csv_with_usages_and_malformed_rows(tmp_path):
    rows = ["emotion,pixels,Usage"]
    expected = {}
    for number in range(21):
        emotion, usage = number % 7, ("Training", "PublicTest", "PrivateTest")[number % 3]
        rows.append(_row(emotion, _pixels(number), usage))
        expected[f"fer2013.csv:row {number + 2}"] = (emotion, usage, _pixels(number))
    rows += [
        _row(3, _pixels(99)[:100], "Training"),  # too few pixels
        _row("x", _pixels(98), "Training"),  # emotion not a number
        _row(9, _pixels(97), "Training"),  # emotion out of range
        _row(1, _pixels(96), "Holdout"),  # unknown usage
        "4,12 13 abc,Training",  # pixels not integers
        "5",  # too few fields
    ]
    (tmp_path / "fer2013.csv").write_text("\n".join(rows) + "\n")
    result = prepare(tmp_path / "fer2013.csv", tmp_path / "out", progress=False)
    manifest = result.manifest
    assert manifest["format"] == "fer2013-csv"
    assert manifest["classes"] == sorted(FER2013_CSV_CLASSES)
    assert [entry["path"] for entry in manifest["skipped"]] == [
        f"fer2013.csv:row {n}" for n in range(23, 29)
    ]
    assert {entry["kind"] for entry in manifest["skipped"]} == {"malformed_row"}
    assert "2304" in manifest["skipped"][0]["reason"]
    data = PreparedDataset(result.out_dir)
    assert data.splits == ["train", "val", "test"]
    usage_to_split = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
    seen = 0
    for split_name in data.splits:
        split = data.split(split_name)
        for image, label, path in zip(split.images, split.labels, split.paths, strict=True):
            emotion, usage, pixels = expected[path]
            assert usage_to_split[usage] == split_name
            assert data.classes[label] == FER2013_CSV_CLASSES[emotion]
            np.testing.assert_array_equal(image[:, :, 0].ravel(), pixels)
            seen += 1
    assert seen == 21


def test_fer2013_csv_without_usage_is_split_by_seed(tmp_path):
    rows = ["emotion,pixels"] + [_row(n % 2 * 3, _pixels(n), "").rstrip(",") for n in range(40)]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    # A folder holding one such CSV is found as well.
    manifest = prepare(
        tmp_path, tmp_path.parent / "csv-out", PrepareConfig(seed=1), progress=False
    ).manifest
    assert manifest["format"] == "fer2013-csv"
    assert manifest["splits"]["val"]["per_class"]["happy"] == 2
    assert manifest["splits"]["val"]["per_class"]["angry"] == 2
    assert manifest["splits"]["train"]["count"] == 32
