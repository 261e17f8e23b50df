"""Output decoding per task: SSD anchors, BlazeFace boxes, weighted NMS, scores.

Pure numpy, vectorised over anchors; no runtime objects. Follows MediaPipe's
``ssd_anchors_calculator`` and ``tensors_to_detections_calculator``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from models.errors import InferenceError
from models.manifest import (
    AnomalyOutput,
    ClassifierOutput,
    DetectorOutput,
    LandmarksOutput,
    SsdAnchors,
)
from models.preprocess import Placement
from models.results import AnomalyScore, Classification, Detection, Landmarks

FloatArray = npt.NDArray[np.float32]


def ssd_anchor_centres(anchors: SsdAnchors, input_width: int, input_height: int) -> FloatArray:
    """Anchor centres ``(x, y)``, normalised to 0..1, in the model's output order.

    Consecutive layers with the same stride share one feature map; each cell then holds
    two anchors per layer when ``interpolated_scale_aspect_ratio`` is 1.0, one otherwise.
    """
    centres: list[FloatArray] = []
    strides = anchors.strides
    per_layer = 2 if anchors.interpolated_scale_aspect_ratio == 1.0 else 1
    layer = 0
    while layer < len(strides):
        stride = strides[layer]
        repeats = 0
        while layer < len(strides) and strides[layer] == stride:
            repeats += per_layer
            layer += 1
        rows, cols = input_height // stride, input_width // stride
        ys = (np.arange(rows, dtype=np.float32) + anchors.offset_y) / rows
        xs = (np.arange(cols, dtype=np.float32) + anchors.offset_x) / cols
        grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
        centres.append(np.repeat(grid, repeats, axis=0))
    return np.concatenate(centres).astype(np.float32)


def sigmoid(values: npt.NDArray[np.floating], clip: float) -> FloatArray:
    """Logistic function after clipping, so float32 never overflows."""
    clipped = np.clip(values.astype(np.float32, copy=False), -clip, clip)
    result: FloatArray = (1.0 / (1.0 + np.exp(-clipped))).astype(np.float32)
    return result


class DetectorDecoder:
    """Decodes one image's SSD regressor and score outputs into detections."""

    def __init__(self, spec: DetectorOutput, input_width: int, input_height: int) -> None:
        self.spec = spec
        self.anchors = ssd_anchor_centres(spec.anchors, input_width, input_height)
        self._scale = np.array([input_width, input_height], dtype=np.float32)
        self._values_per_anchor = 4 + 2 * spec.num_keypoints

    def __call__(
        self, raw_boxes: npt.NDArray[np.floating], raw_scores: npt.NDArray[np.floating],
        placement: Placement,
    ) -> list[Detection]:
        """Decode one image (no batch axis, or a batch axis of one)."""
        spec = self.spec
        count = self.anchors.shape[0]
        boxes = np.asarray(raw_boxes, dtype=np.float32).reshape(-1)
        scores = np.asarray(raw_scores, dtype=np.float32).reshape(-1)
        if boxes.size < count * self._values_per_anchor or scores.size % count:
            raise InferenceError(
                "decoder",
                f"output sizes {boxes.size} and {scores.size} do not fit {count} anchors "
                f"with {spec.num_keypoints} keypoints",
            )
        boxes = boxes.reshape(count, -1)[:, : self._values_per_anchor]
        class_scores = sigmoid(scores.reshape(count, -1), spec.raw_score_clip)
        best_class = class_scores.argmax(axis=1)
        best_score = class_scores[np.arange(count), best_class]
        keep = np.flatnonzero(best_score >= spec.score_threshold)
        if keep.size == 0:
            return []
        points = boxes[keep].reshape(keep.size, -1, 2) / self._scale
        centre = points[:, 0] + self.anchors[keep]
        half = points[:, 1] / 2.0
        corners = np.concatenate([centre - half, centre + half], axis=1)
        keypoints = points[:, 2:] + self.anchors[keep][:, np.newaxis, :]
        valid = (half > 0).all(axis=1)
        corners, keypoints = corners[valid], keypoints[valid]
        kept_scores, kept_classes = best_score[keep][valid], best_class[keep][valid]
        return self._suppress(corners, keypoints, kept_scores, kept_classes, placement)

    def _suppress(
        self, corners: FloatArray, keypoints: FloatArray, scores: FloatArray,
        classes: npt.NDArray[np.intp], placement: Placement,
    ) -> list[Detection]:
        """Weighted NMS: each cluster of overlapping boxes becomes their score-weighted mean."""
        spec = self.spec
        order = np.argsort(-scores, kind="stable")
        corners, keypoints, scores, classes = (
            corners[order], keypoints[order], scores[order], classes[order]
        )
        remaining = np.ones(scores.size, dtype=bool)
        results: list[Detection] = []
        areas = np.prod(np.clip(corners[:, 2:] - corners[:, :2], 0, None), axis=1)
        for top in range(scores.size):
            if not remaining[top] or len(results) >= spec.max_detections:
                continue
            lo = np.maximum(corners[top, :2], corners[:, :2])
            hi = np.minimum(corners[top, 2:], corners[:, 2:])
            inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
            overlap = inter / np.maximum(areas[top] + areas - inter, 1e-12)
            cluster = remaining & (overlap > spec.nms_iou) & (classes == classes[top])
            cluster[top] = True
            weights = scores[cluster][:, np.newaxis]
            total = float(weights.sum())
            box = (corners[cluster] * weights).sum(axis=0) / total
            points = (keypoints[cluster] * weights[:, :, np.newaxis]).sum(axis=0) / total
            remaining &= ~cluster
            results.append(self._to_detection(box, points, float(scores[top]),
                                              int(classes[top]), placement))
        return results

    def _to_detection(
        self, box: FloatArray, points: FloatArray, score: float, label_index: int,
        placement: Placement,
    ) -> Detection:
        xs, ys = placement.to_source(box[[0, 2]], box[[1, 3]])
        w, h = placement.source_width, placement.source_height
        x1, x2 = np.clip(xs, 0, w)
        y1, y2 = np.clip(ys, 0, h)
        kx, ky = placement.to_source(points[:, 0], points[:, 1])
        labels = self.spec.labels
        label = labels[label_index] if label_index < len(labels) else str(label_index)
        return Detection(
            box=(float(x1), float(y1), float(x2), float(y2)),
            score=score,
            label=label,
            keypoints=tuple((float(x), float(y)) for x, y in zip(kx, ky, strict=True)),
        )


def decode_classification(
    spec: ClassifierOutput, raw: npt.NDArray[np.floating]
) -> Classification:
    """Turn one row of classifier output into a :class:`Classification`."""
    values = np.asarray(raw, dtype=np.float64).reshape(-1)
    if values.size != len(spec.labels):
        raise InferenceError(
            "decoder", f"classifier returned {values.size} scores for {len(spec.labels)} labels"
        )
    if spec.activation == "softmax":
        shifted = np.exp(values - values.max())
        values = shifted / shifted.sum()
    elif spec.activation == "sigmoid":
        values = 1.0 / (1.0 + np.exp(-np.clip(values, -80, 80)))
    best = int(values.argmax())
    return Classification(
        label=spec.labels[best],
        score=float(values[best]),
        scores=tuple((label, float(v)) for label, v in zip(spec.labels, values, strict=True)),
    )


def decode_anomaly(spec: AnomalyOutput, raw: npt.NDArray[np.floating]) -> list[AnomalyScore]:
    """One :class:`AnomalyScore` per input row."""
    values = np.asarray(raw, dtype=np.float64).reshape(-1)
    if spec.higher_is_anomalous:
        flags = values >= spec.threshold
    else:
        flags = values <= spec.threshold
    return [
        AnomalyScore(score=float(v), threshold=spec.threshold, is_anomaly=bool(f))
        for v, f in zip(values, flags, strict=True)
    ]


def decode_landmarks(
    spec: LandmarksOutput, raw_points: npt.NDArray[np.floating],
    raw_presence: npt.NDArray[np.floating], placement: Placement,
) -> Landmarks:
    """Landmarks of one image, in source pixels (z scaled like x)."""
    values = np.asarray(raw_points, dtype=np.float64).reshape(-1)
    expected = spec.num_points * spec.point_dims
    if values.size != expected:
        raise InferenceError(
            "decoder", f"landmark output has {values.size} values, expected {expected}"
        )
    points = values.reshape(spec.num_points, spec.point_dims)
    xs, ys = placement.to_source(
        points[:, 0] / placement.input_width, points[:, 1] / placement.input_height
    )
    columns = [xs, ys]
    if spec.point_dims == 3:
        columns.append(points[:, 2] / placement.scale_x)
    presence = float(sigmoid(np.asarray(raw_presence).reshape(-1)[:1], 80.0)[0])
    return Landmarks(
        points=tuple(tuple(float(c) for c in row) for row in np.stack(columns, axis=1)),
        presence=presence,
        present=presence >= spec.presence_threshold,
    )
