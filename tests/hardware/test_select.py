"""Proving candidates: failures are skipped with their reason, the CPU serves last."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from hardware import (
    NoBackendError,
    RuntimeInventory,
    UnknownBackendError,
    load_model,
    plan_backends,
    probe_hardware,
)
from models import Backend, BackendSpec, FakeBackend, ModelBundle, create_backend, iou
from tests.conftest import ASTRONAUT_FACE

pytestmark = pytest.mark.integration

TREES = Path(__file__).parent.parent / "fixtures" / "hardware"
GPU_ORT = RuntimeInventory(
    tflite_package="ai_edge_litert",
    onnx_providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
)


def test_listed_gpu_providers_fail_here_and_cpu_serves(
    short_onnx: ModelBundle, astronaut: npt.NDArray[np.uint8]
) -> None:
    # The server's onnxruntime lists TensorRT and CUDA; this machine's real onnxruntime
    # cannot load them, so both are skipped with the reason and the CPU serves.
    plan = plan_backends(probe_hardware(TREES / "x86-gpu-server", runtimes=GPU_ORT),
                         short_onnx.manifest)
    model, selection = load_model(short_onnx, plan)
    assert selection.chosen == "onnxruntime:cpu"
    reasons = {s.name: s.reason for s in selection.skipped}
    assert list(reasons) == ["onnxruntime:tensorrt", "onnxruntime:cuda"]
    assert "TensorrtExecutionProvider is not in this onnxruntime build" in (
        reasons["onnxruntime:tensorrt"]
    )
    assert "CUDAExecutionProvider" in reasons["onnxruntime:cuda"]
    assert selection.description.details["providers"] == "CPUExecutionProvider"
    assert iou(model.detect(astronaut)[0].box, ASTRONAUT_FACE) > 0.8


def test_jetson_gpu_delegate_that_will_not_load_is_skipped(short_tflite: ModelBundle) -> None:
    plan = plan_backends(probe_hardware(TREES / "jetson-orin", runtimes=GPU_ORT),
                         short_tflite.manifest)
    _, selection = load_model(short_tflite, plan)
    assert selection.chosen == "litert:xnnpack"
    [skipped] = selection.skipped
    assert skipped.name == "litert:gpu" and "cannot load delegate" in skipped.reason


def _factory(behaviour: dict[str, str]):  # type: ignore[no-untyped-def]
    """Real backends, except those named in ``behaviour``: 'nan' or 'load-error'."""

    def make(bundle: ModelBundle, spec: BackendSpec) -> Backend:
        mode = behaviour.get(spec.name)
        if mode is None:
            return create_backend(bundle, spec)
        real = create_backend(bundle, BackendSpec(spec.engine, "cpu"))
        real.load()

        def poisoned(batch: npt.NDArray[np.generic]) -> dict[str, npt.NDArray[np.generic]]:
            outputs = real.infer(batch)
            outputs["regressors"] = outputs["regressors"].copy()
            outputs["regressors"][0, 0, 0] = np.nan
            return outputs

        error = "device lost" if mode == "load-error" else None
        return FakeBackend(bundle, spec, poisoned, load_error=error)

    return make


def test_non_finite_output_and_load_error_are_skipped(short_tflite: ModelBundle) -> None:
    plan = plan_backends(probe_hardware(TREES / "jetson-orin", runtimes=GPU_ORT),
                         short_tflite.manifest)
    factory = _factory({"litert:gpu": "load-error", "litert:xnnpack": "nan"})
    _, selection = load_model(short_tflite, plan, factory=factory)
    assert selection.chosen == "litert:cpu"
    assert [(s.name, s.reason) for s in selection.skipped] == [
        ("litert:gpu", "device lost"),
        ("litert:xnnpack", "warm-up output 'regressors' has 1 non-finite values"),
    ]


def test_all_failing_is_one_error_listing_every_reason(short_tflite: ModelBundle) -> None:
    plan = plan_backends(probe_hardware(TREES / "x86-laptop", runtimes=GPU_ORT),
                         short_tflite.manifest)
    factory = _factory({"litert:xnnpack": "nan", "litert:cpu": "load-error"})
    with pytest.raises(NoBackendError) as caught:
        load_model(short_tflite, plan, factory=factory)
    assert [name for name, _ in caught.value.attempts] == ["litert:xnnpack", "litert:cpu"]
    assert "device lost" in str(caught.value)


def test_only_restricts_and_unknown_name_is_refused(short_tflite: ModelBundle) -> None:
    plan = plan_backends(probe_hardware(), short_tflite.manifest)
    _, selection = load_model(short_tflite, plan, only="litert:cpu")
    assert selection.chosen == "litert:cpu" and selection.skipped == ()
    with pytest.raises(UnknownBackendError, match="litert:xnnpack, litert:cpu"):
        load_model(short_tflite, plan, only="onnxruntime:cuda")
