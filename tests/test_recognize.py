"""The Python API on real photos, with the bundled model."""

import numpy as np
import pytest
from conftest import require_shared
from PIL import Image

from ferkit import EmotionRecognizer, results_to_dataframe

pytestmark = [pytest.mark.real_data, pytest.mark.slow]


@pytest.fixture(scope="module")
def recognizer():
    return EmotionRecognizer()  # bundled model (its int8 LiteRT file), BlazeFace full-range


@pytest.fixture(scope="module")
def samples():
    return require_shared("samples")


@pytest.fixture(scope="module", params=["blazeface-full", "blazeface", "mtcnn", "haar"])
def any_detector(request):
    return EmotionRecognizer(detector=request.param)


def test_default_runs_without_tensorflow(recognizer):
    from ferkit.inference.runtimes import TFLiteModel

    assert isinstance(recognizer.model, TFLiteModel)
    assert recognizer.detector.name == "blazeface-full"


def test_batch_and_frame_classifiers_are_the_same_model_with_their_own_threads():
    """predict's image loop classifies with ONNX Runtime threads that sleep between calls
    (decoding has a thread of its own); video frames on one thread; both give the model's
    probabilities. A recogniser given ``threads`` keeps its one classifier."""
    faces = np.random.default_rng(3).integers(0, 256, (16, 48, 48, 1)).astype(np.uint8)
    recognizer = EmotionRecognizer(backend="onnx")
    batch, frame = recognizer.batch_model, recognizer.frame_model
    assert batch is recognizer.batch_model and batch is not recognizer.model
    options = batch._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert frame._session.get_session_options().intra_op_num_threads == 1
    for model in (batch, frame):
        assert model.source == recognizer.model.source
        assert np.allclose(model.predict_proba(faces), recognizer.model.predict_proba(faces))
    given = EmotionRecognizer(threads=2)
    assert given.batch_model is given.model and given.frame_model is given.model


def test_the_default_runs_int8_litert_with_an_interpreter_per_thread(recognizer):
    """The default model's default runtime is its int8 LiteRT file: batches on every
    core, video frames on an interpreter of one thread, and each recogniser a server lends
    to a thread has an interpreter of its own (one interpreter runs one call at a time)."""
    from ferkit.inference.runtimes import TFLiteModel

    faces = np.random.default_rng(3).integers(0, 256, (16, 48, 48, 1)).astype(np.uint8)
    model = recognizer.model
    assert isinstance(model, TFLiteModel) and model.source.name == "model.int8.tflite"
    assert recognizer.batch_model is model
    frame = recognizer.frame_model
    assert isinstance(frame, TFLiteModel) and frame.threads == 1 and frame is not model
    assert frame is recognizer.frame_model
    twin = recognizer.with_detector()
    assert twin.model is not model and twin.model.source == model.source
    assert twin.frame_model is not frame
    expected = model.predict_proba(faces)
    for other in (frame, twin.model, twin.frame_model):
        assert np.allclose(other.predict_proba(faces), expected, atol=1e-6)


def test_one_smiling_face(any_detector, samples):
    recognizer = any_detector
    (face,) = recognizer.predict(samples / "justin.jpg")
    assert face.label == "happy"
    assert sum(face.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert set(face.probabilities) == set(recognizer.classes)
    if recognizer.detector.name != "haar":  # the cascade gives no landmarks
        assert face.landmarks["left_eye"][0] < face.landmarks["right_eye"][0]
    _, _, width, height = face.box
    assert width > 100 and height > 100


def test_two_faces_and_none(any_detector, samples):
    recognizer = any_detector
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


def test_detectors_frame_faces_alike(samples):
    """BlazeFace boxes are rescaled to MTCNN's framing, so crops (and labels) agree."""
    blaze = EmotionRecognizer(detector="blazeface-full").predict(samples / "couple.jpg")
    mtcnn = EmotionRecognizer(detector="mtcnn").predict(samples / "couple.jpg")
    pairs = zip(
        sorted(blaze, key=lambda f: f.box[0]), sorted(mtcnn, key=lambda f: f.box[0]), strict=True
    )
    for a, b in pairs:
        side_a, side_b = max(a.box[2:]), max(b.box[2:])
        assert side_a == pytest.approx(side_b, rel=0.15)
        center_a = np.array([a.box[0] + a.box[2] / 2, a.box[1] + a.box[3] / 2])
        center_b = np.array([b.box[0] + b.box[2] / 2, b.box[1] + b.box[3] / 2])
        assert np.abs(center_a - center_b).max() < 0.12 * side_b
        # Only clear expressions must agree: the man's face is ambiguous (sad against
        # neutral swings with a few pixels of framing), the woman's smile is not.
        if max(b.probabilities.values()) > 0.8:
            assert a.label == b.label
