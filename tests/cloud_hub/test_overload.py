"""The hub under overload, on a real Mosquitto: a flooding device hears ``busy`` at once
while another device's event is still judged, and every event is stored and answered.

The hub's judge is made slow deterministically: it holds the first event it judges until
the test opens its gate, so the admission queue fills however fast this machine is.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cloud_hub.judge import Judgement
from sync import BusyMessage, EventMessage, TopicLayout, VerdictMessage, decode, encode, peek_schema
from tests.broker import MosquittoBroker
from tests.cloud_hub.hub_helpers import Rig, face_event, running_hub
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

LAYOUT = TopicLayout()
FLOOD = 20
CAPACITY = 4
HANG_GUARD_S = 60.0


class GatedJudge:
    """Holds the first event it judges until :attr:`gate` is set; records the order."""

    model_name = "gated"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.holding = threading.Event()
        self.order: list[str] = []

    def judge(self, event: EventMessage) -> Judgement:
        self.holding.set()
        assert self.gate.wait(HANG_GUARD_S), "the test never opened the gate"
        self.order.append(event.event_id)
        return Judgement("rejected", (), "gated", "1", 1.0)


def test_a_flooding_device_hears_busy_while_another_device_is_judged(
        tmp_path: Path, broker: MosquittoBroker, astronaut: object) -> None:
    judge = GatedJudge()
    with running_hub(tmp_path, broker, judge, ("flood", "quiet"),
                     mqtt_client_id="hub-overload", admission_capacity=CAPACITY) as rig:
        try:
            _flood_while_the_judge_holds_one(rig, judge, astronaut)
        finally:
            judge.gate.set()


def _flood_while_the_judge_holds_one(rig: Rig, judge: GatedJudge, astronaut: object) -> None:
    worker, store, metrics, answers, sender = (rig.worker, rig.store, rig.metrics,
                                               rig.answers, rig.sender)
    flood = [face_event("flood", astronaut) for _ in range(FLOOD)]  # type: ignore[arg-type]
    for event in flood:
        sender.publish(LAYOUT.events("flood"), encode(event), qos=1)
    # Everything the flooder sent is stored and offered for judgement (admitted or
    # shed), with one event held by the judge. (``worker.handled`` counts messages
    # taken from the broker, before they are stored and offered: waiting on it let
    # the gate open before the quiet event was admitted on a loaded machine.)
    assert wait_until(lambda: worker.admission.offered == FLOOD and judge.holding.is_set(),
                      timeout_s=HANG_GUARD_S)
    # The queue is full, or one short when the judge took its first event only after
    # the flood had filled it (then the flooder's fifth was shed).
    assert len(worker.admission) in (CAPACITY - 1, CAPACITY)
    quiet = face_event("quiet", astronaut, reason="uncertain")  # type: ignore[arg-type]
    sender.publish(LAYOUT.events("quiet"), encode(quiet), qos=1)
    assert wait_until(lambda: worker.admission.offered == FLOOD + 1,
                      timeout_s=HANG_GUARD_S)
    judge.gate.set()

    def answered(messages: list[tuple[str, bytes]]) -> bool:
        return len(messages) >= FLOOD + 1

    assert answers.wait_for(answered, HANG_GUARD_S)
    verdicts: dict[str, list[str]] = {}
    for _topic, payload in answers.messages:
        schema = peek_schema(payload)
        if schema == "busy/1":
            busy = decode(payload, BusyMessage)
            assert busy.reason == "queue-full" and busy.retry_after_s > 0
            verdicts.setdefault(busy.event_id, []).append("busy")
        else:
            verdict = decode(payload, VerdictMessage)
            verdicts.setdefault(verdict.event_id, []).append(verdict.outcome)
    sent = {e.event_id for e in flood} | {quiet.event_id}
    assert set(verdicts) == sent  # every event answered, busy or judged
    duplicates = sum(len(v) - 1 for v in verdicts.values())
    assert duplicates <= 0.01 * len(sent)
    assert verdicts[quiet.event_id] == ["rejected"]  # judged, not shed
    busy_flood = [e.event_id for e in flood if verdicts[e.event_id] == ["busy"]]
    assert len(busy_flood) >= FLOOD - CAPACITY - 1
    # The quiet device waited for one of the flooder's queued events at most.
    assert judge.order.index(quiet.event_id) <= 2, judge.order
    stored = store.list_events(limit=100).items
    assert {e["id"] for e in stored} == sent  # every event stored, shed or judged
    assert metrics.registry.get_sample_value("hub_events_shed_total",
                                             {"reason": "queue-full"}) == len(busy_flood)
    assert metrics.registry.get_sample_value("hub_admission_queue_depth") == 0
    assert metrics.registry.get_sample_value("hub_mqtt_disconnects_total") == 0
    assert worker.connected.is_set()


class InstantJudge:
    """Rejects every event at once."""

    model_name = "instant"

    def judge(self, event: EventMessage) -> Judgement:
        return Judgement("rejected", (), "instant", "1", 1.0)


def test_an_event_that_spent_its_time_before_reaching_the_hub_is_answered_busy_at_once(
        tmp_path: Path, broker: MosquittoBroker, astronaut: object) -> None:
    """The device's timeout runs from its capture: an event that waited 9.9 of its 10 s
    before the hub received it (in the broker's queue, behind a hub that could not keep
    up) can no longer be judged and answered in time, so it hears busy now; one that
    waited a second is judged."""
    now = 1_800_000_000.0  # the hub's clock, standing still
    with running_hub(tmp_path, broker, InstantJudge(), ("cam",), clock=lambda: now,
                     mqtt_client_id="hub-waited") as rig:
        waited = face_event("cam", astronaut, captured_at=now - 9.9,  # type: ignore[arg-type]
                            verdict_timeout_s=10.0)
        fresh = face_event("cam", astronaut, captured_at=now - 1.0,  # type: ignore[arg-type]
                           verdict_timeout_s=10.0)
        for event in (waited, fresh):
            rig.sender.publish(LAYOUT.events("cam"), encode(event), qos=1)
        assert rig.answers.wait_for(lambda messages: len(messages) >= 2, HANG_GUARD_S)
        heard = {}
        for _topic, payload in rig.answers.messages:
            message = decode(payload, BusyMessage if peek_schema(payload) == "busy/1"
                             else VerdictMessage)
            heard[message.event_id] = message
        busy = heard[waited.event_id]
        assert isinstance(busy, BusyMessage) and busy.reason == "deadline"
        assert isinstance(heard[fresh.event_id], VerdictMessage)
        assert {e["id"] for e in rig.store.list_events(limit=10).items} == {
            waited.event_id, fresh.event_id}  # both stored, the busy one too
