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

Latency is judged only on paired samples (:func:`compare_latency`): the previous model
runs on the same input right after the new one, and a sign test on the pairs says, with a
stated confidence, whether the new model is more than ``max_latency_ratio`` times slower,
or not. Load on the device slows both sides of a pair alike, so a busy device fails no
good update; a window too short or too noisy for a verdict keeps watching, up to its
bound, and then does not hold the update back on latency.
"""

from __future__ import annotations

import math
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

    ``latency_pairs_s`` holds, oldest first, ``(new, previous)`` latencies of the two
    models on the same input, the previous one run right after the new one (side by side),
    so that both are measured under the same load.
    """

    inferences: int
    errors: int
    median_latency_s: float
    escalations: int
    latency_pairs_s: tuple[tuple[float, float], ...] = ()

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
    """How much worse than the previous model the new one may be, and how sure the latency
    judgement must be (see :func:`compare_latency`)."""

    min_inferences: int = 50
    max_error_rate: float = 0.01
    max_latency_ratio: float = 1.5
    max_escalation_ratio: float = 2.0
    escalation_floor: float = 0.05
    latency_confidence: float = 0.99
    min_latency_pairs: int = 20
    max_latency_pairs: int = 320

    def __post_init__(self) -> None:
        if not 0.5 < self.latency_confidence < 1:
            raise ValueError(f"latency_confidence {self.latency_confidence} is not in (0.5, 1)")
        if not 1 <= self.min_latency_pairs <= self.max_latency_pairs:
            raise ValueError(f"latency pairs: min {self.min_latency_pairs} and max "
                             f"{self.max_latency_pairs} must satisfy 1 <= min <= max")

    @property
    def latency_looks(self) -> tuple[int, ...]:
        """The numbers of pairs at which latency is tested: the minimum, doubled up to the
        maximum, and the maximum itself."""
        looks = [self.min_latency_pairs]
        while looks[-1] * 2 <= self.max_latency_pairs:
            looks.append(looks[-1] * 2)
        if looks[-1] != self.max_latency_pairs:
            looks.append(self.max_latency_pairs)
        return tuple(looks)


LatencyVerdict = Literal["slower", "within", "watching", "inconclusive", "unpaired"]


@dataclass(frozen=True, slots=True)
class LatencyJudgement:
    """The outcome of :func:`compare_latency`, with the figures behind it."""

    verdict: LatencyVerdict
    reason: str


def _at_least(successes: int, trials: int) -> float:
    """P(X >= successes) for X ~ Binomial(trials, 1/2)."""
    return sum(math.comb(trials, k) for k in range(successes, trials + 1)) / (1 << trials)


def compare_latency(pairs: tuple[tuple[float, float], ...],
                    limits: HealthLimits) -> LatencyJudgement:
    """Whether the new model is more than ``max_latency_ratio`` times slower than the
    previous one, from paired samples, with ``latency_confidence``.

    A sign test on the pairs, which assumes nothing about how latency is distributed (a
    preempted inference is an outlier of any size): if the median of new/previous were
    at most the ratio, a pair would exceed it with probability at most 1/2, so many more
    than half exceeding it is evidence of a slower model; many fewer, of one within the
    limit. The test is made only at :attr:`HealthLimits.latency_looks` (the first so many
    pairs), each at ``(1 - latency_confidence) / len(looks)``, so that looking again as
    pairs arrive keeps the overall chance of a wrong verdict within the stated bound
    (Bonferroni). Before the first look: ``watching``; after the last without a verdict:
    ``inconclusive``; no pairs at all (no side-by-side run): ``unpaired``.
    """
    if not pairs:
        return LatencyJudgement("unpaired", "latency not judged: no paired samples")
    looks = limits.latency_looks
    taken = [look for look in looks if look <= len(pairs)]
    if not taken:
        return LatencyJudgement(
            "watching", f"{len(pairs)} of {looks[0]} paired latency samples so far")
    size, alpha = taken[-1], (1 - limits.latency_confidence) / len(looks)
    ratio = limits.max_latency_ratio
    over = sum(new > ratio * previous for new, previous in pairs[:size])
    median = sorted(new / previous if previous > 0 else math.inf
                    for new, previous in pairs[:size])[size // 2]
    figures = (f"{over} of {size} inferences over {ratio:g}x the previous model on the "
               f"same inputs, median ratio {median:.2f}")
    if _at_least(over, size) <= alpha:
        return LatencyJudgement("slower", f"latency over {ratio:g}x with "
                                          f"{limits.latency_confidence:.0%} confidence "
                                          f"({figures})")
    if _at_least(size - over, size) <= alpha:
        return LatencyJudgement("within", f"latency within {ratio:g}x ({figures})")
    if size == looks[-1]:
        return LatencyJudgement("inconclusive", f"latency not judged: no verdict at "
                                                f"{limits.latency_confidence:.0%} confidence "
                                                f"({figures})")
    return LatencyJudgement("watching", f"no latency verdict yet ({figures})")


def judge_health(new: HealthStats, baseline: HealthStats | None, limits: HealthLimits, *,
                 window_closed: bool = False,
                 ) -> tuple[Literal["healthy", "degraded", "undecided"], str]:
    """Compare the new model's window with the previous model's.

    ``undecided`` means keep watching; once the window is closed (its time is up) there is
    no more of it: too few inferences or no latency verdict then hold nothing back.
    """
    if new.error_rate > limits.max_error_rate and new.errors >= 3:
        return "degraded", f"error rate {new.error_rate:.1%} over {limits.max_error_rate:.1%}"
    if new.inferences < limits.min_inferences and not window_closed:
        return "undecided", f"{new.inferences} of {limits.min_inferences} inferences so far"
    latency = compare_latency(new.latency_pairs_s, limits)
    if latency.verdict == "slower":
        return "degraded", latency.reason
    if baseline is not None and baseline.inferences:
        allowed = max(baseline.escalation_rate * limits.max_escalation_ratio,
                      limits.escalation_floor)
        if new.escalation_rate > allowed:
            return "degraded", (f"escalation rate {new.escalation_rate:.1%} against "
                                f"{baseline.escalation_rate:.1%}")
    if latency.verdict == "watching" and not window_closed:
        return "undecided", latency.reason
    return "healthy", f"within limits; {latency.reason}"
