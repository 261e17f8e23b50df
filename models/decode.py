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

MAX_CANDIDATES = 256
"""Best-scoring candidates kept for NMS; bounds its pairwise-overlap matrix."""


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
        threshold = spec.score_threshold
        self._logit_threshold = float(np.log(threshold / (1.0 - threshold)))

    def __call__(
        self, raw_boxes: npt.NDArray[np.generic], raw_scores: npt.NDArray[np.generic],
        placement: Placement,
    ) -> list[Detection]:
        """Decode one image (no batch axis, or a batch axis of one)."""
        spec = self.spec
        count = self.anchors.shape[0]
        boxes = np.asarray(raw_boxes, dtype=np.float32).reshape(-1)
        logits = np.asarray(raw_scores, dtype=np.float32).reshape(-1)
        if boxes.size < count * self._values_per_anchor or logits.size % count:
            raise InferenceError(
                "decoder",
                f"output sizes {boxes.size} and {logits.size} do not fit {count} anchors "
                f"with {spec.num_keypoints} keypoints",
            )
        per_class = logits.reshape(count, -1)
        if per_class.shape[1] == 1:
            best_logit, best_class = per_class[:, 0], None
        else:
            best_class = per_class.argmax(axis=1)
            best_logit = per_class[np.arange(count), best_class]
        # The sigmoid is monotonic: threshold the logits, squash only the survivors.
        keep = np.flatnonzero(best_logit >= self._logit_threshold)
        if keep.size == 0:
            return []
        # One row per candidate, as (x, y) pairs: centre, size, then each keypoint.
        points = boxes.reshape(count, -1)[keep, : self._values_per_anchor].reshape(
            keep.size, -1, 2
        ) / self._scale
        anchors = self.anchors[keep][:, np.newaxis, :]
        half = points[:, 1:2] / 2.0
        points[:, 2:] += anchors
        centre = points[:, 0:1] + anchors
        points[:, 0:1] = centre - half
        points[:, 1:2] = centre + half
        classes = np.zeros(keep.size, dtype=np.intp) if best_class is None else best_class[keep]
        logits_kept = best_logit[keep]
        valid = (half[:, 0] > 0).all(axis=1)
        if not valid.all():
            points, logits_kept, classes = points[valid], logits_kept[valid], classes[valid]
        scores = sigmoid(logits_kept, spec.raw_score_clip)
        return self._suppress(points, scores, classes, placement)

    def _suppress(
        self, rows: FloatArray, scores: FloatArray, classes: npt.NDArray[np.intp],
        placement: Placement,
    ) -> list[Detection]:
        """Weighted NMS: each cluster of overlapping boxes becomes their score-weighted mean.

        ``rows`` is ``[candidates, 2 + keypoints, 2]``: top-left, bottom-right, keypoints.
        The overlaps of all candidates are one matrix; only the greedy walk over it is
        Python, which keeps the cost flat for the handful of candidates a frame has.
        """
        spec = self.spec
        if scores.size > 1:
            order = np.argsort(-scores, kind="stable")[:MAX_CANDIDATES]
            rows, scores, classes = rows[order], scores[order], classes[order]
        count = scores.size
        leaders: list[int] = []
        groups: list[list[int]] = []
        if count == 1:
            leaders, groups = [0], [[0]]
        else:
            top_left, bottom_right = rows[:, 0], rows[:, 1]
            sides = np.maximum(bottom_right - top_left, 0)
            areas = sides[:, 0] * sides[:, 1]
            overlap_sides = np.maximum(
                np.minimum(bottom_right[:, None], bottom_right[None, :])
                - np.maximum(top_left[:, None], top_left[None, :]),
                0,
            )
            inter = overlap_sides[..., 0] * overlap_sides[..., 1]
            union = np.maximum(areas[:, None] + areas[None, :] - inter, 1e-12)
            same = (inter > spec.nms_iou * union) & (classes[:, None] == classes[None, :])
            neighbours = same.tolist()
            remaining = [True] * count
            for top in range(count):
                if not remaining[top]:
                    continue
                members = [j for j in range(top, count) if remaining[j] and neighbours[top][j]]
                if top not in members:
                    members.append(top)
                for j in members:
                    remaining[j] = False
                leaders.append(top)
                groups.append(members)
                if len(leaders) == spec.max_detections:
                    break
        weights = np.zeros((len(leaders), count), dtype=np.float32)
        for k, members in enumerate(groups):
            weights[k, members] = scores[members]
        merged = np.tensordot(weights / weights.sum(axis=1, keepdims=True), rows, axes=1)
        pixels = (merged * placement.input_size - placement.padding) / placement.scale
        pixels[:, :2] = np.clip(pixels[:, :2], 0, placement.source_size)
        labels = spec.labels
        detections = []
        for k, row in enumerate(pixels.tolist()):
            label_index = int(classes[leaders[k]])
            detections.append(Detection(
                box=(row[0][0], row[0][1], row[1][0], row[1][1]),
                score=float(scores[leaders[k]]),
                label=labels[label_index] if label_index < len(labels) else str(label_index),
                keypoints=tuple((x, y) for x, y in row[2:]),
            ))
        return detections


def decode_classification(
    spec: ClassifierOutput, raw: npt.NDArray[np.generic]
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


def decode_anomaly(spec: AnomalyOutput, raw: npt.NDArray[np.generic]) -> list[AnomalyScore]:
    """One :class:`AnomalyScore` per input row."""
    values = np.asarray(raw, dtype=np.float64).reshape(-1)
    flags = values >= spec.threshold if spec.higher_is_anomalous else values <= spec.threshold
    return [
        AnomalyScore(score=float(v), threshold=spec.threshold, is_anomaly=bool(f))
        for v, f in zip(values, flags, strict=True)
    ]


def decode_landmarks(
    spec: LandmarksOutput, raw_points: npt.NDArray[np.generic],
    raw_presence: npt.NDArray[np.generic], placement: Placement,
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
