"""Recovery hints after a model name finds nothing (issue 12: hints that are right)."""

from __future__ import annotations

import sys

import pytest

from models import ANOMALY_MODEL, BackendUnavailableError, missing_model_hint
from models.backends import import_onnxruntime

pytestmark = pytest.mark.unit

ZOO = ("blazeface-short", "blazeface-full", "face-landmark", "nudenet-320n")


def _hint(name: str, stored: tuple[str, ...] = ()) -> str:
    return missing_model_hint(name, stored=stored, zoo=ZOO)


def test_a_typo_gets_did_you_mean() -> None:
    # Closest first.
    assert _hint("blazeface-shrot").startswith("did you mean blazeface-short")
    assert _hint("face-landmarks") == "did you mean face-landmark?"
    assert _hint("my-detektor", stored=("my-detector",)) == "did you mean my-detector?"


def test_the_anomaly_model_is_trained_not_pulled() -> None:
    assert ANOMALY_MODEL == "sensor-anomaly"
    assert "edge-agent models train-anomaly" in _hint("sensor-anomaly")
    assert "pull" not in _hint("sensor-anomaly")
    assert _hint("sensor-anomally") == "did you mean sensor-anomaly?"


def test_pull_is_suggested_only_for_what_the_zoo_has() -> None:
    assert _hint("blazeface-short") == (
        "`edge-agent models pull blazeface-short` fetches it from the zoo")
    assert _hint("blazeface-short-onnx") == (
        "it is blazeface-short converted to ONNX: `edge-agent models pull blazeface-short`, "
        "then `edge-agent models convert blazeface-short`")
    assert _hint("blazeface-short-onnx", stored=("blazeface-short",)) == (
        "it is blazeface-short converted to ONNX: `edge-agent models convert blazeface-short`")
    unknown = _hint("resnet")
    assert "pull" not in unknown and unknown.startswith("models you can get: ")


def test_an_onnx_model_without_onnx_runtime_names_the_extra(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as an agent-only install has it
    with pytest.raises(BackendUnavailableError, match=r"edge-cloud-runtime\[onnx\]"):
        import_onnxruntime()
