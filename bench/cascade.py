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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cloud_hub import HubService, HubSettings
from cloud_hub.judge import EventJudge
from edge_agent.config import MotionConfig, PolicyConfig, TrackingConfig
from edge_agent.escalation import frame_event
from edge_agent.footage import BACKGROUNDS, SampleFootage
from edge_agent.motion import MotionGate
from edge_agent.policy import Action, Decision, DecisionReason, EscalationPolicy
from edge_agent.tracking import ObjectTracker
from edge_agent.tracks import TrackBook
from hardware import load_model, plan_backends, probe_hardware
from models import Box, Model, ModelStore, ModelZoo, default_store_path
from sync import EventIdFactory, EventMessage, ModelRef, decode, encode_event, progress

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


def _jpeg(image: npt.NDArray[np.uint8]) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, STREAM_JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode a frame")
    return bytes(data.tobytes())


class TruthObjectSpec(BaseModel):
    """One labelled object of a truth file's frame."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    label: str = Field(min_length=1, max_length=64)
    box: tuple[float, float, float, float]


class TruthFrame(BaseModel):
    """One frame of a truth file: its number, what is in it, and its segment's name."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    frame: int = Field(ge=0, le=10_000_000)
    objects: tuple[TruthObjectSpec, ...] = Field(default=(), max_length=1000)
    segment: str | None = Field(default=None, min_length=1, max_length=64)


class Truth(BaseModel):
    """A clip's ground truth (``--truth``): a face is labelled when at least half of it
    is in view; a frame the file does not list holds nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    fps: float = Field(gt=0, le=1000)
    width: int = Field(ge=16, le=16384)
    height: int = Field(ge=16, le=16384)
    frames: tuple[TruthFrame, ...] = Field(max_length=10_000_000)


@dataclass(frozen=True, slots=True)
class BenchFrame:
    """One frame to judge: the image, whether a face is in view, its segment."""

    index: int
    image: npt.NDArray[np.uint8]
    has_face: bool
    segment: str | None


def load_truth(path: Path) -> Truth:
    """Read and check a truth file.

    Raises:
        SystemExit: It is unreadable or not in the format.
    """
    try:
        return Truth.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise SystemExit(f"--truth {path}: {exc}") from exc


def video_frames(video: Path, truth: Truth) -> Iterator[BenchFrame]:
    """The clip's frames with the truth's answers (RGB)."""
    by_index = {f.frame: f for f in truth.frames}
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise SystemExit(f"--video {video}: OpenCV cannot open it")
    index = 0
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                return
            if bgr.shape[1] != truth.width or bgr.shape[0] != truth.height:
                raise SystemExit(f"--video {video}: frame {index} is {bgr.shape[1]}x"
                                 f"{bgr.shape[0]}, the truth says {truth.width}x{truth.height}")
            entry = by_index.get(index)
            yield BenchFrame(
                index, np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)),
                entry is not None and any(o.label == "face" for o in entry.objects),
                entry.segment if entry is not None else None)
            index += 1
    finally:
        capture.release()


def sample_frames(footage: SampleFootage) -> Iterator[BenchFrame]:
    """The built-in sample footage, its segments named by the script."""
    for frame in footage.frames():
        yield BenchFrame(frame.index, frame.image, frame.has_face, frame.segment)


def write_clip(footage: SampleFootage, stem: Path) -> None:
    """Write ``footage`` as an MJPEG AVI and its truth file (the ``--truth`` format)."""
    video, truth_path = stem.with_suffix(".avi"), stem.with_suffix(".json")
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), FPS,
                             (footage.width, footage.height))
    if not writer.isOpened():
        raise SystemExit(f"{video}: OpenCV cannot write an MJPEG AVI here")
    frames = []
    try:
        for frame in footage.frames():
            writer.write(cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
            frames.append(TruthFrame(
                frame=frame.index, segment=frame.segment,
                objects=tuple(TruthObjectSpec(label=o.kind, box=o.box)
                              for o in frame.truth if o.visible >= 0.5)))
    finally:
        writer.release()
    truth = Truth(fps=FPS, width=footage.width, height=footage.height, frames=tuple(frames))
    truth_path.write_text(truth.model_dump_json())
    print(f"wrote {video} and {truth_path}: {len(frames)} frames")


@dataclass(frozen=True, slots=True)
class TrackAnswer:
    """The cascade's answer for one tracked object on one frame the detector ran on.

    Attributes:
        track_id: The tracker's id of the object.
        box: Its detection's box on this frame (frame pixels), and ``score``.
        action: The policy's decision (``local``, ``escalate``, ``drop``) and ``reason``.
        positive: The answer for the object: the decision's own, or, for an escalation,
            the hub's verdict.
        event_id: The escalation made on this frame, if any.
    """

    track_id: int
    box: Box
    score: float
    action: Action
    reason: DecisionReason
    positive: bool
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class CascadeFrame:
    """What the cascade decided on one frame.

    Attributes:
        index: The frame's number in the footage.
        inferred: The motion gate let the detector run (else the last answer holds).
        tracks: One answer per tracked object the detector saw.
        held: Tracks the detector missed that a confirmed verdict still holds.
        motion: The answer on moving regions no detection explains (an escalation's
            verdict, or a remembered confirmation), ``None`` when there was none.
        answer: The cascade's answer: something of interest is in view.
        edge_answer: The edge-only answer (an escalation decided by the edge model).
    """

    index: int
    inferred: bool
    tracks: tuple[TrackAnswer, ...]
    held: tuple[int, ...]
    motion: bool | None
    answer: bool
    edge_answer: bool


class Cascade:
    """The edge agent's pipeline over footage, the hub judging each escalation at once.

    The motion gate, the model, the object tracker and the escalation policy as the agent
    builds them; an escalation is encoded exactly as the agent sends it, decoded as the
    hub receives it and judged by ``judge``, and its verdict is recorded on the track
    before the next frame (the agent applies a verdict before the first frame taken after
    it arrived). The policy's clock is the footage's: frame index / ``fps``.

    Args:
        edge_model: The edge detector (loaded).
        judge: The hub's judge.
        policy: The escalation policy (the bench uses the agent's defaults).
        seed: The audit sample's seed.
        fps: The footage's frame rate.
    """

    def __init__(self, edge_model: Model, judge: EventJudge, *, policy: PolicyConfig,
                 seed: int, fps: float) -> None:
        self.edge_model = edge_model
        self.judge = judge
        self.policy_config = policy
        self.fps = fps
        self.policy = EscalationPolicy(policy, random.Random(seed))
        self.gate = MotionGate(MotionConfig())
        self.tracker, self.book = ObjectTracker(TrackingConfig()), TrackBook("yard")
        self.ids = EventIdFactory()
        self.escalated = self.detector_calls = self.reused = 0
        self.unexplained = self.unexplained_confirmed = self.uplink_bytes = 0
        self.reasons: dict[str, int] = {}
        # A frame the gate skips keeps the last answer (nothing moved): the answer of the
        # objects last seen, not one held for an object the edge did not see.
        self._carried = self._edge_answer = False

    def step(self, frame: BenchFrame) -> CascadeFrame:
        """Decide one frame (frames in order)."""
        now = frame.index / self.fps
        gated = self.gate.check(frame.image)
        if not gated.infer:
            return CascadeFrame(frame.index, False, (), (), None, self._carried,
                                self._edge_answer)
        self.detector_calls += 1
        detections = self.edge_model.detect(frame.image)
        height, width = frame.image.shape[:2]
        observation = self.book.observe(frame.index,
                                        self.tracker.update(detections, (width, height)))
        decided = self.policy.decide_tracks("yard", observation, now)
        self._edge_answer = any(d.positive for d in decided.decisions)
        self.reused += sum(d.reason == "verdict-reused" for d in decided.decisions)
        tracks = []
        for decision in decided.decisions:
            assert decision.track is not None
            [detection] = decision.detections
            if decision.action != "escalate":
                tracks.append(TrackAnswer(decision.track.track_id, detection.box,
                                          detection.score, decision.action,
                                          decision.reason, decision.positive))
                continue
            event_id, confirmed = self._send(decision, frame.image, now)
            tracks.append(TrackAnswer(decision.track.track_id, detection.box,
                                      detection.score, decision.action, decision.reason,
                                      confirmed, event_id))
            # As the agent does when the verdict arrives: the track takes it.
            assert decision.evidence is not None
            self.book.escalated(decision.track, event_id, decision.evidence, now)
            self.book.verdict(event_id, confirmed, now)
        motion = self.policy.decide_motion("yard", gated.regions, detections, now,
                                           (width, height))
        motion_answer = None
        if motion is not None and motion.action == "escalate":
            assert motion.region is not None
            self.unexplained += 1
            motion_answer = self._send(motion, frame.image, now)[1]
            self.unexplained_confirmed += motion_answer
            self.policy.remember_motion("yard", motion.region, motion_answer, now)
        elif motion is not None:
            motion_answer = motion.positive
        escalated_motion = motion is not None and motion.action == "escalate"
        self._carried = (any(t.positive for t in tracks)
                         or (escalated_motion and bool(motion_answer)))
        # Held answers (a missed object's verdict, judged motion) hold only for the
        # frame they were made on.
        held = bool(decided.held) or (motion is not None and motion.positive)
        return CascadeFrame(frame.index, True, tuple(tracks),
                            tuple(s.track_id for s in decided.held), motion_answer,
                            self._carried or held, self._edge_answer)

    def _send(self, decision: Decision, image: npt.NDArray[np.uint8],
              now: float) -> tuple[str, bool]:
        """Escalate as the agent does; the event id and whether the hub confirmed."""
        self.escalated += 1
        self.reasons[decision.reason] = self.reasons.get(decision.reason, 0) + 1
        payload = encode_event(frame_event(
            event_id=self.ids(), device_id="cam-1", source="yard", captured_at=now,
            reason=decision.reason,  # type: ignore[arg-type]
            priority=decision.priority, manifest=self.edge_model.manifest,
            detections=decision.detections, image=image,
            crop_max_bytes=self.policy_config.crop_max_bytes,
            thumbnail_width=self.policy_config.thumbnail_width, region=decision.region))
        self.uplink_bytes += len(payload)
        received = decode(payload, EventMessage)
        return received.event_id, self.judge.judge(received).outcome == "confirmed"


def main(argv: list[str]) -> int:
    """Run the three systems over the footage and print the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench cascade")
    parser.add_argument("--static-frames", type=int, default=150,
                        help="frames in each static stretch of the sample footage")
    parser.add_argument("--seed", type=int, default=0, help="the audit sample's seed")
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--video", type=Path, default=None,
                        help="a clip to evaluate instead of the sample footage")
    parser.add_argument("--truth", type=Path, default=None,
                        help="the clip's ground truth (JSON, see the README)")
    parser.add_argument("--write-clip", type=Path, default=None, metavar="STEM",
                        help="write the sample footage (with its hard segments) as "
                        "STEM.avi and its truth as STEM.json, then exit")
    parser.add_argument("--background", choices=BACKGROUNDS, default="rocket",
                        help="the sample footage's background photograph")
    parser.add_argument("--footage-seed", type=int, default=0,
                        help="the sample footage's noise and shake")
    args = parser.parse_args(argv)
    footage = SampleFootage(static_frames=args.static_frames, distant_pass=True, hard=True,
                            background=args.background, seed=args.footage_seed)
    if args.write_clip is not None:
        write_clip(footage, args.write_clip)
        return 0
    if (args.video is None) != (args.truth is None):
        parser.error("--video and --truth go together")
    store_path = args.store or default_store_path()
    if args.video is not None:
        truth = load_truth(args.truth)
        fps, frames_in = truth.fps, video_frames(args.video, truth)
        footage_name = str(args.video)
    else:
        fps = FPS
        frames_in = sample_frames(footage)
        footage_name = f"sample ({args.background}, seed {args.footage_seed})"
    edge_bundle = ModelZoo(ModelStore(store_path)).ensure("blazeface-short")
    edge_model, edge_selection = load_model(
        edge_bundle, plan_backends(probe_hardware(), edge_bundle.manifest))
    scratch = tempfile.TemporaryDirectory(prefix="bench-cascade-")
    hub = HubService(HubSettings(data_dir=Path(scratch.name), model_store=store_path),
                     ingest=False)
    hub.start()
    judge = hub.judge
    assert judge is not None
    run = Cascade(edge_model, judge, policy=PolicyConfig(), seed=args.seed, fps=fps)
    ids = EventIdFactory()
    hub_only, cascade, edge_only = Score(), Score(), Score()
    segments: dict[str, dict[str, Score]] = {}
    cascade_fp_frames: list[int] = []  # where to look first
    frames = stream_bytes = 0
    total = None if args.video is not None else len(footage)
    try:
        with progress(f"cascade over {footage_name}", total=total) as advance:
            for frame in frames_in:
                advance(1)
                frames += 1
                truth_here = frame.has_face
                jpeg = _jpeg(frame.image)
                stream_bytes += len(jpeg)
                hub_answer = judge.judge(_whole_frame_event(frame, jpeg, ids, fps)
                                         ).outcome == "confirmed"
                hub_only.add(truth_here, hub_answer)
                decided = run.step(frame)
                cascade.add(truth_here, decided.answer)
                if decided.answer and not truth_here:
                    cascade_fp_frames.append(frame.index)
                edge_only.add(truth_here, decided.edge_answer)
                if frame.segment is not None:
                    scores = segments.setdefault(frame.segment, {
                        "hub-only": Score(), "cascade": Score(), "edge-only": Score()})
                    scores["hub-only"].add(truth_here, hub_answer)
                    scores["cascade"].add(truth_here, decided.answer)
                    scores["edge-only"].add(truth_here, decided.edge_answer)
    finally:
        hub.stop()
        edge_model.close()
        scratch.cleanup()
    escalated, reasons, reused = run.escalated, run.reasons, run.reused
    detector_calls, uplink_bytes = run.detector_calls, run.uplink_bytes
    unexplained, unexplained_confirmed = run.unexplained, run.unexplained_confirmed

    hub_summary, cascade_summary = hub_only.summary(), cascade.summary()
    result: dict[str, Any] = {
        "benchmark": "cascade", "footage": footage_name, "edge_model": edge_bundle.label,
        "edge_backend": edge_selection.chosen, "hub_model": hub.settings.detector_model,
        "hub_landmarks": hub.settings.landmark_model, "frames": frames,
        "face_frames": hub_only.tp + hub_only.fn,
        "f1_ratio": cascade_summary["f1"] / hub_summary["f1"] if hub_summary["f1"] else 0.0,
        "escalation_ratio": escalated / frames if frames else 0.0,
        "bytes_ratio": uplink_bytes / stream_bytes if stream_bytes else 0.0,
        "escalations": escalated, "escalation_reasons": reasons,
        "unexplained_share": unexplained / escalated if escalated else 0.0,
        "unexplained_yield": unexplained_confirmed / unexplained if unexplained else 0.0,
        "verdicts_reused": reused,
        "detector_calls": detector_calls, "uplink_bytes": uplink_bytes,
        "stream_bytes": stream_bytes, "hub_only": hub_summary, "cascade": cascade_summary,
        "edge_only": edge_only.summary(), "cascade_fp_frames": cascade_fp_frames[:100],
        "segments": {
            name: {system: {"recall": score.summary()["recall"], "fp": score.fp,
                            "frames": score.tp + score.fp + score.fn + score.tn}
                   for system, score in scores.items()}
            for name, scores in segments.items()},
        "targets": {"f1_ratio": 0.98, "escalation_ratio": 0.10, "bytes_ratio": 0.05},
    }
    for name, summary in (("hub-only", hub_summary), ("cascade", cascade_summary),
                          ("edge-only", result["edge_only"])):
        print(f"{name:10} precision {summary['precision']:.3f} recall {summary['recall']:.3f} "
              f"F1 {summary['f1']:.3f}")
    for name, figures in result["segments"].items():
        print(f"  segment {name:16} " + "  ".join(
            f"{system} recall {f['recall']:.2f} fp {f['fp']}" for system, f in figures.items()))
    print(f"{frames} frames, {detector_calls} edge detector calls, {escalated} escalated "
          f"({reasons}), {reused} decided by a recent verdict; {uplink_bytes} bytes up "
          f"against {stream_bytes} to stream")
    print(f"f1_ratio {result['f1_ratio']:.3f} (target >= 0.98); escalation_ratio "
          f"{result['escalation_ratio']:.3f} (<= 0.10); bytes_ratio "
          f"{result['bytes_ratio']:.4f} (<= 0.05)")
    print(json.dumps(result))
    return 0


def _whole_frame_event(frame: BenchFrame, jpeg: bytes, ids: EventIdFactory,
                       fps: float) -> EventMessage:
    """A streamed frame as the hub's judge takes it: the whole frame, nothing cropped."""
    height, width = frame.image.shape[:2]
    return EventMessage(
        event_id=ids(), device_id="cam-1", source="yard", captured_at=frame.index / fps,
        reason="uncertain", priority=5, model=ModelRef(name="stream", version="0"),
        frame_size=(width, height), thumbnail_jpeg=jpeg)
