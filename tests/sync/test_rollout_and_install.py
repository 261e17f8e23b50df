"""Pure logic of rollouts and of the install state machine."""

from __future__ import annotations

import pytest

from sync.errors import SyncError
from sync.install import (
    HealthLimits,
    HealthStats,
    InstallRecord,
    InvalidTransitionError,
    Step,
    advance,
    judge_health,
    resume_action,
)
from sync.rollout import Rollout, on_report, plan_waves, roll_back, start

pytestmark = pytest.mark.unit

DEVICES = [f"cam-{i:02d}" for i in range(10)]


def test_canary_wave_then_the_rest() -> None:
    rollout = start(rollout_id="r1", model="m", version="1.1.0", group="g", devices=DEVICES,
                    canary_percent=20)
    canaries = rollout.waves[0]
    assert len(canaries) == 2 and len(rollout.waves[1]) == 8
    assert set(rollout.targeted) == set(canaries)
    rollout = on_report(rollout, canaries[0], "committed")
    assert rollout.wave == 0  # waiting for the other canary
    rollout = on_report(rollout, "cam-not-targeted", "committed")
    rollout = on_report(rollout, canaries[1], "committed")
    assert rollout.wave == 1 and set(rollout.targeted) == set(DEVICES)
    for device in rollout.waves[1]:
        rollout = on_report(rollout, device, "committed")
    assert rollout.status == "completed"


def test_failures_past_the_share_halt_the_rollout() -> None:
    rollout = start(rollout_id="r2", model="m", version="2.0.0", group="g", devices=DEVICES,
                    canary_percent=30, max_failure_share=0.2)
    first = rollout.waves[0][0]
    rollout = on_report(rollout, first, "rolled-back")
    assert rollout.status == "halted" and "1 of 3 devices" in rollout.reason
    assert rollout.targeted == (first,)  # nobody else starts
    assert on_report(rollout, rollout.waves[0][1], "committed") == rollout
    assert roll_back(rollout, "operator").status == "rolled-back"


def test_a_rollout_survives_its_plain_data_and_refuses_damaged_data() -> None:
    rollout = start(rollout_id="r3", model="m", version="1.0.0", group="g", devices=DEVICES,
                    canary_percent=20)
    rollout = on_report(rollout, rollout.waves[0][0], "committed")
    assert rollout.results and Rollout.from_dict(rollout.to_dict()) == rollout
    for damage in ({"waves": "cam-01"}, {"status": "paused"}, {"wave": "1"}, {"results": []}):
        with pytest.raises(SyncError, match="not a rollout"):
            Rollout.from_dict({**rollout.to_dict(), **damage})
    with pytest.raises(SyncError, match="not a rollout"):
        Rollout.from_dict({k: v for k, v in rollout.to_dict().items() if k != "id"})


def test_waves_differ_between_releases_and_are_deterministic() -> None:
    assert plan_waves(DEVICES, 10, "1.0.0") == plan_waves(DEVICES, 10, "1.0.0")
    canaries = {plan_waves(DEVICES, 10, f"1.{i}.0")[0] for i in range(8)}
    assert len(canaries) > 1
    assert plan_waves([], 10, "1.0.0") == ()


def test_install_transitions_and_resume() -> None:
    record = InstallRecord("m", "1.0.0", "1.1.0")
    assert resume_action(record) == "verify"
    record = advance(record, Step.VERIFIED, at=1)
    assert resume_action(record) == "stage"
    with pytest.raises(InvalidTransitionError, match="verified cannot go to active"):
        advance(record, Step.ACTIVE, at=2)
    record = advance(advance(advance(record, Step.STAGED, at=2), Step.SMOKE_PASSED, at=3),
                     Step.ACTIVE, at=4)
    assert resume_action(record) == "watch"
    done = advance(record, Step.COMMITTED, at=5)
    assert done.finished and resume_action(done) == "none"
    assert InstallRecord.from_dict(done.to_dict()) == done


def test_health_judgement() -> None:
    limits = HealthLimits(min_inferences=50)
    base = HealthStats(inferences=500, errors=0, median_latency_s=0.010, escalations=25)
    assert judge_health(HealthStats(10, 0, 0.01, 0), base, limits)[0] == "undecided"
    assert judge_health(HealthStats(10, 5, 0.01, 0), base, limits)[0] == "degraded"
    assert judge_health(HealthStats(100, 0, 0.011, 5), base, limits)[0] == "healthy"
    slow = judge_health(HealthStats(100, 0, 0.030, 5), base, limits)
    assert slow == ("degraded", "median latency 30.0 ms against 10.0 ms")
    chatty = judge_health(HealthStats(100, 0, 0.010, 40), base, limits)
    assert chatty[0] == "degraded" and "escalation rate 40.0%" in chatty[1]


def test_health_judges_latency_against_the_previous_model_side_by_side() -> None:
    limits = HealthLimits(min_inferences=50)
    quiet = HealthStats(inferences=500, errors=0, median_latency_s=0.002, escalations=25)
    # The device got busy after the swap: both models slowed alike, so the update is fine,
    # although its latency is almost three times the previous model's quiet window.
    busy = HealthStats(100, 0, 0.0057, 5, previous_median_latency_s=0.0055)
    assert judge_health(busy, quiet, limits) == ("healthy", "within limits")
    # Without the side-by-side figure, the earlier window is all there is to go by.
    assert judge_health(HealthStats(100, 0, 0.0057, 5), quiet, limits)[0] == "degraded"
    # A really slower model is slower than the previous one on the same inputs.
    slow = judge_health(HealthStats(100, 0, 0.012, 5, previous_median_latency_s=0.004),
                        quiet, limits)
    assert slow == ("degraded", "median latency 12.0 ms against 4.0 ms for the previous "
                                "model on the same inputs")
    # With no window of the previous model (a resumed install), side by side still judges.
    assert judge_health(HealthStats(100, 0, 0.012, 5, 0.004), None, limits)[0] == "degraded"
