"""The pure cores: motion gate, escalation policy, pending verdicts, backoff."""

from __future__ import annotations

import random

import numpy as np
import pytest

from edge_agent.backoff import Backoff
from edge_agent.config import MotionConfig, PolicyConfig
from edge_agent.fallback import PendingVerdicts
from edge_agent.footage import SampleFootage
from edge_agent.motion import MotionGate
from edge_agent.policy import EscalationPolicy, TokenBucket
from models import AnomalyScore

pytestmark = pytest.mark.unit


def test_anomaly_decisions() -> None:
    policy = EscalationPolicy(PolicyConfig())
    assert policy.decide_anomaly("t", AnomalyScore(-0.2, 0.0, True), 0).priority == 7
    assert policy.decide_anomaly("t", AnomalyScore(0.2, 0.0, False), 0).action == "local"


def test_token_bucket() -> None:
    bucket = TokenBucket(rate_per_s=2, burst=1)
    assert bucket.take(0.0) and not bucket.take(0.1) and bucket.take(0.6)


def test_pending_verdicts_fallback_and_reconciliation() -> None:
    pending = PendingVerdicts(timeout_s=5)
    pending.add("a", "door", True, now=0)
    pending.add("b", "door", False, now=1)
    pending.add("c", "door", True, now=2)
    assert pending.resolve("b", confirmed=True).kind == "on-time"
    assert [p.event_id for p in pending.expire(now=5.5)] == ["a"]
    late = pending.resolve("a", confirmed=False)
    assert late.kind == "late" and late.agrees is False
    assert pending.resolve("a", confirmed=False).kind == "duplicate"
    assert pending.resolve("zzz", confirmed=True).kind == "unknown"
    assert len(pending) == 1


def test_backoff_grows_with_jitter_and_caps() -> None:
    backoff = Backoff(0.5, 10)
    rng = random.Random(3)
    delays = [backoff.delay(n, rng) for n in range(10)]
    assert all(0.25 <= d <= 10 for d in delays)
    assert delays[6] > delays[0]
    assert len({round(d, 6) for d in delays}) == 10


def test_motion_gate_skips_static_stretches_and_sees_arrivals() -> None:
    footage = SampleFootage(width=320, height=180, static_frames=40)
    gate = MotionGate(MotionConfig(keyframe_interval=1000))
    decisions = [(frame, gate.check(frame.image)) for frame in footage.frames()]
    # Frames well inside the static stretches: nothing in view for 8 frames either side
    # (the sprites are larger than the faces' truth boxes, so their edges move earlier).
    quiet = [
        d for i, (_, d) in enumerate(decisions)
        if i > 0 and not any(f.truth for f, _ in decisions[max(0, i - 8) : i + 9])
    ]
    assert len(quiet) > 60
    assert sum(d.infer for d in quiet) == 0
    with_object = [d for f, d in decisions if any(t.visible > 0.5 for t in f.truth)]
    assert sum(d.infer for d in with_object) / len(with_object) > 0.9


def test_motion_gate_keyframes_and_disabled() -> None:
    gate = MotionGate(MotionConfig(keyframe_interval=5, hold_frames=0))
    still = np.full((120, 160, 3), 90, dtype=np.uint8)
    reasons = [gate.check(still).reason for _ in range(11)]
    assert reasons == ["first"] + ["static"] * 4 + ["keyframe"] + ["static"] * 4 + ["keyframe"]
    assert MotionGate(MotionConfig(enabled=False)).check(still).reason == "disabled"


@pytest.mark.parametrize("drift", [0.7, 1.3])
def test_global_lighting_change_is_not_motion(drift: float) -> None:
    rng = np.random.default_rng(0)
    scene = rng.integers(40, 200, (180, 320, 3)).astype(np.uint8)
    gate = MotionGate(MotionConfig(keyframe_interval=1000))
    gate.check(scene)
    dimmer = np.clip(scene.astype(np.float32) * 1.0 + (drift - 1) * 40, 0, 255).astype(np.uint8)
    assert gate.check(dimmer).reason == "static"


def test_a_dimmed_scene_is_not_motion_and_leaves_no_ghost() -> None:
    # Dusk or a camera's exposure scales every pixel: on a scene with bright and dark
    # parts that is a large difference in the bright ones, and no motion.
    rng = np.random.default_rng(0)
    scene = np.zeros((180, 320, 3), dtype=np.float32)
    scene[:, :160] = 40.0
    scene[:, 160:] = 220.0
    scene += rng.normal(0, 2, scene.shape).astype(np.float32)
    gate = MotionGate(MotionConfig(keyframe_interval=1000, hold_frames=0))
    gate.check(scene.astype(np.uint8))
    for _ in range(3):
        gate.check(scene.astype(np.uint8))
    for gain in (0.35, 0.35, 1.0, 1.0):  # dark for a while, then light again
        assert gate.check(np.clip(scene * gain, 0, 255).astype(np.uint8)).reason == "static"
