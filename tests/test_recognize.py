"""The Python API on real photos, with the bundled model."""

import numpy as np
import pytest
from conftest import require_shared
from PIL import Image

from ferkit import EmotionRecognizer, results_to_dataframe

pytestmark = [pytest.mark.real_data, pytest.mark.slow]


@pytest.fixture(scope="module")
def recognizer():
    return EmotionRecognizer()  # bundled model, MTCNN


@pytest.fixture(scope="module")
def samples():
    return require_shared("samples")


def test_one_smiling_face(recognizer, samples):
    (face,) = recognizer.predict(samples / "justin.jpg")
    assert face.label == "happy"
    assert sum(face.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert set(face.probabilities) == set(recognizer.classes)
    assert face.landmarks and "left_eye" in face.landmarks
    _, _, width, height = face.box
    assert width > 100 and height > 100


def test_two_faces_and_none(recognizer, samples):
    assert len(recognizer.predict(samples / "couple.jpg")) == 2
    assert recognizer.predict(samples / "no-faces.jpg") == []


def test_inputs_paths_arrays_bgr_and_pil_agree(recognizer, samples):
    path = samples / "justin.jpg"
    rgb = np.asarray(Image.open(path).convert("RGB"))
    from_path = recognizer.predict(path)[0]
    from_bgr = recognizer.predict(rgb[:, :, ::-1], color_order="BGR")[0]
    from_pil = recognizer.predict(Image.open(path))[0]
    for other in (from_bgr, from_pil):
        assert other.box == from_path.box
        for name, p in from_path.probabilities.items():
            assert other.probabilities[name] == pytest.approx(p, abs=1e-5)


def test_batch_matches_single_and_dataframe(recognizer, samples):
    paths = [samples / "justin.jpg", samples / "no-faces.jpg", samples / "couple.jpg"]
    batch = recognizer.predict_batch(paths)
    assert [len(faces) for faces in batch] == [1, 0, 2]
    single = recognizer.predict(paths[2])
    for a, b in zip(batch[2], single, strict=True):
        assert a.label == b.label and a.box == b.box
    frame = results_to_dataframe(dict(zip(paths, batch, strict=True)))
    assert len(frame) == 3 and {"source", "label", "x", "p_happy"} <= set(frame.columns)


def test_bad_array_is_a_clear_error(recognizer):
    with pytest.raises(ValueError, match="uint8"):
        recognizer.predict(np.zeros((10, 10, 3), dtype=np.float32))
