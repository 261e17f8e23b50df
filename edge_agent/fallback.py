"""Escalations waiting for a verdict, the local fallback, and late-verdict reconciliation.

Pure: the caller passes the time. An escalation is *pending* until its verdict arrives or
its deadline passes; then the caller applies the local decision and the entry moves to a
bounded memory of fallbacks, so that a verdict arriving later can be reconciled.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, TypeVar

from models import Box

_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class Pending:
    """One escalation awaiting its verdict."""

    event_id: str
    source: str
    positive: bool
    escalated_at: float
    deadline: float
    boxes: tuple[Box, ...] = ()


@dataclass(frozen=True, slots=True)
class Resolution:
    """How a verdict met its escalation.

    Attributes:
        kind: ``on-time`` (before the deadline), ``late`` (after the local fallback ran),
            ``duplicate`` (already resolved) or ``unknown`` (not ours, or long forgotten).
        agrees: For ``late``: whether the hub agrees with what the edge decided alone.
    """

    kind: Literal["on-time", "late", "duplicate", "unknown"]
    pending: Pending | None
    agrees: bool | None = None


class PendingVerdicts:
    """Bookkeeping for escalations in flight; not thread-safe (one owner)."""

    def __init__(self, timeout_s: float, *, remember: int = 10_000) -> None:
        self.timeout_s = timeout_s
        self._remember = remember
        self._pending: OrderedDict[str, Pending] = OrderedDict()
        self._fell_back: OrderedDict[str, Pending] = OrderedDict()
        self._resolved: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, event_id: str, source: str, positive: bool, now: float,
            boxes: tuple[Box, ...] = ()) -> Pending:
        """Start waiting for ``event_id``'s verdict (``boxes``: what the edge saw)."""
        entry = Pending(event_id, source, positive, now, now + self.timeout_s, boxes)
        self._pending[event_id] = entry
        return entry

    def waiting_for(self, source: str) -> bool:
        """Whether an escalation of ``source`` still waits for its verdict."""
        return any(entry.source == source for entry in self._pending.values())

    def restore(self, entry: Pending, *, fell_back: bool) -> None:
        """Wait again for an escalation made before a restart (or remember its fallback).

        Restored entries may have earlier deadlines than those already waiting, so the
        table is kept in deadline order.
        """
        if fell_back:
            self._remember_in(self._fell_back, entry.event_id, entry)
            return
        self._pending[entry.event_id] = entry
        self._pending = OrderedDict(sorted(self._pending.items(), key=lambda kv: kv[1].deadline))

    def give_up(self, event_id: str) -> Pending | None:
        """The hub will never see ``event_id`` (dropped before delivery): fall back now."""
        entry = self._pending.pop(event_id, None)
        if entry is not None:
            self._remember_in(self._fell_back, event_id, entry)
        return entry

    def expire(self, now: float) -> list[Pending]:
        """Escalations whose deadline has passed: apply the local decision for these."""
        expired = []
        while self._pending:
            event_id, entry = next(iter(self._pending.items()))
            if entry.deadline > now:
                break  # deadlines are added in time order
            del self._pending[event_id]
            self._remember_in(self._fell_back, event_id, entry)
            expired.append(entry)
        return expired

    def resolve(self, event_id: str, confirmed: bool) -> Resolution:
        """Match a verdict (``confirmed`` = the hub saw what the edge escalated)."""
        if event_id in self._resolved:
            return Resolution("duplicate", None)
        entry = self._pending.pop(event_id, None)
        if entry is not None:
            self._remember_in(self._resolved, event_id, None)
            return Resolution("on-time", entry)
        entry = self._fell_back.pop(event_id, None)
        if entry is not None:
            self._remember_in(self._resolved, event_id, None)
            return Resolution("late", entry, agrees=entry.positive == confirmed)
        return Resolution("unknown", None)

    def _remember_in(self, table: OrderedDict[str, _V], key: str, value: _V) -> None:
        table[key] = value
        while len(table) > self._remember:
            table.popitem(last=False)
