"""The escalation policy: for each frame or sensor window, local, escalate or drop.

The policy remembers the hub's recent verdicts, by where they were: an uncertain
detection overlapping one the hub judged a moment ago (a person still walking through)
takes that verdict instead of escalating every frame of the same object. The memory
follows the object from frame to frame and lapses after ``verdict_reuse_s``, when the
hub is asked again.

Pure: values in, a decision out. Time is passed in; randomness (the audit sample) comes
from an injected ``random.Random``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from edge_agent.config import PolicyConfig
from models import AnomalyScore, Box, Detection, iou

Action = Literal["local", "escalate", "drop"]

PRIORITY = {"suspicious": 8, "anomaly": 7, "uncertain": 5, "audit": 1}


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


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one frame's results.

    Attributes:
        action: ``local`` (decide here), ``escalate`` (send to the hub) or ``drop``.
        reason: Why: ``confident``, ``uncertain``, ``suspicious``, ``audit``, ``anomaly``,
            ``normal``, ``nothing``, ``below-band``, ``rate-limited`` or
            ``verdict-reused`` (the hub judged this object a moment ago).
        priority: Outbox priority for escalations (0-9), 0 otherwise.
        detections: The detections the decision is about.
        positive: The edge's own answer: something of interest is there.
    """

    action: Action
    reason: str
    priority: int
    detections: tuple[Detection, ...] = ()
    positive: bool = False


@dataclass(slots=True)
class _Judged:
    """Where the hub judged something, what it said, and when."""

    box: Box
    confirmed: bool
    at: float


class EscalationPolicy:
    """Decides per source; keeps the per-source rate limits."""

    def __init__(self, config: PolicyConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()
        self._buckets: dict[str, TokenBucket] = {}
        self._last_escalation: dict[str, float] = {}
        self._judged: dict[str, list[_Judged]] = {}

    def remember_verdict(self, source: str, boxes: Sequence[Box], confirmed: bool,
                         now: float) -> None:
        """The hub judged the detections at ``boxes`` (frame pixels) on ``source``."""
        if self.config.verdict_reuse_s <= 0:
            return
        judged = self._fresh(source, now)
        judged.extend(_Judged(box, confirmed, now) for box in boxes)

    def _fresh(self, source: str, now: float) -> list[_Judged]:
        horizon = now - self.config.verdict_reuse_s
        judged = [j for j in self._judged.get(source, ()) if j.at >= horizon]
        self._judged[source] = judged
        return judged

    def _reuse(self, source: str, detections: Sequence[Detection],
               now: float) -> bool | None:
        """The remembered verdict covering every one of ``detections`` (confirmed if any
        was), or ``None`` if one of them is new to the hub."""
        judged = self._fresh(source, now)
        if not judged or not detections:
            return None
        confirmed = False
        for detection in detections:
            match = max(judged, key=lambda j: iou(j.box, detection.box))
            if iou(match.box, detection.box) < self.config.verdict_reuse_iou:
                return None
            match.box = detection.box  # follow the object as it moves
            confirmed = confirmed or match.confirmed
        return confirmed

    def decide(self, source: str, detections: Sequence[Detection], now: float) -> Decision:
        """Decide for one frame's detections."""
        cfg = self.config
        suspicious = tuple(
            d for d in detections
            if d.label in cfg.suspicious_labels and d.score >= cfg.uncertain_score
        )
        uncertain = tuple(
            d for d in detections if cfg.uncertain_score <= d.score < cfg.confident_score
        )
        confident = tuple(d for d in detections if d.score >= cfg.confident_score)
        if suspicious:
            return self._escalate(source, "suspicious", tuple(detections), now, positive=True)
        if uncertain:
            reused = self._reuse(source, uncertain, now)
            if reused is not None:
                return Decision("local", "verdict-reused", 0, tuple(detections),
                                positive=reused or bool(confident))
            return self._escalate(source, "uncertain", tuple(detections), now,
                                  positive=bool(confident))
        if confident:
            if self._rng.random() < cfg.audit_sample_rate:
                return self._escalate(source, "audit", confident, now, positive=True)
            return Decision("local", "confident", 0, confident, positive=True)
        if detections:
            return Decision("drop", "below-band", 0, tuple(detections))
        return Decision("drop", "nothing", 0)

    def decide_anomaly(self, source: str, score: AnomalyScore, now: float) -> Decision:
        """Decide for one sensor window's anomaly score."""
        if score.is_anomaly:
            return self._escalate(source, "anomaly", (), now, positive=True)
        return Decision("local", "normal", 0)

    def _escalate(
        self, source: str, reason: str, detections: tuple[Detection, ...], now: float,
        *, positive: bool,
    ) -> Decision:
        bucket = self._buckets.setdefault(source, TokenBucket(
            self.config.max_escalations_per_minute / 60.0, self.config.escalation_burst
        ))
        last = self._last_escalation.get(source)
        too_soon = last is not None and now - last < self.config.min_interval_s
        if too_soon or not bucket.take(now):
            return Decision("local", "rate-limited", 0, detections, positive=positive)
        self._last_escalation[source] = now
        return Decision("escalate", reason, PRIORITY[reason], detections, positive=positive)
