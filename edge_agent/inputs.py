"""Input health: how each camera's picture looks, so that a dark or frozen camera is seen.

Four measures of a frame, each a pure function of its pixels (:func:`measure`), taken
on a grey copy at most ``MEASURE_WIDTH`` wide (plain subsampling: the cost of a few
hundred microseconds a frame, whatever the camera):

* **brightness**: mean luma, 0-255; ``dark`` below ``DARK_BRIGHTNESS``;
* **contrast**: standard deviation of luma (RMS contrast); ``low-contrast`` below
  ``LOW_CONTRAST`` (fog, a lens covered by something, a washed-out picture);
* **sharpness**: variance of the Laplacian over the variance of luma. The Laplacian's
  variance alone, the usual focus measure, falls with darkness as much as with blur;
  against the picture's own contrast it does not (a darkened photograph keeps its
  ratio, a blurred one loses two orders of magnitude). ``blurry`` below
  ``BLURRY_SHARPNESS``;
* **frozen**: a frame identical to the one before (mean absolute difference of the grey
  copies under ``FROZEN_MAX_DIFF`` grey levels: a live sensor's noise alone is above
  it); ``frozen`` after ``FROZEN_AFTER_FRAMES`` in a row (a stuck decoder or camera
  repeats its last picture).

:class:`InputMonitor` (one per source, owned by the pipeline thread) keeps the previous
frame's grey copy and the run of identical frames, and answers with the wire type
:class:`sync.InputHealth` that telemetry carries to the hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import cv2
import numpy as np
import numpy.typing as npt

from sync import InputHealth, InputProblem

MEASURE_WIDTH = 320
DARK_BRIGHTNESS = 40.0
LOW_CONTRAST = 12.0
BLURRY_SHARPNESS = 0.02
FROZEN_MAX_DIFF = 0.5
FROZEN_AFTER_FRAMES = 25
PROBLEMS: tuple[InputProblem, ...] = get_args(InputProblem)

Grey = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class FrameMeasures:
    """What one frame shows of its camera's health."""

    brightness: float
    contrast: float
    sharpness: float


def grey_copy(image: npt.NDArray[np.uint8]) -> Grey:
    """A grey copy of an RGB (or grey) frame, at most ``MEASURE_WIDTH`` wide (subsampled
    first, so that a large frame costs no more than a small one)."""
    step = max(1, -(-image.shape[1] // MEASURE_WIDTH))
    small = np.ascontiguousarray(image[::step, ::step])
    if small.ndim == 3:
        return np.asarray(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), dtype=np.uint8)
    return small


def measure(grey: Grey) -> FrameMeasures:
    """Brightness, contrast and sharpness of a grey copy (see the module docstring)."""
    brightness = float(grey.mean())
    contrast = float(grey.std())
    edges = float(cv2.Laplacian(grey, cv2.CV_32F).var())
    sharpness = edges / (contrast * contrast) if contrast > 0 else 0.0
    return FrameMeasures(brightness, contrast, sharpness)


def is_repeat(previous: Grey | None, grey: Grey) -> bool:
    """Whether ``grey`` is the frame before it again (a frozen camera)."""
    if previous is None or previous.shape != grey.shape:
        return False
    difference = cv2.absdiff(previous, grey)
    return float(difference.mean()) < FROZEN_MAX_DIFF


def problems_of(measures: FrameMeasures, frozen_frames: int) -> tuple[InputProblem, ...]:
    """What an operator should look at, by the thresholds of the module."""
    found: list[InputProblem] = []
    if measures.brightness < DARK_BRIGHTNESS:
        found.append("dark")
    if measures.contrast < LOW_CONTRAST:
        found.append("low-contrast")
    if measures.sharpness < BLURRY_SHARPNESS:
        found.append("blurry")
    if frozen_frames >= FROZEN_AFTER_FRAMES:
        found.append("frozen")
    return tuple(found)


class InputMonitor:
    """One source's input health, frame by frame; not thread-safe (one owner)."""

    def __init__(self) -> None:
        self._previous: Grey | None = None
        self._frozen_frames = 0
        self.latest: InputHealth | None = None

    def observe(self, image: npt.NDArray[np.uint8]) -> InputHealth:
        """Measure one frame; the source's health as of this frame."""
        grey = grey_copy(image)
        self._frozen_frames = self._frozen_frames + 1 if is_repeat(self._previous, grey) else 0
        self._previous = grey
        measures = measure(grey)
        self.latest = InputHealth(
            brightness=round(measures.brightness, 2), contrast=round(measures.contrast, 2),
            sharpness=round(measures.sharpness, 4), frozen_frames=self._frozen_frames,
            problems=problems_of(measures, self._frozen_frames))
        return self.latest
