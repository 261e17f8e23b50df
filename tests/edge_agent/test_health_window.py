"""The health window's paired latency samples, timed by a fake clock."""

from __future__ import annotations

from typing import cast

import pytest

from edge_agent.updates import ModelHealth
from models import Model, ModelError
from sync.install import HealthLimits, judge_health

pytestmark = pytest.mark.unit


class FakeClock:
    """A clock that moves only when told to (by binary fractions, so sums are exact)."""

    def __init__(self) -> None:
        self.now = 64.0

    def __call__(self) -> float:
        return self.now


PREVIOUS = cast(Model, object())  # the models are only handed back to the caller's function
NEW = cast(Model, object())


class Timed:
    """An inference that takes ``new`` seconds on the new model and ``previous`` on the
    previous one, on the fake clock, and remembers which ran in what order."""

    def __init__(self, clock: FakeClock, new: float, previous: float) -> None:
        self.clock, self.seconds = clock, {id(NEW): new, id(PREVIOUS): previous}
        self.ran: list[Model] = []

    def __call__(self, model: Model) -> object:
        self.ran.append(model)
        self.clock.now += self.seconds[id(model)]
        return None


def test_each_counted_inference_is_paired_with_both_models_rerun_on_the_same_input() -> None:
    clock = FakeClock()
    health = ModelHealth(warmup=1, clock=clock)
    health.start_shadow(PREVIOUS)
    assert not health.record(0.5)  # warm-up: not counted, not paired
    warm = Timed(clock, 0.5, 0.25)
    health.run_shadow(warm, NEW)
    assert warm.ran == []
    assert health.record(8.0)  # the serving call's own time (amid the frame's work) is not paired
    first = Timed(clock, 0.5, 0.25)
    health.run_shadow(first, NEW)
    health.record(None)  # the new model failed: nothing to pair
    health.run_shadow(Timed(clock, 0.5, 0.25), NEW)
    health.record(1.5)

    def broken(model: Model) -> object:
        if model is PREVIOUS:
            raise ModelError("the previous model broke")
        return None

    health.run_shadow(broken, NEW)  # the previous model's failure pairs nothing
    health.record(0.75)
    second = Timed(clock, 0.375, 0.125)
    health.run_shadow(second, NEW)
    health.run_shadow(Timed(clock, 1.0, 1.0), NEW)  # one pair per recorded inference
    health.end_shadow()
    health.record(1.25)
    health.run_shadow(Timed(clock, 1.0, 1.0), NEW)  # the window is over
    stats = health.stats()
    assert stats.latency_pairs_s == ((0.5, 0.25), (0.375, 0.125))
    assert first.ran == [NEW, PREVIOUS] and second.ran == [PREVIOUS, NEW]  # order alternates
    assert stats.inferences == 5 and stats.errors == 1


def test_a_slower_model_is_caught_by_its_pairs_and_a_busy_one_is_not() -> None:
    limits = HealthLimits(min_inferences=20)
    for slowdown, verdict in ((3.0, "degraded"), (1.0, "healthy")):
        clock = FakeClock()
        health = ModelHealth(clock=clock)
        health.start_shadow(PREVIOUS)
        for frame in range(20):
            load = 1.0 + frame % 4  # the device gets busier and quieter: both sides alike
            health.record(0.004 * slowdown * load)
            health.run_shadow(Timed(clock, 0.004 * slowdown * load, 0.004 * load), NEW)
        assert judge_health(health.stats(), None, limits)[0] == verdict
