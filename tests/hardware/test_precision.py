"""The plan prefers an INT8 copy only where it is accelerated and accurate enough."""

from __future__ import annotations

from typing import Any

import pytest

from hardware import (
    HardwareProfile,
    RuntimeInventory,
    choose_precision,
    int8_acceleration,
    machine_signature,
)
from models import AccuracyFigures, LatencyFigures, Manifest, Quantization

pytestmark = pytest.mark.unit

ORT = RuntimeInventory(tflite_package=None, onnx_providers=("CPUExecutionProvider",))
VNNI = HardwareProfile("x86_64", 8, frozenset({"avx2", "avx512", "vnni"}), runtimes=ORT)
PLAIN_X86 = HardwareProfile("x86_64", 4, frozenset({"avx2"}), runtimes=ORT)
ARM_DOTPROD = HardwareProfile("aarch64", 4, frozenset({"asimd", "dotprod"}), runtimes=ORT)
GOOD = AccuracyFigures(frames=10, reference_detections=20, matched=20, mean_iou=0.95,
                       lost=0, gained=0)
LOSSY = AccuracyFigures(frames=10, reference_detections=20, matched=15, mean_iou=0.95,
                        lost=5, gained=0)


def _manifest(name: str, quantization: Quantization | None = None,
              version: str = "1.0.0") -> Manifest:
    raw: dict[str, Any] = {
        "schema_version": 1, "name": name, "version": version, "task": "detector",
        "runtime": "onnx", "file": {"path": "model.onnx", "sha256": "0" * 64, "size_bytes": 1},
        "input": {"shape": [1, 3, 64, 64], "layout": "NCHW", "dtype": "float32",
                  "color_order": "RGB", "resize": "letterbox"},
        "output": {"kind": "detector", "family": "yolo", "output": "o", "labels": ["a"],
                   "score_threshold": 0.25},
    }
    if quantization is not None:
        raw["quantization"] = quantization.model_dump()
    return Manifest.model_validate(raw)


FLOAT = _manifest("det")
INT8 = _manifest("det-int8", Quantization(source="det@1.0.0", calibration=GOOD, held_out=GOOD))


def test_int8_acceleration_by_machine() -> None:
    assert int8_acceleration(VNNI) == "x86 VNNI int8 dot-product instructions"
    assert int8_acceleration(ARM_DOTPROD) == "ARM int8 instructions (dotprod)"
    assert int8_acceleration(PLAIN_X86) is None


def test_int8_is_preferred_where_accelerated_and_within_tolerance() -> None:
    choice = choose_precision(VNNI, FLOAT, [INT8])
    assert choice.manifest == INT8
    assert choice.reason.startswith("int8: x86 VNNI")
    assert choose_precision(ARM_DOTPROD, FLOAT, [INT8]).manifest == INT8


def test_float_stays_without_acceleration_accuracy_or_a_copy() -> None:
    assert choose_precision(PLAIN_X86, FLOAT, [INT8]).reason == (
        "float: this machine has no INT8 acceleration")
    lossy = _manifest("det-int8", Quantization(source="det@1.0.0", calibration=GOOD,
                                               held_out=LOSSY))
    choice = choose_precision(VNNI, FLOAT, [lossy])
    assert choice.manifest == FLOAT
    assert "outside its declared tolerance" in choice.reason
    unmeasured = _manifest("det-int8", Quantization(source="det@1.0.0"))
    assert "has no accuracy report" in choose_precision(VNNI, FLOAT, [unmeasured]).reason
    other_model = _manifest("cat-int8", Quantization(source="cat@1.0.0", calibration=GOOD))
    assert choose_precision(VNNI, FLOAT, [other_model]).manifest == FLOAT


def test_no_runtime_for_the_int8_copy_keeps_float() -> None:
    bare = HardwareProfile("x86_64", 8, frozenset({"vnni"}),
                           runtimes=RuntimeInventory(tflite_package=None, onnx_providers=()))
    assert "has no runtime here" in choose_precision(bare, FLOAT, [INT8]).reason


def test_measured_slower_on_this_very_machine_keeps_float() -> None:
    def timed(on: str, int8_ms: float) -> Manifest:
        latency = LatencyFigures(float_ms=10.0, int8_ms=int8_ms, measured_on=on)
        return _manifest("det-int8", Quantization(source="det@1.0.0", calibration=GOOD,
                                                  latency=latency))

    here = machine_signature(VNNI)
    assert "measured slower than float on this machine" in choose_precision(
        VNNI, FLOAT, [timed(here, 12.0)]).reason
    assert choose_precision(VNNI, FLOAT, [timed(here, 6.0)]).manifest.name == "det-int8"
    # Slower on another kind of machine says nothing about this one.
    elsewhere = machine_signature(ARM_DOTPROD)
    assert choose_precision(VNNI, FLOAT, [timed(elsewhere, 12.0)]).manifest.name == "det-int8"
