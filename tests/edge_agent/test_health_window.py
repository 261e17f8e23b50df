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


PREVIOUS = cast(Model, object())  # the shadow is only handed back to the caller's function


def _shadow_taking(clock: FakeClock, seconds: float) -> object:
    def infer(model: Model) -> object:
        assert model is PREVIOUS
        clock.now += seconds
        return None
    return infer


def test_each_counted_inference_is_paired_with_the_previous_model_on_the_same_input() -> None:
    clock = FakeClock()
    health = ModelHealth(warmup=1, clock=clock)
    health.start_shadow(PREVIOUS)
    assert not health.record(0.5)  # warm-up: not counted, not paired
    health.run_shadow(_shadow_taking(clock, 0.25))
    assert health.record(1.0)
    health.run_shadow(_shadow_taking(clock, 0.25))
    health.record(None)  # the new model failed: nothing to pair
    health.run_shadow(_shadow_taking(clock, 0.25))
    health.record(1.5)

    def broken(model: Model) -> object:
        raise ModelError("the previous model broke")

    health.run_shadow(broken)  # the previous model's failure pairs nothing
    health.record(0.75)
    health.run_shadow(_shadow_taking(clock, 0.125))
    health.run_shadow(_shadow_taking(clock, 0.125))  # one pair per recorded inference
    health.end_shadow()
    health.record(1.25)
    health.run_shadow(_shadow_taking(clock, 0.125))  # the window is over
    stats = health.stats()
    assert stats.latency_pairs_s == ((1.0, 0.25), (0.75, 0.125))
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
            health.run_shadow(_shadow_taking(clock, 0.004 * load))
        assert judge_health(health.stats(), None, limits)[0] == verdict
