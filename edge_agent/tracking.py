"""Object tracking on the edge: which detection of a frame is which object.

A thin adapter around norfair's :class:`norfair.Tracker` (the tracker Frigate uses),
one per source, driven by the pipeline thread. Boxes are matched by IoU (norfair's
``iou`` distance, ``1 - IoU``) and followed by its Kalman filter, so a face that moves
keeps its id, and one the detector misses for a few frames (flicker, a passing
occlusion) keeps it too: a track ends only after ``max_missed_frames`` detector runs
without a match. Frames the motion gate skips are not seen by the tracker at all: nothing
moved, so every track stays where it was.

What comes out is plain values (:class:`TrackUpdate`): the tracks matched on this frame
with their detection, the tracks still alive but unmatched (coasting), and the tracks
that ended. The decisions about tracks are pure and live in :mod:`edge_agent.tracks`
and :mod:`edge_agent.policy`.

Why norfair rather than supervision's ByteTrack: supervision 0.26 (the last with
ByteTrack) and ``trackers`` 2.6 both require ``opencv-python``, which would overwrite
the ``opencv-python-headless`` this project runs on; norfair needs only numpy, scipy and
filterpy. Its metadata still pins numpy below 2, a pin it does not need (its tracker
runs on numpy 2; the unit tests here prove it on every run), so it is installed with
``--no-deps`` (see the Makefile) and its real dependencies are listed in pyproject.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from norfair.tracker import Tracker

from edge_agent.config import TrackingConfig
from models import Detection


@dataclass(frozen=True, slots=True)
class TrackUpdate:
    """What one detector run did to the tracks of a source.

    Attributes:
        seen: ``(track id, detection)`` for every detection of the frame, each in its own
            track (a detection always gets one: a new track when it matches none).
        coasting: Ids of tracks alive but not matched on this frame, whose predicted box
            is still mostly in view (the detector missed the object, or it is hidden for
            a moment).
        ended: Ids of tracks that ended on this frame (unmatched for too long).
        leaving: Ids of tracks alive but unmatched whose predicted box is mostly out of
            view: the object is walking out, not missed.
    """

    seen: tuple[tuple[int, Detection], ...]
    coasting: tuple[int, ...]
    ended: tuple[int, ...]
    leaving: tuple[int, ...] = ()


class ObjectTracker:
    """Tracks one source's detections from frame to frame; not thread-safe (one owner)."""

    def __init__(self, config: TrackingConfig) -> None:
        # Imported here, not at the top: norfair imports filterpy and with it scipy.stats
        # (half a second on a Pi, 5 s under qemu), which every `edge-agent` command that
        # never tracks (doctor, infer, models, enroll) would otherwise pay at start.
        from norfair.tracker import Tracker

        self.config = config
        self._tracker: Tracker = Tracker(
            distance_function="iou", distance_threshold=1.0 - config.min_iou,
            hit_counter_max=config.max_missed_frames, initialization_delay=0,
        )
        self._alive: set[int] = set()

    def update(self, detections: Sequence[Detection],
               frame_size: tuple[int, int] | None = None) -> TrackUpdate:
        """Match one detector run's detections to the tracks (``frame_size``: width and
        height, to tell a missed object from one walking out of view)."""
        from norfair.tracker import Detection as NorfairDetection

        candidates = [
            NorfairDetection(np.array([[d.box[0], d.box[1]], [d.box[2], d.box[3]]],
                                      dtype=np.float64),
                             scores=np.array([d.score, d.score], dtype=np.float64))
            for d in detections
        ]
        index = {id(candidate): i for i, candidate in enumerate(candidates)}
        self._tracker.update(candidates)
        seen: list[tuple[int, Detection]] = []
        alive: set[int] = set()
        leaving: set[int] = set()
        for obj in self._tracker.tracked_objects:
            if obj.id is None:
                continue  # still initialising (never, with no initialisation delay)
            alive.add(obj.id)
            matched = index.get(id(obj.last_detection))
            if matched is not None:
                seen.append((obj.id, detections[matched]))
            elif frame_size is not None and _in_view(obj.estimate, frame_size) < 0.5:
                leaving.add(obj.id)
        ended = tuple(sorted(self._alive - alive))
        self._alive = alive
        seen_ids = {track for track, _ in seen}
        return TrackUpdate(tuple(sorted(seen, key=lambda s: s[0])),
                           tuple(sorted(alive - seen_ids - leaving)), ended,
                           tuple(sorted(leaving)))


def _in_view(estimate: npt.NDArray[np.float64], frame_size: tuple[int, int]) -> float:
    """The share of a predicted box (``[[x1, y1], [x2, y2]]``) inside the frame."""
    (x1, y1), (x2, y2) = estimate.tolist()
    area = max(x2 - x1, 0.0) * max(y2 - y1, 0.0)
    if area <= 0:
        return 0.0
    width, height = frame_size
    inside = (max(min(x2, width) - max(x1, 0.0), 0.0)
              * max(min(y2, height) - max(y1, 0.0), 0.0))
    return float(inside / area)
