"""The model install state machine, shared by the device (which runs it) and the hub
(which reads the device's reports). Pure: records in, records out.

::

    idle -> verified -> staged -> smoke-passed -> active -> committed
              |           |            |            |
              +-----------+------------+------------+--> rolled-back
    idle -> refused                       (refused: TUF, fit or version checks failed)

``active`` is the health window: the new model serves while its error rate, latency and
escalation rate are compared with the previous model's; the previous model stays on disk
until ``committed``. A record is persisted once its step is done, and every step can be
redone safely, so after a crash :func:`resume_action` says what to do next.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal

from sync.errors import SyncError


class Step(StrEnum):
    """Where an install stands."""

    IDLE = "idle"
    VERIFIED = "verified"
    STAGED = "staged"
    SMOKE_PASSED = "smoke-passed"
    ACTIVE = "active"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled-back"
    REFUSED = "refused"


FINAL = frozenset({Step.COMMITTED, Step.ROLLED_BACK, Step.REFUSED})
ALLOWED: dict[Step, frozenset[Step]] = {
    Step.IDLE: frozenset({Step.VERIFIED, Step.REFUSED}),
    Step.VERIFIED: frozenset({Step.STAGED, Step.ROLLED_BACK}),
    Step.STAGED: frozenset({Step.SMOKE_PASSED, Step.ROLLED_BACK}),
    Step.SMOKE_PASSED: frozenset({Step.ACTIVE, Step.ROLLED_BACK}),
    Step.ACTIVE: frozenset({Step.COMMITTED, Step.ROLLED_BACK}),
}


class InvalidTransitionError(SyncError):
    """A step that may not follow the current one."""


@dataclass(frozen=True, slots=True)
class InstallRecord:
    """One install attempt of ``candidate`` over ``previous`` (``None``: first model)."""

    model: str
    previous: str | None
    candidate: str
    step: Step = Step.IDLE
    reason: str = ""
    history: tuple[tuple[str, float], ...] = field(default=())

    @property
    def finished(self) -> bool:
        """Committed, rolled back or refused."""
        return self.step in FINAL

    def to_dict(self) -> dict[str, object]:
        """Plain data, for the state file and the device's report."""
        return {"model": self.model, "previous": self.previous, "candidate": self.candidate,
                "step": self.step.value, "reason": self.reason,
                "history": [list(h) for h in self.history]}

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> InstallRecord:
        """Inverse of :meth:`to_dict`.

        Raises:
            SyncError: A field is missing or wrong.
        """
        try:
            raw_history = raw["history"]
            if not isinstance(raw_history, list):
                raise TypeError("history must be a list")
            history = tuple((str(s), float(t)) for s, t in raw_history)
            previous = raw["previous"]
            return cls(str(raw["model"]), None if previous is None else str(previous),
                       str(raw["candidate"]), Step(str(raw["step"])), str(raw["reason"]),
                       history)
        except (KeyError, TypeError, ValueError) as exc:
            raise SyncError(f"not an install record: {exc}") from exc


def advance(record: InstallRecord, step: Step, *, at: float, reason: str = "") -> InstallRecord:
    """The record after moving to ``step``.

    Raises:
        InvalidTransitionError: ``step`` may not follow ``record.step``.
    """
    if step not in ALLOWED.get(record.step, frozenset()):
        raise InvalidTransitionError(
            f"{record.model} {record.candidate}: {record.step} cannot go to {step}")
    return replace(record, step=step, reason=reason or record.reason,
                   history=(*record.history, (step.value, at)))


ResumeAction = Literal["verify", "stage", "smoke-test", "swap", "watch", "rollback", "none"]


_NEXT: dict[Step, ResumeAction] = {
    Step.IDLE: "verify", Step.VERIFIED: "stage", Step.STAGED: "smoke-test",
    Step.SMOKE_PASSED: "swap", Step.ACTIVE: "watch",
}


def resume_action(record: InstallRecord) -> ResumeAction:
    """What to do after a restart that found ``record`` as the last persisted state: the
    step after it (the step that was under way, or about to be, when the process died)."""
    return _NEXT.get(record.step, "none")


@dataclass(frozen=True, slots=True)
class HealthStats:
    """What a model did over a window: calls, failures, latency and escalations.

    ``previous_median_latency_s`` is the previous model's median latency measured side by
    side with the new one, on the same inputs in the same window; when present, latency is
    judged against it rather than against the previous model's own, earlier window, because
    a device's load (other processes, the install itself) moves both of them alike.
    """

    inferences: int
    errors: int
    median_latency_s: float
    escalations: int
    previous_median_latency_s: float | None = None

    @property
    def error_rate(self) -> float:
        """Failures per call."""
        return self.errors / self.inferences if self.inferences else 0.0

    @property
    def escalation_rate(self) -> float:
        """Escalations per call."""
        return self.escalations / self.inferences if self.inferences else 0.0


@dataclass(frozen=True, slots=True)
class HealthLimits:
    """How much worse than the previous model the new one may be."""

    min_inferences: int = 50
    max_error_rate: float = 0.01
    max_latency_ratio: float = 1.5
    max_escalation_ratio: float = 2.0
    escalation_floor: float = 0.05


def judge_health(new: HealthStats, baseline: HealthStats | None,
                 limits: HealthLimits) -> tuple[Literal["healthy", "degraded", "undecided"], str]:
    """Compare the new model's window with the previous model's."""
    if new.error_rate > limits.max_error_rate and new.errors >= 3:
        return "degraded", f"error rate {new.error_rate:.1%} over {limits.max_error_rate:.1%}"
    if new.inferences < limits.min_inferences:
        return "undecided", f"{new.inferences} of {limits.min_inferences} inferences so far"
    reference, against = new.previous_median_latency_s, " for the previous model on the same inputs"
    if reference is None and baseline is not None and baseline.inferences:
        reference, against = baseline.median_latency_s, ""
    if reference is not None and new.median_latency_s > reference * limits.max_latency_ratio:
        return "degraded", (f"median latency {new.median_latency_s * 1e3:.1f} ms against "
                            f"{reference * 1e3:.1f} ms{against}")
    if baseline is not None and baseline.inferences:
        allowed = max(baseline.escalation_rate * limits.max_escalation_ratio,
                      limits.escalation_floor)
        if new.escalation_rate > allowed:
            return "degraded", (f"escalation rate {new.escalation_rate:.1%} against "
                                f"{baseline.escalation_rate:.1%}")
    return "healthy", "within limits"
