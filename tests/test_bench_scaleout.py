"""The scale-out benchmark's fixed-cost judge: one slot per replica, a fixed cost each."""

from __future__ import annotations

import threading

import pytest

from bench.replica import FIXED_COST_MODEL, FixedCostJudge
from cloud_hub import EventJudge
from sync import EventIdFactory, EventMessage, ModelRef

pytestmark = pytest.mark.unit


def _window(score: float) -> EventMessage:
    return EventMessage(event_id=EventIdFactory()(), device_id="cam-1", source="line",
                        captured_at=0.0, reason="anomaly", priority=5,
                        model=ModelRef(name="sensor-anomaly", version="1.0.0"),
                        anomaly_score=score, readings=(1.0, 2.0))


def test_each_event_costs_its_slot_the_fixed_time_and_gets_its_edge_verdict() -> None:
    slept: list[float] = []
    judge: EventJudge = FixedCostJudge(0.05, sleep=slept.append)
    confirmed, rejected = judge.judge(_window(-0.1)), judge.judge(_window(0.1))
    assert (confirmed.outcome, rejected.outcome) == ("confirmed", "rejected")
    assert slept == [0.05, 0.05]
    assert confirmed.model == judge.model_name == FIXED_COST_MODEL
    assert confirmed.inference_ms == pytest.approx(50.0)


def test_one_slot_judges_one_event_at_a_time() -> None:
    inside = threading.Semaphore(0)
    release = threading.Event()
    holding: list[int] = []

    def sleep(_: float) -> None:
        holding.append(1)
        inside.release()
        release.wait(10)
        holding.pop()

    judge = FixedCostJudge(1.0, slots=1, sleep=sleep)
    threads = [threading.Thread(target=judge.judge, args=(_window(0.1),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    assert inside.acquire(timeout=10)
    assert not inside.acquire(timeout=0.2)  # the second waits for the slot
    assert len(holding) == 1
    release.set()
    for thread in threads:
        thread.join(10)
    assert judge.judged == 2


def test_a_slot_count_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="slots"):
        FixedCostJudge(0.01, slots=0)
