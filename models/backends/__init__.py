"""Runtime backends behind one small interface (load, infer, close, describe)."""

from __future__ import annotations

from models.backends.base import Backend, BackendDescription, BackendSpec, Engine, Outputs
from models.backends.fake import FakeBackend
from models.backends.litert import (
    LITERT_ACCELERATORS,
    LiteRTBackend,
    delegated_nodes,
    import_tflite_interpreter,
)
from models.backends.onnxrt import PROVIDERS, OnnxRuntimeBackend, import_onnxruntime
from models.bundle import ModelBundle
from models.errors import BackendUnavailableError

ENGINE_OF_RUNTIME = {"tflite": "litert", "onnx": "onnxruntime"}


def create_backend(bundle: ModelBundle, spec: BackendSpec) -> Backend:
    """Build (not load) the backend ``spec`` names for ``bundle``.

    Raises:
        BackendUnavailableError: The engine is unknown or cannot run this bundle's runtime.
    """
    expected = ENGINE_OF_RUNTIME[bundle.manifest.runtime]
    if spec.engine != expected:
        raise BackendUnavailableError(
            spec.name, f"{bundle.label} is a {bundle.manifest.runtime} model; it needs {expected}"
        )
    if spec.engine == "litert":
        return LiteRTBackend(bundle, spec)
    return OnnxRuntimeBackend(bundle, spec)


__all__ = [
    "ENGINE_OF_RUNTIME",
    "LITERT_ACCELERATORS",
    "PROVIDERS",
    "Backend",
    "BackendDescription",
    "BackendSpec",
    "Engine",
    "FakeBackend",
    "LiteRTBackend",
    "OnnxRuntimeBackend",
    "Outputs",
    "create_backend",
    "delegated_nodes",
    "import_onnxruntime",
    "import_tflite_interpreter",
]
