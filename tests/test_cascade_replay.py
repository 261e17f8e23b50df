"""The real processes give the bench's per-frame answers (issue 10, done-when 2).

A private Mosquitto, a real hub (``HubService`` with ingest, judging over MQTT) and
``edge-agent run`` over a clip of the sample footage (its hard segments: a face at three
scales, the cat, two faces at once, low light, small blurred faces, occlusion); the
agent's decision journal (``journal.jsonl``) is then read back and compared, frame by
frame and object by object, with what ``bench.cascade.Cascade`` computes on the same
clip with the same policy and the same hub's judge.

**What "the same" means.** For every frame on which the edge detector saw an object:

* the same tracked objects (the track a detection joined, its box and score);
* for each object the same decision (``action`` and ``reason``) and the same *answer*:
  the decision's own ``positive``, or, for an escalation, the hub's verdict on it (the
  bench judges in-process what the agent sent over MQTT: the same crop, the same judge);
* hence the same per-frame answer (some object of interest is in view, by the edge's
  decisions with the hub's verdicts applied);
* and for each object the same number of stretches where the detector missed it and
  the hub's confirmation held it (the journal records such a stretch as one
  ``verdict-held`` step, not frame by frame).

**Where the two may legitimately differ, and how the test removes it.**

* *When a verdict arrives.* The bench applies each verdict before the next frame; the
  agent applies one when it arrives, frames later, and decides the frames in between as
  ``awaiting-verdict`` (it does not escalate again), where the bench would reuse the
  verdict or escalate again on new evidence. The source here sets ``await_verdicts``: the
  agent takes the next frame only once this frame's escalations are judged, and
  ``fallback.verdict_timeout_s`` is 120 s, a hang guard: a fallback would be a failure
  (asserted), never a different answer.
* *Which clock the policy reads.* The agent's is the machine's, the bench's the
  footage's (frame / fps), so every knob that counts time could decide differently on a
  loaded machine: the escalation token bucket (made too large to run dry within the
  clip), ``verdict_reuse_s`` (longer than the clip) and escalated motion (20 a minute:
  off; it belongs to no track and is not journaled anyway). Every other knob is the
  agent's default, the policy the bench uses.
* *Randomness.* The audit sample draws from an unseeded generator in the agent: off.
* *Frame numbers.* The agent numbers a file's frames from 1, the bench from 0.
"""

from __future__ import annotations

import subprocess
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.cascade import Cascade, CascadeFrame, load_truth, video_frames, write_clip
from cloud_hub.service import HubService
from edge_agent.config import PolicyConfig
from edge_agent.footage import SampleFootage
from hardware import load_model, plan_backends, probe_hardware
from models import ModelStore
from sync import TrackEventMessage, decode
from tests.broker import MosquittoBroker
from tests.cloud_hub.hub_helpers import hub_settings
from tests.edge_agent.agent_helpers import agent_config, agent_process, write_config

pytestmark = pytest.mark.e2e

DEVICE = "cam-replay"
#: The agent's defaults but for what reads the clock or draws at random (see above).
POLICY: dict[str, Any] = {
    "audit_sample_rate": 0.0, "max_escalations_per_minute": 60_000.0,
    "escalation_burst": 10_000, "verdict_reuse_s": 3600.0, "unexplained_per_minute": 0.0,
}


@dataclass(frozen=True, slots=True)
class Answer:
    """One object on one frame: its box and score, the decision, and the answer."""

    box: tuple[float, float, float, float]
    score: float
    action: str
    reason: str
    answer: bool | None  # None: an escalation whose verdict the journal does not hold


def journal_answers(journal: list[TrackEventMessage]) -> tuple[
        dict[int, dict[int, Answer]], dict[int, int], list[TrackEventMessage]]:
    """Each track's answer on each frame it was seen on, from its journal steps; its
    number of held stretches; and the steps that record a fallback.

    A step carries the frames seen since the previous step, and the track's decision as
    of the step. A step that changes the decision was made on the frame the object was
    just seen on, its last sighting (its other sightings kept the previous decision);
    one that changes it to ``verdict-held`` was made on a frame the detector missed it
    (and a change with no sighting, a verdict after the end, decides no frame).
    Any other step (an escalation's event id, a verdict, the end) leaves the decision as
    it was. An escalating decision's answer is the verdict on that escalation: the
    track's escalations come in order, each with its event id, then its verdict.
    """
    tracks: dict[int, list[TrackEventMessage]] = defaultdict(list)
    for message in journal:
        tracks[message.track_id].append(message)
    answers: dict[int, dict[int, Answer]] = {}
    held: dict[int, int] = {}
    for track_id, steps in tracks.items():
        verdicts = {m.event_id: m.verdict == "confirmed" for m in steps
                    if m.event_id is not None and m.verdict is not None}
        escalations = iter(dict.fromkeys(m.event_id for m in steps if m.event_id))
        decided: list[tuple[Any, tuple[str, str, bool]]] = []
        current: tuple[str, str, bool] | None = None
        held[track_id] = 0
        for step in steps:
            decision = (step.action, step.reason, step.positive)
            sightings = list(step.sightings)
            if current is None or decision == current:
                decided += [(s, decision if current is None else current) for s in sightings]
            elif step.reason == "verdict-held":
                decided += [(s, current) for s in sightings]
                held[track_id] += 1
            elif not sightings:  # a verdict after the track's end: no frame to decide
                pass
            else:
                decided += [(s, current) for s in sightings[:-1]]
                decided.append((sightings[-1], decision))
            current = decision
        answers[track_id] = {}
        for sighting, (action, reason, positive) in decided:
            answer: bool | None = positive
            if action == "escalate":
                answer = verdicts.get(next(escalations, None))
            answers[track_id][sighting.frame - 1] = Answer(  # the agent counts from 1
                sighting.box, sighting.score, action, reason, answer)
    return answers, held, [m for m in journal if m.fell_back]


def bench_answers(frames: list[CascadeFrame]) -> tuple[
        dict[int, dict[int, Answer]], dict[int, int]]:
    """The same, from the bench's frames."""
    answers: dict[int, dict[int, Answer]] = defaultdict(dict)
    held: dict[int, int] = defaultdict(int)
    last_held: dict[int, bool] = {}
    for frame in frames:
        for track in frame.tracks:
            answers[track.track_id][frame.index] = Answer(
                track.box, track.score, track.action, track.reason, track.positive)
            last_held[track.track_id] = False
        for track_id in frame.held:
            if not last_held.get(track_id, False):
                held[track_id] += 1
            last_held[track_id] = True
    return dict(answers), dict(held)


def _start(track: dict[int, Answer]) -> tuple[int, tuple[int, ...]]:
    """A track by the first frame it was seen on and its box there, to the pixel."""
    first = min(track)
    return first, tuple(round(v) for v in track[first].box)


@pytest.fixture
def hub(tmp_path: Path, zoo_store: ModelStore) -> Iterator[tuple[HubService, MosquittoBroker]]:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    service = HubService(hub_settings(tmp_path, zoo_store.root, mqtt_port=broker.port,
                                      mqtt_client_id="hub-replay", batch_autotune=False))
    try:
        service.start()
        service.store.add_device(device_id=DEVICE, group="default")
        assert service.ingest is not None and service.ingest.connected.wait(30)
        yield service, broker
    finally:
        service.stop()
        broker.stop()


def test_the_agent_over_a_clip_answers_every_frame_as_the_bench_does(
    hub: tuple[HubService, MosquittoBroker], zoo_store: ModelStore, tmp_path: Path,
) -> None:
    service, broker = hub
    write_clip(SampleFootage(static_frames=2, distant_pass=True, hard=True), tmp_path / "clip")
    truth = load_truth(tmp_path / "clip.json")
    raw = agent_config(tmp_path, broker.port, zoo_store.root, device={"id": DEVICE},
                       fallback={"verdict_timeout_s": 120.0})
    raw["policy"] = POLICY
    raw["sources"] = [{"name": "yard", "kind": "video", "url": str(tmp_path / "clip.avi"),
                       "model": "blazeface-short", "await_verdicts": True}]
    process = agent_process(write_config(tmp_path / "agent.toml", raw), "--exit-when-done", "-v",
                            stderr_to=tmp_path / "agent.log")
    try:
        process.wait(timeout=300)  # a hang guard: it takes seconds
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    log = (tmp_path / "agent.log").read_text()[-3000:]
    assert process.returncode == 0, log
    journal = [decode(line, TrackEventMessage) for line in
               (tmp_path / "state" / "journal.jsonl").read_bytes().splitlines()]

    bundle = zoo_store.resolve("blazeface-short")
    edge_model, _ = load_model(bundle, plan_backends(probe_hardware(), bundle.manifest))
    assert service.judge is not None
    cascade = Cascade(edge_model, service.judge, policy=PolicyConfig(**POLICY), seed=0,
                      fps=truth.fps)
    try:
        frames = [cascade.step(frame) for frame in video_frames(tmp_path / "clip.avi", truth)]
    finally:
        edge_model.close()

    agent, agent_held, fallbacks = journal_answers(journal)
    bench, bench_held = bench_answers(frames)
    assert not fallbacks, "a verdict took longer than the 120 s hang guard"
    assert cascade.escalated >= 10, "the clip no longer makes the hub judge anything"
    assert len(bench) >= 6 and any(len(f.tracks) == 2 for f in frames)
    # Tracks by the first frame and box they were seen with: the ids are each side's own.
    by_start = {_start(t): tid for tid, t in bench.items()}
    mapping = {tid: by_start.get(_start(t)) for tid, t in agent.items()}
    assert sorted(map(str, mapping.values())) == sorted(map(str, bench)), (
        "the agent's tracks are not the bench's", sorted(by_start), sorted(mapping.items()))
    for agent_id, bench_id in mapping.items():
        assert bench_id is not None
        for index, expected in bench[bench_id].items():
            seen = agent[agent_id].get(index)
            assert seen is not None, f"frame {index}: the agent did not see track {bench_id}"
            assert seen.action == expected.action and seen.reason == expected.reason, (
                index, bench_id, seen, expected)
            assert seen.answer == expected.answer, (index, bench_id, seen, expected)
            assert seen.score == pytest.approx(expected.score, abs=1e-4)
            assert seen.box == pytest.approx(expected.box, abs=1e-2)
        assert set(agent[agent_id]) == set(bench[bench_id])
        assert agent_held.get(agent_id, 0) == bench_held.get(bench_id, 0), bench_id
    per_frame_agent = {i: any(a.answer for t in agent.values() for j, a in t.items() if j == i)
                       for i in {i for t in agent.values() for i in t}}
    per_frame_bench = {f.index: any(t.positive for t in f.tracks) for f in frames if f.tracks}
    assert per_frame_agent == per_frame_bench
