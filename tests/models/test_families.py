"""Detector families on synthetic outputs: YOLO v8 and v5, boxes-scores, thresholds, NMS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import InferenceError, ManifestError, parse_manifest
from models.decode import BoxesScoresDecoder, YoloDecoder, hard_nms
from models.manifest import BoxesScoresOutput, DetectorOutput, YoloOutput
from models.preprocess import Placement

pytestmark = pytest.mark.unit

LABELS = ("person", "car", "dog")  # three classes: no 80-class assumption anywhere
# A 200x100 image letterboxed into 64x64: scale 0.32, padded 16 px above and below.
LETTERBOX = Placement(200, 100, 0.32, 0.32, 0.0, 16.0, 64, 64)


def _yolo(**changes: Any) -> YoloOutput:
    fields: dict[str, Any] = {"kind": "detector", "family": "yolo", "output": "out",
                              "labels": LABELS, "score_threshold": 0.3, "nms_iou": 0.5}
    return YoloOutput(**{**fields, **changes})


def _source(cx: float, cy: float, w: float, h: float) -> tuple[float, float, float, float]:
    """A centre-size box in input pixels, as corners in the 200x100 source image."""
    return ((cx - w / 2) / 0.32, (cy - h / 2 - 16) / 0.32,
            (cx + w / 2) / 0.32, (cy + h / 2 - 16) / 0.32)


def _v8(rows: list[tuple[float, float, float, float, list[float]]],
        candidates: int = 12) -> np.ndarray:
    """``[4 + classes, candidates]``; unused candidates score zero."""
    out = np.zeros((4 + len(LABELS), candidates), np.float32)
    for i, (cx, cy, w, h, scores) in enumerate(rows):
        out[:4, i] = (cx, cy, w, h)
        out[4:, i] = scores
    return out


def test_v8_boxes_classes_and_class_aware_nms_decode_exactly() -> None:
    raw = _v8([
        (32, 32, 20, 10, [0.9, 0.0, 0.0]),    # person
        (33, 32, 20, 10, [0.8, 0.1, 0.0]),    # the same person, a bit worse: suppressed
        (32, 32, 20, 10, [0.0, 0.7, 0.0]),    # a car in the same place: another class stays
        (10, 40, 8, 8, [0.0, 0.0, 0.35]),     # a dog, just above the threshold
        (50, 20, 8, 8, [0.2, 0.25, 0.29]),    # below the threshold in every class
    ])
    detections = YoloDecoder(_yolo(), 64, 64).decode({"out": raw[np.newaxis]}, LETTERBOX)
    assert [(d.label, round(d.score, 3)) for d in detections] == [
        ("person", 0.9), ("car", 0.7), ("dog", 0.35)]
    np.testing.assert_allclose(detections[0].box, _source(32, 32, 20, 10), atol=1e-3)
    np.testing.assert_allclose(detections[1].box, _source(32, 32, 20, 10), atol=1e-3)
    np.testing.assert_allclose(detections[2].box, _source(10, 40, 8, 8), atol=1e-3)
    assert detections[0].keypoints == ()


def test_v8_transposed_and_class_agnostic_nms() -> None:
    raw = _v8([(32, 32, 20, 10, [0.9, 0.0, 0.0]), (32, 32, 20, 10, [0.0, 0.7, 0.0])])
    decoder = YoloDecoder(_yolo(class_agnostic_nms=True), 64, 64)
    [only] = decoder.decode({"out": raw.T.copy()}, LETTERBOX)
    assert only.label == "person"


def test_per_label_thresholds() -> None:
    raw = _v8([(32, 32, 20, 10, [0.5, 0.0, 0.0]), (10, 40, 8, 8, [0.0, 0.0, 0.2])])
    decoder = YoloDecoder(_yolo(label_thresholds={"person": 0.6, "dog": 0.15}), 64, 64)
    assert [d.label for d in decoder.decode({"out": raw}, LETTERBOX)] == ["dog"]


def test_v5_objectness_multiplies_class_scores() -> None:
    out = np.zeros((6, 5 + len(LABELS)), np.float32)  # [candidates, 5 + classes]
    out[0] = [32, 32, 20, 10, 0.9, 0.1, 0.8, 0.0]     # car: 0.9 x 0.8 = 0.72
    out[1] = [10, 40, 8, 8, 0.5, 0.0, 0.0, 0.5]       # dog: 0.25, under 0.3: dropped
    out[2] = [50, 20, 8, 8, 0.2, 1.0, 0.0, 0.0]       # objectness under the threshold
    decoder = YoloDecoder(_yolo(layout="v5"), 64, 64)
    [car] = decoder.decode({"out": out[np.newaxis]}, LETTERBOX)
    assert car.label == "car"
    assert car.score == pytest.approx(0.72)
    np.testing.assert_allclose(car.box, _source(32, 32, 20, 10), atol=1e-3)


def test_normalised_coordinates_are_scaled_to_the_input() -> None:
    raw = _v8([(0.5, 0.5, 20 / 64, 10 / 64, [0.9, 0.0, 0.0])])
    [person] = YoloDecoder(_yolo(coordinates="normalized"), 64, 64).decode(
        {"out": raw}, LETTERBOX)
    np.testing.assert_allclose(person.box, _source(32, 32, 20, 10), atol=1e-3)


def test_non_finite_boxes_and_scores_never_become_detections() -> None:
    raw = _v8([(np.nan, 32, 20, 10, [0.9, 0.0, 0.0]), (32, 32, np.inf, 10, [0.0, 0.8, 0.0]),
               (10, 40, 8, 8, [0.0, 0.0, np.nan]), (50, 20, 8, 8, [0.0, 0.0, 0.6])])
    assert [d.label for d in YoloDecoder(_yolo(), 64, 64).decode({"out": raw}, LETTERBOX)] == [
        "dog"]


def test_boxes_outside_the_image_are_clipped() -> None:
    raw = _v8([(2, 20, 20, 10, [0.9, 0.0, 0.0])])
    [person] = YoloDecoder(_yolo(), 64, 64).decode({"out": raw}, LETTERBOX)
    assert person.box[0] == 0.0
    assert person.box[1] == 0.0


@pytest.mark.parametrize("shape", [(8, 12), (12, 9), (2, 7, 12)])
def test_a_yolo_output_that_does_not_fit_the_labels_is_a_clear_error(
        shape: tuple[int, ...]) -> None:
    with pytest.raises(InferenceError, match="layout v8 with 3 labels needs 7 values"):
        YoloDecoder(_yolo(), 64, 64).decode({"out": np.zeros(shape, np.float32)}, LETTERBOX)
    with pytest.raises(InferenceError, match="has no output 'out'"):
        YoloDecoder(_yolo(), 64, 64).decode({"other": np.zeros((7, 12))}, LETTERBOX)


def test_tflite_post_processed_boxes_scores_classes_and_count() -> None:
    spec = BoxesScoresOutput(
        kind="detector", family="boxes-scores", boxes_output="b", scores_output="s",
        classes_output="c", count_output="n", box_order="yxyx", coordinates="normalized",
        labels=LABELS, score_threshold=0.5, label_thresholds={"dog": 0.2})
    boxes = np.array([[0.25, 0.25, 0.75, 0.5], [0.5, 0.0, 1.0, 0.25],
                      [0.0, 0.0, 1.0, 1.0], [0.1, 0.1, 0.2, 0.2]], np.float32)
    outputs = {"b": boxes, "s": np.array([0.9, 0.3, 0.4, 0.99], np.float32),
               "c": np.array([1.0, 2.0, 0.0, 0.0], np.float32),
               "n": np.array([3.0], np.float32)}  # the fourth row is padding
    detections = BoxesScoresDecoder(spec, 64, 64).decode(outputs, LETTERBOX)
    assert [(d.label, round(d.score, 2)) for d in detections] == [("car", 0.9), ("dog", 0.3)]
    x1, y1, x2, y2 = 0.25 * 64, 0.25 * 64, 0.5 * 64, 0.75 * 64
    expected = (x1 / 0.32, (y1 - 16) / 0.32, x2 / 0.32, (y2 - 16) / 0.32)
    np.testing.assert_allclose(detections[0].box, expected, atol=1e-3)


def test_boxes_with_per_class_scores_and_nms() -> None:
    spec = BoxesScoresOutput(
        kind="detector", family="boxes-scores", boxes_output="b", scores_output="s",
        coordinates="pixels", labels=LABELS, score_threshold=0.5, nms_iou=0.5)
    boxes = np.array([[10, 20, 30, 40], [11, 20, 31, 40], [40, 40, 60, 60]], np.float32)
    scores = np.array([[0.1, 0.9, 0.0], [0.0, 0.8, 0.0], [0.6, 0.0, 0.0]], np.float32)
    detections = BoxesScoresDecoder(spec, 64, 64).decode({"b": boxes, "s": scores},
                                                          LETTERBOX)
    assert [d.label for d in detections] == ["car", "person"]
    with pytest.raises(InferenceError, match="5 scores do not fit 3 boxes"):
        BoxesScoresDecoder(spec, 64, 64).decode({"b": boxes, "s": np.zeros(5)}, LETTERBOX)


def test_hard_nms_keeps_best_first_and_respects_classes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [20, 20, 30, 30]],
                     np.float32)
    scores = np.array([0.5, 0.9, 0.8, 0.1], np.float32)
    classes = np.array([0, 0, 1, 0], np.intp)
    kept = hard_nms(boxes, scores, classes, iou_threshold=0.5, max_detections=10)
    assert kept.tolist() == [1, 2, 3]
    assert hard_nms(boxes, scores, None, iou_threshold=0.5, max_detections=10).tolist() == [1, 3]
    assert hard_nms(boxes, scores, classes, iou_threshold=0.5, max_detections=2).tolist() == [1, 2]


def _manifest(output: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": 1, "name": "m", "version": "1.0.0", "task": "detector",
        "runtime": "onnx", "file": {"path": "model.onnx", "sha256": "0" * 64, "size_bytes": 1},
        "input": {"shape": [1, 3, 64, 64], "layout": "NCHW", "dtype": "float32",
                  "color_order": "RGB", "resize": "letterbox"},
        "output": output,
    }


def test_manifest_families_parse_and_old_ssd_manifests_still_read() -> None:
    old_ssd = {"kind": "detector", "boxes_output": "b", "scores_output": "s",
               "anchors": {"strides": [8]}, "labels": ["face"], "num_keypoints": 0,
               "score_threshold": 0.5, "nms_iou": 0.3}
    manifest = parse_manifest(json.dumps(_manifest(old_ssd)), path=Path("m"))
    assert isinstance(manifest.output, DetectorOutput)
    assert manifest.output.family == "ssd-anchors"
    yolo = {"kind": "detector", "family": "yolo", "output": "o", "labels": ["a", "b"],
            "score_threshold": 0.25, "label_thresholds": {"b": 0.6}}
    parsed = parse_manifest(json.dumps(_manifest(yolo)), path=Path("m"))
    assert isinstance(parsed.output, YoloOutput)
    assert parsed.output.thresholds() == (0.25, 0.6)
    assert parse_manifest(parsed.to_json(), path=Path("m")) == parsed


@pytest.mark.parametrize(("output", "field", "message"), [
    ({"kind": "detector", "family": "detr", "output": "o"}, "output",
     "detector families: ssd-anchors, yolo, boxes-scores"),
    ({"kind": "detector", "family": "yolo", "output": "o", "labels": ["a"],
      "score_threshold": 0.25, "label_thresholds": {"zebra": 0.5}}, "output",
     "label_thresholds names labels the model lacks: zebra"),
    ({"kind": "detector", "family": "yolo", "output": "o", "labels": ["a"],
      "score_threshold": 0.25, "layout": "v9"}, "output.layout", "'v8' or 'v5'"),
])
def test_bad_detector_outputs_are_named(output: dict[str, Any], field: str,
                                        message: str) -> None:
    with pytest.raises(ManifestError, match=message) as caught:
        parse_manifest(json.dumps(_manifest(output)), path=Path("m"))
    assert caught.value.field == field
