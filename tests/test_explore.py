"""Exploration helpers behind notebook 01."""

import io

import numpy as np
import pytest
from PIL import Image

from ferkit.data.matching import match_faces


def _jpeg(face: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(face.squeeze()).save(buffer, format="JPEG", quality=90)
    return np.asarray(Image.open(buffer))[:, :, None]


def test_match_faces_recovers_a_shuffled_reencoded_copy():
    rng = np.random.default_rng(0)
    smooth = rng.normal(size=(60, 12, 12)).repeat(4, axis=1).repeat(4, axis=2)
    faces = np.clip(128 + 40 * smooth, 0, 255).astype(np.uint8)[..., None]
    order = rng.permutation(60)
    copy = np.stack([_jpeg(face) for face in faces[order]])
    copy = np.concatenate([copy, rng.integers(0, 256, (5, 48, 48, 1), dtype=np.uint8)])
    in_a, in_b = match_faces(faces, copy)
    assert len(in_a) == 60
    assert np.array_equal(order[in_b], in_a)  # each face found its own re-encoded copy


@pytest.mark.real_data
@pytest.mark.slow
def test_fer2013_against_ferplus_val(fer2013_prepared, ferplus_val_prepared, tmp_path):
    from ferkit.data.dataset import PreparedDataset
    from ferkit.data.explore import class_balance, ensure_prepared, label_agreement

    _, result = fer2013_prepared
    # ensure_prepared reads a prepared folder as it is (no second preparation)
    fer2013 = ensure_prepared(tmp_path / "no-such-source", result.out_dir)
    assert fer2013.folder == result.out_dir
    ferplus = PreparedDataset(ferplus_val_prepared[1].out_dir)
    table, summary = label_agreement(fer2013.split("val"), ferplus.split("val"))
    # Nearly every FER+ val face is one of FER2013's PublicTest faces.
    assert summary["matched"] >= 0.97 * summary["faces_in_b"]
    assert table.values.sum() == summary["matched"]
    agreed = sum(table.loc[c, c] for c in table.index if c in table.columns)
    assert summary["same_label_share"] == pytest.approx(agreed / summary["matched"])
    assert class_balance(fer2013).loc["disgust", "train"] == 436
