"""Errors raised by hardware detection and backend selection.

Hierarchy::

    HardwareError               anything this package refuses
    ├── UnknownBackendError     a backend name that is not in the model's plan
    └── NoBackendError          every planned backend failed; ``attempts`` says why
"""

from __future__ import annotations

from collections.abc import Sequence


class HardwareError(Exception):
    """Base of every error this package raises."""


class UnknownBackendError(HardwareError):
    """The requested backend is not in the plan for this model on this machine.

    Attributes:
        requested: The name asked for.
        available: Names in the plan.
    """

    def __init__(self, requested: str, available: Sequence[str]) -> None:
        self.requested = requested
        self.available = tuple(available)
        super().__init__(
            f"backend {requested!r} is not planned for this model here; "
            f"choose one of: {', '.join(available) or '(none)'}"
        )


class NoBackendError(HardwareError):
    """No planned backend could load and run the model.

    Attributes:
        model: ``name@version`` of the model.
        attempts: ``(backend name, reason)`` for each backend tried, in order.
    """

    def __init__(self, model: str, attempts: Sequence[tuple[str, str]]) -> None:
        self.model = model
        self.attempts = tuple(attempts)
        tried = "; ".join(f"{name}: {reason}" for name, reason in attempts) or "nothing to try"
        super().__init__(f"no backend can run {model} ({tried})")
