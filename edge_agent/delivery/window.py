"""The delivery window: which stored escalations to publish now, pure and clocked by the caller.

An escalation goes through these states in the window (by its outbox ``seq``)::

    stored ──publish──> on the wire ──PUBACK ok──> awaiting receipt ──receipt──> confirmed
      ^                     │                           │
      └── retry due <───────┴─ PUBACK failed / timeout ─┘

* **On the wire**: published, no PUBACK yet (at most ``max_inflight``).
* **Awaiting receipt**: the broker took it; the hub has not yet said that it stored it.
  A PUBACK is only the broker's word: it drops a message that no subscription matches
  (reason code 16), whose subscriber's queue is full, or that it had not saved when it
  died. Only the hub's receipt (or its verdict) confirms an escalation.
* **Retry due**: a failed PUBACK (any reason code but 0, 16 included) or no receipt in
  time: published again after a backoff that doubles per attempt. The hub stores each
  event id once, so a second copy costs bytes, never a duplicate.

Publishing is paced by a token bucket that holds only ``burst_s`` of the rate (a backlog
drains at the configured rate from its first second) and serves, in order: retries that
are due, live events (just stored, in memory, within their verdict timeout), then the
backlog read from the database, oldest first. At most ``max_unconfirmed`` escalations
are out at once.

The hub's ``busy`` answers slow the pace (:meth:`DeliveryWindow.busy`): each halves the
rate, down to ``min_rate_per_s``, and holds it for the time the hub asks; after that
the rate doubles every ``recovery_s`` back up to ``rate_per_s``. A returning device thus
drains its backlog as fast as the hub takes it, not at its configured burst.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class WindowLimits:
    """How much may be out, how fast, and how long to wait for the hub.

    Attributes:
        max_inflight: Published without a PUBACK yet.
        max_unconfirmed: Published without a receipt yet (PUBACK or not).
        rate_per_s: Publishes per second, live and backlog together.
        burst_s: The bucket holds this many seconds of tokens (at least one).
        receipt_timeout_s: No receipt after this long: publish again.
        retry_first_s: First backoff after a failed PUBACK or a timeout.
        retry_max_s: Longest backoff.
        live_memory: Live events kept in memory for publishing; beyond it they wait in
            the database with the backlog.
        min_rate_per_s: The slowest the hub's ``busy`` answers make the pace.
        recovery_s: Once the hub's asked slow-down has passed, the rate doubles every
            this many seconds until it is back at ``rate_per_s``.
    """

    max_inflight: int = 100
    max_unconfirmed: int = 2000
    rate_per_s: float = 500.0
    burst_s: float = 0.1
    receipt_timeout_s: float = 30.0
    retry_first_s: float = 1.0
    retry_max_s: float = 300.0
    live_memory: int = 4096
    min_rate_per_s: float = 1.0
    recovery_s: float = 2.0

    def __post_init__(self) -> None:
        if self.max_inflight < 1 or self.max_unconfirmed < self.max_inflight:
            raise ValueError("need 1 <= max_inflight <= max_unconfirmed")
        if self.rate_per_s <= 0 or self.burst_s <= 0 or self.receipt_timeout_s <= 0:
            raise ValueError("rate_per_s, burst_s and receipt_timeout_s must be positive")
        if not 0 < self.retry_first_s <= self.retry_max_s:
            raise ValueError("need 0 < retry_first_s <= retry_max_s")
        if not 0 < self.min_rate_per_s <= self.rate_per_s or self.recovery_s <= 0:
            raise ValueError("need 0 < min_rate_per_s <= rate_per_s and recovery_s > 0")

    def bucket(self, rate_per_s: float) -> float:
        """Tokens the bucket holds when full, at ``rate_per_s``."""
        return max(1.0, rate_per_s * self.burst_s)


@dataclass(slots=True)
class _Out:
    seq: int
    event_id: str
    cost: int
    mid: int | None  # on the wire while set
    due: float  # receipt deadline, or when to retry
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class Plan:
    """What to publish this turn.

    Attributes:
        retry: Seqs to read back from the database and publish again.
        live: Seqs of live events (held in memory by the caller) to publish.
        backlog: How many more to read from the database after :attr:`DeliveryWindow.cursor`.
    """

    retry: tuple[int, ...] = ()
    live: tuple[int, ...] = ()
    backlog: int = 0

    @property
    def empty(self) -> bool:
        """Nothing to publish."""
        return not (self.retry or self.live or self.backlog)


@dataclass(slots=True)
class DeliveryWindow:
    """The sender's whole state; one owner (the uplink thread), no I/O, time passed in."""

    limits: WindowLimits
    cursor: int = 0  # the backlog has been read up to this seq
    backlog: bool = True  # the database may hold events not yet read
    _out: dict[int, _Out] = field(default_factory=dict)  # by seq
    _by_mid: dict[int, int] = field(default_factory=dict)
    _by_id: dict[str, int] = field(default_factory=dict)
    _timers: list[tuple[float, int]] = field(default_factory=list)  # (due, seq) heap
    _retry: deque[int] = field(default_factory=deque)
    _live: deque[int] = field(default_factory=deque)
    _live_set: set[int] = field(default_factory=set)
    _tokens: float = 1.0
    _tokens_at: float | None = None
    _rate: float | None = None  # the pace now (None: the configured rate)
    _slow_until: float = 0.0

    # -- what the caller tells the window --------------------------------------------

    def stored(self, seqs: list[int]) -> list[int]:
        """Events just committed; returns those the caller should keep in memory as live
        (the rest wait in the database: the backlog will read them)."""
        room = self.limits.live_memory - len(self._live)
        keep = seqs[: max(0, room)]
        if len(keep) < len(seqs):
            self.backlog = True
        self._live.extend(keep)
        self._live_set.update(keep)
        return keep

    def published(self, seq: int, event_id: str, cost: int, mid: int, now: float) -> None:
        """``seq`` went to paho as message ``mid``."""
        previous = self._out.get(seq)
        if previous is not None and previous.mid is not None:
            self._by_mid.pop(previous.mid, None)
        attempts = previous.attempts + 1 if previous is not None else 1
        entry = _Out(seq, event_id, cost, mid, now + self.limits.receipt_timeout_s, attempts)
        self._out[seq] = entry
        self._by_mid[mid] = seq
        self._by_id[event_id] = seq
        heapq.heappush(self._timers, (entry.due, seq))
        if not self.backlog:  # while a backlog is read, the cursor is the read position
            self.cursor = max(self.cursor, seq)
        self._tokens -= 1

    def puback(self, mid: int, ok: bool, now: float) -> int | None:
        """A PUBACK for ``mid``; returns the seq it was for (``None``: stale or unknown).

        A failure keeps the event and schedules it again after a backoff.
        """
        seq = self._by_mid.pop(mid, None)
        if seq is None:
            return None
        entry = self._out[seq]
        entry.mid = None
        if ok:
            entry.due = now + self.limits.receipt_timeout_s
        else:
            entry.due = now + self._backoff(entry.attempts)
        heapq.heappush(self._timers, (entry.due, seq))
        return seq

    def confirm(self, event_ids: list[str]) -> tuple[list[tuple[int, int]], list[str]]:
        """The hub has these events: ``((seq, cost) known to the window, unknown ids)``.

        Unknown ids are events the window has not published in this process (after a
        restart, say): the caller deletes them from the database by id.
        """
        known: list[tuple[int, int]] = []
        unknown: list[str] = []
        for event_id in event_ids:
            seq = self._by_id.pop(event_id, None)
            if seq is None:
                unknown.append(event_id)
                continue
            entry = self._out.pop(seq, None)
            if entry is None:
                continue
            if entry.mid is not None:
                self._by_mid.pop(entry.mid, None)
            known.append((seq, entry.cost))
            self._live_set.discard(seq)
        return known, unknown

    def forget(self, seqs: list[int]) -> None:
        """Events that left the database another way (evicted, expired, confirmed by id)."""
        for seq in seqs:
            entry = self._out.pop(seq, None)
            if entry is not None:
                self._by_id.pop(entry.event_id, None)
                if entry.mid is not None:
                    self._by_mid.pop(entry.mid, None)
            self._live_set.discard(seq)

    def busy(self, now: float, retry_after_s: float) -> None:
        """The hub answered ``busy``: halve the pace and hold it for ``retry_after_s``."""
        self._refill(now)
        self._rate = max(self.limits.min_rate_per_s, self.rate_per_s / 2)
        self._slow_until = max(self._slow_until, now + retry_after_s)
        self._tokens = min(self._tokens, self.limits.bucket(self._rate))

    @property
    def rate_per_s(self) -> float:
        """The publishing pace now: the configured rate, or less after ``busy`` answers."""
        return self.limits.rate_per_s if self._rate is None else self._rate

    def tick(self, now: float) -> None:
        """Move events whose deadline passed (no PUBACK, no receipt) to the retry queue."""
        while self._timers and self._timers[0][0] <= now:
            due, seq = heapq.heappop(self._timers)
            entry = self._out.get(seq)
            if entry is None or entry.due != due:
                continue  # confirmed, or rescheduled since
            if entry.mid is not None:
                self._by_mid.pop(entry.mid, None)
                entry.mid = None
            entry.due = float("inf")
            self._retry.append(seq)

    # -- what the window tells the caller --------------------------------------------

    def plan(self, now: float, *, connected: bool) -> Plan:
        """What to publish now, within the tokens, the in-flight and the unconfirmed bounds."""
        self.tick(now)
        self._refill(now)
        if not connected:
            return Plan()
        budget = min(int(self._tokens), self.limits.max_inflight - len(self._by_mid))
        if budget <= 0:
            return Plan()
        retry = [self._retry.popleft() for _ in range(min(budget, len(self._retry)))]
        # Retries are already counted as unconfirmed; new events need room of their own.
        budget = min(budget - len(retry), self.limits.max_unconfirmed - self.unconfirmed)
        live: list[int] = []
        while budget > 0 and self._live:
            seq = self._live.popleft()
            if seq in self._live_set and seq not in self._out:
                self._live_set.discard(seq)
                live.append(seq)
                budget -= 1
        return Plan(tuple(retry), tuple(live), max(0, budget) if self.backlog else 0)

    def skip_in_backlog(self, seq: int) -> bool:
        """Whether a backlog row is already out or queued as live (read past it)."""
        self.cursor = max(self.cursor, seq)
        return seq in self._out or seq in self._live_set

    def backlog_read(self, asked: int, got: int) -> None:
        """The backlog read returned ``got`` rows of ``asked``: fewer means caught up."""
        if got < asked:
            self.backlog = False

    def next_due(self, now: float) -> float | None:
        """Seconds until something can be published again (a timer or a token)."""
        waits = []
        if self._timers:
            waits.append(max(0.0, self._timers[0][0] - now))
        if (self._retry or self._live or self.backlog) and self._tokens < 1:
            waits.append((1 - self._tokens) / self.rate_per_s)
        return min(waits) if waits else None

    @property
    def unconfirmed(self) -> int:
        """Published (in this process) and not yet confirmed by the hub."""
        return len(self._out)

    @property
    def inflight(self) -> int:
        """Published and not yet PUBACKed."""
        return len(self._by_mid)

    @property
    def idle(self) -> bool:
        """Nothing out, nothing queued (the database may still hold a backlog)."""
        return not self._out and not self._live and not self._retry

    # -- internals -------------------------------------------------------------------

    def _refill(self, now: float) -> None:
        if self._tokens_at is None:  # a full bucket to start: burst_s of the rate, no more
            self._tokens_at, self._tokens = now, self.limits.bucket(self.rate_per_s)
        rate = self.rate_per_s
        self._tokens = min(self.limits.bucket(rate),
                           self._tokens + (now - self._tokens_at) * rate)
        if self._rate is not None and now > self._slow_until:
            # Recover from the later of the last refill and the end of the slow-down.
            since = now - max(self._tokens_at, self._slow_until)
            self._rate *= 2 ** (since / self.limits.recovery_s)
            if self._rate >= self.limits.rate_per_s:
                self._rate = None
        self._tokens_at = now

    def _backoff(self, attempts: int) -> float:
        return float(min(self.limits.retry_max_s,
                         self.limits.retry_first_s * 2 ** min(attempts - 1, 20)))
