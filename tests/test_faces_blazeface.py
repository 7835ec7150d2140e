"""BlazeFace decoding pieces, checked on synthetic inputs."""

import numpy as np
import pytest

from ferkit.faces import _BLAZEFACE_SPECS, _anchor_centers, iou_matrix, weighted_nms


@pytest.mark.parametrize(("model", "count"), [("short", 896), ("full", 2304)])
def test_anchor_count_matches_model_outputs(model, count):
    anchors = _anchor_centers(_BLAZEFACE_SPECS[model])
    assert anchors.shape == (count, 2)
    assert anchors.min() > 0 and anchors.max() < 1


def test_short_range_anchors_follow_mediapipe_order():
    anchors = _anchor_centers(_BLAZEFACE_SPECS["short"])
    # stride 8: 16x16 cells, 2 anchors each, row-major; then stride 16 with 6 per cell
    assert np.allclose(anchors[0], anchors[1]) and np.allclose(anchors[0], [0.5 / 16, 0.5 / 16])
    assert np.allclose(anchors[2], [1.5 / 16, 0.5 / 16])
    assert np.allclose(anchors[512:518], [0.5 / 8, 0.5 / 8])


def test_iou_matrix():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], dtype=float)
    iou = iou_matrix(boxes, boxes)
    assert np.allclose(np.diag(iou), 1)
    assert iou[0, 1] == pytest.approx(50 / 150)
    assert iou[0, 2] == 0


def test_weighted_nms_blends_overlaps_and_keeps_separate_faces():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], dtype=float)
    scores = np.array([0.9, 0.6, 0.8])
    points = np.zeros((3, 6, 2))
    kept = weighted_nms(boxes, scores, points)
    assert len(kept) == 2
    (first_box, first_score, _), (second_box, second_score, _) = kept
    assert first_score == 0.9 and second_score == 0.8
    assert first_box[0] == pytest.approx(0.6 / 1.5)  # score-weighted mean of 0 and 1
    assert np.allclose(second_box, [50, 50, 60, 60])
