"""Prove the plan's candidates one by one and keep the first that really works.

A candidate is proven by loading the model and running a warm-up inference on a tensor
built from the model's own input spec; it must return finite numbers. A failure of any
kind is recorded with its reason, and the next candidate is tried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from hardware.errors import NoBackendError, UnknownBackendError
from hardware.plan import BackendPlan, PlannedBackend
from models import Backend, BackendDescription, BackendSpec, Model, ModelBundle, ModelError
from models.backends import create_backend
from models.errors import InferenceError
from models.golden import golden_input

log = logging.getLogger(__name__)

BackendFactory = Callable[[ModelBundle, BackendSpec], Backend]


@dataclass(frozen=True, slots=True)
class SkippedBackend:
    """A candidate that did not make it, and why."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class Selection:
    """Which backend serves a model, and what was tried before it."""

    chosen: str
    description: BackendDescription
    skipped: tuple[SkippedBackend, ...]
    plan: BackendPlan

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` output."""
        return {
            "chosen": self.chosen,
            "runtime_version": self.description.runtime_version,
            "details": dict(self.description.details),
            "skipped": [{"backend": s.name, "reason": s.reason} for s in self.skipped],
        }


def load_model(
    bundle: ModelBundle,
    plan: BackendPlan,
    *,
    only: str | None = None,
    factory: BackendFactory = create_backend,
) -> tuple[Model, Selection]:
    """Load ``bundle`` on the first candidate of ``plan`` that proves itself.

    Args:
        only: Restrict to candidates named ``engine:accelerator`` or of engine ``engine``.
        factory: Builds a backend from a spec; tests pass one that makes fakes.

    Raises:
        UnknownBackendError: ``only`` matches no candidate.
        NoBackendError: Every candidate failed; the error lists each reason.
    """
    candidates = _restrict(plan, only)
    skipped: list[SkippedBackend] = []
    probe = golden_input(bundle)
    for candidate in candidates:
        backend: Backend | None = None
        try:
            backend = factory(bundle, candidate.spec)
            backend.load()
            _prove(backend, probe)
        except ModelError as exc:
            reason = str(exc)
            prefix = f"{candidate.name}: "
            reason = reason.removeprefix(prefix)
            if backend is not None:
                backend.close()
            log.warning("skipping backend %s for %s: %s", candidate.name, bundle.label, reason)
            skipped.append(SkippedBackend(candidate.name, reason))
            continue
        selection = Selection(candidate.name, backend.describe(), tuple(skipped), plan)
        log.info("%s runs on %s", bundle.label, candidate.name)
        return Model(bundle, backend), selection
    raise NoBackendError(bundle.label, [(s.name, s.reason) for s in skipped])


def _restrict(plan: BackendPlan, only: str | None) -> tuple[PlannedBackend, ...]:
    if only is None:
        return plan.candidates
    chosen = tuple(c for c in plan.candidates if only in (c.name, c.spec.engine))
    if not chosen:
        raise UnknownBackendError(only, plan.names)
    return chosen


def _prove(backend: Backend, probe: npt.NDArray[np.generic]) -> None:
    outputs = backend.infer(probe)
    if not outputs:
        raise InferenceError(backend.name, "warm-up returned no outputs")
    for name, value in outputs.items():
        array = np.asarray(value)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            raise InferenceError(
                backend.name, f"warm-up output {name!r} has {bad} non-finite values"
            )
