"""What this machine is: board, CPU features, GPUs, Coral, installed runtimes.

Every fact comes from files under a root folder (``/`` on a real machine), so tests point
the probe at fixture trees of other machines. What is importable in this Python (LiteRT,
ONNX Runtime providers) is detected separately, by :meth:`RuntimeInventory.detect`, and
passed in.

The architecture that counts is the one this Python runs as: under user-mode emulation
(an arm64 root on an x86 host, qemu-user) ``/proc/cpuinfo`` describes the host's CPU, so
when it disagrees with the interpreter's machine the profile takes the interpreter's,
records the host's in ``emulated_on`` and claims no CPU features (the host's AVX says
nothing about what the emulated CPU offers).
"""

from __future__ import annotations

import importlib.util
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CORAL_USB_IDS = frozenset({("1a6e", "089a"), ("18d1", "9302")})
"""Edge TPU USB accelerator before (Global Unichip) and after (Google) its firmware loads."""

LIBRARY_DIRS = (
    "usr/lib", "usr/lib/aarch64-linux-gnu", "usr/lib/x86_64-linux-gnu",
    "usr/lib/arm-linux-gnueabihf", "usr/local/lib", "lib", "usr/lib/aarch64-linux-gnu/tegra",
)
DELEGATE_LIBRARY_NAMES = {
    "edgetpu": ("libedgetpu.so.1", "libedgetpu.so"),
    "gpu": ("libtensorflowlite_gpu_delegate.so",),
}

_FEATURE_ALIASES = {
    "avx512_vnni": "vnni", "avx_vnni": "vnni", "avx512vnni": "vnni",
    "asimd": "asimd", "neon": "neon", "avx2": "avx2", "avx512f": "avx512", "fma": "fma",
    "sse4_2": "sse4_2", "asimddp": "dotprod", "i8mm": "i8mm", "sve": "sve", "fp16": "fp16",
    "asimdhp": "fp16", "f16c": "f16c",
}


@dataclass(frozen=True, slots=True)
class RuntimeInventory:
    """Which inference runtimes this Python can import.

    Attributes:
        tflite_package: ``ai_edge_litert``, ``tflite_runtime`` or ``None``.
        onnx_providers: Execution providers the installed onnxruntime build lists.
    """

    tflite_package: str | None
    onnx_providers: tuple[str, ...]

    @classmethod
    def detect(cls) -> RuntimeInventory:
        """Look at what is installed here, without loading any model."""
        tflite = next(
            (p for p in ("ai_edge_litert", "tflite_runtime") if importlib.util.find_spec(p)),
            None,
        )
        providers: tuple[str, ...] = ()
        if importlib.util.find_spec("onnxruntime"):
            import onnxruntime

            providers = tuple(onnxruntime.get_available_providers())
        return cls(tflite_package=tflite, onnx_providers=providers)


@dataclass(frozen=True, slots=True)
class HardwareProfile:
    """Facts about one machine that decide which backends to try."""

    architecture: str
    cpu_count: int
    cpu_features: frozenset[str]
    board: str | None = None
    jetson_release: str | None = None
    raspberry_pi: bool = False
    nvidia_gpus: tuple[str, ...] = ()
    coral_usb: int = 0
    coral_pcie: tuple[str, ...] = ()
    delegate_libraries: tuple[tuple[str, str], ...] = ()
    emulated_on: str | None = None
    runtimes: RuntimeInventory = field(
        default_factory=lambda: RuntimeInventory(tflite_package=None, onnx_providers=())
    )

    @property
    def is_arm(self) -> bool:
        """An ARM CPU (aarch64 or 32-bit ARM)."""
        return self.architecture.startswith(("aarch64", "arm"))

    @property
    def is_jetson(self) -> bool:
        """An NVIDIA Jetson module."""
        return self.jetson_release is not None

    @property
    def has_coral(self) -> bool:
        """A Coral Edge TPU on USB or PCIe."""
        return self.coral_usb > 0 or bool(self.coral_pcie)

    @property
    def has_cuda_gpu(self) -> bool:
        """An NVIDIA GPU CUDA can use (discrete, or a Jetson's integrated one)."""
        return bool(self.nvidia_gpus) or self.is_jetson

    def delegate_library(self, accelerator: str) -> str | None:
        """Path of the TFLite delegate library for ``accelerator``, if found."""
        return dict(self.delegate_libraries).get(accelerator)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` output."""
        return {
            "architecture": self.architecture,
            "cpu_count": self.cpu_count,
            "cpu_features": sorted(self.cpu_features),
            "board": self.board,
            "jetson_release": self.jetson_release,
            "raspberry_pi": self.raspberry_pi,
            "nvidia_gpus": list(self.nvidia_gpus),
            "coral": {"usb": self.coral_usb, "pcie": list(self.coral_pcie)},
            "delegate_libraries": dict(self.delegate_libraries),
            "emulated_on": self.emulated_on,
            "runtimes": {
                "tflite": self.runtimes.tflite_package,
                "onnxruntime_providers": list(self.runtimes.onnx_providers),
            },
        }


def probe_hardware(
    root: Path = Path("/"), *, runtimes: RuntimeInventory | None = None,
    machine: str | None = None,
) -> HardwareProfile:
    """Read the machine under ``root``.

    Args:
        root: Filesystem root to read ``/proc``, ``/sys``, ``/etc`` and ``/dev`` under.
        runtimes: Installed runtimes; detected in this Python when ``None``.
        machine: The architecture the probing program runs as (``platform.machine()``);
            defaults to this Python's when ``root`` is ``/``, and to nothing (trust the
            files) for another machine's tree.
    """
    cpuinfo = _read(root / "proc/cpuinfo") or ""
    architecture, cpu_count, features = _parse_cpuinfo(cpuinfo)
    if machine is None and root == Path("/"):
        machine = platform.machine()
    emulated_on = None
    if machine and _family(normalise_machine(machine)) != _family(architecture):
        emulated_on, architecture = architecture, normalise_machine(machine)
        features = frozenset()
    board = _read(root / "proc/device-tree/model")
    board = board.strip("\x00 \n") if board else None
    tegra = _read(root / "etc/nv_tegra_release")
    jetson_release = None
    if tegra:
        jetson_release = tegra.splitlines()[0].lstrip("# ").strip()
    elif board and "jetson" in board.lower():
        jetson_release = "unknown release"
    return HardwareProfile(
        architecture=architecture,
        cpu_count=cpu_count,
        cpu_features=features,
        board=board or None,
        jetson_release=jetson_release,
        raspberry_pi=bool(board and "raspberry pi" in board.lower()),
        nvidia_gpus=_nvidia_gpus(root),
        coral_usb=_coral_usb_count(root),
        coral_pcie=tuple(sorted(f"/dev/{p.name}" for p in (root / "dev").glob("apex_*"))),
        delegate_libraries=_delegate_libraries(root),
        emulated_on=emulated_on,
        runtimes=runtimes if runtimes is not None else RuntimeInventory.detect(),
    )


def normalise_machine(machine: str) -> str:
    """``platform.machine()`` in cpuinfo's spelling: ``arm64`` is ``aarch64``, and so on."""
    lowered = machine.lower()
    return {"arm64": "aarch64", "amd64": "x86_64", "x64": "x86_64"}.get(lowered, lowered)


def _family(architecture: str) -> str:
    """The instruction-set family: a 32-bit userland on a 64-bit ARM kernel is no emulation."""
    if architecture.startswith(("aarch64", "arm")):
        return "arm"
    if architecture in ("x86_64", "i386", "i686"):
        return "x86"
    return architecture


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _parse_cpuinfo(text: str) -> tuple[str, int, frozenset[str]]:
    processors = 0
    raw_features: set[str] = set()
    architecture = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "processor":
            processors += 1
        elif key in ("flags", "features"):
            raw_features.update(value.split())
            if key == "features" and not architecture:
                architecture = "aarch64" if "asimd" in value.split() else "armv7l"
        elif key == "cpu architecture" and value.strip() == "8":
            architecture = "aarch64"
        elif key == "vendor_id":
            architecture = "x86_64"
    if not architecture:
        architecture = normalise_machine(platform.machine()) or "unknown"
    features = frozenset(_FEATURE_ALIASES[f] for f in raw_features if f in _FEATURE_ALIASES)
    return architecture, max(processors, 1), features


def _nvidia_gpus(root: Path) -> tuple[str, ...]:
    names = []
    for info in sorted((root / "proc/driver/nvidia/gpus").glob("*/information")):
        for line in (_read(info) or "").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model":
                names.append(value.strip())
    return tuple(names)


def _coral_usb_count(root: Path) -> int:
    count = 0
    for device in (root / "sys/bus/usb/devices").glob("*"):
        vendor = (_read(device / "idVendor") or "").strip().lower()
        product = (_read(device / "idProduct") or "").strip().lower()
        if (vendor, product) in CORAL_USB_IDS:
            count += 1
    return count


def _delegate_libraries(root: Path) -> tuple[tuple[str, str], ...]:
    found = []
    for accelerator, names in DELEGATE_LIBRARY_NAMES.items():
        for folder in LIBRARY_DIRS:
            hit = next((root / folder / n for n in names if (root / folder / n).exists()), None)
            if hit is not None:
                found.append((accelerator, "/" + str(hit.relative_to(root))))
                break
    return tuple(found)
