"""Fixture trees of real machines yield the expected hardware and backend plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from hardware import HardwareProfile, RuntimeInventory, plan_backends, probe_hardware
from models import ModelBundle

pytestmark = pytest.mark.integration

TREES = Path(__file__).parent.parent / "fixtures" / "hardware"
GPU_ORT = RuntimeInventory(
    tflite_package="ai_edge_litert",
    onnx_providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
)
ARM_ORT = RuntimeInventory(
    tflite_package="ai_edge_litert",
    onnx_providers=("XnnpackExecutionProvider", "CPUExecutionProvider"),
)
PLAIN = RuntimeInventory(tflite_package="ai_edge_litert", onnx_providers=("CPUExecutionProvider",))


def _probe(tree: str, runtimes: RuntimeInventory) -> HardwareProfile:
    return probe_hardware(TREES / tree, runtimes=runtimes)


def test_jetson_orin() -> None:
    profile = _probe("jetson-orin", GPU_ORT)
    assert profile.is_jetson and profile.jetson_release is not None
    assert profile.jetson_release.startswith("R35 (release), REVISION: 4.1")
    assert profile.board == "NVIDIA Jetson AGX Orin Developer Kit"
    assert profile.architecture == "aarch64" and profile.cpu_count == 4
    assert {"asimd", "dotprod", "fp16"} <= profile.cpu_features
    assert profile.has_cuda_gpu and not profile.has_coral
    assert profile.delegate_library("gpu") == (
        "/usr/lib/aarch64-linux-gnu/tegra/libtensorflowlite_gpu_delegate.so"
    )


def test_raspberry_pi_4_with_coral() -> None:
    plain = _probe("rpi4", ARM_ORT)
    assert plain.raspberry_pi and not plain.is_jetson and plain.architecture == "aarch64"
    assert plain.coral_usb == 0 and not plain.nvidia_gpus
    coral = _probe("rpi4-coral", ARM_ORT)
    assert coral.coral_usb == 1 and coral.has_coral
    assert coral.delegate_library("edgetpu") == "/usr/lib/aarch64-linux-gnu/libedgetpu.so.1"


def test_x86_gpu_server_and_laptop() -> None:
    server = _probe("x86-gpu-server", GPU_ORT)
    assert server.architecture == "x86_64" and server.cpu_count == 16
    assert server.nvidia_gpus == ("NVIDIA A100-PCIE-40GB",)
    assert {"avx2", "avx512", "vnni"} <= server.cpu_features
    laptop = _probe("x86-laptop", PLAIN)
    assert laptop.nvidia_gpus == () and "avx512" not in laptop.cpu_features
    assert not laptop.is_arm and laptop.board is None


@pytest.mark.parametrize(
    ("tree", "runtimes", "tflite_plan", "onnx_plan"),
    [
        ("jetson-orin", GPU_ORT,
         ["litert:gpu", "litert:xnnpack", "litert:cpu"],
         ["onnxruntime:tensorrt", "onnxruntime:cuda", "onnxruntime:cpu"]),
        ("rpi4", ARM_ORT,
         ["litert:xnnpack", "litert:cpu"],
         ["onnxruntime:xnnpack", "onnxruntime:cpu"]),
        ("x86-gpu-server", GPU_ORT,
         ["litert:xnnpack", "litert:cpu"],
         ["onnxruntime:tensorrt", "onnxruntime:cuda", "onnxruntime:cpu"]),
        ("x86-laptop", PLAIN,
         ["litert:xnnpack", "litert:cpu"],
         ["onnxruntime:cpu"]),
    ],
)
def test_expected_plans(
    tree: str, runtimes: RuntimeInventory, tflite_plan: list[str], onnx_plan: list[str],
    short_tflite: ModelBundle, short_onnx: ModelBundle,
) -> None:
    profile = _probe(tree, runtimes)
    assert list(plan_backends(profile, short_tflite.manifest).names) == tflite_plan
    assert list(plan_backends(profile, short_onnx.manifest).names) == onnx_plan


def test_exclusions_say_why(short_tflite: ModelBundle, short_onnx: ModelBundle) -> None:
    laptop = _probe("x86-laptop", PLAIN)
    excluded = {e.name: e.reason for e in plan_backends(laptop, short_onnx.manifest).excluded}
    assert excluded["onnxruntime:cuda"] == "no NVIDIA GPU found"
    assert "OpenVINOExecutionProvider is not in the installed onnxruntime" in (
        excluded["onnxruntime:openvino"]
    )
    pi = _probe("rpi4", ARM_ORT)
    excluded = {e.name: e.reason for e in plan_backends(pi, short_tflite.manifest).excluded}
    assert excluded["litert:edgetpu"] == "no Coral Edge TPU found"


def test_coral_is_planned_only_for_edgetpu_compiled_models(short_tflite: ModelBundle) -> None:
    coral = _probe("rpi4-coral", ARM_ORT)
    generic = plan_backends(coral, short_tflite.manifest)
    assert "litert:edgetpu" not in generic.names
    assert {e.name: e.reason for e in generic.excluded}["litert:edgetpu"] == (
        "model is not compiled for the Edge TPU"
    )
    compiled = short_tflite.manifest.model_copy(update={"accelerators": ("edgetpu",)})
    plan = plan_backends(coral, compiled)
    assert plan.names[0] == "litert:edgetpu" and plan.names[-1] == "litert:cpu"
    assert plan.candidates[0].spec.option("library") == "/usr/lib/aarch64-linux-gnu/libedgetpu.so.1"


def test_nothing_installed_plans_nothing(short_tflite: ModelBundle) -> None:
    bare = probe_hardware(TREES / "x86-laptop", runtimes=RuntimeInventory(None, ()))
    plan = plan_backends(bare, short_tflite.manifest)
    assert plan.candidates == ()
    assert plan.excluded[0].reason == "no TFLite runtime (ai-edge-litert) installed"


def test_this_machine_probes_without_error() -> None:
    profile = probe_hardware()
    assert profile.cpu_count >= 1
    assert profile.runtimes.tflite_package == "ai_edge_litert"
    assert "CPUExecutionProvider" in profile.runtimes.onnx_providers
    assert profile.emulated_on is None


ARM_ALL = RuntimeInventory(
    tflite_package="ai_edge_litert",
    onnx_providers=("ACLExecutionProvider", "ArmNNExecutionProvider",
                    "XnnpackExecutionProvider", "CPUExecutionProvider"),
)


def test_arm_plan_orders_every_arm_provider_installed(short_onnx: ModelBundle) -> None:
    plan = plan_backends(_probe("rpi4", ARM_ALL), short_onnx.manifest)
    assert list(plan.names) == [
        "onnxruntime:acl", "onnxruntime:armnn", "onnxruntime:xnnpack", "onnxruntime:cpu",
    ]
    assert "openvino" not in " ".join(e.name for e in plan.excluded)


def test_emulated_arm64_on_an_x86_host_is_arm_with_no_host_features(
    short_tflite: ModelBundle, short_onnx: ModelBundle,
) -> None:
    # qemu-user shows the host's /proc/cpuinfo to an arm64 Python.
    profile = probe_hardware(TREES / "x86-laptop", runtimes=ARM_ORT, machine="aarch64")
    assert profile.architecture == "aarch64" and profile.is_arm
    assert profile.emulated_on == "x86_64" and profile.cpu_features == frozenset()
    assert profile.to_dict()["emulated_on"] == "x86_64"
    onnx = plan_backends(profile, short_onnx.manifest)
    assert list(onnx.names) == ["onnxruntime:xnnpack", "onnxruntime:cpu"]
    assert "openvino" not in " ".join(e.name for e in onnx.excluded)
    tflite = plan_backends(profile, short_tflite.manifest)
    xnnpack = next(c for c in tflite.candidates if c.name == "litert:xnnpack")
    assert "emulated on x86_64" in xnnpack.reason and "avx" not in xnnpack.reason


@pytest.mark.parametrize("machine", ["aarch64", "arm64", "armv7l", "armv8l"])
def test_an_arm_program_on_an_arm_board_is_not_emulated(machine: str) -> None:
    profile = probe_hardware(TREES / "rpi4", runtimes=ARM_ORT, machine=machine)
    assert profile.emulated_on is None and profile.architecture == "aarch64"
    assert "asimd" in profile.cpu_features
