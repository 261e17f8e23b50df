"""Static INT8 quantization of an ONNX detector, and its accuracy against the float model.

ONNX Runtime's own quantizer (``onnxruntime.quantization.quantize_static``) writes a QDQ
graph: weights int8 per channel, activations uint8, each range calibrated (min/max) on the
caller's frames, prepared exactly as the model prepares them at run time. The result is
compared with the float model on the calibration frames and on held-out frames
(:func:`compare_detections`: mean IoU of matched boxes, detections gained and lost) and
timed against it on this CPU; the figures go into the new bundle's manifest
(``quantization``), beside the tolerance the hardware plan checks before it prefers the
INT8 model. The bundle is then proven and stored like an imported one, so it carries its
own golden outputs.

The frames come from the caller: the model layer knows no footage.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.backends import BackendSpec, OnnxRuntimeBackend
from models.bundle import ModelBundle, write_bundle
from models.errors import ModelError, QuantizationError
from models.importer import add_proven
from models.manifest import (
    AccuracyFigures,
    AccuracyTolerance,
    LatencyFigures,
    Manifest,
    Quantization,
)
from models.model import Model, PreparedImage
from models.results import Detection, iou
from models.store import ModelStore

PER_CHANNEL_OPSET = 13
MATCH_IOU = 0.5
"""A quantized detection matches a float one of the same label overlapping it this much."""


def compare_detections(reference: Sequence[Sequence[Detection]],
                       candidate: Sequence[Sequence[Detection]]) -> AccuracyFigures:
    """Compare two models' detections frame by frame.

    In each frame, pairs of the same label are matched greedily by IoU (best pair first,
    at least :data:`MATCH_IOU`); a reference detection left unmatched is lost, a
    candidate one gained.
    """
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference frames against {len(candidate)}")
    matched_ious: list[float] = []
    lost = gained = total = 0
    for ours, theirs in zip(reference, candidate, strict=True):
        total += len(ours)
        pairs = sorted(
            ((iou(a.box, b.box), i, j) for i, a in enumerate(ours)
             for j, b in enumerate(theirs) if a.label == b.label),
            reverse=True,
        )
        used_ref: set[int] = set()
        used_cand: set[int] = set()
        for overlap, i, j in pairs:
            if overlap < MATCH_IOU:
                break
            if i in used_ref or j in used_cand:
                continue
            used_ref.add(i)
            used_cand.add(j)
            matched_ious.append(overlap)
        lost += len(ours) - len(used_ref)
        gained += len(theirs) - len(used_cand)
    return AccuracyFigures(
        frames=len(reference), reference_detections=total, matched=len(matched_ious),
        mean_iou=float(np.mean(matched_ious)) if matched_ious else 0.0,
        lost=lost, gained=gained,
    )


@dataclass(frozen=True, slots=True)
class QuantizationResult:
    """The INT8 bundle and what was measured on the way (also in its manifest)."""

    bundle: ModelBundle
    quantization: Quantization

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` output."""
        q = self.quantization
        figures = {}
        for key, value in (("calibration", q.calibration), ("held_out", q.held_out)):
            if value is not None:
                figures[key] = {**value.model_dump(), "lost_share": value.lost_share,
                                "gained_share": value.gained_share}
        return {
            "model": self.bundle.label, "source": q.source, "scheme": q.scheme,
            "size_bytes": self.bundle.manifest.file.size_bytes,
            **figures,
            "tolerance": q.tolerance.model_dump(),
            "within_tolerance": q.within_tolerance(),
            "latency_ms": {"float": q.latency.float_ms, "int8": q.latency.int8_ms,
                           "speedup": q.latency.speedup} if q.latency else None,
            "measured_on": q.latency.measured_on if q.latency else "",
        }


def quantize_onnx_static(onnx_bytes: bytes, rows: Sequence[npt.NDArray[np.generic]]) -> bytes:
    """A QDQ INT8 copy of an ONNX model, calibrated on ``rows`` (each one model input row).

    Raises:
        QuantizationError: The quantizer is missing or failed on this graph.
    """
    try:
        import onnx
        from onnx import version_converter
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise QuantizationError(
            f"quantizing needs onnx and onnxruntime.quantization ({exc}): pip install "
            "'edge-cloud-runtime[convert]'") from exc

    graph = onnx.load_from_string(onnx_bytes)
    [input_name] = [value.name for value in graph.graph.input]
    opset = max((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")),
                default=0)
    if opset < PER_CHANNEL_OPSET:
        # Per-channel DequantizeLinear (its axis attribute) needs opset 13; tflite2onnx
        # writes 11.
        try:
            graph = version_converter.convert_version(graph, PER_CHANNEL_OPSET)
        except Exception as exc:  # the converter raises bare exceptions of many kinds
            raise QuantizationError(
                f"cannot raise the model's opset {opset} to {PER_CHANNEL_OPSET}: {exc}"
            ) from exc
        onnx_bytes = graph.SerializeToString()

    class Reader(CalibrationDataReader):  # type: ignore[misc]  # untyped base class
        """One prepared row per call, as a batch of one."""

        def __init__(self) -> None:
            self.items: Iterator[dict[str, npt.NDArray[np.generic]]] = iter(
                [{input_name: row[np.newaxis]} for row in rows])

        def get_next(self) -> dict[str, npt.NDArray[np.generic]] | None:
            return next(self.items, None)

    with tempfile.TemporaryDirectory(prefix="edge-agent-quantize-") as tmp:
        source, prepared, target = (Path(tmp) / n for n in ("f.onnx", "p.onnx", "q.onnx"))
        source.write_bytes(onnx_bytes)
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                per_channel=True, calibrate_method=CalibrationMethod.MinMax,
            )
        except Exception as exc:  # the quantizer raises bare exceptions of many kinds
            raise QuantizationError(f"onnxruntime could not quantize the model: {exc}") from exc
        return target.read_bytes()


def _median_ms(backend: OnnxRuntimeBackend, other: OnnxRuntimeBackend,
               row: npt.NDArray[np.generic], calls: int) -> tuple[float, float]:
    """Median milliseconds per call of two backends, alternating call by call."""
    batch = row[np.newaxis]
    first: list[float] = []
    second: list[float] = []
    for _ in range(3):
        backend.infer(batch)
        other.infer(batch)
    for i in range(calls):
        for side in ((0, 1) if i % 2 else (1, 0)):
            began = time.perf_counter()
            (backend if side == 0 else other).infer(batch)
            (first if side == 0 else second).append(time.perf_counter() - began)
    return statistics.median(first) * 1e3, statistics.median(second) * 1e3


def _detect_all(model: Model, prepared: Sequence[PreparedImage]) -> list[list[Detection]]:
    return [model.decode_detections(p, model.infer_prepared([p])[0]) for p in prepared]


def quantize_detector(
    bundle: ModelBundle, store: ModelStore, *, calibration: Sequence[object],
    held_out: Sequence[object], tolerance: AccuracyTolerance | None = None,
    name: str | None = None, timing_calls: int = 60, measured_on: str = "",
) -> QuantizationResult:
    """Quantize an ONNX detector bundle to static INT8 and store it as ``<name>-int8``.

    Args:
        bundle: A float ONNX detector.
        store: Where the INT8 bundle is written.
        calibration: Images (RGB uint8) whose activations set the quantization ranges.
        held_out: Images not used for calibration, for an honest comparison.
        tolerance: Declared in the new manifest; the hardware plan prefers the INT8 model
            only where the measured figures are within it.
        name: Bundle name (default ``<name>-int8``).
        measured_on: This machine as the hardware probe names it, recorded with the
            latencies so that the plan can trust them on the same machine.

    Raises:
        QuantizationError: Not an ONNX detector, no calibration images, or the quantizer
            or a runtime failed.
    """
    manifest = bundle.manifest
    if manifest.runtime != "onnx" or manifest.task != "detector":
        raise QuantizationError(
            f"{bundle.label} is a {manifest.runtime} {manifest.task}; static quantization "
            "here takes an ONNX detector (convert a TFLite model with `models convert` first)")
    if manifest.quantization is not None:
        raise QuantizationError(f"{bundle.label} is already quantized")
    if not calibration:
        raise QuantizationError("no calibration images")
    float_backend = OnnxRuntimeBackend(bundle, BackendSpec("onnxruntime", "cpu"))
    float_model = Model(bundle, float_backend)
    int8_model: Model | None = None
    try:
        float_backend.load()
        calibration_rows = [float_model.prepare_image(image) for image in calibration]
        held_out_rows = [float_model.prepare_image(image) for image in held_out]
        quantized = quantize_onnx_static(bundle.read_verified_model(),
                                         [p.row for p in calibration_rows])
        tolerance = tolerance or AccuracyTolerance()
        draft = _int8_manifest(manifest, bundle.label, tolerance, name)
        # Measure on a scratch copy first; the figures then go into the stored manifest.
        with tempfile.TemporaryDirectory(prefix="edge-agent-int8-") as tmp:
            scratch = write_bundle(Path(tmp) / "bundle", draft, quantized)
            int8_backend = OnnxRuntimeBackend(scratch, BackendSpec("onnxruntime", "cpu"))
            int8_model = Model(scratch, int8_backend)
            int8_backend.load()
            figures = {
                "calibration": compare_detections(_detect_all(float_model, calibration_rows),
                                                  _detect_all(int8_model, calibration_rows)),
                "held_out": compare_detections(_detect_all(float_model, held_out_rows),
                                               _detect_all(int8_model, held_out_rows)),
            }
            float_ms, int8_ms = _median_ms(float_backend, int8_backend,
                                           calibration_rows[0].row, timing_calls)
    except ModelError as exc:
        if isinstance(exc, QuantizationError):
            raise
        raise QuantizationError(f"quantizing {bundle.label} failed: {exc}") from exc
    finally:
        float_model.close()
        if int8_model is not None:
            int8_model.close()
    quantization = draft.quantization
    assert quantization is not None
    latency = LatencyFigures(float_ms=float_ms, int8_ms=int8_ms, measured_on=measured_on)
    quantization = quantization.model_copy(update={**figures, "latency": latency})
    stored = add_proven(store, draft.model_copy(update={"quantization": quantization}),
                        quantized)
    return QuantizationResult(stored, quantization)


def _int8_manifest(manifest: Manifest, label: str, tolerance: AccuracyTolerance,
                   name: str | None) -> Manifest:
    try:
        return Manifest.model_validate({
            **manifest.model_dump(mode="json", exclude_none=True),
            "name": name or f"{manifest.name}-int8",
            "description": f"{manifest.description} (static INT8, QDQ)".strip(),
            "source": f"onnxruntime.quantization static INT8 of {label} "
                      f"({manifest.file.sha256[:12]})",
            "quantization": Quantization(scheme="onnx-qdq", source=label,
                                         tolerance=tolerance).model_dump(mode="json"),
            "golden": None,
        })
    except ValueError as exc:
        raise QuantizationError(f"the INT8 manifest is invalid: {exc}") from exc
