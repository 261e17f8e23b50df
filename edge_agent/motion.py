"""The motion gate: decides, cheaply, whether a frame is worth a detector call.

A small, blurred grey copy of each frame is compared with a running background. Global
lighting drift is removed first (the median difference), so dusk or a passing cloud does
not count as motion; sensor noise stays under the per-pixel threshold. After motion the
gate stays open for a few frames, and it opens at least every ``keyframe_interval`` frames
so that something that walked in and stood still is still seen.

On a motion frame the gate also says *where* it saw motion: the bounding boxes of the
largest moving regions, in frame pixels. The policy escalates a moving region that no
detection explains (:meth:`edge_agent.policy.EscalationPolicy.decide_motion`): there the
edge model is blind, and the hub is asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from edge_agent.config import MotionConfig

GateReason = Literal["disabled", "first", "motion", "hold", "keyframe", "static"]
Region = tuple[float, float, float, float]
BACKGROUND_RATE = 0.05
SETTLING_RATE = 0.002
MIN_REGION_SHARE = 0.002  # of the small copy's pixels: smaller moving specks are noise
MAX_REGIONS = 8


@dataclass(frozen=True, slots=True)
class GateDecision:
    """Whether to run the detector on a frame, and why."""

    infer: bool
    reason: GateReason
    changed_fraction: float
    regions: tuple[Region, ...] = ()


class MotionGate:
    """Per-source motion gate; not thread-safe (one per source pipeline)."""

    def __init__(self, config: MotionConfig) -> None:
        self.config = config
        self._background: npt.NDArray[np.float32] | None = None
        self._hold = 0
        self._since_inference = 0

    def check(self, frame: npt.NDArray[np.uint8]) -> GateDecision:
        """Look at one RGB frame and say whether the detector should see it."""
        if not self.config.enabled:
            return GateDecision(True, "disabled", 0.0)
        small = self._shrink(frame)
        if self._background is None or self._background.shape != small.shape:
            self._background = small.copy()
            return self._open("first", 1.0)
        # Remove a global lighting change (dusk, a cloud, the camera's exposure): it
        # scales every pixel, so the background is brought to the frame's brightness
        # first, then what offset remains is taken off. Every 4th pixel estimates a
        # median well.
        gain = float(np.median(small[::2, ::2])) / max(
            float(np.median(self._background[::2, ::2])), 1.0)
        delta = small - self._background * np.float32(gain)
        delta -= np.float32(np.median(delta[::2, ::2]))
        moving = (np.abs(delta) > self.config.pixel_threshold).astype(np.uint8)
        changed = float(np.count_nonzero(moving)) / delta.size
        # Learn the background where nothing moves; let a moving object sink in only
        # slowly, so that it leaves no ghost behind and a parked one stops counting.
        cv2.accumulateWeighted(small, self._background, BACKGROUND_RATE, mask=1 - moving)
        cv2.accumulateWeighted(small, self._background, SETTLING_RATE, mask=moving)
        if changed >= self.config.changed_fraction:
            self._hold = self.config.hold_frames
            self._since_inference = 0
            scale = frame.shape[1] / small.shape[1]
            return GateDecision(True, "motion", changed, _regions(moving, scale))
        if self._hold > 0:
            self._hold -= 1
            return self._open("hold", changed)
        self._since_inference += 1
        if self._since_inference >= self.config.keyframe_interval:
            return self._open("keyframe", changed)
        return GateDecision(False, "static", changed)

    def _open(self, reason: GateReason, changed: float) -> GateDecision:
        self._since_inference = 0
        return GateDecision(True, reason, changed)

    def _shrink(self, frame: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        # Plain subsampling, then a blur: a quarter of the cost of an area resize of the
        # whole frame, and the blur does the anti-aliasing that matters for differencing.
        step = max(1, frame.shape[1] // self.config.width)
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
        small = np.ascontiguousarray(grey[::step, ::step])
        return np.asarray(cv2.GaussianBlur(small, (5, 5), 0), dtype=np.float32)


def _regions(moving: npt.NDArray[np.uint8], scale: float) -> tuple[Region, ...]:
    """The largest moving regions of a mask (the small copy's pixels), scaled to frame
    pixels: specks of noise removed first, then connected components by area."""
    opened = cv2.morphologyEx(moving, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    least = max(4, int(MIN_REGION_SHARE * moving.size))
    found = sorted((stats[i] for i in range(1, count) if stats[i][cv2.CC_STAT_AREA] >= least),
                   key=lambda row: -int(row[cv2.CC_STAT_AREA]))[:MAX_REGIONS]
    return tuple(
        (float(x * scale), float(y * scale), float((x + w) * scale), float((y + h) * scale))
        for x, y, w, h, _ in found)
