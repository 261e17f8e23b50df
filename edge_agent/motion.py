"""The motion gate: decides, cheaply, whether a frame is worth a detector call.

A small, blurred grey copy of each frame is compared with a running background. Global
lighting drift is removed first (the median difference), so dusk or a passing cloud does
not count as motion; sensor noise stays under the per-pixel threshold. After motion the
gate stays open for a few frames, and it opens at least every ``keyframe_interval`` frames
so that something that walked in and stood still is still seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from edge_agent.config import MotionConfig

GateReason = Literal["disabled", "first", "motion", "hold", "keyframe", "static"]
BACKGROUND_RATE = 0.05
SETTLING_RATE = 0.002


@dataclass(frozen=True, slots=True)
class GateDecision:
    """Whether to run the detector on a frame, and why."""

    infer: bool
    reason: GateReason
    changed_fraction: float


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
        delta = small - self._background
        # Remove a global lighting change; every 4th pixel estimates the median well.
        delta -= np.float32(np.median(delta[::2, ::2]))
        moving = (np.abs(delta) > self.config.pixel_threshold).astype(np.uint8)
        changed = float(np.count_nonzero(moving)) / delta.size
        # Learn the background where nothing moves; let a moving object sink in only
        # slowly, so that it leaves no ghost behind and a parked one stops counting.
        cv2.accumulateWeighted(small, self._background, BACKGROUND_RATE, mask=1 - moving)
        cv2.accumulateWeighted(small, self._background, SETTLING_RATE, mask=moving)
        if changed >= self.config.changed_fraction:
            self._hold = self.config.hold_frames
            return self._open("motion", changed)
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
