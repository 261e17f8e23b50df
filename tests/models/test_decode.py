"""Decoding: anchor grids, box arithmetic and weighted NMS on known raw outputs."""

from __future__ import annotations

import numpy as np
import pytest

from models.decode import SsdAnchorsDecoder, decode_landmarks, ssd_anchor_centres
from models.manifest import DetectorOutput, LandmarksOutput, SsdAnchors
from models.preprocess import Placement

pytestmark = pytest.mark.unit

SHORT = SsdAnchors(strides=(8, 16, 16, 16))


def _decoder() -> SsdAnchorsDecoder:
    spec = DetectorOutput(
        kind="detector", boxes_output="b", scores_output="s", anchors=SHORT,
        labels=("face",), num_keypoints=6, score_threshold=0.5, nms_iou=0.3,
    )
    return SsdAnchorsDecoder(spec, 128, 128)


def test_anchor_counts_match_blazeface() -> None:
    assert ssd_anchor_centres(SHORT, 128, 128).shape == (896, 2)
    full = SsdAnchors(strides=(4,), interpolated_scale_aspect_ratio=0.0)
    assert ssd_anchor_centres(full, 192, 192).shape == (2304, 2)
    first = ssd_anchor_centres(SHORT, 128, 128)[:3]
    np.testing.assert_allclose(first, [[0.5 / 16, 0.5 / 16]] * 2 + [[1.5 / 16, 0.5 / 16]])


def test_box_is_decoded_relative_to_its_anchor_in_source_pixels() -> None:
    decoder = _decoder()
    boxes = np.zeros((896, 16), dtype=np.float32)
    scores = np.full((896, 1), -10.0, dtype=np.float32)
    anchor = 300
    boxes[anchor, :4] = [6.4, -12.8, 32.0, 25.6]  # dx, dy, w, h in input pixels
    scores[anchor] = 3.0
    identity = Placement(256, 256, 2.0, 2.0, 0.0, 0.0, 128, 128)
    [detection] = decoder.decode({"b": boxes, "s": scores}, identity)
    cx, cy = decoder.anchors[anchor] * 128
    expected = ((cx + 6.4 - 16) / 2, (cy - 12.8 - 12.8) / 2,
                (cx + 6.4 + 16) / 2, (cy - 12.8 + 12.8) / 2)
    np.testing.assert_allclose(detection.box, expected, atol=1e-3)
    assert detection.score == pytest.approx(1 / (1 + np.exp(-3.0)), rel=1e-5)
    assert len(detection.keypoints) == 6


def test_overlapping_boxes_merge_and_apart_boxes_stay() -> None:
    decoder = _decoder()
    boxes = np.zeros((896, 16), dtype=np.float32)
    scores = np.full((896, 1), -10.0, dtype=np.float32)
    boxes[[0, 1, 500], 2:4] = 20.0
    scores[[0, 1, 500]] = [[4.0], [2.0], [1.0]]  # anchors 0 and 1 share a centre
    placement = Placement(128, 128, 1.0, 1.0, 0.0, 0.0, 128, 128)
    detections = decoder.decode({"b": boxes, "s": scores}, placement)
    assert len(detections) == 2
    assert detections[0].score > detections[1].score


def test_huge_logits_do_not_overflow() -> None:
    decoder = _decoder()
    boxes = np.zeros((896, 16), dtype=np.float32)
    boxes[:, 2:4] = 10.0
    scores = np.full((896, 1), -1e30, dtype=np.float32)
    scores[5] = 1e30
    with np.errstate(over="raise"):
        detections = decoder.decode({"b": boxes, "s": scores},
                                    Placement(128, 128, 1, 1, 0, 0, 128, 128))
    assert [d.score for d in detections] == [pytest.approx(1.0)]


def test_classifier_and_anomaly_decoding() -> None:
    from models.decode import decode_anomaly, decode_classification
    from models.manifest import AnomalyOutput, ClassifierOutput

    spec = ClassifierOutput(kind="classifier", output="o", labels=("person", "cat", "car"))
    verdict = decode_classification(spec, np.array([[1.0, 3.0, 0.0]], dtype=np.float32))
    assert verdict.label == "cat"
    assert sum(score for _, score in verdict.scores) == pytest.approx(1.0)
    assert verdict.score == pytest.approx(np.exp(3) / (np.exp(1) + np.exp(3) + 1))
    with pytest.raises(Exception, match="returned 2 scores for 3 labels"):
        decode_classification(spec, np.zeros(2, dtype=np.float32))
    # IsolationForest-style scores: lower means more anomalous.
    anomaly = AnomalyOutput(kind="anomaly", output="o", threshold=-0.1,
                            higher_is_anomalous=False)
    results = decode_anomaly(anomaly, np.array([[0.2], [-0.3]], dtype=np.float32))
    assert [r.is_anomaly for r in results] == [False, True]


@pytest.mark.parametrize("dims", [2, 3])
def test_landmarks_come_back_in_source_pixels_as_plain_floats(dims: int) -> None:
    """A face mesh's points mapped from the model's input (192 px, the source scaled by
    half and padded by 16 px on the left) back to the source; plain Python floats, not
    numpy scalars, so that they serialise as they are."""
    spec = LandmarksOutput(kind="landmarks", points_output="p", presence_output="q",
                           num_points=468, point_dims=dims)
    placement = Placement(source_width=320, source_height=384, scale_x=0.5, scale_y=0.5,
                          pad_x=16.0, pad_y=0.0, input_width=192, input_height=192)
    raw = np.zeros((468, dims), np.float32)
    raw[:, 0] = np.linspace(16, 176, 468)  # input pixels
    raw[:, 1] = np.linspace(0, 192, 468)
    if dims == 3:
        raw[:, 2] = -4.0
    mesh = decode_landmarks(spec, raw.reshape(1, -1), np.array([[3.0]], np.float32), placement)
    assert len(mesh.points) == 468 and all(len(p) == dims for p in mesh.points)
    assert mesh.points[0][:2] == pytest.approx((0.0, 0.0))
    assert mesh.points[-1][:2] == pytest.approx((320.0, 384.0))
    assert all(type(c) is float for p in mesh.points for c in p)
    if dims == 3:
        assert mesh.points[5][2] == pytest.approx(-8.0)  # z scaled as x
    assert mesh.present and mesh.presence == pytest.approx(1 / (1 + np.exp(-3.0)))
