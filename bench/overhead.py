"""What the project's model API costs over the bare runtimes, measured in one run.

Three pairs, each on the same model (BlazeFace short-range by default, or the detector
``--model`` names) and the same input:

* ``litert``: ``LiteRTBackend.infer`` against a bare ``Interpreter`` set/invoke/get loop;
* ``onnxruntime``: ``OnnxRuntimeBackend.infer`` against a bare ``InferenceSession.run``;
* ``pipeline``: ``Model.detect`` on a photograph (preprocess + infer + decode) against a
  minimal hand-written OpenCV/numpy path doing the same work (for a YOLO v8 model:
  letterbox, ``blobFromImage``, ``run``, threshold and ``cv2.dnn.NMSBoxesBatched``).

With ``--model``, the pairs that fit its runtime and family run.

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
    Detection,
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
from models.manifest import DetectorOutput, YoloOutput

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


def _letterbox(image: npt.NDArray[np.uint8],
               size: int) -> tuple[npt.NDArray[np.uint8], float, int, int]:
    """``image`` fitted into a black ``size`` square: the square, the scale, the padding."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nw, nh = round(w * scale), round(h * scale)
    shrunk = image
    while shrunk.shape[1] >= 2 * nw and shrunk.shape[0] >= 2 * nh:  # area-filter halvings
        shrunk = np.asarray(cv2.resize(shrunk, (shrunk.shape[1] // 2, shrunk.shape[0] // 2),
                                       interpolation=cv2.INTER_AREA), np.uint8)
    resized = cv2.resize(shrunk, (nw, nh), interpolation=cv2.INTER_LINEAR)
    px, py = (size - nw) // 2, (size - nh) // 2
    padded = cv2.copyMakeBorder(resized, py, size - nh - py, px, size - nw - px,
                                cv2.BORDER_CONSTANT, value=0)
    return np.asarray(padded, np.uint8), scale, px, py


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
        padded, scale, px, py = _letterbox(image, self.size)
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


class _HandWrittenYolo:
    """The least code that turns a photograph into YOLO v8 boxes with a bare session:
    letterbox, scale to 0..1, ``run``, threshold, and OpenCV's class-aware NMS."""

    def __init__(self, bundle: ModelBundle, session: Any) -> None:
        spec = bundle.manifest.output
        assert isinstance(spec, YoloOutput)
        assert spec.layout == "v8"
        self.size = bundle.manifest.input.width
        self.threshold = spec.score_threshold
        self.iou = spec.nms_iou
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def __call__(self, image: npt.NDArray[np.uint8]) -> list[tuple[float, ...]]:
        """``(x1, y1, x2, y2, score, class)`` per object, best first."""
        h, w = image.shape[:2]
        padded, scale, px, py = _letterbox(image, self.size)
        blob = cv2.dnn.blobFromImage(padded, 1.0 / 255.0)  # NCHW float32, RGB kept
        out = self.session.run(None, {self.input_name: blob})[0][0]
        classes = out[4:].argmax(axis=0)
        scores = out[4:].max(axis=0)
        keep = np.flatnonzero(scores >= self.threshold)
        cx, cy, bw, bh = out[:4, keep]
        rects = np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1)
        chosen = cv2.dnn.NMSBoxesBatched(rects.tolist(), scores[keep].tolist(),
                                         classes[keep].tolist(), self.threshold, self.iou)
        found = []
        for i in np.asarray(chosen, np.intp).reshape(-1):
            x, y, rw, rh = rects[i]
            x1, x2 = np.clip([(x - px) / scale, (x + rw - px) / scale], 0, w)
            y1, y2 = np.clip([(y - py) / scale, (y + rh - py) / scale], 0, h)
            found.append((float(x1), float(y1), float(x2), float(y2),
                          float(scores[keep][i]), float(classes[keep][i])))
        return sorted(found, key=lambda row: -row[4])


def _part(project_s: float, bare_s: float, ratio: float) -> dict[str, float]:
    return {"project_ms": project_s * 1e3, "bare_ms": bare_s * 1e3, "ratio": ratio}


def _check_agreement(ours: list[tuple[float, ...]], theirs: list[tuple[float, ...]]) -> None:
    if not ours or len(ours) != len(theirs) or not np.allclose(ours, theirs, atol=1e-3):
        raise SystemExit(f"paths disagree: project {ours}, hand-written {theirs}")


def main(argv: list[str]) -> int:
    """Run the benchmark and print the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench overhead")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--calls", type=int, default=150, help="calls per side per round")
    parser.add_argument("--block", type=int, default=10,
                        help="calls per side in one paired block (fewer for a slow model, so "
                        "that a burst of noise still hits both sides of a pair)")
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument(
        "--model", default=None,
        help="one stored or zoo detector (e.g. nudenet-320n): its runtime's pair, and the "
        "pipeline pair for a YOLO v8 or SSD TFLite model; default BlazeFace short-range, "
        "TFLite and its ONNX conversion")
    args = parser.parse_args(argv)

    from skimage import data

    store = ModelStore(args.store or default_store_path())
    tflite_bundle: ModelBundle | None
    onnx_bundle: ModelBundle | None
    if args.model is None:
        tflite_bundle, onnx_bundle = _bundles(store)
    else:
        chosen = ModelZoo(store).ensure(args.model)
        is_tflite = chosen.manifest.runtime == "tflite"
        tflite_bundle, onnx_bundle = (chosen, None) if is_tflite else (None, chosen)
    threads = os.cpu_count() or 1
    pacing = {"rounds": args.rounds, "calls": args.calls, "block": args.block}
    photo = data.astronaut()
    measured = tflite_bundle or onnx_bundle
    assert measured is not None
    results: dict[str, Any] = {"benchmark": "overhead", "model": measured.label}
    pipeline: tuple[Model, Callable[[npt.NDArray[np.uint8]], list[tuple[float, ...]]],
                    Callable[[list[Detection]], list[tuple[float, ...]]]] | None = None

    if tflite_bundle is not None:
        tensor = golden_input(tflite_bundle)
        tflite_module, _ = import_tflite_interpreter()
        bare_interpreter = tflite_module.Interpreter(
            model_content=tflite_bundle.read_verified_model(), num_threads=threads)
        bare_interpreter.allocate_tensors()
        input_index = bare_interpreter.get_input_details()[0]["index"]
        output_indices = [d["index"] for d in bare_interpreter.get_output_details()]

        def bare_invoke() -> list[Any]:
            bare_interpreter.set_tensor(input_index, tensor)
            bare_interpreter.invoke()
            return [bare_interpreter.get_tensor(i) for i in output_indices]

        litert = LiteRTBackend(tflite_bundle, BackendSpec("litert", "xnnpack", threads))
        litert.load()
        results["litert"] = _part(*_interleaved(lambda: litert.infer(tensor), bare_invoke,
                                                **pacing))
        if isinstance(tflite_bundle.manifest.output, DetectorOutput):
            pipeline = (Model(tflite_bundle, litert),
                        _HandWrittenBlazeFace(tflite_bundle, bare_interpreter),
                        lambda found: [(*d.box, d.score, *(v for p in d.keypoints for v in p))
                                       for d in found])

    if onnx_bundle is not None:
        onnx_input = golden_input(onnx_bundle)  # the model's own input (uint8 pixels or not)
        ort = import_onnxruntime()
        session = ort.InferenceSession(onnx_bundle.read_verified_model(),
                                       providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        onnx_backend = OnnxRuntimeBackend(onnx_bundle, BackendSpec("onnxruntime", "cpu"))
        onnx_backend.load()
        results["onnxruntime"] = _part(*_interleaved(
            lambda: onnx_backend.infer(onnx_input),
            lambda: session.run(None, {input_name: onnx_input}),
            **pacing,
        ))
        spec = onnx_bundle.manifest.output
        if args.model is not None and isinstance(spec, YoloOutput) and spec.layout == "v8":
            labels = spec.labels
            pipeline = (Model(onnx_bundle, onnx_backend), _HandWrittenYolo(onnx_bundle, session),
                        lambda found: [(*d.box, d.score, float(labels.index(d.label)))
                                       for d in found])

    if pipeline is not None:
        model, hand_written, flatten = pipeline
        _check_agreement(flatten(model.detect(photo)), hand_written(photo))
        results["pipeline"] = _part(*_interleaved(lambda: model.detect(photo),
                                                  lambda: hand_written(photo), **pacing))

    pairs = [key for key in ("litert", "onnxruntime", "pipeline") if key in results]
    results["ratio"] = max(results[k]["ratio"] for k in pairs)
    results["target"] = TARGET
    results["met"] = results["ratio"] <= TARGET
    for key in pairs:
        part = results[key]
        print(f"{key:<12} project {part['project_ms']:.3f} ms  baseline {part['bare_ms']:.3f} ms"
              f"  ratio {part['ratio']:.3f}")
    print(json.dumps(results))
    return 0
