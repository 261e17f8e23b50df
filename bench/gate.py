"""The motion gate on footage with long static stretches: how many detector calls it saves
and how much it costs in recall, against the same detector run on every frame.

Both runs use the real BlazeFace short-range model on the same sample footage. Recall
is counted on frames where a face is at least half in view: a frame counts as found when
a detection overlaps the true face (IoU > 0.3). ``events`` are the face passes: a pass is
found when any of its frames is.

Last line: JSON with ``ratio`` (detector calls / frames, gated; target <= 0.3) and
``recall_ratio`` (gated recall / ungated recall; target >= 0.98).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from edge_agent.config import MotionConfig
from edge_agent.footage import SampleFootage
from edge_agent.motion import MotionGate
from hardware import load_model, plan_backends, probe_hardware
from models import Model, ModelStore, ModelZoo, default_store_path, iou


def _run(model: Model, footage: SampleFootage, gate: MotionGate | None) -> dict[str, Any]:
    calls = found_frames = face_frames = 0
    passes: dict[int, bool] = {}
    current_pass = -1
    in_pass = False
    elapsed = 0.0  # gate + detector only; making the footage is not the agent's cost
    for frame in footage.frames():
        faces = [t.box for t in frame.truth if t.kind == "face" and t.visible >= 0.5]
        if faces and not in_pass:
            current_pass += 1
            passes[current_pass] = False
        in_pass = bool(faces)
        started = time.perf_counter()
        if gate is not None and not gate.check(frame.image).infer:
            detections = []
        else:
            calls += 1
            detections = model.detect(frame.image)
        elapsed += time.perf_counter() - started
        if faces:
            face_frames += 1
            hit = any(iou(d.box, box) > 0.3 for d in detections for box in faces)
            found_frames += hit
            passes[current_pass] = passes[current_pass] or hit
    frames = len(footage)
    return {
        "frames": frames, "detector_calls": calls, "calls_per_frame": calls / frames,
        "face_frames": face_frames, "face_frames_found": found_frames,
        "recall": found_frames / face_frames, "events": len(passes),
        "events_found": sum(passes.values()), "ms_per_frame": elapsed / frames * 1e3,
    }


def main(argv: list[str]) -> int:
    """Run both passes and print the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench gate")
    parser.add_argument("--static-frames", type=int, default=150,
                        help="frames in each static stretch of the footage")
    parser.add_argument("--store", type=Path, default=None)
    args = parser.parse_args(argv)
    bundle = ModelZoo(ModelStore(args.store or default_store_path())).ensure("blazeface-short")
    model, selection = load_model(bundle, plan_backends(probe_hardware(), bundle.manifest))
    footage = SampleFootage(static_frames=args.static_frames)
    ungated = _run(model, footage, None)
    gated = _run(model, footage, MotionGate(MotionConfig()))
    result = {
        "benchmark": "gate", "model": bundle.label, "backend": selection.chosen,
        "ungated": ungated, "gated": gated,
        "ratio": gated["calls_per_frame"],
        "recall_ratio": gated["recall"] / ungated["recall"],
        "event_recall_ratio": gated["events_found"] / max(ungated["events_found"], 1),
        "speedup": ungated["ms_per_frame"] / gated["ms_per_frame"],
        "targets": {"ratio": 0.3, "recall_ratio": 0.98},
    }
    print(f"ungated: {ungated['detector_calls']} calls for {ungated['frames']} frames, "
          f"recall {ungated['recall']:.3f}, {ungated['ms_per_frame']:.2f} ms/frame")
    print(f"gated:   {gated['detector_calls']} calls for {gated['frames']} frames, "
          f"recall {gated['recall']:.3f}, {gated['ms_per_frame']:.2f} ms/frame")
    print(json.dumps(result))
    return 0
