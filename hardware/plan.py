"""From a hardware profile and a model, the ordered list of backends to try.

Pure: takes values, returns values. Fastest plausible first, the plain CPU always last.
Anything left out is listed with the reason, so ``edge-agent doctor`` can say why a
machine with a GPU still runs on its CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hardware.probe import HardwareProfile
from models import BackendSpec, Manifest, Quantization, semver_key
from models.backends import PROVIDERS


@dataclass(frozen=True, slots=True)
class PlannedBackend:
    """One candidate and why it is in the plan."""

    spec: BackendSpec
    reason: str

    @property
    def name(self) -> str:
        """``engine:accelerator``."""
        return self.spec.name


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A backend that was considered and left out, and why."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class BackendPlan:
    """Ordered candidates for one model on one machine."""

    model: str
    candidates: tuple[PlannedBackend, ...]
    excluded: tuple[Exclusion, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Candidate names, in order."""
        return tuple(c.name for c in self.candidates)

    def lines(self) -> list[str]:
        """Human-readable plan: ranked candidates with reasons, then what was left out."""
        text = [f"backend plan for {self.model}:"]
        text += [f"  {rank}. {c.name:<22} {c.reason}" for rank, c in enumerate(self.candidates, 1)]
        text += [f"     {e.name:<22} left out: {e.reason}" for e in self.excluded]
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` output."""
        return {
            "model": self.model,
            "candidates": [{"backend": c.name, "reason": c.reason} for c in self.candidates],
            "excluded": [{"backend": e.name, "reason": e.reason} for e in self.excluded],
        }


def plan_backends(
    profile: HardwareProfile, manifest: Manifest, *, threads: int | None = None
) -> BackendPlan:
    """Order the backends worth trying for ``manifest`` on ``profile``.

    Args:
        threads: CPU threads per backend; ``None`` lets each runtime choose.
    """
    return plan_for_runtime(
        profile, manifest.runtime, accelerators=manifest.accelerators,
        label=f"{manifest.name}@{manifest.version}", threads=threads,
    )


def plan_for_runtime(
    profile: HardwareProfile, runtime: str, *, accelerators: tuple[str, ...] = (),
    label: str | None = None, threads: int | None = None,
) -> BackendPlan:
    """Order the backends for any model of ``runtime`` (``tflite`` or ``onnx``).

    Args:
        accelerators: What the model file was compiled for (``edgetpu``); empty = generic.
        label: Name shown for the model; defaults to ``any <runtime> model``.
    """
    label = label or f"any {runtime} model"
    if runtime == "tflite":
        candidates, excluded = _tflite_plan(profile, accelerators, threads)
    else:
        candidates, excluded = _onnx_plan(profile, threads)
    return BackendPlan(label, tuple(candidates), tuple(excluded))


def _tflite_plan(
    profile: HardwareProfile, accelerators: tuple[str, ...], threads: int | None
) -> tuple[list[PlannedBackend], list[Exclusion]]:
    candidates: list[PlannedBackend] = []
    excluded: list[Exclusion] = []
    if profile.runtimes.tflite_package is None:
        excluded.append(Exclusion("litert", "no TFLite runtime (ai-edge-litert) installed"))
        return candidates, excluded

    edgetpu_library = profile.delegate_library("edgetpu")
    if not profile.has_coral:
        excluded.append(Exclusion("litert:edgetpu", "no Coral Edge TPU found"))
    elif "edgetpu" not in accelerators:
        excluded.append(Exclusion("litert:edgetpu", "model is not compiled for the Edge TPU"))
    elif edgetpu_library is None:
        excluded.append(Exclusion("litert:edgetpu", "Coral found but libedgetpu is not installed"))
    else:
        where = f"{profile.coral_usb} USB" if profile.coral_usb else ", ".join(profile.coral_pcie)
        candidates.append(PlannedBackend(
            BackendSpec("litert", "edgetpu", threads, (("library", edgetpu_library),)),
            f"Coral Edge TPU ({where}) and an Edge TPU-compiled model",
        ))

    gpu_library = profile.delegate_library("gpu")
    if gpu_library is not None:
        candidates.append(PlannedBackend(
            BackendSpec("litert", "gpu", threads, (("library", gpu_library),)),
            f"TFLite GPU delegate found at {gpu_library}",
        ))
    else:
        excluded.append(Exclusion("litert:gpu", "TFLite GPU delegate library not found"))

    simd = "/".join(sorted(profile.cpu_features & {"neon", "asimd", "avx2", "avx512"}))
    if profile.emulated_on:
        simd = f"SIMD unknown, emulated on {profile.emulated_on}"
    candidates.append(PlannedBackend(
        BackendSpec("litert", "xnnpack", threads),
        f"XNNPACK CPU kernels ({simd or 'scalar'}, {profile.cpu_count} cores)",
    ))
    candidates.append(PlannedBackend(
        BackendSpec("litert", "cpu", threads), "built-in CPU kernels: the last resort"
    ))
    return candidates, excluded


_ONNX_REASONS = {
    "tensorrt": "NVIDIA GPU: TensorRT engines",
    "cuda": "NVIDIA GPU: CUDA kernels",
    "openvino": "x86 CPU: OpenVINO",
    "acl": "ARM CPU: Arm Compute Library",
    "armnn": "ARM CPU: Arm NN",
    "xnnpack": "ARM CPU: XNNPACK",
}


def _onnx_plan(
    profile: HardwareProfile, threads: int | None
) -> tuple[list[PlannedBackend], list[Exclusion]]:
    candidates: list[PlannedBackend] = []
    excluded: list[Exclusion] = []
    installed = set(profile.runtimes.onnx_providers)
    if not installed:
        excluded.append(Exclusion("onnxruntime", "onnxruntime is not installed"))
        return candidates, excluded

    wanted: list[str] = []
    if profile.has_cuda_gpu:
        wanted += ["tensorrt", "cuda"]
    else:
        for accelerator in ("tensorrt", "cuda"):
            excluded.append(Exclusion(f"onnxruntime:{accelerator}", "no NVIDIA GPU found"))
    if profile.is_arm:
        wanted += ["acl", "armnn", "xnnpack"]
    else:
        wanted.append("openvino")

    for accelerator in wanted:
        provider = PROVIDERS[accelerator][0]
        name = f"onnxruntime:{accelerator}"
        if provider not in installed:
            excluded.append(Exclusion(name, f"{provider} is not in the installed onnxruntime"))
            continue
        reason = _ONNX_REASONS[accelerator]
        if accelerator in ("tensorrt", "cuda"):
            gpu = profile.nvidia_gpus[0] if profile.nvidia_gpus else f"Jetson {profile.board}"
            reason = f"{reason} ({gpu})"
        candidates.append(PlannedBackend(BackendSpec("onnxruntime", accelerator, threads), reason))
    candidates.append(PlannedBackend(
        BackendSpec("onnxruntime", "cpu", threads),
        f"default CPU provider ({profile.cpu_count} cores): the last resort",
    ))
    return candidates, excluded


@dataclass(frozen=True, slots=True)
class PrecisionChoice:
    """Which of a model's precisions to serve (its float bundle or an INT8 copy), and why."""

    manifest: Manifest
    reason: str

    @property
    def label(self) -> str:
        """``name@version`` of the chosen bundle."""
        return f"{self.manifest.name}@{self.manifest.version}"


def int8_acceleration(profile: HardwareProfile) -> str | None:
    """What on this machine runs INT8 faster than float, or ``None``.

    x86 VNNI (AVX-512 or AVX) and ARM dot-product/matrix instructions speed up ONNX
    Runtime's and XNNPACK's int8 kernels; TensorRT builds int8 engines on an NVIDIA GPU.
    """
    if profile.has_cuda_gpu and "TensorrtExecutionProvider" in profile.runtimes.onnx_providers:
        return "TensorRT int8 engines on the NVIDIA GPU"
    if "vnni" in profile.cpu_features:
        return "x86 VNNI int8 dot-product instructions"
    arm = sorted(profile.cpu_features & {"dotprod", "i8mm"})
    if arm:
        return f"ARM int8 instructions ({'/'.join(arm)})"
    return None


def _measured_slower_here(profile: HardwareProfile, quantization: Quantization) -> bool:
    latency = quantization.latency
    return (latency is not None and latency.measured_on == machine_signature(profile)
            and latency.int8_ms >= latency.float_ms)


def machine_signature(profile: HardwareProfile) -> str:
    """A short name of this kind of machine: architecture, cores, GPUs, CPU features.

    Quantization records it beside its latencies; the plan trusts those latencies only on
    a machine with the same signature.
    """
    gpus = ", ".join(profile.nvidia_gpus) or "no NVIDIA GPU"
    features = "/".join(sorted(profile.cpu_features)) or "no SIMD features"
    return f"{profile.architecture}, {profile.cpu_count} cores ({features}), {gpus}"


def choose_precision(
    profile: HardwareProfile, float_manifest: Manifest, variants: Sequence[Manifest]
) -> PrecisionChoice:
    """Prefer an INT8 copy of ``float_manifest`` where it pays and is accurate enough.

    An INT8 variant (its ``quantization.source`` names the float model) is chosen when
    this machine has INT8 acceleration, a runtime for it is installed, the accuracy its
    manifest records is within the tolerance it declares, and it was not measured slower
    than the float model on a machine like this one; otherwise the float model serves,
    and the reason says which condition failed. Pure: takes values.
    """
    quantized = [
        v for v in variants
        if v.quantization is not None and v.quantization.source_name == float_manifest.name
    ]
    if not quantized:
        return PrecisionChoice(float_manifest, "float: no INT8 copy of this model")
    acceleration = int8_acceleration(profile)
    if acceleration is None:
        return PrecisionChoice(float_manifest, "float: this machine has no INT8 acceleration")
    reasons = []
    for variant in sorted(quantized, key=lambda m: semver_key(m.version), reverse=True):
        label = f"{variant.name}@{variant.version}"
        assert variant.quantization is not None
        if not plan_backends(profile, variant).candidates:
            reasons.append(f"{label} has no runtime here")
        elif not variant.quantization.within_tolerance():
            reasons.append(f"{label}'s measured accuracy is outside its declared tolerance"
                           if variant.quantization.held_out or variant.quantization.calibration
                           else f"{label} has no accuracy report")
        elif _measured_slower_here(profile, variant.quantization):
            reasons.append(f"{label} was measured slower than float on this machine")
        else:
            return PrecisionChoice(variant, f"int8: {acceleration}, accuracy within tolerance")
    return PrecisionChoice(float_manifest, "float: " + "; ".join(reasons))
