import json

import numpy as np
import pytest

from ferkit.classes import FER2013_CSV_CLASSES
from ferkit.cli import main
from ferkit.data import sources
from ferkit.data.dataset import PreparedDataset
from ferkit.data.prepare import PrepareConfig, prepare
from ferkit.data.sources import list_source


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


def test_fer2013_csv_rows_of_empty_usage_are_listed_not_dropped(tmp_path, capsys):
    rows = ["emotion,pixels,Usage"]
    for number in range(40):
        usage = "" if number % 4 == 3 else ("Training", "PublicTest", "PrivateTest")[number % 3]
        rows.append(_row(number % 7, _pixels(number), usage))
    (tmp_path / "fer2013.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert main(["prepare", str(tmp_path / "fer2013.csv"), "--out", str(out)]) == 3
    printed = capsys.readouterr()
    assert "skipped: nothing" not in printed.out + printed.err
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = manifest["skipped"]
    assert [entry["path"] for entry in skipped] == [
        f"fer2013.csv:row {number + 2}" for number in range(3, 40, 4)
    ]
    assert all(entry["kind"] == "malformed_row" for entry in skipped)
    assert all(entry["reason"].startswith("empty Usage") for entry in skipped)
    kept = sum(split["count"] for split in manifest["splits"].values())
    assert kept + len(skipped) == 40
    # Every Usage empty: the file has no splits, and prepare makes them.
    blank = [row.rsplit(",", 1)[0] + "," for row in rows[1:]]
    (tmp_path / "blank.csv").write_text("\n".join([rows[0], *blank]) + "\n")
    result = prepare(tmp_path / "blank.csv", tmp_path / "blank", progress=False)
    assert result.manifest["skipped"] == [] and result.manifest["split_origin"].startswith("seeded")
    assert sum(split["count"] for split in result.manifest["splits"].values()) == 40


def _good_rows(count: int, start: int = 0) -> list[str]:
    return [_row(n % 7, _pixels(n), "Training") for n in range(start, start + count)]


def test_fer2013_csv_header_with_byte_order_mark(tmp_path):
    # Excel and Notepad save "UTF-8" CSV files with a byte-order mark before the header.
    rows = [" Emotion , PIXELS ,usage", *_good_rows(3), _row(9, _pixels(9), "Training")]
    path = tmp_path / "fer2013.csv"
    path.write_bytes(("\n".join(rows) + "\n").encode("utf-8-sig"))
    result = prepare(path, tmp_path / "out", progress=False)
    manifest = result.manifest
    assert manifest["format"] == "fer2013-csv"
    assert manifest["splits"]["train"]["count"] == 3
    assert [(s["path"], s["kind"]) for s in manifest["skipped"]] == [
        ("fer2013.csv:row 5", "malformed_row")
    ]
    assert "not an integer 0..6" in manifest["skipped"][0]["reason"]
    train = PreparedDataset(result.out_dir).split("train")
    assert sorted(train.paths) == [f"fer2013.csv:row {n}" for n in (2, 3, 4)]


def _with_pixel(pixel: str) -> str:
    return _row(0, [pixel, *_pixels(5)[1:]], "Training")


@pytest.mark.parametrize(
    ("bad_row", "reason"),
    [
        pytest.param(_with_pixel("1" * 401), "pixel '1111", id="pixel-10**400"),
        pytest.param(
            _row("3" * 5000, _pixels(5), "Training"), "emotion '333", id="emotion-5000-digits"
        ),
        pytest.param(_row("٣", _pixels(5), "Training"), "emotion '٣'", id="emotion-arabic-indic"),
        pytest.param(_row("²", _pixels(5), "Training"), "emotion '²'", id="emotion-superscript"),
        pytest.param(_row("３", _pixels(5), "Training"), "emotion '３'", id="emotion-full-width"),
        pytest.param(_with_pixel("３"), "pixel '３'", id="pixel-full-width"),
        pytest.param(_with_pixel("1٣"), "pixel '1٣'", id="pixel-arabic-indic"),
        pytest.param(_with_pixel("0255"), "pixel '0255'", id="pixel-four-digits"),
        pytest.param(_with_pixel("256"), "outside 0..255", id="pixel-256"),
        pytest.param(
            _row(0, _pixels(5), "Training").replace(" ", "\u3000", 1),
            "separated by spaces",
            id="pixel-ideographic-space",
        ),
    ],
)
def test_fer2013_csv_bad_numbers_are_malformed_rows(tmp_path, bad_row, reason):
    rows = ["emotion,pixels,Usage", *_good_rows(2), bad_row, *_good_rows(2, start=2)]
    path = tmp_path / "fer2013.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    listing = list_source(path)
    assert [item.name for item in listing.items] == [f"fer2013.csv:row {n}" for n in (2, 3, 5, 6)]
    [skipped] = listing.skipped
    assert (skipped.name, skipped.kind) == ("fer2013.csv:row 4", "malformed_row")
    assert reason in skipped.reason
    assert len(skipped.reason) < 200  # a huge value is quoted shortened


def test_fer2013_csv_bad_numbers_end_to_end(tmp_path):
    bad = [
        _with_pixel("9" * 401),
        _row("6" * 5000, _pixels(5), "Training"),
        _row("٣", _pixels(5), "Training"),
        _with_pixel("２"),
    ]
    rows = ["emotion,pixels,Usage", *_good_rows(3), *bad, *_good_rows(2, start=3)]
    (tmp_path / "fer2013.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    manifest = prepare(tmp_path / "fer2013.csv", tmp_path / "out", progress=False).manifest
    assert manifest["splits"]["train"]["count"] == 5
    assert [(s["path"], s["kind"]) for s in manifest["skipped"]] == [
        (f"fer2013.csv:row {n}", "malformed_row") for n in (5, 6, 7, 8)
    ]


def test_fer2013_csv_field_over_the_csv_size_limit_costs_one_row(tmp_path):
    huge = _row(1, ["7"] * 100_000, "Training")  # a pixels field of 200,000 characters
    assert len(huge) > 200_000
    stray_quote = '2,"12 13 14,Training'  # would swallow the lines after it
    rows = ["emotion,pixels,Usage", *_good_rows(2), huge, *_good_rows(2, start=2)]
    rows += [stray_quote, *_good_rows(2, start=4)]
    (tmp_path / "fer2013.csv").write_text("\n".join(rows) + "\n")
    listing = list_source(tmp_path / "fer2013.csv")
    assert [item.name for item in listing.items] == [
        f"fer2013.csv:row {n}" for n in (2, 3, 5, 6, 8, 9)
    ]
    assert [(s.name, s.kind) for s in listing.skipped] == [
        ("fer2013.csv:row 4", "malformed_row"),
        ("fer2013.csv:row 7", "malformed_row"),
    ]
    # The rows after the huge one are read in full, pixels and labels alike.
    assert listing.items[2].label == FER2013_CSV_CLASSES[2 % 7]
    np.testing.assert_array_equal(listing.items[2].pixels.ravel(), _pixels(2))


def test_fer2013_csv_unexpected_error_in_a_row_is_recorded(tmp_path, monkeypatch):
    def split_alias(name):
        if name == "Boom":
            raise RuntimeError("cannot read this usage")
        return original(name)

    original = sources.split_alias
    monkeypatch.setattr(sources, "split_alias", split_alias)
    rows = ["emotion,pixels,Usage", *_good_rows(2), _row(1, _pixels(1), "Boom")]
    (tmp_path / "fer2013.csv").write_text("\n".join(rows) + "\n")
    listing = list_source(tmp_path / "fer2013.csv")
    assert len(listing.items) == 2
    [skipped] = listing.skipped
    assert (skipped.name, skipped.kind) == ("fer2013.csv:row 4", "malformed_row")
    assert "RuntimeError: cannot read this usage" in skipped.reason
