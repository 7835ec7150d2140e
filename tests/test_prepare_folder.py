import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_gray
from PIL import Image

from ferkit.data.dataset import PreparedDataset
from ferkit.data.prepare import NoUsableImagesError, PrepareConfig, prepare, stratified_split
from ferkit.data.synthetic import make_image_folder


def _flat_dataset(root: Path, counts: dict[str, int]) -> Path:
    for class_index, (folder, count) in enumerate(counts.items()):
        for number in range(count):
            write_gray(
                root / folder / f"{number}.png",
                value=class_index * 20,
                seed=1000 * class_index + number,
            )
    return root


def test_flat_folders_get_a_seeded_stratified_split(tmp_path):
    source = _flat_dataset(tmp_path / "src", {"Happy": 30, "sadness": 20, "Smirk": 10})
    result = prepare(source, tmp_path / "out", PrepareConfig(seed=3), progress=False)
    manifest = result.manifest
    assert manifest["classes"] == ["happy", "sad", "Smirk"]
    assert manifest["class_names_in_source"]["sad"] == ["sadness"]
    assert manifest["split_origin"].startswith("seeded stratified")
    per_split = {split: info["per_class"] for split, info in manifest["splits"].items()}
    assert per_split["val"] == {"happy": 3, "sad": 2, "Smirk": 1}
    assert per_split["test"] == {"happy": 3, "sad": 2, "Smirk": 1}
    assert per_split["train"] == {"happy": 24, "sad": 16, "Smirk": 8}
    # Labels follow the folder a face came from.
    train = PreparedDataset(result.out_dir).split("train")
    for path, label in zip(train.paths, train.labels, strict=True):
        assert {"Happy": "happy", "sadness": "sad", "Smirk": "Smirk"}[
            path.split("/")[0]
        ] == manifest["classes"][label]


def test_same_seed_same_split_other_seed_other_split(tmp_path):
    source = _flat_dataset(tmp_path / "src", {"happy": 40, "sad": 40})

    def val_paths(seed, name):
        result = prepare(source, tmp_path / name, PrepareConfig(seed=seed), progress=False)
        return sorted(PreparedDataset(result.out_dir).split("val").paths.tolist())

    first = val_paths(1, "a")
    assert first == val_paths(1, "b")
    assert first != val_paths(2, "c")


def test_stratified_split_proportions():
    labels = np.array(["a"] * 100 + ["b"] * 10)
    assignment = stratified_split(labels, 0.2, 0.1, seed=0)
    for label, n in (("a", 100), ("b", 10)):
        mine = assignment[labels == label]
        assert (mine == "val").sum() == round(n * 0.2)
        assert (mine == "test").sum() == round(n * 0.1)


@pytest.mark.parametrize(
    ("split_folders", "expected"),
    [
        (("train", "val", "test"), ["train", "val", "test"]),
        (("Training", "PublicTest", "PrivateTest"), ["train", "val", "test"]),
        (("train", "test"), ["train", "test"]),
    ],
)
def test_split_folders_are_kept(tmp_path, split_folders, expected):
    for split_index, split in enumerate(split_folders):
        for folder in ("angry", "Happy"):
            for number in range(3):
                write_gray(
                    tmp_path / "src" / split / folder / f"{number}.jpg",
                    50,
                    seed=split_index * 100 + number + (folder == "angry") * 50,
                )
    manifest = prepare(tmp_path / "src", tmp_path / "out", progress=False).manifest
    assert list(manifest["splits"]) == expected
    assert manifest["split_origin"] == "source"
    for info in manifest["splits"].values():
        assert info["per_class"] == {"angry": 3, "happy": 3}


def test_val_can_be_carved_from_train_on_request(tmp_path):
    for split in ("train", "test"):
        for folder in ("angry", "happy"):
            for number in range(20):
                write_gray(
                    tmp_path / "src" / split / folder / f"{number}.png",
                    60,
                    seed=hash((split, folder, number)) % 10_000,
                )
    manifest = prepare(
        tmp_path / "src", tmp_path / "out", PrepareConfig(val_fraction=0.25), progress=False
    ).manifest
    assert manifest["splits"]["val"]["per_class"] == {"angry": 5, "happy": 5}
    assert manifest["splits"]["train"]["per_class"] == {"angry": 15, "happy": 15}
    assert manifest["splits"]["test"]["per_class"] == {"angry": 20, "happy": 20}
    assert "val carved from train" in manifest["split_origin"]


def test_bad_files_are_recorded_and_the_rest_completes(tmp_path):
    source = make_image_folder(tmp_path / "src", per_class=12, with_bad_files=True)
    (source / "README.txt").write_text("loose file")
    result = prepare(source, tmp_path / "out", PrepareConfig(faces="crop"), progress=False)
    manifest = result.manifest
    by_path = {entry["path"]: entry for entry in manifest["skipped"]}
    assert by_path["Happy/corrupt.jpg"]["kind"] == "unreadable"
    assert "corrupt" in by_path["Happy/corrupt.jpg"]["reason"]
    assert by_path["Happy/truncated.png"]["kind"] == "unreadable"
    assert "empty file" in by_path["Happy/empty.jpg"]["reason"]
    assert by_path["Happy/notes.txt"]["kind"] == "not_image"
    assert by_path["fear"]["kind"] == "empty_class"
    assert by_path["README.txt"]["kind"] == "not_in_class_folder"
    assert len(manifest["skipped"]) == 6
    # Every good image (4 classes x 12, in mixed formats, sizes and modes) made it.
    assert sum(info["count"] for info in manifest["splits"].values()) == 48
    assert manifest["classes"] == ["angry", "happy", "sad", "surprise"]
    written = json.loads((result.out_dir / "manifest.json").read_text())
    assert written["skipped_counts"] == {
        "empty_class": 1,
        "not_image": 1,
        "not_in_class_folder": 1,
        "unreadable": 3,
    }


def test_image_that_claims_an_image_extension_but_is_text(tmp_path):
    _flat_dataset(tmp_path / "src", {"happy": 4, "sad": 4})
    (tmp_path / "src" / "happy" / "fake.png").write_text("hello")
    manifest = prepare(tmp_path / "src", tmp_path / "out", progress=False).manifest
    (entry,) = manifest["skipped"]
    assert entry["kind"] == "not_image" and entry["path"] == "happy/fake.png"


def test_output_size_and_channels(tmp_path):
    _flat_dataset(tmp_path / "src", {"happy": 5, "sad": 5})
    config = PrepareConfig(size=32, channels=3, val_fraction=0, test_fraction=0)
    result = prepare(tmp_path / "src", tmp_path / "out", config, progress=False)
    train = PreparedDataset(result.out_dir).split("train")
    assert train.images.shape == (10, 32, 32, 3) and train.images.dtype == np.uint8


def test_crop_mode_keeps_pixels_of_48px_faces(tmp_path):
    path = write_gray(tmp_path / "src" / "happy" / "a.png", 0, seed=7)
    write_gray(tmp_path / "src" / "sad" / "b.png", 0, seed=8)
    config = PrepareConfig(val_fraction=0, test_fraction=0)
    result = prepare(tmp_path / "src", tmp_path / "out", config, progress=False)
    train = PreparedDataset(result.out_dir).split("train")
    index = train.paths.tolist().index("happy/a.png")
    np.testing.assert_array_equal(train.images[index, :, :, 0], np.asarray(Image.open(path)))


def test_photo_without_face_is_reported(tmp_path):
    _flat_dataset(tmp_path / "src", {"happy": 3})
    write_gray(tmp_path / "src" / "happy" / "wall.png", 128, size=300)  # a flat 300 px photo
    config = PrepareConfig(detector="haar", val_fraction=0, test_fraction=0)
    manifest = prepare(tmp_path / "src", tmp_path / "out", config, progress=False).manifest
    (entry,) = manifest["skipped"]
    assert entry == {
        "path": "happy/wall.png",
        "split": None,
        "kind": "no_face",
        "reason": "no face found by the haar detector",
        "label": "happy",  # kept so that evaluation can count the miss as an error
    }
    assert manifest["face_modes"] == {"crop": 3}


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        prepare(tmp_path / "does-not-exist", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_source_without_usable_images_leaves_no_output(tmp_path):
    (tmp_path / "src" / "happy").mkdir(parents=True)
    (tmp_path / "src" / "happy" / "a.jpg").write_bytes(b"")
    (tmp_path / "src" / "happy" / "b.txt").write_text("x")
    with pytest.raises(NoUsableImagesError, match="no usable image"):
        prepare(tmp_path / "src", tmp_path / "out", progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["src"]  # no partial folders


def test_existing_output_needs_overwrite(tmp_path):
    _flat_dataset(tmp_path / "src", {"happy": 5, "sad": 5})
    prepare(tmp_path / "src", tmp_path / "out", progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare(tmp_path / "src", tmp_path / "out", progress=False)
    prepare(tmp_path / "src", tmp_path / "out", overwrite=True, progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "src"]


def test_split_folders_mixed_with_class_folders_is_an_error(tmp_path):
    write_gray(tmp_path / "src" / "train" / "happy" / "a.png", 1)
    write_gray(tmp_path / "src" / "sad" / "b.png", 1)
    with pytest.raises(ValueError, match="mixes split folders"):
        prepare(tmp_path / "src", tmp_path / "out", progress=False)


def test_duplicates_are_reported_and_dedupe_removes_them(tmp_path):
    for split in ("train", "val"):
        for number in range(4):
            write_gray(
                tmp_path / "src" / split / "happy" / f"{split}{number}.png",
                10,
                seed=number + (split == "val") * 10,
            )
            write_gray(
                tmp_path / "src" / split / "sad" / f"{split}{number}.png",
                10,
                seed=100 + number + (split == "val") * 10,
            )
    # A repeat inside train, and a val face copied into train.
    (tmp_path / "src/train/happy/copy.png").write_bytes(
        (tmp_path / "src/train/happy/train0.png").read_bytes()
    )
    (tmp_path / "src/train/sad/leak.png").write_bytes(
        (tmp_path / "src/val/sad/val1.png").read_bytes()
    )
    manifest = prepare(tmp_path / "src", tmp_path / "out", progress=False).manifest
    duplicates = manifest["duplicates"]
    assert duplicates["groups_within_split"] == 1 and duplicates["groups_across_splits"] == 1
    (across,) = duplicates["across_splits"]
    assert {entry["path"] for entry in across} == {"train/sad/leak.png", "val/sad/val1.png"}
    assert manifest["splits"]["train"]["count"] == 10

    deduped = prepare(
        tmp_path / "src", tmp_path / "dedup", PrepareConfig(dedupe=True), progress=False
    ).manifest
    assert deduped["splits"]["train"]["count"] == 8
    assert deduped["splits"]["val"]["count"] == 8  # evaluation splits keep their copy
    dropped = {entry["path"] for entry in deduped["skipped"] if entry["kind"] == "duplicate"}
    # Within a split the first in sorted order stays (copy.png sorts before train0.png).
    assert dropped == {"train/happy/train0.png", "train/sad/leak.png"}


def test_source_hash_tracks_content(tmp_path):
    _flat_dataset(tmp_path / "src", {"happy": 3, "sad": 3})
    first = prepare(tmp_path / "src", tmp_path / "a", progress=False).manifest["source_hash"]
    again = prepare(tmp_path / "src", tmp_path / "b", progress=False).manifest["source_hash"]
    write_gray(tmp_path / "src" / "happy" / "0.png", 99, seed=12345)
    changed = prepare(tmp_path / "src", tmp_path / "c", progress=False).manifest["source_hash"]
    assert first == again != changed


def test_parallel_and_serial_give_identical_output(tmp_path):
    source = make_image_folder(tmp_path / "src", per_class=80)  # over the in-process threshold
    serial = prepare(source, tmp_path / "one", PrepareConfig(workers=1), progress=False)
    parallel = prepare(source, tmp_path / "two", PrepareConfig(workers=2), progress=False)
    for split in serial.manifest["splits"]:
        a = PreparedDataset(serial.out_dir).split(split)
        b = PreparedDataset(parallel.out_dir).split(split)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.paths.tolist() == b.paths.tolist()
