"""Admission to judging: which stored escalations the hub judges next, and which it sheds.

Pure: no threads, no clock (time is passed in), no I/O. The ingest worker stores each
escalation first, then offers it here; its judge threads take the next one to judge.
An escalation that is not admitted, or that could no longer be judged within its
device's verdict timeout, is *shed*: the hub answers ``busy`` at once and the device
decides locally now, instead of both waiting out the timeout.

Order (:meth:`AdmissionQueue.take`):

1. **Priority class** first, strictly: ``suspicious`` (and sensor ``anomaly`` windows)
   before ``uncertain`` (and ``unexplained`` motion) before ``audit``, and before
   ``late`` events (ones that waited longer than their timeout in the device's outbox:
   the device has decided them already, a verdict only reconciles).
2. **Fair across devices** within a class: the devices with waiting events take turns
   (round robin), each device's own events in arrival order. A device flooding the hub
   delays another device's event by at most one judgement per device waiting, however
   many of its own it has queued.

The class is the device's own claim, and a device is not trusted with it: urgency is
honoured within a device's share. A device's urgent claims count against
``urgent_per_device`` while they wait (as urgent, or as normal by this rule) and once
judged, until the hub next takes a normal or lower event (the others' turn) or runs
empty; a further urgent claim while its count is reached is admitted one class lower,
as ``normal``, ahead of that device's own normal events (its turn takes its claims
first, in arrival order) but in turn with every other device. A claim is not promoted
later, and judged claims count: otherwise a device claiming everything urgent, whether
it floods or sends one claim per judgement, would always have one waiting urgent and be
judged before every other device's normal events. So such a device delays another
device's ``uncertain`` event by at most ``urgent_per_device`` judgements plus one per
device waiting (and displaces from a full queue only as a normal event would), while a
device with a backlog of routine events still has its alarm judged first. A device's
own claims are judged in arrival order within each class, so one admitted urgent may
pass its earlier claim waiting as normal.

Admission (:meth:`AdmissionQueue.offer`) is bounded by ``capacity``. When the queue is
full, a new event displaces the newest event of the *largest* device in the *lowest*
class present, if that class is lower than the new event's, or the same class and that
device holds at least two more events than the new event's device (max-min fair
shares); otherwise the new event is shed. An event whose estimated wait (the events
ahead of it in this order, at the measured judging time per event and the number of
judge threads), its judging and its answer's way out (the measured time from a
judgement to its verdict sent, recorded first, plus ``margin_s``) would end past its
deadline is shed at once. A waiting event is estimated again (its place in this
order now, the pace now) at an offer or take at least every ``review_s``, and at once
when a deadline comes: one that could no longer be judged and answered in time is shed
then, whoever's turn it is, so a device hears busy as soon as that is known, and a
flooding device's queued events are not left to wait out a round of every device.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from sync import BusyReason, EscalationReason

PriorityClass = Literal["urgent", "normal", "audit", "late"]
CLASSES: tuple[PriorityClass, ...] = ("urgent", "normal", "audit", "late")
CLASS_OF_REASON: dict[EscalationReason, PriorityClass] = {
    "suspicious": "urgent", "anomaly": "urgent",
    "uncertain": "normal", "unexplained": "normal",
    "audit": "audit",
}
_RANK = {name: rank for rank, name in enumerate(CLASSES)}

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """How much may wait, and how judging time is estimated.

    Attributes:
        capacity: Events waiting to be judged, all devices together.
        workers: Judge threads taking from the queue (waits are divided among them).
        service_s: First estimate of the time to judge one event, until measured.
        smoothing: Weight of each new measurement in the running estimates (0-1].
        margin_s: Answer this long before a device's deadline, beyond the measured time
            to send a verdict (the network and the broker on the way to the device).
        review_s: How often the waiting events' chances are estimated again (an event
            whose deadline has come is shed at once regardless).
        urgent_per_device: Urgent claims one device may have waiting, or judged since
            the hub last took a lower-class event, before its next ones wait as normal
            (see the module docstring).
    """

    capacity: int = 256
    workers: int = 1
    service_s: float = 0.05
    smoothing: float = 0.1
    margin_s: float = 0.25
    review_s: float = 0.25
    urgent_per_device: int = 2

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {self.capacity}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.service_s <= 0:
            raise ValueError(f"service_s must be positive, got {self.service_s}")
        if not 0 < self.smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing}")
        if self.margin_s < 0:
            raise ValueError(f"margin_s must not be negative, got {self.margin_s}")
        if self.review_s <= 0:
            raise ValueError(f"review_s must be positive, got {self.review_s}")
        if self.urgent_per_device < 1:
            raise ValueError(
                f"urgent_per_device must be at least 1, got {self.urgent_per_device}")


@dataclass(frozen=True, slots=True)
class Ticket(Generic[_T]):
    """One stored escalation waiting for judgement.

    Attributes:
        device_id: Whose it is (the fairness key).
        priority: Its class as claimed (an urgent claim over the device's share waits
            as normal).
        deadline: When its device stops waiting (the caller's clock); ``None``: never.
        item: What the caller needs to judge it (opaque here).
    """

    device_id: str
    priority: PriorityClass
    deadline: float | None
    item: _T


@dataclass(frozen=True, slots=True)
class Shed(Generic[_T]):
    """An event the hub will not judge now, and why (answered ``busy``)."""

    ticket: Ticket[_T]
    reason: BusyReason


@dataclass(slots=True)
class _Class(Generic[_T]):
    """One priority class: each device's events in arrival order, devices in turn."""

    by_device: OrderedDict[str, deque[Ticket[_T]]] = field(default_factory=OrderedDict)
    size: int = 0

    def push(self, ticket: Ticket[_T], *, position: int | None = None) -> None:
        """Add an event at the end of its device's, or at ``position`` (0-based)."""
        events = self.by_device.setdefault(ticket.device_id, deque())
        if position is None:
            events.append(ticket)
        else:
            events.insert(position, ticket)
        self.size += 1

    def claims(self, device_id: str, claimed: PriorityClass) -> int:
        """A device's events here claimed as ``claimed`` (they come first in its own)."""
        claims = 0
        for ticket in self.by_device.get(device_id, ()):
            if ticket.priority != claimed:
                break
            claims += 1
        return claims

    def pop_next(self) -> Ticket[_T]:
        """The first device's oldest event; that device goes to the back of the turn."""
        device_id, events = next(iter(self.by_device.items()))
        ticket = events.popleft()
        if events:
            self.by_device.move_to_end(device_id)
        else:
            del self.by_device[device_id]
        self.size -= 1
        return ticket

    def pop_newest_of(self, device_id: str) -> Ticket[_T]:
        events = self.by_device[device_id]
        ticket = events.pop()
        if not events:
            del self.by_device[device_id]
        self.size -= 1
        return ticket

    def largest(self) -> tuple[str, int]:
        """The device with the most events here, and how many (first in turn on ties)."""
        device_id = max(self.by_device, key=lambda d: len(self.by_device[d]))
        return device_id, len(self.by_device[device_id])

    def in_turn(self) -> Iterator[Ticket[_T]]:
        """The events in the order :meth:`pop_next` would take them (devices in turn)."""
        active = [list(events) for events in self.by_device.values()]
        depth = 0
        while active:
            active = [events for events in active if len(events) > depth]
            for events in active:
                yield events[depth]
            depth += 1

    def remove(self, tickets: list[Ticket[_T]]) -> None:
        """Remove these events (each one waiting here)."""
        gone = {id(ticket) for ticket in tickets}
        for device_id in list(self.by_device):
            keep = deque(t for t in self.by_device[device_id] if id(t) not in gone)
            if keep:
                self.by_device[device_id] = keep
            else:
                del self.by_device[device_id]
        self.size -= len(tickets)

    def count(self, device_id: str) -> int:
        events = self.by_device.get(device_id)
        return len(events) if events is not None else 0

    def ahead_of(self, device_id: str, position: int) -> int:
        """Events taken before a device's ``position``-th (1-based) event in round robin."""
        return sum(min(len(events), position) for other, events in self.by_device.items()
                   if other != device_id) + position - 1


class AdmissionQueue(Generic[_T]):
    """The bounded, prioritised, per-device fair queue in front of the judge threads.

    One owner at a time: the caller serialises calls (the ingest worker holds a lock).
    """

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self.service_s = limits.service_s
        self.answer_s = 0.0  # from a judgement to its verdict sent (recorded first)
        self._classes: dict[PriorityClass, _Class[_T]] = {name: _Class() for name in CLASSES}
        # Deadlines of events admitted (a heap; those taken since stay until the next
        # review): the earliest says when one may expire, without looking at each event.
        self._deadlines: list[float] = []
        # Urgent claims judged per device since the hub last took a lower-class event.
        self._urgent_taken: dict[str, int] = {}
        self._next_review = float("-inf")
        self.offered = 0
        self.admitted = 0
        self.shed: dict[BusyReason, int] = {"queue-full": 0, "deadline": 0}

    def __len__(self) -> int:
        return sum(c.size for c in self._classes.values())

    def depth(self, priority: PriorityClass) -> int:
        """Events of one class waiting."""
        return self._classes[priority].size

    def offer(self, ticket: Ticket[_T], now: float) -> list[Shed[_T]]:
        """Admit ``ticket`` if it can be judged in time and there is room (displacing a
        lower or over-share event if need be).

        Returns:
            What is shed now: ``ticket`` itself, or the event it displaced, and those
            whose deadline came while they waited.
        """
        self.offered += 1
        shed = self._expire(now)
        priority, position = self._placement(ticket)
        rank = _RANK[priority]
        if ticket.deadline is not None and (now + self._estimated_wait(
                ticket.device_id, priority, position) + self._to_answer() > ticket.deadline):
            return shed + self._shed(ticket, "deadline")
        if len(self) >= self.limits.capacity:
            victim_class = next(c for c in reversed(CLASSES) if self._classes[c].size)
            queue = self._classes[victim_class]
            device_id, count = queue.largest()
            if _RANK[victim_class] > rank or (
                    _RANK[victim_class] == rank and count >= queue.count(ticket.device_id) + 2):
                shed += self._shed(queue.pop_newest_of(device_id), "queue-full")
            else:
                return shed + self._shed(ticket, "queue-full")
            priority, position = self._placement(ticket)  # the device's own may have gone
        self._classes[priority].push(ticket, position=position)
        if ticket.deadline is not None:
            heapq.heappush(self._deadlines, ticket.deadline)
        self.admitted += 1
        return shed

    def take(self, now: float) -> tuple[Ticket[_T] | None, list[Shed[_T]]]:
        """The next event to judge, and those whose deadline passed while they waited.

        Returns:
            ``(ticket or None when nothing is waiting, shed events)``.
        """
        expired = self._expire(now)
        for name in CLASSES:
            queue = self._classes[name]
            if queue.size:
                ticket = queue.pop_next()
                if name == "urgent":
                    self._urgent_taken[ticket.device_id] = (
                        self._urgent_taken.get(ticket.device_id, 0) + 1)
                else:  # the others' turn came: every device's claims count afresh
                    self._urgent_taken.clear()
                return ticket, expired
        self._deadlines.clear()  # only those of events taken were left
        self._urgent_taken.clear()
        return None, expired

    def _expire(self, now: float) -> list[Shed[_T]]:
        """Shed every waiting event that could no longer be judged and answered in time
        at the current pace, in the order they would be taken: at once when one's
        deadline has come (or the earliest deadline says one may have), else every
        ``review_s``."""
        to_answer = self._to_answer()
        if now < self._next_review and (not self._deadlines
                                        or self._deadlines[0] >= now + to_answer):
            return []
        self._next_review = now + self.limits.review_s
        per_event = self.service_s / self.limits.workers
        ahead = 0
        expired: list[Shed[_T]] = []
        for queue in self._classes.values():
            late: list[Ticket[_T]] = []
            for ticket in queue.in_turn():
                answered_at = now + ahead * per_event + to_answer
                if ticket.deadline is not None and answered_at > ticket.deadline:
                    late.append(ticket)
                else:
                    ahead += 1  # kept: it goes before the next one
            if late:
                queue.remove(late)
                expired += [shed for ticket in late for shed in self._shed(ticket, "deadline")]
        self._deadlines = sorted(
            t.deadline for queue in self._classes.values()
            for events in queue.by_device.values() for t in events if t.deadline is not None)
        return expired

    def judged(self, seconds: float) -> None:
        """One event took ``seconds`` to judge: update the running estimate."""
        weight = self.limits.smoothing
        self.service_s = max(1e-4, (1 - weight) * self.service_s + weight * seconds)

    def answered(self, seconds: float) -> None:
        """A verdict was sent ``seconds`` after its judgement: update the running estimate
        (recording verdicts waits for the store, which intake shares).

        The estimate rises to a slower measurement at once and follows faster ones
        gradually: a verdict sent later than planned costs its device the answer, one
        planned too early only costs a judgement (the event is answered busy instead).
        """
        weight = self.limits.smoothing
        self.answer_s = max(0.0, seconds, (1 - weight) * self.answer_s + weight * seconds)

    def _to_answer(self) -> float:
        """From taking an event to its answer on the way to the device, as estimated."""
        return self.service_s + self.answer_s + self.limits.margin_s

    def _placement(self, ticket: Ticket[_T]) -> tuple[PriorityClass, int | None]:
        """Where a new event waits: its class, and its place among its device's events
        there (``None``: last). An urgent claim over the device's share (its claims
        waiting, and those judged since a lower class's turn) waits as normal, after its
        earlier such claims and before its normal events."""
        if ticket.priority != "urgent":
            return ticket.priority, None
        device_id = ticket.device_id
        over_share = self._classes["normal"].claims(device_id, "urgent")
        claims = (self._classes["urgent"].count(device_id) + over_share
                  + self._urgent_taken.get(device_id, 0))
        if claims < self.limits.urgent_per_device:
            return "urgent", None
        return "normal", over_share

    def _estimated_wait(self, device_id: str, priority: PriorityClass,
                        position: int | None) -> float:
        rank = _RANK[priority]
        higher = sum(self._classes[c].size for c in CLASSES[:rank])
        queue = self._classes[priority]
        place = (queue.count(device_id) if position is None else position) + 1
        ahead = higher + queue.ahead_of(device_id, place)
        return ahead * self.service_s / self.limits.workers

    def _shed(self, ticket: Ticket[_T], reason: BusyReason) -> list[Shed[_T]]:
        self.shed[reason] += 1
        return [Shed(ticket, reason)]


def answer_deadline(*, captured_at: float, arrived_at: float,
                    timeout_s: float) -> float | None:
    """When an escalation's device stops waiting for its answer, on the hub's clock;
    ``None`` when it stopped already (it has decided locally: the event is ``late``).

    The device's verdict timeout runs from its capture, so the time the event spent
    before the hub received it (the device's outbox, the network, the broker's queue in
    front of a busy hub) is spent already: ``arrived_at - captured_at``. That difference
    is read off the device's clock, which the hub does not trust to give it anything: a
    capture time in the hub's future counts as no time spent (no device buys more than its
    timeout from arrival, however its clock is set), and a clock running behind only
    shortens the device's own deadlines.

    Args:
        captured_at: When the device captured it (the device's clock).
        arrived_at: When the hub received it (the hub's clock).
        timeout_s: The device's verdict timeout.
    """
    spent = max(0.0, arrived_at - captured_at)
    return None if spent > timeout_s else arrived_at - spent + timeout_s


def priority_of(reason: EscalationReason, *, late: bool) -> PriorityClass:
    """An escalation's class: by its reason, or ``late`` when its device has already
    decided it locally (it waited in the outbox longer than its verdict timeout)."""
    return "late" if late else CLASS_OF_REASON[reason]
