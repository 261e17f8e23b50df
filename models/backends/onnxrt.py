"""ONNX Runtime backend with an ordered list of execution providers.

ONNX Runtime silently falls back to the CPU when a requested provider is missing or
fails to initialise. That would report "cuda" while running on the CPU, so this backend
checks both before and after building the session, and refuses such a session.

Its thread pools do not spin: by default ONNX Runtime keeps its intra- and inter-op
threads busy-waiting for the next run, which on a hub judging escalations one by one
burned half its CPU between runs (issue 11: 45 ms of CPU per event with spinning, 15.7 ms
without, and throughput limited by it). A backend whose spec sets the option
``spinning=on`` keeps the runtime's default (back-to-back runs on dedicated cores).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from models.backends.base import Backend, BackendDescription, BackendSpec, Outputs
from models.bundle import ModelBundle
from models.errors import BackendLoadError, BackendUnavailableError, InferenceError

PROVIDERS: dict[str, tuple[str, ...]] = {
    # TensorRT hands the nodes it cannot build to CUDA, then to the CPU.
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "openvino": ("OpenVINOExecutionProvider", "CPUExecutionProvider"),
    "acl": ("ACLExecutionProvider", "CPUExecutionProvider"),
    "armnn": ("ArmNNExecutionProvider", "CPUExecutionProvider"),
    "xnnpack": ("XnnpackExecutionProvider", "CPUExecutionProvider"),
    "cpu": ("CPUExecutionProvider",),
}
ACCELERATOR_OF_PROVIDER = {providers[0]: name for name, providers in PROVIDERS.items()}


def import_onnxruntime() -> Any:
    """Import ``onnxruntime``.

    Raises:
        BackendUnavailableError: It is not installed.
    """
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            "onnxruntime", f"not installed ({exc}): pip install 'edge-cloud-runtime[onnx]'",
        ) from exc
    return onnxruntime


class OnnxRuntimeBackend(Backend):
    """Runs an ``.onnx`` bundle in an ``InferenceSession``."""

    def __init__(self, bundle: ModelBundle, spec: BackendSpec) -> None:
        super().__init__(bundle, spec)
        if spec.accelerator not in PROVIDERS:
            raise BackendUnavailableError(
                spec.name, f"unknown accelerator; expected one of {tuple(PROVIDERS)}"
            )
        self._session: Any = None
        self._version = ""
        self._input_name = ""
        self._output_names: list[str] = []
        self._fixed_batch: int | None = None
        self._active: list[str] = []

    def load(self) -> None:
        """Build the session and prove the requested provider is really the one running."""
        if self.bundle.manifest.runtime != "onnx":
            raise BackendLoadError(
                self.name, f"{self.bundle.label} is a {self.bundle.manifest.runtime} model"
            )
        ort = import_onnxruntime()
        self._version = ort.__version__
        wanted = PROVIDERS[self.spec.accelerator]
        primary = wanted[0]
        available = ort.get_available_providers()
        if primary not in available:
            raise BackendUnavailableError(
                self.name,
                f"{primary} is not in this onnxruntime build (available: {', '.join(available)})",
            )
        content = self.bundle.read_verified_model()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; the fallback is reported by us.
        if self.spec.threads:
            options.intra_op_num_threads = self.spec.threads
        spinning = "1" if self.spec.option("spinning") == "on" else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
        providers = [p for p in wanted if p in available]
        try:
            session = ort.InferenceSession(content, sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors.
            raise BackendLoadError(self.name, f"cannot load {self.bundle.label}: {exc}") from exc
        active = session.get_providers()
        if not active or active[0] != primary:
            raise BackendLoadError(
                self.name,
                f"{primary} failed to initialise; onnxruntime fell back to {', '.join(active)}",
            )
        self._session = session
        self._active = list(active)
        model_input = session.get_inputs()[0]
        self._input_name = model_input.name
        batch_dim = model_input.shape[0]
        self._fixed_batch = batch_dim if isinstance(batch_dim, int) else None
        self._output_names = [o.name for o in session.get_outputs()]

    def _run(self, batch: npt.NDArray[np.generic]) -> Outputs:
        session = self._session
        if session is None:
            raise InferenceError(self.name, "backend is not loaded; call load() first")
        try:
            if self._fixed_batch is None or batch.shape[0] == self._fixed_batch:
                values = session.run(self._output_names, {self._input_name: batch})
                return dict(zip(self._output_names, values, strict=True))
            # A fixed batch dimension (tflite2onnx exports batch 1): run row by row.
            step = self._fixed_batch
            parts = [
                session.run(self._output_names, {self._input_name: batch[i : i + step]})
                for i in range(0, batch.shape[0], step)
            ]
        except Exception as exc:  # onnxruntime raises its own untyped errors.
            raise InferenceError(self.name, str(exc)) from exc
        return {
            name: np.concatenate([part[k] for part in parts])
            for k, name in enumerate(self._output_names)
        }

    def close(self) -> None:
        """Drop the session."""
        self._session = None

    def describe(self) -> BackendDescription:
        """onnxruntime version and the providers the session really uses."""
        details = {"providers": ", ".join(self._active) if self._active else "not loaded"}
        if self.spec.threads:
            details["threads"] = str(self.spec.threads)
        details["spinning"] = self.spec.option("spinning") or "off"
        return BackendDescription(
            self.name, "onnxruntime", self.spec.accelerator, self._version, details
        )
