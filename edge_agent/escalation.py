"""Turning a decision into the escalation message: bounded JPEG crop and thumbnail."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

from models import Box, Detection, Manifest
from sync import DetectionPayload, EscalationReason, EventMessage, ModelRef

JPEG_QUALITIES = (85, 70, 55, 40)
CROP_MARGIN = 0.25


def bounded_jpeg(image: npt.NDArray[np.uint8], max_bytes: int) -> bytes:
    """Encode an RGB image as JPEG no larger than ``max_bytes``.

    Lower quality first, then smaller size, until it fits.
    """
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    while True:
        for quality in JPEG_QUALITIES:
            ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok and encoded.size <= max_bytes:
                return encoded.tobytes()
        height, width = bgr.shape[:2]
        if width <= 16 or height <= 16:
            return encoded.tobytes()  # cannot shrink further; 16x16 at q40 is tiny
        bgr = cv2.resize(bgr, (max(16, int(width * 0.7)), max(16, int(height * 0.7))),
                         interpolation=cv2.INTER_AREA)


def crop_box(detections: Sequence[Detection], width: int,
             height: int) -> tuple[int, int, int, int]:
    """The union of the detections' boxes with a margin, inside the frame."""
    x1 = min(d.box[0] for d in detections)
    y1 = min(d.box[1] for d in detections)
    x2 = max(d.box[2] for d in detections)
    y2 = max(d.box[3] for d in detections)
    mx, my = (x2 - x1) * CROP_MARGIN, (y2 - y1) * CROP_MARGIN
    return (
        max(0, int(x1 - mx)), max(0, int(y1 - my)),
        min(width, int(np.ceil(x2 + mx))), min(height, int(np.ceil(y2 + my))),
    )


def frame_event(
    *, event_id: str, device_id: str, source: str, captured_at: float,
    reason: EscalationReason, priority: int, manifest: Manifest,
    detections: Sequence[Detection], image: npt.NDArray[np.uint8],
    crop_max_bytes: int, thumbnail_width: int, region: Box | None = None,
    verdict_timeout_s: float | None = None,
) -> EventMessage:
    """The escalation of one frame: detections, crop around them (or around ``region``,
    motion no detection explains), and a thumbnail; ``verdict_timeout_s`` tells the hub
    how long the device waits for the verdict."""
    height, width = image.shape[:2]
    box = None
    if detections:
        box = crop_box(detections, width, height)
    elif region is not None:
        box = crop_box([Detection(box=region, score=0.0, label="motion")], width, height)
    crop = None
    if box is not None and box[2] > box[0] and box[3] > box[1]:
        crop = bounded_jpeg(np.ascontiguousarray(image[box[1] : box[3], box[0] : box[2]]),
                            crop_max_bytes)
    scale = min(1.0, thumbnail_width / width)
    small = cv2.resize(image, (max(1, int(width * scale)), max(1, int(height * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1.0 else image
    return EventMessage(
        event_id=event_id, device_id=device_id, source=source, captured_at=captured_at,
        reason=reason, priority=priority,
        model=ModelRef(name=manifest.name, version=manifest.version),
        detections=tuple(
            DetectionPayload(box=d.box, score=min(max(d.score, 0.0), 1.0), label=d.label,
                             keypoints=d.keypoints)
            for d in detections
        ),
        frame_size=(width, height),
        crop_box=tuple(float(v) for v in box) if box else None,  # type: ignore[arg-type]
        crop_jpeg=crop,
        thumbnail_jpeg=bounded_jpeg(np.asarray(small, dtype=np.uint8), crop_max_bytes),
        verdict_timeout_s=verdict_timeout_s,
    )


def window_event(
    *, event_id: str, device_id: str, source: str, captured_at: float, priority: int,
    manifest: Manifest, values: npt.NDArray[np.floating], score: float,
    verdict_timeout_s: float | None = None,
) -> EventMessage:
    """The escalation of one anomalous sensor window."""
    return EventMessage(
        event_id=event_id, device_id=device_id, source=source, captured_at=captured_at,
        reason="anomaly", priority=priority,
        model=ModelRef(name=manifest.name, version=manifest.version),
        anomaly_score=score, readings=tuple(float(v) for v in values),
        verdict_timeout_s=verdict_timeout_s,
    )
