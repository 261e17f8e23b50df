"""What the agent knows about each tracked object: its frames, escalation and verdict.

A :class:`TrackBook` (one per source) keeps a :class:`TrackState` per live track of the
source's :class:`~edge_agent.tracking.ObjectTracker`. Every decision, escalation and
verdict belongs to a track: an escalation records its event id on the track; the hub's
verdict is recorded on the track that asked, and then decides that track's frames (see
:meth:`edge_agent.policy.EscalationPolicy.decide_tracks`) until it lapses, when the
track ends or after ``verdict_reuse_s``.

Pure: values in, values out; the caller passes the frame number and the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from edge_agent.config import PolicyConfig
from edge_agent.tracking import TrackUpdate
from models import Box, Detection

MAX_REMEMBERED_EVENTS = 10_000
Band = Literal["below", "uncertain", "confident"]


@dataclass(frozen=True, slots=True)
class Evidence:
    """What an escalation showed the hub about a track: the score band and the box's
    size step (areas within ``size_change_ratio`` of each other share a step)."""

    band: Band
    size_step: int


def evidence_of(detection: Detection, config: PolicyConfig) -> Evidence:
    """The evidence one detection gives, by the policy's bands."""
    band: Band = "below"
    if detection.score >= config.confident_score:
        band = "confident"
    elif detection.score >= config.uncertain_score:
        band = "uncertain"
    x1, y1, x2, y2 = detection.box
    area = max((x2 - x1) * (y2 - y1), 1.0)
    return Evidence(band, math.floor(math.log(area) / math.log(config.size_change_ratio)))


@dataclass(frozen=True, slots=True)
class Sighting:
    """One frame on which a track's object was detected."""

    frame: int
    box: Box
    score: float


@dataclass(slots=True)
class TrackState:
    """One tracked object of one source.

    Attributes:
        pending_event: The escalation awaiting its verdict, if any.
        evidence: What the last escalation showed (``None``: never escalated).
        verdict: The hub's last verdict on this track (``None``: none yet).
        sightings: Frames seen since the journal last took them.
    """

    track_id: int
    source: str
    first_frame: int
    last_frame: int
    last_detection: Detection
    frames_seen: int = 1
    pending_event: str | None = None
    evidence: Evidence | None = None
    escalated_at: float | None = None
    escalations: int = 0
    verdict: bool | None = None
    verdict_at: float | None = None
    audited: bool = False
    ended: bool = False
    sightings: list[Sighting] = field(default_factory=list)

    def verdict_holds(self, now: float, reuse_s: float) -> bool:
        """Whether the hub's verdict still decides this track."""
        return (self.verdict is not None and self.verdict_at is not None
                and not self.ended and now - self.verdict_at < reuse_s)


@dataclass(frozen=True, slots=True)
class Observation:
    """The tracks of one detector run, as the policy sees them."""

    seen: tuple[tuple[TrackState, Detection], ...]
    coasting: tuple[TrackState, ...]
    ended: tuple[TrackState, ...]


class TrackBook:
    """The states of one source's tracks; not thread-safe (the pipeline owns it)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._tracks: dict[int, TrackState] = {}
        self._by_event: dict[str, TrackState] = {}

    def __len__(self) -> int:
        return len(self._tracks)

    def observe(self, frame: int, update: TrackUpdate) -> Observation:
        """Record one detector run's tracks (frame ``frame`` of the source)."""
        seen = []
        for track_id, detection in update.seen:
            state = self._tracks.get(track_id)
            if state is None:
                state = TrackState(track_id, self.source, frame, frame, detection)
                self._tracks[track_id] = state
            else:
                state.last_frame = frame
                state.last_detection = detection
                state.frames_seen += 1
            state.sightings.append(Sighting(frame, detection.box, detection.score))
            seen.append((state, detection))
        coasting = tuple(self._tracks[t] for t in update.coasting if t in self._tracks)
        ended = []
        for track_id in update.ended:
            state = self._tracks.pop(track_id, None)
            if state is not None:
                state.ended = True
                ended.append(state)
        return Observation(tuple(seen), coasting, tuple(ended))

    def escalated(self, state: TrackState, event_id: str, evidence: Evidence,
                  now: float) -> None:
        """``state``'s object was escalated as ``event_id`` showing ``evidence``."""
        state.pending_event = event_id
        state.evidence = evidence
        state.escalated_at = now
        state.escalations += 1
        self._by_event[event_id] = state
        while len(self._by_event) > MAX_REMEMBERED_EVENTS:  # verdicts that never came
            del self._by_event[next(iter(self._by_event))]

    def verdict(self, event_id: str, confirmed: bool, now: float) -> TrackState | None:
        """Record the hub's verdict on the track that asked; ``None`` if no track did
        (an escalation from before a restart, or a sensor window)."""
        state = self._by_event.pop(event_id, None)
        if state is None:
            return None
        if state.pending_event == event_id:
            state.pending_event = None
        state.verdict = confirmed
        state.verdict_at = now
        return state

    def fell_back(self, event_id: str) -> TrackState | None:
        """No verdict came in time for ``event_id``: its track waits no longer (a late
        verdict is still recorded by :meth:`verdict`)."""
        state = self._by_event.get(event_id)
        if state is not None and state.pending_event == event_id:
            state.pending_event = None
        return state

    def live(self) -> tuple[TrackState, ...]:
        """Every live track, oldest first."""
        return tuple(self._tracks.values())
