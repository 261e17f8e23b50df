"""Tracked objects: the tracker (norfair), the track book and the policy, on synthetic
detections. Every decision, escalation and verdict belongs to a track."""

from __future__ import annotations

import random

import numpy as np
import pytest

from edge_agent.config import MotionConfig, PolicyConfig, TrackingConfig
from edge_agent.escalation import frame_event
from edge_agent.motion import MotionGate
from edge_agent.policy import EscalationPolicy, FrameDecision
from edge_agent.tracking import ObjectTracker, TrackUpdate
from edge_agent.tracks import TrackBook
from models import Detection, Manifest
from sync import EventIdFactory, EventMessage, decode, encode

pytestmark = pytest.mark.unit


def _at(x: float, score: float = 0.6, *, size: float = 40, label: str = "face") -> Detection:
    return Detection(box=(x, 10, x + size, 10 + size), score=score, label=label)


def _manifest() -> Manifest:
    return Manifest.model_validate({
        "schema_version": 1, "name": "det", "version": "1.0.0", "task": "detector",
        "runtime": "onnx", "file": {"path": "model.onnx", "sha256": "0" * 64, "size_bytes": 1},
        "input": {"shape": [1, 3, 64, 64], "layout": "NCHW", "dtype": "float32",
                  "color_order": "RGB", "resize": "letterbox"},
        "output": {"kind": "detector", "family": "yolo", "output": "o", "labels": ["face"],
                   "score_threshold": 0.25},
    })


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
    # Same size and band with a higher score, and below the band: the rejection holds.
    assert _reasons(edge.see([_at(12, 0.7, size=42)], 0.2)) == ["verdict-reused"]
    assert _reasons(edge.see([_at(14, 0.3, size=42)], 0.3)) == ["verdict-reused"]
    # It comes closer: twice the area is new evidence, so the hub is asked again.
    decided = edge.see([_at(16, 0.6, size=62)], 0.4)
    assert _reasons(decided) == ["uncertain"]
    assert edge.events == 2


def test_a_rejected_track_the_edge_becomes_sure_of_is_asked_about_again() -> None:
    # A face walking in is escalated while half of it shows, and rejected; a moment
    # later the edge is sure of it. The rejection of a sliver does not decide the face.
    edge = _Edge(PolicyConfig(audit_sample_rate=0.0, verdict_reuse_s=10.0))
    edge.see([_at(10, 0.6)], 0.0)
    edge.book.verdict("e1", False, 0.1)
    sure = edge.see([_at(12, 0.9)], 0.2)
    assert [(d.action, d.reason, d.positive) for d in sure.decisions] == [
        ("escalate", "uncertain", True)]
    # A confirmed track the edge is sure of needs no second opinion.
    edge.book.verdict("e2", True, 0.3)
    assert _reasons(edge.see([_at(14, 0.95)], 0.4)) == ["verdict-reused"]
    assert edge.events == 2


@pytest.mark.parametrize(("verdict", "later", "answer"), [
    # Closer and still unsure: new evidence, but no token left; the hub's confirmation
    # of this track still answers, not the edge's doubt.
    (True, _at(12, 0.6, size=62), True),
    # A rejected track the edge is now sure of, at a new size: the hub judged something
    # else, so with no token left the edge's own answer stands.
    (False, _at(12, 0.9, size=62), True),
    # A rejected track the edge is unsure of at a new size: the rejection answers.
    (False, _at(12, 0.6, size=62), False),
])
def test_a_rate_limited_track_answers_with_its_verdict_while_it_holds(
        verdict: bool, later: Detection, answer: bool) -> None:
    edge = _Edge(PolicyConfig(audit_sample_rate=0.0, max_escalations_per_minute=1,
                              escalation_burst=1, verdict_reuse_s=5.0))
    edge.see([_at(10, 0.6, size=40)], 0.0)
    edge.book.verdict("e1", verdict, 0.1)
    decided = edge.see([later], 0.2)
    assert [(d.reason, d.positive) for d in decided.decisions] == [("rate-limited", answer)]
    assert decided.positive is answer
    assert edge.events == 1


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


def test_the_gate_says_where_it_saw_motion() -> None:
    gate = MotionGate(MotionConfig(keyframe_interval=1000))
    rng = np.random.default_rng(0)
    scene = rng.integers(60, 120, size=(360, 640, 3), dtype=np.uint8)
    assert gate.check(scene).reason == "first"
    moved = scene.copy()
    moved[100:180, 400:480] = 250  # something bright walks in, right of centre
    decided = gate.check(moved)
    assert decided.reason == "motion"
    assert len(decided.regions) == 1
    x1, y1, x2, y2 = decided.regions[0]
    assert 380 <= x1 <= 410 and 390 <= x2 <= 500 and 80 <= y1 <= 110 and 170 <= y2 <= 200


def test_motion_no_detection_explains_is_escalated_rate_limited_per_source() -> None:
    policy = EscalationPolicy(PolicyConfig(unexplained_per_minute=6, audit_sample_rate=0.0))
    moving = [(400.0, 100.0, 480.0, 180.0), (10.0, 10.0, 30.0, 30.0)]
    # A detection in the band explains the region it overlaps; one below the band does not.
    inside = Detection(box=(410, 110, 450, 150), score=0.6, label="face")
    explained = policy.decide_motion("door", moving[:1], [inside], 0.0)
    assert explained is None
    faint = Detection(box=(410, 110, 450, 150), score=0.3, label="face")
    blind = policy.decide_motion("door", moving, [faint], 0.0)
    assert blind is not None
    assert (blind.action, blind.reason, blind.priority) == ("escalate", "unexplained", 4)
    assert blind.region == moving[0]  # the largest unexplained region
    assert policy.decide_motion("door", moving, [], 1.0) is None  # one per 10 s
    assert policy.decide_motion("yard", moving, [], 1.0) is not None  # per source
    again = policy.decide_motion("door", moving, [], 10.5)
    assert again is not None
    assert again.action == "escalate"
    off = EscalationPolicy(PolicyConfig(unexplained_per_minute=0))
    assert off.decide_motion("door", moving, [], 0.0) is None


def test_an_unexplained_region_escalation_carries_its_crop() -> None:
    image = np.full((360, 640, 3), 90, dtype=np.uint8)
    event = frame_event(
        event_id=EventIdFactory()(), device_id="cam-1", source="door", captured_at=0.0,
        reason="unexplained", priority=4, manifest=_manifest(), detections=(), image=image,
        crop_max_bytes=48 * 1024, thumbnail_width=320, region=(400.0, 100.0, 480.0, 180.0))
    assert event.crop_box is not None
    x1, y1, x2, y2 = event.crop_box
    assert x1 <= 400 and y1 <= 100 and x2 >= 480 and y2 >= 180
    assert event.crop_jpeg is not None
    assert event.detections == ()
    assert decode(encode(event), EventMessage).reason == "unexplained"


def test_a_track_walking_out_of_view_is_leaving_not_missed() -> None:
    tracker = ObjectTracker(TrackingConfig(max_missed_frames=10))
    for step in range(8):  # walks right at 30 px a frame, towards the edge of 640
        update = tracker.update([_at(400 + 30 * step, size=60)], (640, 360))
    [(track, _)] = update.seen
    missed = tracker.update([_at(20, 0.3, size=10)], (640, 360))  # something else
    assert track in missed.leaving  # predicted half out of view: it walked out
    assert track not in missed.coasting
    still = ObjectTracker(TrackingConfig(max_missed_frames=10))
    for _ in range(5):
        still.update([_at(300, size=60)], (640, 360))
    assert still.update([], (640, 360)).coasting  # in the middle: missed, not leaving


def test_a_judged_moving_region_takes_its_verdict_as_it_moves() -> None:
    policy = EscalationPolicy(PolicyConfig(unexplained_per_minute=6, verdict_reuse_s=2.0))
    first = policy.decide_motion("door", [(100.0, 100.0, 140.0, 140.0)], [], 0.0)
    assert first is not None
    assert first.region is not None
    policy.remember_motion("door", first.region, True, 0.1)
    for step in range(1, 6):  # the small face moves on; the edge still sees nothing
        x = 100.0 + 10 * step
        later = policy.decide_motion("door", [(x, 100.0, x + 40, 140.0)], [], 0.1 * step)
        assert later is not None
        assert (later.action, later.reason, later.positive) == ("local", "verdict-reused",
                                                                True)
    elsewhere = policy.decide_motion("door", [(500.0, 10.0, 540.0, 50.0)], [], 0.7)
    assert elsewhere is None  # new motion, but the per-source limit has no token yet
    lapsed = policy.decide_motion("door", [(150.0, 100.0, 190.0, 140.0)], [], 12.0)
    assert lapsed is not None
    assert lapsed.action == "escalate"


def test_a_confirmed_region_walking_out_holds_while_half_of_it_is_in_view() -> None:
    policy = EscalationPolicy(PolicyConfig(unexplained_per_minute=6, verdict_reuse_s=2.0))
    size = (640, 360)
    first = policy.decide_motion("door", [(480.0, 100.0, 580.0, 200.0)], [], 0.0, size)
    assert first is not None
    assert first.region is not None
    policy.remember_motion("door", first.region, True, 0.0)
    answers = []
    for step, x in enumerate(range(500, 640, 20), start=1):  # 100 px wide, walking out
        region = (float(x), 100.0, min(x + 100.0, 640.0), 200.0)
        later = policy.decide_motion("door", [region], [], 0.1 * step, size)
        answers.append(later is not None and later.positive)
    # In view at 500 and 520; then 100, 80 and 60 px of it: held; 40 and 20: gone.
    assert answers == [True, True, True, True, True, False, False]


def test_a_confirmed_region_does_not_pass_to_motion_it_barely_touches() -> None:
    policy = EscalationPolicy(PolicyConfig(unexplained_per_minute=0.001, verdict_reuse_s=2.0))
    first = policy.decide_motion("door", [(100.0, 100.0, 200.0, 200.0)], [], 0.0)
    assert first is not None
    assert first.region is not None
    policy.remember_motion("door", first.region, True, 0.0)
    # Something large elsewhere whose corner touches the judged region: not that object.
    assert policy.decide_motion("door", [(190.0, 190.0, 500.0, 350.0)], [], 0.1) is None


def test_motion_at_the_border_waits_and_a_rejection_is_not_remembered() -> None:
    policy = EscalationPolicy(PolicyConfig(unexplained_per_minute=600))
    entering = [(0.0, 100.0, 16.0, 180.0)]  # a sliver of something walking in
    assert policy.decide_motion("door", entering, [], 0.0, (640, 360)) is None
    inside = [(40.0, 100.0, 120.0, 180.0)]
    first = policy.decide_motion("door", inside, [], 0.0, (640, 360))
    assert first is not None
    assert first.action == "escalate"
    assert first.region is not None
    policy.remember_motion("door", first.region, False, 0.1)
    later = policy.decide_motion("door", [(60.0, 100.0, 140.0, 180.0)], [], 0.5, (640, 360))
    assert later is not None
    assert later.action == "escalate"  # asked again: a rejection does not follow motion
