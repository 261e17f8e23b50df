"""Tracked objects: the tracker (norfair), the track book and the policy, on synthetic
detections. Every decision, escalation and verdict belongs to a track."""

from __future__ import annotations

import random

import pytest

from edge_agent.config import PolicyConfig, TrackingConfig
from edge_agent.policy import EscalationPolicy, FrameDecision
from edge_agent.tracking import ObjectTracker, TrackUpdate
from edge_agent.tracks import TrackBook
from models import Detection

pytestmark = pytest.mark.unit


def _at(x: float, score: float = 0.6, *, size: float = 40, label: str = "face") -> Detection:
    return Detection(box=(x, 10, x + size, 10 + size), score=score, label=label)


class _Edge:
    """The agent's per-source pipeline after the detector: tracker, book, policy."""

    def __init__(self, policy: PolicyConfig | None = None, *, source: str = "door",
                 tracking: TrackingConfig | None = None, seed: int = 0) -> None:
        self.source = source
        self.tracker = ObjectTracker(tracking or TrackingConfig())
        self.book = TrackBook(source)
        self.policy = EscalationPolicy(policy or PolicyConfig(audit_sample_rate=0.0),
                                       random.Random(seed))
        self.frame = 0
        self.events = 0

    def see(self, detections: list[Detection], now: float) -> FrameDecision:
        """One detector run; escalations are recorded on their tracks as the agent does."""
        observation = self.book.observe(self.frame, self.tracker.update(detections))
        self.frame += 1
        decided = self.policy.decide_tracks(self.source, observation, now)
        for decision in decided.escalations:
            assert decision.track is not None
            assert decision.evidence is not None
            self.events += 1
            self.book.escalated(decision.track, f"e{self.events}", decision.evidence, now)
        return decided


def _reasons(decided: FrameDecision) -> list[str]:
    return [d.reason for d in decided.decisions]


def test_each_detection_gets_a_decision_by_band() -> None:
    edge = _Edge(PolicyConfig(audit_sample_rate=0.0, suspicious_labels=("person",)))
    decided = edge.see([_at(0, 0.95), _at(200, 0.6), _at(400, 0.3),
                        _at(600, 0.99, label="person")], 0.0)
    assert _reasons(decided) == ["confident", "uncertain", "below-band", "suspicious"]
    assert [d.action for d in decided.decisions] == ["local", "escalate", "drop", "escalate"]
    assert [d.priority for d in decided.escalations] == [5, 8]
    assert len({d.track.track_id for d in decided.decisions if d.track}) == 4
    assert edge.see([], 0.1).decisions == ()


def test_two_faces_in_view_are_two_tracks_with_two_decisions() -> None:
    edge = _Edge()
    first = edge.see([_at(10), _at(300)], 0.0)
    assert [d.action for d in first.decisions] == ["escalate", "escalate"]
    tracks = [d.track.track_id for d in first.decisions if d.track]
    assert len(set(tracks)) == 2
    # The hub confirms one and rejects the other: each track keeps its own answer.
    assert edge.book.verdict("e1", True, 0.1) is not None
    assert edge.book.verdict("e2", False, 0.1) is not None
    later = edge.see([_at(14), _at(304)], 0.2)
    assert [d.track.track_id for d in later.decisions if d.track] == tracks
    assert [(d.reason, d.positive) for d in later.decisions] == [
        ("verdict-reused", True), ("verdict-reused", False)]
    assert later.positive


def test_a_track_is_not_escalated_again_while_its_verdict_is_on_its_way() -> None:
    edge = _Edge()
    decisions = [edge.see([_at(10 + 3 * i)], 0.04 * i) for i in range(6)]
    assert _reasons(decisions[0]) == ["uncertain"]
    assert all(_reasons(d) == ["awaiting-verdict"] for d in decisions[1:])
    assert edge.events == 1


def test_a_verdict_holds_through_flicker_and_lapses_with_time() -> None:
    edge = _Edge(PolicyConfig(audit_sample_rate=0.0, verdict_reuse_s=2.0))
    assert _reasons(edge.see([_at(10)], 0.0)) == ["uncertain"]
    edge.book.verdict("e1", True, 0.1)
    # Low light: the edge model sees the face on one frame, not on the next, below the
    # band on a third; the confirmed track answers for every one of them.
    for step, detections in enumerate([[_at(12)], [], [_at(14, 0.4)], [], [_at(16)]]):
        decided = edge.see(detections, 0.2 + 0.1 * step)
        assert decided.positive
        assert decided.escalations == ()
    assert edge.events == 1
    # After verdict_reuse_s the hub is asked again about the same track.
    again = edge.see([_at(18)], 2.2)
    assert _reasons(again) == ["uncertain"]
    assert edge.events == 2


def test_a_verdict_lapses_when_its_track_ends() -> None:
    edge = _Edge(tracking=TrackingConfig(max_missed_frames=2))
    edge.see([_at(10)], 0.0)
    edge.book.verdict("e1", True, 0.1)
    ended = []
    for step in range(6):  # the face leaves: the track coasts, then ends
        decided = edge.see([], 0.2 + 0.1 * step)
        ended.append(decided.positive)
    assert ended[0] is True
    assert ended[-1] is False
    assert len(edge.book) == 0
    # Someone at the same place later is a new object: asked about afresh.
    assert _reasons(edge.see([_at(10)], 1.0)) == ["uncertain"]


def test_a_track_is_escalated_again_only_when_its_evidence_changes() -> None:
    edge = _Edge(PolicyConfig(audit_sample_rate=0.0, verdict_reuse_s=10.0))
    edge.see([_at(10, size=40)], 0.0)
    edge.book.verdict("e1", False, 0.1)
    # Same size, a higher score, and below the band: the rejection holds.
    assert _reasons(edge.see([_at(12, 0.7, size=42)], 0.2)) == ["verdict-reused"]
    assert _reasons(edge.see([_at(14, 0.9, size=42)], 0.3)) == ["verdict-reused"]
    # It comes closer: twice the area is new evidence, so the hub is asked again.
    decided = edge.see([_at(16, 0.6, size=62)], 0.4)
    assert _reasons(decided) == ["uncertain"]
    assert edge.events == 2


def test_after_a_fallback_the_same_evidence_is_not_escalated_again_until_it_lapses() -> None:
    edge = _Edge(PolicyConfig(audit_sample_rate=0.0, verdict_reuse_s=2.0))
    edge.see([_at(10)], 0.0)
    assert edge.book.fell_back("e1") is not None
    assert _reasons(edge.see([_at(12)], 1.0)) == ["escalated-before"]
    assert _reasons(edge.see([_at(14)], 2.5)) == ["uncertain"]
    # A verdict that comes late is still the track's.
    state = edge.book.verdict("e1", True, 2.6)
    assert state is not None
    assert state.verdict is True


def test_audit_sample_is_per_track() -> None:
    book = TrackBook("s")
    policy = EscalationPolicy(PolicyConfig(audit_sample_rate=0.25,
                                           max_escalations_per_minute=1e6,
                                           escalation_burst=10_000), random.Random(7))
    reasons = []
    for track in range(2000):  # 2000 objects, each seen on three frames
        for frame in range(3):
            observation = book.observe(frame, TrackUpdate(((track, _at(0, 0.95)),), (), ()))
            reasons += _reasons(policy.decide_tracks("s", observation, float(track)))
    assert 0.2 < reasons.count("audit") / 2000 < 0.3
    assert set(reasons) == {"audit", "confident"}


def test_rate_limit_is_per_source() -> None:
    policy = PolicyConfig(max_escalations_per_minute=60, escalation_burst=2,
                          audit_sample_rate=0.0)
    edge = _Edge(policy)
    at_once = edge.see([_at(x) for x in (0, 100, 200, 300)], 0.0)
    assert [d.action for d in at_once.decisions] == ["escalate", "escalate", "local", "local"]
    assert _reasons(at_once)[2:] == ["rate-limited", "rate-limited"]
    other = _Edge(policy, source="yard")
    other.policy = edge.policy
    assert other.see([_at(0)], 0.0).decisions[0].action == "escalate"
    assert [d.reason for d in edge.see([_at(x) for x in (0, 100, 200, 300)], 1.1).decisions][
        2:].count("uncertain") == 1  # one token back


def test_reuse_can_be_switched_off() -> None:
    edge = _Edge(PolicyConfig(audit_sample_rate=0.0, verdict_reuse_s=0))
    edge.see([_at(10)], 0.0)
    edge.book.verdict("e1", True, 0.0)
    assert _reasons(edge.see([_at(10)], 0.1)) == ["uncertain"]


def test_tracker_keeps_ids_through_missed_frames_and_reports_ends() -> None:
    tracker = ObjectTracker(TrackingConfig(max_missed_frames=3))
    first = tracker.update([_at(10), _at(300)])
    ids = [track for track, _ in first.seen]
    assert len(set(ids)) == 2
    missed = tracker.update([_at(305)])
    assert [track for track, _ in missed.seen] == [ids[1]]
    assert missed.coasting == (ids[0],)
    back = tracker.update([_at(12), _at(310)])
    assert [track for track, _ in back.seen] == ids
    ends: list[int] = []
    for _ in range(10):
        ends += tracker.update([]).ended
    assert sorted(ends) == sorted(ids)
