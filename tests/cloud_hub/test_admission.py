"""The admission queue: priority, fairness across devices, bounds and deadlines (pure)."""

from __future__ import annotations

import pytest

from cloud_hub.admission import (
    AdmissionLimits,
    AdmissionQueue,
    Ticket,
    answer_deadline,
    priority_of,
)

pytestmark = pytest.mark.unit


def _ticket(device: str, n: int, priority: str = "normal",
            deadline: float | None = None) -> Ticket[str]:
    return Ticket(device, priority, deadline, f"{device}-{n}")  # type: ignore[arg-type]


def _drain(queue: AdmissionQueue[str], now: float = 0.0) -> list[str]:
    taken = []
    while (ticket := queue.take(now)[0]) is not None:
        taken.append(ticket.item)
    return taken


def test_higher_classes_are_judged_first_whatever_the_arrival_order() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(AdmissionLimits(capacity=10))
    for n, priority in enumerate(["late", "audit", "normal", "urgent", "audit", "urgent"]):
        assert queue.offer(_ticket("cam", n, priority), now=0.0) == []
    assert _drain(queue) == ["cam-3", "cam-5", "cam-2", "cam-1", "cam-4", "cam-0"]


def test_devices_take_turns_so_a_flood_delays_another_device_by_one_event() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(AdmissionLimits(capacity=100))
    for n in range(50):
        queue.offer(_ticket("flood", n), now=0.0)
    queue.offer(_ticket("quiet", 0), now=0.0)
    queue.offer(_ticket("other", 0), now=0.0)
    order = _drain(queue)
    assert order.index("quiet-0") <= 1 and order.index("other-0") <= 2
    assert [item for item in order if item.startswith("flood")] == [
        f"flood-{n}" for n in range(50)]  # each device's own events in arrival order


def test_a_full_queue_displaces_the_flooding_device_not_the_newcomer() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(AdmissionLimits(capacity=4))
    for n in range(4):
        assert queue.offer(_ticket("flood", n), now=0.0) == []
    shed = queue.offer(_ticket("flood", 4), now=0.0)
    assert [(s.ticket.item, s.reason) for s in shed] == [("flood-4", "queue-full")]
    shed = queue.offer(_ticket("quiet", 0), now=0.0)
    assert [(s.ticket.item, s.reason) for s in shed] == [("flood-3", "queue-full")]
    shed = queue.offer(_ticket("quiet", 1), now=0.0)
    assert [s.ticket.item for s in shed] == ["flood-2"]
    # Now two each: a third of quiet's would be over its share.
    assert [s.ticket.item for s in queue.offer(_ticket("quiet", 2), now=0.0)] == ["quiet-2"]
    assert sorted(_drain(queue)) == ["flood-0", "flood-1", "quiet-0", "quiet-1"]
    assert queue.offered == 8 and queue.admitted == 6
    assert queue.shed == {"queue-full": 4, "deadline": 0}


def test_a_full_queue_sheds_lower_classes_for_higher_ones() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(AdmissionLimits(capacity=2))
    queue.offer(_ticket("a", 0, "audit"), now=0.0)
    queue.offer(_ticket("b", 0, "urgent"), now=0.0)
    assert [s.ticket.item for s in queue.offer(_ticket("a", 1, "urgent"), now=0.0)] == ["a-0"]
    # Nothing lower left: a normal event does not displace an urgent one.
    assert [s.ticket.item for s in queue.offer(_ticket("c", 0, "normal"), now=0.0)] == ["c-0"]
    assert _drain(queue) == ["b-0", "a-1"]


def test_an_event_that_cannot_be_judged_before_its_deadline_is_shed_at_once() -> None:
    limits = AdmissionLimits(capacity=100, workers=2, service_s=1.0, margin_s=0.0)
    queue: AdmissionQueue[str] = AdmissionQueue(limits)
    for n in range(6):  # six ahead, two workers: three seconds of waiting
        queue.offer(_ticket(f"d{n}", 0), now=0.0)
    shed = queue.offer(_ticket("late-comer", 0, deadline=3.5), now=0.0)
    assert [(s.ticket.item, s.reason) for s in shed] == [("late-comer-0", "deadline")]
    assert queue.offer(_ticket("in-time", 0, deadline=4.5), now=0.0) == []
    # An urgent event jumps the queue, so its wait is short.
    assert queue.offer(_ticket("alarm", 0, "urgent", deadline=1.5), now=0.0) == []


def test_events_whose_deadline_passed_while_waiting_are_shed_when_their_turn_comes() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(
        AdmissionLimits(capacity=10, service_s=1.0, margin_s=0.0))
    queue.offer(_ticket("a", 0, deadline=10.0), now=0.0)
    queue.offer(_ticket("b", 0, deadline=20.0), now=0.0)
    ticket, shed = queue.take(now=9.5)
    assert ticket is not None and ticket.item == "b-0"
    assert [(s.ticket.item, s.reason) for s in shed] == [("a-0", "deadline")]
    assert queue.take(now=9.5) == (None, [])


def test_a_flooders_events_are_shed_once_they_cannot_be_reached_in_time_whoever_s_turn() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(
        AdmissionLimits(capacity=100, service_s=1.0, margin_s=0.0))
    for n in range(3):
        assert queue.offer(_ticket("flood", n, deadline=10.0), now=0.0) == []
    for device in ("a", "b", "c"):
        assert queue.offer(_ticket(device, 0, deadline=1000.0), now=0.0) == []
    ticket, shed = queue.take(now=0.0)
    assert ticket is not None and ticket.item == "flood-0" and shed == []
    # In turn now: a, b, c, flood-1, flood-2; at 5.5, flood-2 would be answered at 10.5.
    ticket, shed = queue.take(now=5.5)
    assert ticket is not None and ticket.item == "a-0"
    assert [(s.ticket.item, s.reason) for s in shed] == [("flood-2", "deadline")]
    ticket, shed = queue.take(now=6.6)  # flood-1 still in time: third, done by 9.6
    assert ticket is not None and ticket.item == "b-0" and shed == []
    # Not yet flood-1's turn (c's comes first), but it would be answered at 10.5.
    ticket, shed = queue.take(now=8.5)
    assert ticket is not None and ticket.item == "c-0"
    assert [(s.ticket.item, s.reason) for s in shed] == [("flood-1", "deadline")]
    assert queue.shed == {"queue-full": 0, "deadline": 2}


def test_an_offer_sheds_what_expired_while_the_judges_were_busy() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(
        AdmissionLimits(capacity=100, service_s=1.0, margin_s=0.0))
    queue.offer(_ticket("flood", 0, deadline=10.0), now=0.0)
    queue.offer(_ticket("flood", 1, deadline=30.0), now=0.0)
    shed = queue.offer(_ticket("quiet", 0, deadline=40.0), now=9.5)
    assert [(s.ticket.item, s.reason) for s in shed] == [("flood-0", "deadline")]
    assert _drain(queue, now=9.5) == ["flood-1", "quiet-0"]


def test_the_judging_time_estimate_follows_measurements() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(AdmissionLimits(service_s=0.05, smoothing=0.5))
    queue.judged(0.25)
    assert queue.service_s == pytest.approx(0.15)


def test_the_answer_time_estimate_rises_at_once_and_falls_gradually() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(AdmissionLimits(smoothing=0.5))
    queue.answered(2.0)
    assert queue.answer_s == 2.0  # a slow verdict writer counts at once
    queue.answered(0.0)
    assert queue.answer_s == pytest.approx(1.0)
    queue.answered(3.0)
    assert queue.answer_s == 3.0


def test_the_deadline_counts_the_time_spent_before_the_hub_received_the_event() -> None:
    # Four seconds in the outbox or the broker's queue: six of its ten left.
    assert answer_deadline(captured_at=96.0, arrived_at=100.0, timeout_s=10.0) == 106.0
    # Past its timeout: the device has decided it already.
    assert answer_deadline(captured_at=89.0, arrived_at=100.0, timeout_s=10.0) is None


def test_a_device_clock_ahead_of_the_hubs_buys_no_more_than_its_timeout() -> None:
    assert answer_deadline(captured_at=100.0, arrived_at=100.0, timeout_s=10.0) == 110.0
    assert answer_deadline(captured_at=160.0, arrived_at=100.0, timeout_s=10.0) == 110.0
    assert answer_deadline(captured_at=1e12, arrived_at=100.0, timeout_s=10.0) == 110.0


def test_priority_follows_the_reason_unless_the_device_decided_already() -> None:
    assert priority_of("suspicious", late=False) == "urgent"
    assert priority_of("uncertain", late=False) == "normal"
    assert priority_of("audit", late=False) == "audit"
    assert priority_of("suspicious", late=True) == "late"


@pytest.mark.parametrize(("field", "value"), [("capacity", 0), ("workers", 0), ("service_s", 0.0),
                                          ("smoothing", 0.0), ("margin_s", -1.0),
                                          ("review_s", 0.0), ("urgent_per_device", 0)])
def test_limits_refuse_nonsense(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        AdmissionLimits(**{field: value})  # type: ignore[arg-type]


def test_an_event_is_shed_once_its_verdict_could_not_be_recorded_and_sent_in_time() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(
        AdmissionLimits(capacity=10, service_s=1.0, smoothing=1.0, margin_s=0.0))
    assert queue.offer(_ticket("a", 0, deadline=2.5), now=0.0) == []  # judged by 1.0
    queue.answered(2.0)  # verdicts now reach the broker 2 s after their judgement
    ticket, shed = queue.take(now=0.0)
    assert ticket is None and [(s.ticket.item, s.reason) for s in shed] == [("a-0", "deadline")]
    assert [s.reason for s in queue.offer(_ticket("b", 0, deadline=2.5), now=0.0)] == [
        "deadline"]
    assert queue.offer(_ticket("c", 0, deadline=3.5), now=0.0) == []


def test_a_device_declaring_everything_suspicious_does_not_starve_anothers_uncertain() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(AdmissionLimits(capacity=100))  # two each
    for n in range(40):
        queue.offer(_ticket("flood", n, "urgent"), now=0.0)
    queue.offer(_ticket("quiet", 0, "normal"), now=0.0)
    taken = [queue.take(now=0.0)[0] for _ in range(4)]
    # Two urgent turns (its share), then the devices take turns: quiet's is next.
    assert [t.item for t in taken if t is not None] == ["flood-0", "flood-1", "flood-2",
                                                        "quiet-0"]
    # Flooding on while judged: its new claims wait in turn, not ahead of everyone.
    queue.offer(_ticket("quiet", 1, "normal"), now=0.0)
    for n in range(40, 60):
        queue.offer(_ticket("flood", n, "urgent"), now=0.0)
    order = _drain(queue)
    assert order.index("quiet-1") <= 1
    assert [item for item in order if item.startswith("flood")] == [
        f"flood-{n}" for n in range(3, 60)]  # a device's own claims still in arrival order


def test_a_flooders_surplus_claims_do_not_displace_other_devices_from_a_full_queue() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(AdmissionLimits(capacity=4))  # two each
    queue.offer(_ticket("quiet", 0, "normal"), now=0.0)
    for n in range(3):
        assert queue.offer(_ticket("flood", n, "urgent"), now=0.0) == []
    shed = queue.offer(_ticket("flood", 3, "urgent"), now=0.0)
    assert [(s.ticket.item, s.reason) for s in shed] == [("flood-3", "queue-full")]
    assert queue.depth("urgent") == 2 and queue.depth("normal") == 2
    assert sorted(_drain(queue)) == ["flood-0", "flood-1", "flood-2", "quiet-0"]


def test_an_honest_alarm_keeps_its_urgency_behind_its_own_backlog() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(AdmissionLimits(capacity=100))
    for n in range(30):  # an outbox drained after an outage: routine events
        queue.offer(_ticket("cam", n, "normal"), now=0.0)
    queue.offer(_ticket("other", 0, "normal"), now=0.0)
    queue.offer(_ticket("cam", 30, "urgent"), now=0.0)
    assert _drain(queue)[0] == "cam-30"


def test_an_urgent_claim_over_the_share_still_waits_ahead_of_its_devices_routine() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(
        AdmissionLimits(capacity=100, urgent_per_device=1))
    queue.offer(_ticket("cam", 0, "normal"), now=0.0)
    queue.offer(_ticket("cam", 1, "urgent"), now=0.0)
    queue.offer(_ticket("cam", 2, "urgent"), now=0.0)  # over its share: waits as normal
    queue.offer(_ticket("cam", 3, "normal"), now=0.0)
    assert _drain(queue) == ["cam-1", "cam-2", "cam-0", "cam-3"]


def test_a_tiny_verdict_timeout_is_answered_busy_at_once_not_queued() -> None:
    queue: AdmissionQueue[str] = AdmissionQueue(AdmissionLimits(capacity=10))
    deadline = answer_deadline(captured_at=100.0, arrived_at=100.0, timeout_s=1e-300)
    assert deadline is not None
    shed = queue.offer(_ticket("hasty", 0, "urgent", deadline=deadline), now=100.0)
    assert [s.reason for s in shed] == ["deadline"] and len(queue) == 0


def test_a_huge_verdict_timeout_or_a_clock_far_ahead_buys_no_room_over_others() -> None:
    # The schema's largest timeout from a capture in the hub's far future: a day from arrival.
    deadline = answer_deadline(captured_at=1e300, arrived_at=100.0, timeout_s=86400.0)
    assert deadline == 100.0 + 86400.0
    queue: AdmissionQueue[str] = AdmissionQueue(AdmissionLimits(capacity=4))
    for n in range(4):
        assert queue.offer(_ticket("patient", n, "urgent", deadline=deadline), now=100.0) == []
    # Never expiring, it is still the largest device's newest claim that makes room.
    shed = queue.offer(_ticket("quiet", 0, "normal", deadline=110.0), now=100.0)
    assert [s.ticket.item for s in shed] == ["patient-3"]


@pytest.mark.parametrize("captured_at", [0.0, -1e300, float("-inf")])
def test_a_capture_in_the_far_past_is_late_not_urgent(captured_at: float) -> None:
    assert answer_deadline(captured_at=captured_at, arrived_at=1e6, timeout_s=86400.0) is None
    assert priority_of("suspicious", late=True) == "late"


@pytest.mark.parametrize("captured_at", [float("inf"), float("nan")])
def test_a_non_finite_capture_time_counts_as_no_time_spent(captured_at: float) -> None:
    # The schema refuses these at decode; were one to get here it would buy nothing.
    assert answer_deadline(captured_at=captured_at, arrived_at=100.0, timeout_s=10.0) == 110.0


def test_a_device_claiming_urgent_at_the_judging_pace_still_lets_others_take_turns() -> None:
    # Never more than one claim waiting: what it has judged counts against its share too.
    queue: AdmissionQueue[str] = AdmissionQueue(AdmissionLimits(capacity=100))  # two each
    queue.offer(_ticket("quiet", 0, "normal"), now=0.0)
    queue.offer(_ticket("quiet", 1, "normal"), now=0.0)
    taken = []
    for n in range(8):
        queue.offer(_ticket("paced", n, "urgent"), now=0.0)
        ticket = queue.take(now=0.0)[0]
        assert ticket is not None
        taken.append(ticket.item)
    # Two urgent turns, then its turn with quiet's; the same again.
    assert taken.index("quiet-0") == 2 and taken.index("quiet-1") == 6
    # Once the others have had their turns, its claims are honoured again.
    assert _drain(queue) == [f"paced-{n}" for n in range(8) if f"paced-{n}" not in taken]
    queue.offer(_ticket("paced", 8, "urgent"), now=0.0)
    queue.offer(_ticket("quiet", 2, "normal"), now=0.0)
    assert _drain(queue) == ["paced-8", "quiet-2"]
