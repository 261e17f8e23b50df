"""What the project's model API costs over the bare runtimes, measured in one run.

Three pairs, each on the same model (BlazeFace short-range) and the same input:

* ``litert``: ``LiteRTBackend.infer`` against a bare ``Interpreter`` set/invoke/get loop;
* ``onnxruntime``: ``OnnxRuntimeBackend.infer`` against a bare ``InferenceSession.run``;
* ``pipeline``: ``Model.detect`` on a photograph (preprocess + infer + decode) against a
  minimal hand-written OpenCV/numpy path doing the same work.

The pairs run interleaved in short blocks, alternating which goes first, so that drift on
this shared machine hits both sides alike. Each ratio is the median over neighbouring
blocks of project median / baseline median; ``ratio`` is the worst of the three.
Target: ``ratio <= 1.05``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from models import (
    BackendSpec,
    LiteRTBackend,
    Model,
    ModelBundle,
    ModelStore,
    ModelZoo,
    OnnxRuntimeBackend,
    default_store_path,
)
from models.backends import import_onnxruntime, import_tflite_interpreter
from models.decode import ssd_anchor_centres
from models.golden import golden_input
from models.manifest import DetectorOutput

TARGET = 1.05


def _bundles(store: ModelStore) -> tuple[ModelBundle, ModelBundle]:
    zoo = ModelZoo(store)
    return zoo.ensure("blazeface-short"), zoo.ensure("blazeface-short-onnx")


def _interleaved(
    project: Callable[[], object], baseline: Callable[[], object], *, rounds: int, calls: int,
    block: int = 10,
) -> tuple[float, float, float]:
    """Median seconds per call of each side, and the median of paired block ratios.

    The sides alternate in short blocks of ``block`` calls (which side goes first
    alternates too), and each block of the project is compared with the baseline's block
    next to it: a burst of noise on this shared machine lasts longer than a block and
    hits both sides of a pair, where long per-side rounds would let it hit one side.
    """
    for _ in range(calls):  # warm caches, thread pools and allocators on both sides
        project()
        baseline()
    samples: dict[str, list[float]] = {"project": [], "baseline": []}
    ratios = []
    for pair in range(rounds * calls // block):
        order = [("project", project), ("baseline", baseline)]
        if pair % 2:
            order.reverse()
        medians = {}
        for name, fn in order:
            times = []
            for _ in range(block):
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
            samples[name].extend(times)
            medians[name] = statistics.median(times)
        ratios.append(medians["project"] / medians["baseline"])
    return (statistics.median(samples["project"]), statistics.median(samples["baseline"]),
            statistics.median(ratios))


class _HandWrittenBlazeFace:
    """The least code that turns a photograph into face boxes with a bare interpreter."""

    def __init__(self, bundle: ModelBundle, interpreter: Any) -> None:
        spec = bundle.manifest.output
        assert isinstance(spec, DetectorOutput)
        self.size = bundle.manifest.input.width
        self.anchors = ssd_anchor_centres(spec.anchors, self.size, self.size)
        self.threshold = spec.score_threshold
        self.iou = spec.nms_iou
        self.interpreter = interpreter
        self.input_index = interpreter.get_input_details()[0]["index"]
        outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
        self.boxes_index = outputs[spec.boxes_output]
        self.scores_index = outputs[spec.scores_output]

    def __call__(self, image: npt.NDArray[np.uint8]) -> list[tuple[float, ...]]:
        """``(x1, y1, x2, y2, score, keypoint x, y, ...)`` per face, MediaPipe's weighted NMS."""
        h, w = image.shape[:2]
        scale = self.size / max(h, w)
        nw, nh = round(w * scale), round(h * scale)
        shrunk = image
        while shrunk.shape[1] >= 2 * nw and shrunk.shape[0] >= 2 * nh:  # area-filter halvings
            shrunk = np.asarray(cv2.resize(shrunk, (shrunk.shape[1] // 2, shrunk.shape[0] // 2),
                                           interpolation=cv2.INTER_AREA), np.uint8)
        resized = cv2.resize(shrunk, (nw, nh), interpolation=cv2.INTER_LINEAR)
        px, py = (self.size - nw) // 2, (self.size - nh) // 2
        padded = cv2.copyMakeBorder(resized, py, self.size - nh - py, px, self.size - nw - px,
                                    cv2.BORDER_CONSTANT, value=0)
        tensor = (padded.astype(np.float32) / 127.5 - 1.0)[np.newaxis]
        self.interpreter.set_tensor(self.input_index, tensor)
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.boxes_index)[0]
        logits = self.interpreter.get_tensor(self.scores_index)[0, :, 0]
        keep = np.flatnonzero(logits >= np.log(self.threshold / (1 - self.threshold)))
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits[keep], -80, 80)))
        pts = raw[keep].reshape(len(keep), -1, 2) / self.size + self.anchors[keep, None]
        pts[:, 1] -= self.anchors[keep]  # the size is not relative to the anchor
        boxes = np.concatenate([pts[:, 0] - pts[:, 1] / 2, pts[:, 0] + pts[:, 1] / 2], axis=1)
        flat = np.concatenate([boxes, pts[:, 2:].reshape(len(keep), -1)], axis=1)
        order = np.argsort(-scores)
        flat, scores = flat[order], scores[order]
        faces = []
        left = np.ones(len(scores), dtype=bool)
        for i in range(len(scores)):
            if not left[i]:
                continue
            lo = np.maximum(flat[i, :2], flat[:, :2])
            hi = np.minimum(flat[i, 2:4], flat[:, 2:4])
            inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
            area = np.prod(flat[:, 2:4] - flat[:, :2], axis=1)
            cluster = left & (inter / (area[i] + area - inter) > self.iou)
            cluster[i] = True
            left &= ~cluster
            mean = scores[cluster] @ flat[cluster] / scores[cluster].sum()
            xs = (mean[0::2] * self.size - px) / scale
            ys = (mean[1::2] * self.size - py) / scale
            xs[:2] = np.clip(xs[:2], 0, w)
            ys[:2] = np.clip(ys[:2], 0, h)
            faces.append((xs[0], ys[0], xs[1], ys[1], float(scores[i]),
                          *np.stack([xs[2:], ys[2:]], axis=1).ravel()))
        return faces


def main(argv: list[str]) -> int:
    """Run the benchmark and print the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench overhead")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--calls", type=int, default=150, help="calls per side per round")
    parser.add_argument("--store", type=Path, default=None)
    args = parser.parse_args(argv)

    from skimage import data

    tflite_bundle, onnx_bundle = _bundles(ModelStore(args.store or default_store_path()))
    threads = os.cpu_count() or 1
    content = tflite_bundle.read_verified_model()
    nhwc = np.random.default_rng(0).uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
    onnx_input = golden_input(onnx_bundle)  # the conversion's own input: uint8 pixels
    photo = data.astronaut()
    results: dict[str, Any] = {"benchmark": "overhead", "model": tflite_bundle.label}

    tflite_module, _ = import_tflite_interpreter()
    bare_interpreter = tflite_module.Interpreter(model_content=content, num_threads=threads)
    bare_interpreter.allocate_tensors()
    input_index = bare_interpreter.get_input_details()[0]["index"]
    output_indices = [d["index"] for d in bare_interpreter.get_output_details()]

    def bare_invoke() -> list[Any]:
        bare_interpreter.set_tensor(input_index, nhwc)
        bare_interpreter.invoke()
        return [bare_interpreter.get_tensor(i) for i in output_indices]

    litert = LiteRTBackend(tflite_bundle, BackendSpec("litert", "xnnpack", threads))
    litert.load()
    project_s, bare_s, ratio = _interleaved(lambda: litert.infer(nhwc), bare_invoke,
                                            rounds=args.rounds, calls=args.calls)
    results["litert"] = {"project_ms": project_s * 1e3, "bare_ms": bare_s * 1e3,
                         "ratio": ratio}

    ort = import_onnxruntime()
    session = ort.InferenceSession(onnx_bundle.read_verified_model(),
                                   providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    onnx_backend = OnnxRuntimeBackend(onnx_bundle, BackendSpec("onnxruntime", "cpu"))
    onnx_backend.load()
    project_s, bare_s, ratio = _interleaved(
        lambda: onnx_backend.infer(onnx_input),
        lambda: session.run(None, {input_name: onnx_input}),
        rounds=args.rounds, calls=args.calls,
    )
    results["onnxruntime"] = {"project_ms": project_s * 1e3, "bare_ms": bare_s * 1e3,
                              "ratio": ratio}

    model = Model(tflite_bundle, litert)
    hand_written = _HandWrittenBlazeFace(tflite_bundle, bare_interpreter)
    ours, theirs = model.detect(photo), hand_written(photo)
    flat_ours = [(*d.box, d.score, *(v for point in d.keypoints for v in point)) for d in ours]
    if len(ours) != 1 or not np.allclose(flat_ours, theirs, atol=1e-3):
        raise SystemExit(f"paths disagree: project {flat_ours}, hand-written {theirs}")
    project_s, bare_s, ratio = _interleaved(lambda: model.detect(photo),
                                            lambda: hand_written(photo),
                                            rounds=args.rounds, calls=args.calls)
    results["pipeline"] = {"project_ms": project_s * 1e3, "bare_ms": bare_s * 1e3,
                           "ratio": ratio}

    results["ratio"] = max(results[k]["ratio"] for k in ("litert", "onnxruntime", "pipeline"))
    results["target"] = TARGET
    results["met"] = results["ratio"] <= TARGET
    for key in ("litert", "onnxruntime", "pipeline"):
        part = results[key]
        print(f"{key:<12} project {part['project_ms']:.3f} ms  baseline {part['bare_ms']:.3f} ms"
              f"  ratio {part['ratio']:.3f}")
    print(json.dumps(results))
    return 0
