"""Pure logic of rollouts and of the install state machine."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from sync.errors import RolloutStateError, SyncError
from sync.install import (
    HealthLimits,
    HealthStats,
    InstallRecord,
    InvalidTransitionError,
    Step,
    advance,
    compare_latency,
    judge_health,
    resume_action,
)
from sync.rollout import (
    Rollout,
    RolloutStatus,
    cancel,
    on_report,
    pause,
    plan_waves,
    resume,
    roll_back,
    start,
)

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
    for damage in ({"waves": "cam-01"}, {"status": "stuck"}, {"wave": "1"}, {"results": []}):
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
    # Latencies of windows apart are not compared: the device's load may differ between
    # them. Without side-by-side pairs, latency is not judged at all.
    unpaired = judge_health(HealthStats(100, 0, 0.030, 5), base, limits)
    assert unpaired == ("healthy", "within limits; latency not judged: no paired samples")
    chatty = judge_health(HealthStats(100, 0, 0.010, 40), base, limits)
    assert chatty[0] == "degraded" and "escalation rate 40.0%" in chatty[1]
    # A window whose time is up decides on what it saw.
    assert judge_health(HealthStats(10, 0, 0.01, 0), base, limits,
                        window_closed=True)[0] == "healthy"
    assert judge_health(HealthStats(10, 5, 0.01, 0), base, limits,
                        window_closed=True)[0] == "degraded"


def _pairs(count: int, slowdown: float, *, seed: int = 7,
           stalls: float = 0.3) -> tuple[tuple[float, float], ...]:
    """Paired latencies on a busy device: each model's own time times a load factor both
    share, and in ``stalls`` of the pairs one side (either) preempted for up to 20 ms."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        load = rng.uniform(1.0, 4.0)
        new, previous = 0.004 * slowdown * load, 0.004 * load
        if rng.random() < stalls:
            stall = rng.uniform(0.001, 0.020)
            if rng.random() < 0.5:
                new += stall
            else:
                previous += stall
        pairs.append((new * rng.uniform(0.9, 1.1), previous * rng.uniform(0.9, 1.1)))
    return tuple(pairs)


def _window(pairs: tuple[tuple[float, float], ...]) -> HealthStats:
    return HealthStats(max(len(pairs), 50), 0, 0.004, 2, latency_pairs_s=pairs)


def test_latency_is_judged_on_paired_samples_with_a_stated_confidence() -> None:
    limits = HealthLimits(min_inferences=50)
    quiet = HealthStats(inferences=500, errors=0, median_latency_s=0.004, escalations=25)
    # The same model on a busy, noisy device: never "slower", whatever the window's length.
    busy = _pairs(limits.max_latency_pairs, 1.0)
    for count in range(1, len(busy) + 1):
        assert compare_latency(busy[:count], limits).verdict != "slower"
    same = judge_health(_window(_pairs(20, 1.0)), quiet, limits)
    assert same[0] == "healthy" and "latency within 1.5x" in same[1]
    # Three times slower under the same noise: a verdict at the first look, 20 pairs.
    assert judge_health(_window(_pairs(19, 3.0)), quiet, limits)[0] == "undecided"
    slow = judge_health(_window(_pairs(20, 3.0)), quiet, limits)
    assert slow[0] == "degraded"
    assert slow[1].startswith("latency over 1.5x with 99% confidence (")
    assert "previous model on the same inputs" in slow[1]
    # Right at the limit the pairs cannot tell: keep watching up to the last look, then
    # the update is not held back on latency.
    edge = _pairs(limits.max_latency_pairs, 1.5, stalls=0.0)
    assert judge_health(_window(edge[:100]), quiet, limits)[0] == "undecided"
    assert compare_latency(edge, limits).verdict == "inconclusive"
    assert judge_health(_window(edge), quiet, limits)[0] == "healthy"
    # Fewer pairs than the first look when the window's time is up: no latency verdict.
    closed = judge_health(_window(_pairs(5, 3.0)), quiet, limits, window_closed=True)
    assert closed == ("healthy", "within limits; 5 of 20 paired latency samples so far")


def test_looking_again_as_pairs_arrive_keeps_the_stated_confidence() -> None:
    """The worst case for a false alarm: each pair a coin toss at exactly the limit. The
    chance that some look of a whole window calls it slower, computed exactly over every
    count of slow pairs at each look, stays within the stated bound."""
    limits = HealthLimits()
    watching = {0: 1.0}  # slow pairs so far -> probability, among windows still watching
    seen, alarm = 0, 0.0
    for look in limits.latency_looks:
        more = look - seen
        grown: dict[int, float] = {}
        for slow, chance in watching.items():
            for extra in range(more + 1):
                grown[slow + extra] = (grown.get(slow + extra, 0.0)
                                       + chance * math.comb(more, extra) / 2 ** more)
        seen, watching = look, {}
        for slow, chance in grown.items():
            pairs = ((2.0, 1.0),) * slow + ((1.0, 1.0),) * (look - slow)
            verdict = compare_latency(pairs, limits).verdict
            if verdict == "slower":
                alarm += chance
            elif verdict in ("watching", "inconclusive"):
                watching[slow] = chance
    assert 0 < alarm <= 1 - limits.latency_confidence
    with pytest.raises(ValueError, match="latency_confidence"):
        HealthLimits(latency_confidence=0.4)


def test_a_paused_rollout_keeps_outcomes_but_starts_no_wave_until_resumed() -> None:
    rollout = start(rollout_id="r5", model="m", version="1.2.0", group="g", devices=DEVICES,
                    canary_percent=20)
    canaries = rollout.waves[0]
    rollout = pause(rollout)
    assert rollout.status == "paused" and pause(rollout) == rollout
    for device in canaries:
        rollout = on_report(rollout, device, "committed")
    assert rollout.wave == 0 and set(rollout.targeted) == set(canaries)
    assert dict(rollout.results) == dict.fromkeys(canaries, "committed")
    rollout = resume(rollout)
    assert rollout.status == "running" and rollout.wave == 1
    assert set(rollout.targeted) == set(DEVICES) and resume(rollout) == rollout


def test_a_paused_rollout_still_halts_on_failures() -> None:
    rollout = pause(start(rollout_id="r6", model="m", version="1.3.0", group="g",
                          devices=DEVICES, canary_percent=20, max_failure_share=0.2))
    rollout = on_report(rollout, rollout.waves[0][0], "rolled-back")
    assert rollout.status == "halted"


def test_cancel_targets_only_devices_that_reported_and_is_final() -> None:
    rollout = start(rollout_id="r7", model="m", version="1.4.0", group="g", devices=DEVICES,
                    canary_percent=20)
    first, second = rollout.waves[0]
    rollout = cancel(on_report(rollout, first, "committed"), "wrong build")
    assert rollout.status == "cancelled" and rollout.reason == "wrong build"
    assert rollout.targeted == (first,)
    assert on_report(rollout, second, "committed") == rollout
    assert cancel(rollout, "again") == rollout
    for command in (pause, resume):
        with pytest.raises(RolloutStateError, match="it is cancelled"):
            command(rollout)
    assert Rollout.from_dict(rollout.to_dict()) == rollout


@pytest.mark.parametrize("final", ["completed", "halted", "rolled-back"])
def test_a_final_rollout_refuses_cancel_pause_and_resume(final: RolloutStatus) -> None:
    rollout = replace(start(rollout_id="r8", model="m", version="1.5.0", group="g",
                            devices=DEVICES, canary_percent=20), status=final)
    for command in (pause, resume, lambda r: cancel(r, "late")):
        with pytest.raises(RolloutStateError, match=f"it is {final}"):
            command(rollout)
