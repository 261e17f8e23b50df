"""LiteRT (TFLite) backend: XNNPACK on CPU, the GPU delegate, the Coral Edge TPU delegate.

Every accelerator but ``cpu`` is proven at load: the delegate must have taken at least one
node of the model (XNNPACK, applied by default, can silently take none: under qemu-user,
or on a CPU its kernels do not support).

``ai_edge_litert`` is the maintained runtime. ``tflite_runtime`` 2.14, its predecessor,
is imported only where ``ai_edge_litert`` is absent (old Jetson and Raspberry Pi images):
it cannot load under numpy 2.
"""

from __future__ import annotations

import ctypes
import importlib
import os
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from models.backends.base import Backend, BackendDescription, BackendSpec, Outputs
from models.bundle import ModelBundle
from models.errors import BackendLoadError, BackendUnavailableError, InferenceError

DEFAULT_DELEGATE_LIBRARIES = {
    "edgetpu": "libedgetpu.so.1",
    "gpu": "libtensorflowlite_gpu_delegate.so",
}
LITERT_ACCELERATORS = ("edgetpu", "gpu", "xnnpack", "cpu")


def import_tflite_interpreter() -> tuple[ModuleType, str]:
    """Return the TFLite interpreter module and the name of the package that provided it.

    Raises:
        BackendUnavailableError: Neither ``ai_edge_litert`` nor ``tflite_runtime`` imports.
    """
    failures = []
    for package in ("ai_edge_litert", "tflite_runtime"):
        try:
            return importlib.import_module(f"{package}.interpreter"), package
        except ImportError as exc:
            failures.append(f"{package}: {exc}")
    raise BackendUnavailableError(
        "litert", "no TFLite runtime installed (" + "; ".join(failures) + ")"
    )


def delegated_nodes(interpreter: Any) -> int | None:
    """How many nodes of the execution plan a delegate (XNNPACK included) took over.

    A delegate that loads but claims no operation leaves the model on the built-in
    kernels without a word; LiteRT reports each delegated partition as a ``DELEGATE``
    node. ``None`` when the runtime cannot tell (an old ``tflite_runtime``).
    """
    try:
        operations = interpreter._get_ops_details()
    except (AttributeError, ValueError, RuntimeError):
        return None
    return sum(1 for operation in operations if operation.get("op_name") == "DELEGATE")


class LiteRTBackend(Backend):
    """Runs a ``.tflite`` bundle through the LiteRT interpreter."""

    def __init__(self, bundle: ModelBundle, spec: BackendSpec) -> None:
        super().__init__(bundle, spec)
        if spec.accelerator not in LITERT_ACCELERATORS:
            raise BackendUnavailableError(
                spec.name, f"unknown LiteRT accelerator; expected one of {LITERT_ACCELERATORS}"
            )
        self._interpreter: Any = None
        self._package = ""
        self._module: ModuleType | None = None
        self._input_index = 0
        self._outputs: list[tuple[str, int]] = []
        self._dequantize: dict[str, tuple[float, int]] = {}
        self._batch = 0
        self._native_batch = 1
        self._can_batch = True
        self._threads = 0
        self._delegate_library = ""
        self._delegated_nodes: int | None = None

    def load(self) -> None:
        """Build the interpreter with the delegate this backend's accelerator needs."""
        if self.bundle.manifest.runtime != "tflite":
            raise BackendLoadError(
                self.name, f"{self.bundle.label} is a {self.bundle.manifest.runtime} model"
            )
        module, self._package = import_tflite_interpreter()
        self._module = module
        content = self.bundle.read_verified_model()
        kwargs: dict[str, Any] = {"model_content": content}
        threads = self.spec.threads or os.cpu_count() or 1
        accelerator = self.spec.accelerator
        if accelerator in DEFAULT_DELEGATE_LIBRARIES:
            library = self.spec.option("library") or DEFAULT_DELEGATE_LIBRARIES[accelerator]
            try:
                # Open it ourselves first: a library that fails inside load_delegate leaves
                # a half-built Delegate whose __del__ raises during garbage collection.
                ctypes.CDLL(library)
                delegate = module.load_delegate(library)
            except (ValueError, OSError, RuntimeError) as exc:
                raise BackendUnavailableError(
                    self.name, f"cannot load delegate {library}: {exc}"
                ) from exc
            self._delegate_library = library
            kwargs["experimental_delegates"] = [delegate]
        elif accelerator == "cpu":
            # Plain built-in kernels, no XNNPACK: the last resort if XNNPACK misbehaves.
            kwargs["experimental_op_resolver_type"] = (
                module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            )
        kwargs["num_threads"] = threads
        try:
            interpreter = module.Interpreter(**kwargs)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BackendLoadError(self.name, f"cannot load {self.bundle.label}: {exc}") from exc
        self._delegated_nodes = delegated_nodes(interpreter)
        if self._delegated_nodes == 0 and accelerator != "cpu":
            what = ("XNNPACK" if accelerator == "xnnpack"
                    else f"the delegate {self._delegate_library}")
            raise BackendUnavailableError(
                self.name, f"{what} took no operation of {self.bundle.label}; it would run "
                "on the built-in kernels (litert:cpu says so honestly)",
            )
        self._interpreter = interpreter
        self._input_index = interpreter.get_input_details()[0]["index"]
        self._outputs = [(d["name"], d["index"]) for d in interpreter.get_output_details()]
        # Quantized outputs come back as real values: (q - zero_point) * scale.
        self._dequantize = {
            d["name"]: (float(d["quantization"][0]), int(d["quantization"][1]))
            for d in interpreter.get_output_details()
            if np.dtype(d["dtype"]).kind in "iu" and d["quantization"][0] > 0
        }
        self._batch = int(interpreter.get_input_details()[0]["shape"][0])
        self._native_batch = self._batch
        self._can_batch = True
        self._threads = threads

    def _run(self, batch: npt.NDArray[np.generic]) -> Outputs:
        if self._interpreter is None:
            raise InferenceError(self.name, "backend is not loaded; call load() first")
        rows = batch.shape[0]
        if rows == self._native_batch or not self._can_batch:
            if rows == self._native_batch:
                return self._invoke(batch, rows)
            return self._loop(batch)
        outputs = self._invoke(batch, rows)
        if all(value.shape[:1] == (rows,) for value in outputs.values()):
            return outputs
        # Reshape ops that hard-code the batch (BlazeFace's do) fold the rows together;
        # such a model cannot batch, so run it row by row from now on.
        self._can_batch = False
        return self._loop(batch)

    def _loop(self, batch: npt.NDArray[np.generic]) -> Outputs:
        step = self._native_batch
        parts = [self._invoke(batch[i : i + step], step) for i in range(0, batch.shape[0], step)]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def _invoke(self, batch: npt.NDArray[np.generic], rows: int) -> Outputs:
        interpreter = self._interpreter
        if rows != self._batch:
            self._resize(rows)
        try:
            interpreter.set_tensor(self._input_index, batch)
            interpreter.invoke()
            outputs = {name: interpreter.get_tensor(index) for name, index in self._outputs}
        except (ValueError, RuntimeError) as exc:
            raise InferenceError(self.name, str(exc)) from exc
        for name, (scale, zero_point) in self._dequantize.items():
            outputs[name] = (outputs[name].astype(np.float32) - np.float32(zero_point)) * (
                np.float32(scale))
        return outputs

    def _resize(self, batch_size: int) -> None:
        shape = [batch_size, *self.input_spec.shape[1:]]
        try:
            self._interpreter.resize_tensor_input(self._input_index, shape)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise InferenceError(self.name, f"cannot resize input to {shape}: {exc}") from exc
        self._batch = batch_size

    def close(self) -> None:
        """Drop the interpreter (and with it the delegate)."""
        self._interpreter = None
        self._batch = 0

    def describe(self) -> BackendDescription:
        """Runtime package and version, threads, delegate library."""
        version = ""
        if self._package:
            try:
                version = importlib.import_module(self._package).__version__
            except (ImportError, AttributeError):
                version = "unknown"
        details = {"package": self._package or "not loaded"}
        if self._interpreter is not None:
            details["threads"] = str(self._threads)
        if self._delegate_library:
            details["delegate"] = self._delegate_library
        if self._interpreter is not None and self._delegated_nodes is not None:
            details["delegated_nodes"] = str(self._delegated_nodes)
        return BackendDescription(
            self.name, "litert", self.spec.accelerator, version, details
        )
