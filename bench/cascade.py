"""The edge + hub cascade against the hub alone and the edge alone, on footage with truth.

The question each frame answers is the one an operator asks: *is there a face in view?*
(a face at least half inside the frame, by the footage's ground truth). Three systems
answer it on the same sample footage (long static stretches, the astronaut's head
crossing twice at two scales, the cat crossing, lighting drift, sensor noise):

The footage has a third crossing, far away, where the face is small and the edge model
unsure: that is where the hub earns its place.

* **hub-only**: every frame goes up as a JPEG (quality 85, like an MJPEG camera stream)
  and the hub's judge decides: BlazeFace full-range through its batcher, then the
  face-landmark model on the face it found;
* **cascade**: what the edge agent does. The motion gate skips frames with no change
  (they keep the previous answer: nothing moved); BlazeFace short-range runs on the
  rest; the object tracker follows each detection, and the escalation policy (the
  agent's defaults, a fixed seed for its audit sample, the footage's own clock for its
  rate limits) decides each tracked object locally or escalates it; an escalation is
  built and encoded exactly as the agent sends it (crop, thumbnail, the track's
  detection), decoded as the hub receives it, and the hub's verdict decides, and, as in
  the agent, is recorded on the track for its next frames;
* **edge-only**: the same edge pipeline with no hub: an escalation is decided by the
  agent's fallback (``act`` on the edge model's own answer).

Last line: JSON with ``f1_ratio`` (cascade F1 / hub-only F1; target >= 0.98),
``escalation_ratio`` (escalated frames / frames; target <= 0.10) and ``bytes_ratio``
(bytes of escalations sent up / bytes of streaming every frame as JPEG; target <= 0.05),
with each system's precision, recall and F1.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from cloud_hub import HubService, HubSettings
from edge_agent.config import MotionConfig, PolicyConfig, TrackingConfig
from edge_agent.escalation import frame_event
from edge_agent.footage import Frame, SampleFootage
from edge_agent.motion import MotionGate
from edge_agent.policy import EscalationPolicy
from edge_agent.tracking import ObjectTracker
from edge_agent.tracks import TrackBook
from hardware import load_model, plan_backends, probe_hardware
from models import ModelStore, ModelZoo, default_store_path
from sync import EventIdFactory, EventMessage, ModelRef, decode, encode

FPS = 25.0
STREAM_JPEG_QUALITY = 85


@dataclass(slots=True)
class Score:
    """Frame-level confusion counts of one system."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, truth: bool, answer: bool) -> None:
        """Count one frame."""
        if truth and answer:
            self.tp += 1
        elif answer:
            self.fp += 1
        elif truth:
            self.fn += 1
        else:
            self.tn += 1

    def summary(self) -> dict[str, float]:
        """Precision, recall, F1 and the counts."""
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "tp": self.tp,
                "fp": self.fp, "fn": self.fn, "tn": self.tn}


def _jpeg(frame: Frame) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, STREAM_JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode a frame")
    return bytes(data.tobytes())


def main(argv: list[str]) -> int:
    """Run the three systems over the footage and print the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench cascade")
    parser.add_argument("--static-frames", type=int, default=150,
                        help="frames in each static stretch of the footage")
    parser.add_argument("--seed", type=int, default=0, help="the audit sample's seed")
    parser.add_argument("--store", type=Path, default=None)
    args = parser.parse_args(argv)
    store_path = args.store or default_store_path()
    edge_bundle = ModelZoo(ModelStore(store_path)).ensure("blazeface-short")
    edge_model, edge_selection = load_model(
        edge_bundle, plan_backends(probe_hardware(), edge_bundle.manifest))
    scratch = tempfile.TemporaryDirectory(prefix="bench-cascade-")
    hub = HubService(HubSettings(data_dir=Path(scratch.name), model_store=store_path),
                     ingest=False)
    hub.start()
    judge = hub.judge
    assert judge is not None
    footage = SampleFootage(static_frames=args.static_frames, distant_pass=True)
    policy_config = PolicyConfig()
    policy = EscalationPolicy(policy_config, random.Random(args.seed))
    gate = MotionGate(MotionConfig())
    tracker, book = ObjectTracker(TrackingConfig()), TrackBook("yard")
    ids = EventIdFactory()
    hub_only, cascade, edge_only = Score(), Score(), Score()
    frames = escalated = detector_calls = reused = 0
    stream_bytes = uplink_bytes = 0
    reasons: dict[str, int] = {}
    cascade_answer = edge_answer = False  # a frame the gate skips keeps the last answer
    try:
        for frame in footage.frames():
            frames += 1
            truth = frame.has_face
            jpeg = _jpeg(frame)
            stream_bytes += len(jpeg)
            hub_only.add(truth, judge.judge(_whole_frame_event(frame, jpeg, ids))
                         .outcome == "confirmed")

            now = frame.index / FPS
            if gate.check(frame.image).infer:
                detector_calls += 1
                detections = edge_model.detect(frame.image)
                observation = book.observe(frame.index, tracker.update(detections))
                decided = policy.decide_tracks("yard", observation, now)
                edge_answer = any(d.positive for d in decided.decisions)
                answers = [d.positive for d in decided.decisions if d.action != "escalate"]
                answers += [bool(decided.held)]
                reused += sum(d.reason == "verdict-reused" for d in decided.decisions)
                for decision in decided.escalations:
                    escalated += 1
                    reasons[decision.reason] = reasons.get(decision.reason, 0) + 1
                    payload = encode(frame_event(
                        event_id=ids(), device_id="cam-1", source="yard", captured_at=now,
                        reason=decision.reason,  # type: ignore[arg-type]
                        priority=decision.priority, manifest=edge_model.manifest,
                        detections=decision.detections, image=frame.image,
                        crop_max_bytes=policy_config.crop_max_bytes,
                        thumbnail_width=policy_config.thumbnail_width))
                    uplink_bytes += len(payload)
                    received = decode(payload, EventMessage)
                    verdict = judge.judge(received)
                    answers.append(verdict.outcome == "confirmed")
                    # As the agent does when the verdict arrives: the track takes it.
                    assert decision.track is not None
                    assert decision.evidence is not None
                    book.escalated(decision.track, received.event_id, decision.evidence, now)
                    book.verdict(received.event_id, verdict.outcome == "confirmed", now)
                cascade_answer = any(answers)
            cascade.add(truth, cascade_answer)
            edge_only.add(truth, edge_answer)
    finally:
        hub.stop()
        edge_model.close()
        scratch.cleanup()

    hub_summary, cascade_summary = hub_only.summary(), cascade.summary()
    result: dict[str, Any] = {
        "benchmark": "cascade", "edge_model": edge_bundle.label,
        "edge_backend": edge_selection.chosen, "hub_model": hub.settings.detector_model,
        "hub_landmarks": hub.settings.landmark_model, "frames": frames,
        "face_frames": hub_only.tp + hub_only.fn,
        "f1_ratio": cascade_summary["f1"] / hub_summary["f1"] if hub_summary["f1"] else 0.0,
        "escalation_ratio": escalated / frames,
        "bytes_ratio": uplink_bytes / stream_bytes,
        "escalations": escalated, "escalation_reasons": reasons,
        "verdicts_reused": reused,
        "detector_calls": detector_calls, "uplink_bytes": uplink_bytes,
        "stream_bytes": stream_bytes, "hub_only": hub_summary, "cascade": cascade_summary,
        "edge_only": edge_only.summary(),
        "targets": {"f1_ratio": 0.98, "escalation_ratio": 0.10, "bytes_ratio": 0.05},
    }
    for name, summary in (("hub-only", hub_summary), ("cascade", cascade_summary),
                          ("edge-only", result["edge_only"])):
        print(f"{name:10} precision {summary['precision']:.3f} recall {summary['recall']:.3f} "
              f"F1 {summary['f1']:.3f}")
    print(f"{frames} frames, {detector_calls} edge detector calls, {escalated} escalated "
          f"({reasons}), {reused} decided by a recent verdict; {uplink_bytes} bytes up "
          f"against {stream_bytes} to stream")
    print(f"f1_ratio {result['f1_ratio']:.3f} (target >= 0.98); escalation_ratio "
          f"{result['escalation_ratio']:.3f} (<= 0.10); bytes_ratio "
          f"{result['bytes_ratio']:.4f} (<= 0.05)")
    print(json.dumps(result))
    return 0


def _whole_frame_event(frame: Frame, jpeg: bytes, ids: EventIdFactory) -> EventMessage:
    """A streamed frame as the hub's judge takes it: the whole frame, nothing cropped."""
    height, width = frame.image.shape[:2]
    return EventMessage(
        event_id=ids(), device_id="cam-1", source="yard", captured_at=frame.index / FPS,
        reason="uncertain", priority=5, model=ModelRef(name="stream", version="0"),
        frame_size=(width, height), thumbnail_jpeg=jpeg)
