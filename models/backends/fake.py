"""A backend whose answers come from a handler: for unit tests of selection and pipelines."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from models.backends.base import Backend, BackendDescription, BackendSpec, Outputs
from models.bundle import ModelBundle
from models.errors import BackendLoadError

Handler = Callable[[npt.NDArray[np.generic]], Outputs]


class FakeBackend(Backend):
    """Calls ``handler(batch)`` instead of a runtime.

    Args:
        load_error: If set, :meth:`load` raises :class:`BackendLoadError` with this reason.
    """

    def __init__(
        self, bundle: ModelBundle, spec: BackendSpec, handler: Handler,
        *, load_error: str | None = None,
    ) -> None:
        super().__init__(bundle, spec)
        self._handler = handler
        self._load_error = load_error
        self.loaded = False
        self.calls = 0

    def load(self) -> None:
        """Fail with ``load_error`` if one was given, else mark loaded."""
        if self._load_error is not None:
            raise BackendLoadError(self.name, self._load_error)
        self.loaded = True

    def _run(self, batch: npt.NDArray[np.generic]) -> Outputs:
        self.calls += 1
        return self._handler(batch)

    def close(self) -> None:
        """Mark unloaded."""
        self.loaded = False

    def describe(self) -> BackendDescription:
        """Describe the fake."""
        return BackendDescription(self.name, self.spec.engine, self.spec.accelerator, "fake")
