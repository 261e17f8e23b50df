"""The escalation policy: for each tracked object or sensor window, local, escalate or drop.

Every decision on a frame belongs to a track (:mod:`edge_agent.tracks`): each object in
view gets its own decision, and two faces give two answers. A track is escalated once
and again only when its evidence changes in a way that could change the answer (a
rejected track the edge is now sure of, or unsure of at another size; a confirmed one
the edge is unsure of at another size, by ``size_change_ratio``) or its verdict lapses
(``verdict_reuse_s``); while its escalation awaits the verdict it is never escalated
again. The hub's verdict on a track decides that track's later frames, including frames
on which the detector misses the object (the track coasts through flicker and short
occlusions) and frames on which the rate limit keeps it from being asked again, until
the track ends or the verdict lapses.

Pure: values in, a decision out. Time is passed in; randomness (the audit sample) comes
from an injected ``random.Random``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from edge_agent.config import PolicyConfig
from edge_agent.motion import Region
from edge_agent.tracks import Evidence, Observation, TrackState, evidence_of
from models import AnomalyScore, Detection
from sync import EscalationReason

Action = Literal["local", "escalate", "drop"]

# A moving region is the one the hub judged on the last frame when they overlap this much
# (an object moving a tenth of its width a frame keeps an IoU over 0.8).
MOTION_MATCH_IOU = 0.3

PRIORITY = {"suspicious": 8, "anomaly": 7, "uncertain": 5, "unexplained": 4, "audit": 1}


@dataclass(slots=True)
class TokenBucket:
    """At most ``rate_per_s`` events per second on average, ``burst`` at once."""

    rate_per_s: float
    burst: float
    tokens: float = field(init=False)
    updated: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        if self.updated is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


DecisionReason = Literal[
    "confident", "uncertain", "suspicious", "audit", "anomaly", "normal", "below-band",
    "rate-limited", "verdict-reused", "awaiting-verdict", "escalated-before", "nothing",
    "unexplained",
]


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one tracked object (or one sensor window).

    Attributes:
        action: ``local`` (decide here), ``escalate`` (send to the hub) or ``drop``.
        reason: Why: ``confident``, ``uncertain``, ``suspicious``, ``audit`` (a sample
            of confident tracks, once per track), ``anomaly``, ``normal``,
            ``below-band``, ``rate-limited`` (no token to escalate: the track's
            verdict answers while it holds, unless the edge is confident of its new
            evidence; else the edge), ``verdict-reused`` (the
            hub judged this track and nothing new could change its answer),
            ``awaiting-verdict`` (its
            escalation waits for the verdict) or ``escalated-before`` (escalated with
            the same evidence; its verdict never came), ``unexplained`` (motion no
            detection explains, escalated as a crop of ``region``).
        priority: Outbox priority for escalations (0-9), 0 otherwise.
        detections: The detections the decision is about (the track's, on a frame).
        positive: The answer for this object: something of interest is there.
        track: The track's state (``None`` for a sensor window).
        evidence: What the track's detection shows (``None`` for a sensor window).
        region: For ``unexplained``: the moving region, in frame pixels.
    """

    action: Action
    reason: DecisionReason
    priority: int
    detections: tuple[Detection, ...] = ()
    positive: bool = False
    track: TrackState | None = None
    evidence: Evidence | None = None
    region: Region | None = None


@dataclass(frozen=True, slots=True)
class FrameDecision:
    """The decisions on one frame: one per track seen, and the coasting tracks whose
    confirmed verdict still holds (the detector missed an object the hub confirmed)."""

    decisions: tuple[Decision, ...]
    held: tuple[TrackState, ...] = ()

    @property
    def positive(self) -> bool:
        """The frame's answer: some object of interest is in view."""
        return bool(self.held) or any(d.positive for d in self.decisions)

    @property
    def escalations(self) -> tuple[Decision, ...]:
        """The decisions that escalate."""
        return tuple(d for d in self.decisions if d.action == "escalate")


@dataclass(slots=True)
class _RegionVerdict:
    """Where the hub judged escalated motion, what it said, and when."""

    region: Region
    confirmed: bool
    at: float
    area: float = 0.0  # of the region when last seen wholly in view


class EscalationPolicy:
    """Decides per source; keeps the per-source rate limits."""

    def __init__(self, config: PolicyConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()
        self._buckets: dict[str, TokenBucket] = {}
        self._last_escalation: dict[str, float] = {}
        self._motion_buckets: dict[str, TokenBucket] = {}
        self._motion_verdicts: dict[str, list[_RegionVerdict]] = {}

    def decide_tracks(self, source: str, observation: Observation,
                      now: float) -> FrameDecision:
        """Decide for every track of one detector run. A track the detector missed on
        this run, its predicted box still in view, keeps the hub's confirmation while
        the verdict holds (flicker, a short occlusion)."""
        decisions = tuple(self._decide_track(source, state, detection, now)
                          for state, detection in observation.seen)
        reuse_s = self.config.verdict_reuse_s
        held = tuple(state for state in observation.coasting
                     if state.verdict and state.verdict_holds(now, reuse_s))
        return FrameDecision(decisions, held)

    def _decide_track(self, source: str, state: TrackState, detection: Detection,
                      now: float) -> Decision:
        cfg = self.config
        evidence = evidence_of(detection, cfg)
        suspicious = detection.label in cfg.suspicious_labels and evidence.band != "below"
        own = suspicious or evidence.band == "confident"
        detections = (detection,)

        def local(reason: DecisionReason, positive: bool) -> Decision:
            return Decision("local", reason, 0, detections, positive, state, evidence)

        if state.pending_event is not None:
            return local("awaiting-verdict", own)
        same = state.evidence is not None and state.evidence == evidence
        recent = (state.escalated_at is not None
                  and now - state.escalated_at < cfg.verdict_reuse_s)
        holds = state.verdict_holds(now, cfg.verdict_reuse_s)
        # A fresh verdict decides the track unless the track now shows the hub something
        # new that could change the answer: a rejected track the edge is now sure of (or
        # unsure of at another size), a confirmed one the edge is unsure of at another size.
        agrees = evidence.band == "below" or (evidence.band == "confident" and state.verdict)
        if holds and (same or (agrees and not suspicious)):
            return local("verdict-reused", bool(state.verdict))
        if same and recent:
            return local("escalated-before", own)
        if suspicious:
            return self._escalate(source, "suspicious", detections, now, positive=True,
                                  track=state, evidence=evidence)
        if evidence.band == "uncertain" or holds:  # holds: the hub rejected, the edge is sure
            return self._escalate(source, "uncertain", detections, now,
                                  positive=evidence.band == "confident",
                                  track=state, evidence=evidence)
        if evidence.band == "confident":
            if not state.audited:
                state.audited = True
                if self._rng.random() < cfg.audit_sample_rate:
                    return self._escalate(source, "audit", detections, now, positive=True,
                                          track=state, evidence=evidence)
            return local("confident", True)
        return Decision("drop", "below-band", 0, detections, False, state, evidence)

    def decide_motion(self, source: str, regions: Sequence[Region],
                      detections: Sequence[Detection], now: float,
                      frame_size: tuple[int, int] | None = None) -> Decision | None:
        """Escalate the largest moving region that no detection explains (no box at or
        above the band's lower edge overlaps it), at most ``unexplained_per_minute`` per
        source; ``None`` when every region is explained or the limit says no.

        A region that overlaps one the hub confirmed in the last ``verdict_reuse_s``
        (intersection over union at least ``MOTION_MATCH_IOU``: the same object one frame
        on, not something that touches it) takes that verdict (``local``,
        ``verdict-reused``) instead, and the remembered region follows it as it moves.
        With ``frame_size``, a region touching the frame's border is not escalated: what
        is walking in is judged once it is in view (its first sliver would show the hub
        nothing); a confirmed one walking out keeps its verdict while at least half of
        its area in view remains."""
        cfg = self.config
        if not regions or cfg.unexplained_per_minute <= 0:
            return None
        boxes = [d.box for d in detections if d.score >= cfg.uncertain_score]
        unexplained = [r for r in regions if not any(_overlap(r, box) for box in boxes)]
        if not unexplained:
            return None
        judged = [j for j in self._motion_verdicts.get(source, ())
                  if now - j.at < cfg.verdict_reuse_s]
        self._motion_verdicts[source] = judged
        for region in unexplained:
            match = next((j for j in judged if _iou(j.region, region) >= MOTION_MATCH_IOU),
                         None)
            if match is None:
                continue
            if frame_size is not None and _at_border(region, frame_size):
                # Walking out: the verdict holds while at least half of it is in view.
                if _area(region) < 0.5 * match.area:
                    continue
            else:
                match.area = _area(region)
            match.region = region
            return Decision("local", "verdict-reused", 0, (), match.confirmed, region=region)
        if frame_size is not None:
            unexplained = [r for r in unexplained if not _at_border(r, frame_size)]
            if not unexplained:
                return None
        bucket = self._motion_buckets.setdefault(
            source, TokenBucket(cfg.unexplained_per_minute / 60.0, 1.0))
        if not bucket.take(now):
            return None
        region = max(unexplained, key=lambda r: (r[2] - r[0]) * (r[3] - r[1]))
        decision = self._escalate(source, "unexplained", (), now, positive=False)
        return Decision(decision.action, decision.reason, decision.priority, (), False,
                        region=region)

    def remember_motion(self, source: str, region: Region, confirmed: bool,
                        now: float) -> None:
        """The hub judged the escalated moving ``region`` of ``source``. Only a
        confirmation is remembered: a rejected region may yet grow into a face."""
        if confirmed and self.config.verdict_reuse_s > 0:
            self._motion_verdicts.setdefault(source, []).append(
                _RegionVerdict(region, confirmed, now, _area(region)))

    def decide_anomaly(self, source: str, score: AnomalyScore, now: float) -> Decision:
        """Decide for one sensor window's anomaly score."""
        if score.is_anomaly:
            return self._escalate(source, "anomaly", (), now, positive=True)
        return Decision("local", "normal", 0)

    def _escalate(
        self, source: str, reason: EscalationReason, detections: tuple[Detection, ...],
        now: float, *, positive: bool, track: TrackState | None = None,
        evidence: Evidence | None = None,
    ) -> Decision:
        bucket = self._buckets.setdefault(source, TokenBucket(
            self.config.max_escalations_per_minute / 60.0, self.config.escalation_burst
        ))
        last = self._last_escalation.get(source)
        too_soon = last is not None and now - last < self.config.min_interval_s
        if too_soon or not bucket.take(now):
            # No token: the hub's verdict on the track, while it holds, still answers,
            # unless the edge is sure of what the hub has not seen (a rejected sliver that
            # is now a whole face).
            if (track is not None and track.verdict_holds(now, self.config.verdict_reuse_s)
                    and not (evidence is not None and evidence.band == "confident")):
                positive = bool(track.verdict)
            return Decision("local", "rate-limited", 0, detections, positive, track, evidence)
        self._last_escalation[source] = now
        return Decision("escalate", reason, PRIORITY[reason], detections, positive, track,
                        evidence)


def _area(region: Region) -> float:
    return max(region[2] - region[0], 0.0) * max(region[3] - region[1], 0.0)


def _at_border(region: Region, frame_size: tuple[int, int]) -> bool:
    """Whether a region touches the frame's border (its object may be partly out)."""
    width, height = frame_size
    return region[0] <= 0 or region[1] <= 0 or region[2] >= width or region[3] >= height


def _iou(a: Region, b: Region) -> float:
    """Intersection over union of two boxes."""
    inter = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def _overlap(a: Region, b: Region) -> bool:
    """Whether two boxes share any area."""
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])
