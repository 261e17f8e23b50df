"""The backend seam: load a verified model, run batches on it, describe it, close it."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from models.bundle import ModelBundle
from models.errors import InputSpecError
from models.manifest import InputSpec

Engine = Literal["litert", "onnxruntime", "fake"]
Outputs = dict[str, npt.NDArray[np.generic]]


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """Which runtime and accelerator to run a model on, and how.

    Attributes:
        engine: ``litert`` (TFLite models) or ``onnxruntime`` (ONNX models).
        accelerator: For LiteRT ``edgetpu``, ``gpu``, ``xnnpack`` or ``cpu``; for ONNX
            Runtime ``tensorrt``, ``cuda``, ``openvino``, ``acl``, ``armnn``, ``xnnpack``,
            ``cpu``.
        threads: CPU threads for the interpreter or session; ``None`` lets the runtime choose.
        options: Engine-specific settings, such as a delegate library path or provider options.
    """

    engine: Engine
    accelerator: str
    threads: int | None = None
    options: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        """``engine:accelerator``, the name users pass to ``--backend``."""
        return f"{self.engine}:{self.accelerator}"

    def option(self, key: str, default: str | None = None) -> str | None:
        """Value of one entry of ``options``."""
        return dict(self.options).get(key, default)


@dataclass(frozen=True, slots=True)
class BackendDescription:
    """What a loaded backend really runs on, for users and logs."""

    name: str
    engine: str
    accelerator: str
    runtime_version: str
    details: dict[str, str] = field(default_factory=dict)


class Backend(abc.ABC):
    """Runs one model on one runtime.

    The constructor stores configuration and does no I/O; :meth:`load` reads and verifies
    the model and builds the runtime objects. :meth:`infer` checks every batch against
    the manifest's input spec before the runtime sees it, so a wrong tensor is a clear
    :class:`InputSpecError`, never a crash inside native code.
    """

    def __init__(self, bundle: ModelBundle, spec: BackendSpec) -> None:
        self.bundle = bundle
        self.spec = spec
        self.input_spec: InputSpec = bundle.manifest.input
        self._dtype = np.dtype(self.input_spec.dtype)
        self._row_shape = tuple(self.input_spec.shape[1:])

    @property
    def name(self) -> str:
        """``engine:accelerator``."""
        return self.spec.name

    @abc.abstractmethod
    def load(self) -> None:
        """Read the verified model bytes and build the runtime session.

        Raises:
            BackendUnavailableError: The runtime or accelerator is missing here.
            BackendLoadError: The runtime refused the model.
            IntegrityError: The model file no longer matches its manifest.
        """

    def infer(self, batch: npt.NDArray[np.generic]) -> Outputs:
        """Run a batch (first axis) and return every output by name.

        Raises:
            InputSpecError: ``batch`` has the wrong type, dtype or shape.
            InferenceError: The runtime failed.
        """
        if not isinstance(batch, np.ndarray):
            raise InputSpecError(f"input must be a numpy array, got {type(batch).__name__}")
        if batch.dtype != self._dtype:
            raise InputSpecError(
                f"input dtype {batch.dtype} does not match the model's {self._dtype}"
            )
        if batch.ndim != len(self.input_spec.shape) or batch.shape[1:] != self._row_shape:
            expected = ", ".join(["N", *map(str, self._row_shape)])
            raise InputSpecError(
                f"input shape {list(batch.shape)} does not match the model's [{expected}] "
                f"({self.input_spec.layout})"
            )
        if batch.shape[0] < 1:
            raise InputSpecError("input batch is empty")
        return self._run(batch)

    @abc.abstractmethod
    def _run(self, batch: npt.NDArray[np.generic]) -> Outputs:
        """Run an already validated batch."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the runtime; the backend may be loaded again afterwards."""

    @abc.abstractmethod
    def describe(self) -> BackendDescription:
        """What this backend runs on, once loaded."""
