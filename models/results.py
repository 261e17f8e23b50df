"""Plain typed values that models return: no arrays, no runtime objects."""

from __future__ import annotations

from dataclasses import dataclass

Box = tuple[float, float, float, float]
"""``(x1, y1, x2, y2)`` in source-image pixels."""


@dataclass(frozen=True, slots=True)
class Detection:
    """One detected object.

    Attributes:
        box: ``(x1, y1, x2, y2)`` in pixels of the image that was passed in.
        score: Confidence in ``[0, 1]``.
        label: Class name from the manifest.
        keypoints: ``(x, y)`` pixel positions, in the model's keypoint order; empty if none.
    """

    box: Box
    score: float
    label: str
    keypoints: tuple[tuple[float, float], ...] = ()

    @property
    def width(self) -> float:
        """Box width in pixels."""
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        """Box height in pixels."""
        return self.box[3] - self.box[1]


@dataclass(frozen=True, slots=True)
class Classification:
    """The best label of a classifier and every label's score."""

    label: str
    score: float
    scores: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class AnomalyScore:
    """An anomaly model's verdict on one input row."""

    score: float
    threshold: float
    is_anomaly: bool


@dataclass(frozen=True, slots=True)
class Landmarks:
    """Landmark points of one object (e.g. a face mesh), in source-image pixels.

    Attributes:
        points: ``(x, y)`` or ``(x, y, z)`` per point; z is relative depth in pixels.
        presence: Probability that the object is in the image at all.
        present: ``presence`` is at or above the manifest's threshold.
    """

    points: tuple[tuple[float, ...], ...]
    presence: float
    present: bool


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
