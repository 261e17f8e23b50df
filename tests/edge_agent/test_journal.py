"""The decision journal: each tracked object's lifecycle as messages, and its file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from edge_agent.config import PolicyConfig, TrackingConfig
from edge_agent.journal import DecisionJournal, JournalFile
from edge_agent.policy import EscalationPolicy
from edge_agent.tracking import ObjectTracker
from edge_agent.tracks import TrackBook
from models import Detection
from sync import TrackEventMessage, decode, encode

pytestmark = pytest.mark.unit


def _at(x: float, score: float = 0.6) -> Detection:
    return Detection(box=(x, 10, x + 40, 50), score=score, label="face")


class _Pipeline:
    """The agent's pipeline after the detector, with its journal."""

    def __init__(self) -> None:
        self.tracker = ObjectTracker(TrackingConfig(max_missed_frames=2))
        self.book = TrackBook("door")
        self.policy = EscalationPolicy(PolicyConfig(audit_sample_rate=0.0), random.Random(0))
        self.journal = DecisionJournal("cam-1")
        self.frame = 0
        self.messages: list[TrackEventMessage] = []

    def see(self, detections: list[Detection], now: float) -> None:
        observation = self.book.observe(self.frame, self.tracker.update(detections))
        self.frame += 1
        decided = self.policy.decide_tracks("door", observation, now)
        self.messages += self.journal.frame(observation, decided, 1000.0 + now)
        for n, decision in enumerate(decided.escalations):
            assert decision.track is not None
            assert decision.evidence is not None
            event_id = f"e{self.frame}-{n}"
            self.book.escalated(decision.track, event_id, decision.evidence, now)
            self.messages.append(self.journal.escalated(decision.track, event_id, now))

    def verdict(self, event_id: str, confirmed: bool, now: float) -> None:
        state = self.book.verdict(event_id, confirmed, now)
        assert state is not None
        self.messages.append(self.journal.verdict(state, event_id, confirmed=confirmed,
                                                  late=False, agrees=None, at=now))


def test_a_tracked_object_is_a_lifecycle_with_its_frames_decision_and_verdict() -> None:
    run = _Pipeline()
    run.see([_at(10)], 0.0)
    for step in range(1, 4):
        run.see([_at(10 + 3 * step)], 0.1 * step)
    run.verdict("e1-0", True, 0.35)
    run.see([_at(25)], 0.4)
    run.see([], 0.5)  # flicker: the confirmed verdict holds the track
    for step in range(4):
        run.see([], 0.6 + 0.1 * step)
    steps = [(m.step, m.action, m.reason) for m in run.messages]
    assert steps == [
        ("new", "escalate", "uncertain"),
        ("update", "escalate", "uncertain"),  # escalated, event id recorded
        ("update", "local", "awaiting-verdict"),
        ("update", "local", "awaiting-verdict"),  # the verdict
        ("update", "local", "verdict-reused"),
        ("update", "local", "verdict-held"),
        ("end", "local", "verdict-held"),
    ]
    assert {m.track_id for m in run.messages} == {run.messages[0].track_id}
    assert run.messages[1].event_id == "e1-0"
    assert run.messages[3].verdict == "confirmed"
    assert run.messages[3].verdict_timing == "on-time"
    # Together, the messages hold every frame the object was seen on, once.
    frames = [s.frame for m in run.messages for s in m.sightings]
    assert frames == [0, 1, 2, 3, 4]
    assert run.messages[-1].first_frame == 0
    assert run.messages[-1].last_frame == 4
    for message in run.messages:  # each one survives the wire
        assert decode(encode(message), TrackEventMessage) == message


def test_two_objects_have_two_lifecycles() -> None:
    run = _Pipeline()
    run.see([_at(10), _at(300)], 0.0)
    new = [m for m in run.messages if m.step == "new"]
    assert len(new) == 2
    assert len({m.track_id for m in new}) == 2
    escalated = [m for m in run.messages if m.step == "update" and m.event_id]
    assert len({m.event_id for m in escalated}) == 2


def test_a_verdict_after_the_track_ended_names_its_event() -> None:
    """The hub keeps an escalated track's lifecycle by its event ids: a verdict that
    comes after the object left is one more step of it, and must say which event."""
    run = _Pipeline()
    run.see([_at(10)], 0.0)
    for step in range(1, 5):
        run.see([], 0.1 * step)  # gone: the track ends while its verdict is awaited
    assert run.messages[-1].step == "end"
    run.verdict("e1-0", True, 0.6)
    late = run.messages[-1]
    assert (late.step, late.event_id, late.verdict) == ("update", "e1-0", "confirmed")


def test_the_file_rotates_by_size_and_keeps_its_backups(tmp_path: Path) -> None:
    path = tmp_path / "state" / "journal.jsonl"
    journal = JournalFile(path, max_bytes=4096, backups=2)
    journal.open()
    line = json.dumps({"pad": "x" * 1000}).encode()
    for _ in range(14):
        journal.write(line)
    journal.close()
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["journal.jsonl", "journal.jsonl.1", "journal.jsonl.2"]
    for name in names:
        text = (path.parent / name).read_bytes()
        assert len(text) <= 4096
        assert all(json.loads(row) for row in text.splitlines())
    # Reopened, it appends.
    again = JournalFile(path, max_bytes=4096, backups=2)
    again.open()
    before = path.stat().st_size
    again.write(b"{}")
    again.close()
    assert path.stat().st_size == before + 3
