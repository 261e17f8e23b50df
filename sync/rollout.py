"""Staged rollouts: canary devices first, then the rest; halt on failures. Pure.

A rollout sends one model version to one device group in waves. The first wave is the
canary share; the next wave starts when every device of the current one has reported an
outcome and no more than ``max_failure_share`` of them failed (rolled back, or refused
the update). Past that share the rollout halts: no further device is targeted.

An operator may pause a running rollout (the devices already targeted go on installing and
their reports are kept, but no further wave starts until it is resumed) or cancel it (as a
halt: no device that has not reported is targeted any more). A rollout that is completed,
halted, cancelled or rolled back is final: pausing, resuming or cancelling it is refused
with :class:`RolloutStateError`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, cast, get_args

from sync.errors import RolloutStateError, SyncError

RolloutStatus = Literal["running", "paused", "halted", "cancelled", "completed",
                        "rolled-back"]
#: A rollout in one of these states changes no more.
FINAL_STATUSES = frozenset({"halted", "cancelled", "completed", "rolled-back"})
#: Statuses in which devices' outcomes are still taken into account.
LIVE_STATUSES = frozenset({"running", "paused"})
FAILED_STEPS = frozenset({"rolled-back", "refused"})
FINAL_STEPS = FAILED_STEPS | {"committed"}


@dataclass(frozen=True, slots=True)
class Rollout:
    """One model version going out to one group."""

    id: str
    model: str
    version: str
    group: str
    waves: tuple[tuple[str, ...], ...]
    wave: int = 0
    status: RolloutStatus = "running"
    max_failure_share: float = 0.2
    results: tuple[tuple[str, str], ...] = ()
    reason: str = ""

    @property
    def targeted(self) -> tuple[str, ...]:
        """Devices allowed to install now (every wave started so far)."""
        if self.status in ("halted", "cancelled", "rolled-back"):
            return tuple(d for wave in self.waves[: self.wave + 1] for d in wave
                         if d in dict(self.results))
        return tuple(d for wave in self.waves[: self.wave + 1] for d in wave)

    def outcome(self, device: str) -> str | None:
        """A device's final step, if it reported one."""
        return dict(self.results).get(device)

    def to_dict(self) -> dict[str, object]:
        """Plain data for the API and the store."""
        return {"id": self.id, "model": self.model, "version": self.version,
                "group": self.group, "waves": [list(w) for w in self.waves],
                "wave": self.wave, "status": self.status,
                "max_failure_share": self.max_failure_share,
                "results": dict(self.results), "reason": self.reason}

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> Rollout:
        """Inverse of :meth:`to_dict`.

        Raises:
            SyncError: A field is missing or wrong.
        """
        try:
            waves, results, status = raw["waves"], raw["results"], raw["status"]
            if not (isinstance(waves, list) and all(isinstance(w, list) for w in waves)
                    and isinstance(results, dict)):
                raise TypeError("waves must be lists of devices and results an object")
            if status not in get_args(RolloutStatus):
                raise ValueError(f"unknown status {status!r}")
            wave, share = raw["wave"], raw["max_failure_share"]
            if not isinstance(wave, int) or not isinstance(share, int | float):
                raise TypeError("wave and max_failure_share must be numbers")
            return cls(str(raw["id"]), str(raw["model"]), str(raw["version"]),
                       str(raw["group"]), tuple(tuple(str(d) for d in w) for w in waves),
                       wave, cast(RolloutStatus, status), float(share),
                       tuple((str(d), str(s)) for d, s in results.items()),
                       str(raw["reason"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SyncError(f"not a rollout: {exc}") from exc


def plan_waves(devices: Sequence[str], canary_percent: float,
               version: str) -> tuple[tuple[str, ...], ...]:
    """Canary wave and the rest. Canaries are chosen by a hash of device and version, so
    that each release spreads its risk over different devices."""
    if not devices:
        return ()
    ordered = sorted(devices, key=lambda d: hashlib.sha256(f"{version}/{d}".encode()).digest())
    canaries = max(1, math.ceil(len(ordered) * canary_percent / 100.0))
    waves = (tuple(sorted(ordered[:canaries])), tuple(sorted(ordered[canaries:])))
    return tuple(w for w in waves if w)


def start(*, rollout_id: str, model: str, version: str, group: str, devices: Sequence[str],
          canary_percent: float, max_failure_share: float = 0.2) -> Rollout:
    """A new rollout, its first wave targeted."""
    waves = plan_waves(devices, canary_percent, version)
    status: RolloutStatus = "running" if waves else "completed"
    return Rollout(rollout_id, model, version, group, waves, status=status,
                   max_failure_share=max_failure_share)


def on_report(rollout: Rollout, device: str, step: str) -> Rollout:
    """Take a device's install step into account; advance or halt the rollout (a paused
    one keeps the outcome, and may halt, but starts no wave)."""
    if rollout.status not in LIVE_STATUSES or step not in FINAL_STEPS:
        return rollout
    if device not in rollout.targeted or rollout.outcome(device) is not None:
        return rollout
    return _progress(replace(rollout, results=(*rollout.results, (device, step))))


def _progress(rollout: Rollout) -> Rollout:
    """Halt past the failure share; once the current wave has all reported, start the next
    one (only while running) or complete."""
    wave = rollout.waves[rollout.wave]
    outcomes = [rollout.outcome(d) for d in wave]
    failed = sum(o in FAILED_STEPS for o in outcomes)
    if failed / len(wave) > rollout.max_failure_share:
        return replace(rollout, status="halted",
                       reason=f"{failed} of {len(wave)} devices in wave {rollout.wave + 1} "
                              "failed or rolled back")
    if any(o is None for o in outcomes) or rollout.status != "running":
        return rollout
    if rollout.wave + 1 < len(rollout.waves):
        return replace(rollout, wave=rollout.wave + 1)
    return replace(rollout, status="completed")


def roll_back(rollout: Rollout, reason: str) -> Rollout:
    """Stop the rollout on command; the hub then ships the previous model again."""
    return replace(rollout, status="rolled-back", reason=reason)


def pause(rollout: Rollout) -> Rollout:
    """Start no further wave until :func:`resume`.

    Raises:
        RolloutStateError: The rollout is not running.
    """
    if rollout.status == "paused":
        return rollout
    _require(rollout, "running", "pause")
    return replace(rollout, status="paused")


def resume(rollout: Rollout) -> Rollout:
    """Go on where :func:`pause` stopped: a wave that finished meanwhile moves on at once.

    Raises:
        RolloutStateError: The rollout is not paused.
    """
    if rollout.status == "running":
        return rollout
    _require(rollout, "paused", "resume")
    return _progress(replace(rollout, status="running"))


def cancel(rollout: Rollout, reason: str) -> Rollout:
    """Stop the rollout where it is: devices that reported keep what they installed, no
    other device is targeted any more.

    Raises:
        RolloutStateError: The rollout is final already.
    """
    if rollout.status == "cancelled":
        return rollout
    if rollout.status in FINAL_STATUSES:
        raise RolloutStateError(rollout.id, rollout.status, "cancel")
    return replace(rollout, status="cancelled", reason=reason)


def _require(rollout: Rollout, status: RolloutStatus, action: str) -> None:
    if rollout.status != status:
        raise RolloutStateError(rollout.id, rollout.status, action)
