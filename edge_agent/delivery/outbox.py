"""The durable escalation outbox: SQLite in WAL mode, bounded, prioritised.

Every escalation is committed here before it is published and deleted only when the hub
says it has it (its receipt or its verdict: a PUBACK is only the broker's word), so
nothing is lost to a dead process, a dead broker, a restarted hub or a power cut (with
``synchronous = FULL``). Commits are grouped: one transaction carries every event that
arrived while the previous commit ran, and the deletes of every event confirmed
meanwhile.

The escalations' pending verdicts live here too (table ``pending``), written in the same
transaction as their event, so that after a restart a verdict still finds its
escalation, and an escalation whose verdict never came still gets its local fallback.

Ages are measured on the monotonic clock of the boot that stored a row (its boot id is
kept with it), so a wall-clock step (NTP fixing a stale clock) expires nothing; only
rows from an earlier boot are aged by the wall clock.

Bounds: ``max_events``, and ``max_bytes`` for the whole database file. Each event is
charged what it takes on disk (:func:`disk_cost`: its share of a page, or its overflow
pages), and events may use :data:`PAYLOAD_SHARE` of the byte bound; the rest is left for
the index, free pages and the WAL, which is kept short (``journal_size_limit``). Freed
pages are reused, and returned to the filesystem after a large backlog is gone
(``auto_vacuum = INCREMENTAL``). When full, ``evict`` drops the lowest-priority oldest
events to make room (never one that outranks the newcomer), ``refuse`` drops the
newcomer. Expired events (``ttl_s``) are dropped too. Every drop is counted by reason in
the database itself, so the counts survive restarts.

A database that cannot be opened or fails its integrity check is moved aside and what
SQLite can still read of it is copied into a fresh outbox (:class:`SalvageReport`); a
full disk or an I/O error makes a commit raise :class:`~edge_agent.errors.OutboxError`
with ``full`` set, and the caller decides how to degrade.

Not thread-safe: one thread (the uplink) owns it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from edge_agent.config import OutboxConfig
from edge_agent.errors import OutboxError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
REMEMBER_FALLBACKS = 10_000
SALVAGE_CHUNK = 256
SALVAGE_MAX_FAILURES = 20_000  # bounds the halving on a file that is mostly garbage
SQLITE_FULL = 13
SQLITE_IOERR = 10
PAYLOAD_SHARE = 0.7
LARGE_PAGE = 16384  # a third faster than 4 KiB for rows of a few KiB
SMALL_PAGE = 4096  # for outboxes too small to bound with 16 KiB granularity
ROW_OVERHEAD = 200
CHUNK = 600  # SQL variables per statement, well under SQLite's limit
EXPIRY_CHECK_S = 1.0
VACUUM_CHECK_EVERY = 64
VACUUM_FREE_SHARE = 0.1


def disk_cost(payload_bytes: int, page_size: int = LARGE_PAGE) -> int:
    """Bytes of database pages one event occupies (estimate, never low).

    A row (payload plus about :data:`ROW_OVERHEAD` bytes of id, topic and record
    header) shares a leaf page with others if it fits in the page (SQLite keeps up to
    ``page_size - 35`` bytes of a table row in its leaf); larger rows keep a part in the
    leaf and spill the rest into overflow pages of ``page_size - 4`` usable bytes.
    """
    row = payload_bytes + ROW_OVERHEAD
    local_max = page_size - 35
    if row <= local_max:
        return page_size // max(1, local_max // row)
    local_min = (page_size - 12) * 32 // 255 - 23
    overflow_pages = -(-(row - local_min) // (page_size - 4))
    return page_size * (1 + overflow_pages)


@dataclass(frozen=True, slots=True)
class OutboxClock:
    """The clocks the outbox ages rows with (injected for tests).

    Attributes:
        wall: Unix time.
        monotonic: Seconds on a clock that only moves forward within one boot.
        boot_id: Names the boot ``monotonic`` belongs to.
    """

    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    boot_id: str = ""

    @staticmethod
    def system() -> OutboxClock:
        """The machine's clocks; the boot id from the kernel where it tells one."""
        try:
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            boot = f"process-{time.time_ns()}"  # no kernel boot id: trust this process only
        return OutboxClock(boot_id=boot)


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """An escalation's wait for its verdict, as kept on disk.

    Attributes:
        event_id: The escalation.
        source: Which input it came from.
        positive: What the edge decided alone (the fallback's decision).
        boxes: What the edge saw, in frame pixels.
        deadline_mono: When the fallback runs, on the monotonic clock of ``boot_id``.
        boot_id: The boot that set the deadline.
        fell_back: Whether the fallback already ran (a verdict is then reconciled).
    """

    event_id: str
    source: str
    positive: bool
    boxes: tuple[tuple[float, float, float, float], ...]
    deadline_mono: float
    boot_id: str
    fell_back: bool = False


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One escalation waiting for the hub to confirm it.

    Attributes:
        pending: Its verdict wait, stored with it (``None``: nobody waits for a verdict).
        created_mono: When it was made, on the monotonic clock (set when stored).
    """

    event_id: str
    topic: str
    payload: bytes
    priority: int
    created_at: float
    seq: int = 0
    cost: int = 0  # bytes on disk, set once stored
    pending: PendingRecord | None = None
    created_mono: float = 0.0


@dataclass(frozen=True, slots=True)
class PendingChanges:
    """What the pipeline decided about waits since the last commit."""

    resolved: tuple[str, ...] = ()  # verdict applied: forget the wait
    fell_back: tuple[str, ...] = ()  # fallback ran: keep it to reconcile a late verdict


@dataclass(slots=True)
class CommitResult:
    """What one commit did."""

    stored: list[OutboxItem] = field(default_factory=list)
    deleted: int = 0
    confirmed: list[tuple[int, str]] = field(default_factory=list)  # (seq, event id)
    dropped: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SalvageReport:
    """A damaged outbox moved aside, and what of it was saved.

    Attributes:
        moved_to: Where the damaged file now is.
        reason: What SQLite said.
        recovered: Events copied into the fresh outbox.
        unreadable: Stretches of the damaged file that could not be read (0: all read).
    """

    moved_to: Path
    reason: str
    recovered: int
    unreadable: int


def expiry_condition(clock: OutboxClock, ttl_s: float) -> tuple[str, list[object]]:
    """SQL condition (and its values) for rows older than ``ttl_s``: by the monotonic
    clock for rows of this boot, by the wall clock for rows of earlier boots."""
    return (
        "(boot_id = ? AND created_mono < ?) OR (boot_id != ? AND created_at < ?)",
        [clock.boot_id, clock.monotonic() - ttl_s, clock.boot_id, clock.wall() - ttl_s],
    )


class Outbox:
    """The outbox database.

    Args:
        path: Database file; its folder is created if missing.
        config: Bounds, TTL, policy when full, and durability.
        clock: Wall and monotonic clocks and the boot id; injected for TTL tests.
    """

    def __init__(
        self, path: Path, config: OutboxConfig, *, clock: OutboxClock | None = None
    ) -> None:
        self.path = path
        self.config = config
        self.clock = clock or OutboxClock.system()
        self._conn: sqlite3.Connection | None = None
        self.count = 0
        self.stored_bytes = 0
        self.byte_budget = int(config.max_bytes * PAYLOAD_SHARE)
        self._next_expiry = 0.0
        self._last_seq = 0
        self.page_size = LARGE_PAGE
        self._deleting_commits = 0
        self.salvage: SalvageReport | None = None

    # -- lifecycle -------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` has run (and :meth:`close` has not)."""
        return self._conn is not None

    def open(self) -> None:
        """Open (and if needed create) the database and load its counters.

        A file that SQLite cannot open, or that fails its quick integrity check, is
        moved aside and salvaged into a fresh outbox (:attr:`salvage` says what
        happened).

        Raises:
            OutboxError: Not even a fresh outbox can be created (``full`` when the disk
                is full).
        """
        try:
            self._open_checked()
            return
        except OutboxError:
            raise
        except sqlite3.DatabaseError as exc:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            damaged = self._move_aside()
            log.error("outbox %s is damaged (%s): moved to %s; salvaging", self.path, exc,
                      damaged)
            reason = str(exc)
        try:
            self._open_checked()
        except sqlite3.Error as exc:
            raise _outbox_error(self.path, "cannot create a fresh outbox", exc) from exc
        recovered, unreadable = self._salvage_from(damaged)
        self.salvage = SalvageReport(damaged, reason, recovered, unreadable)
        log.error("outbox salvage: %d event(s) recovered from %s, %d unreadable stretch(es)",
                  recovered, damaged, unreadable)

    def _open_checked(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"{self.path}: cannot create its folder: {exc}") from exc
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn = conn
        # A longer WAL means fewer checkpoints (faster); it counts towards max_bytes.
        wanted = LARGE_PAGE if self.config.max_bytes >= 64 * 1024 * 1024 else SMALL_PAGE
        conn.execute(f"PRAGMA page_size = {wanted}")  # no effect on an existing file
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL")
        check = conn.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise sqlite3.DatabaseError(f"integrity check: {check[0] if check else '?'}")
        self.page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        wal_pages = max(8, min(2048, self.config.max_bytes // self.page_size // 16))
        conn.execute(f"PRAGMA synchronous = {self.config.synchronous}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
        conn.execute(f"PRAGMA journal_size_limit = {wal_pages * self.page_size}")
        self._migrate(conn)
        row = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(MAX(seq), 0) FROM outbox"
        ).fetchone()
        self.count, self.stored_bytes = int(row[0]), int(row[1])
        self._last_seq = int(row[2])
        log.info("outbox %s: %d events, %d bytes waiting", self.path, self.count,
                 self.stored_bytes)

    def _move_aside(self) -> Path:
        target = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.replace(Path(f"{target}{suffix}"))
        return target

    def _salvage_from(self, damaged: Path) -> tuple[int, int]:
        """Copy every event SQLite can still read from ``damaged``, range by range,
        halving a range that fails down to single rows."""
        try:
            old = sqlite3.connect(f"file:{damaged}?mode=ro", uri=True)
        except sqlite3.Error:
            return 0, 1
        recovered = unreadable = 0
        try:
            try:
                top = int(old.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0])
            except sqlite3.Error:
                return 0, 1  # not even the table's last row can be found: nothing to walk
            ranges = [(1, top)] if top > 0 else []
            failures = 0
            while ranges and failures < SALVAGE_MAX_FAILURES:
                low, high = ranges.pop()
                try:
                    rows = old.execute(
                        "SELECT event_id, topic, payload, priority, created_at FROM outbox"
                        " WHERE seq BETWEEN ? AND ? ORDER BY seq", [low, high]).fetchall()
                except sqlite3.Error:
                    failures += 1
                    if high - low < 1:
                        unreadable += 1
                    else:
                        middle = (low + high) // 2
                        ranges += [(middle + 1, high), (low, middle)]
                    continue
                items = [OutboxItem(str(r[0]), str(r[1]), bytes(r[2]), int(r[3]), float(r[4]))
                         for r in rows]
                for start in range(0, len(items), SALVAGE_CHUNK):
                    recovered += len(self.commit(items[start : start + SALVAGE_CHUNK]).stored)
        finally:
            old.close()
        return recovered, unreadable + len(ranges)

    def close(self) -> None:
        """Checkpoint and close."""
        if self._conn is not None:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("outbox %s: checkpoint at close failed: %s", self.path, exc)
            finally:
                self._conn.close()
                self._conn = None

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        db = sqlite_utils.Database(conn)
        db.table("meta").create({"key": str, "value": int}, pk="key", if_not_exists=True)
        version_row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        version = int(version_row[0]) if version_row else 0
        if version > SCHEMA_VERSION:
            raise OutboxError(
                f"schema version {version} is newer than this agent's {SCHEMA_VERSION}"
            )
        if version < 1:
            # seq is assigned by the outbox, strictly increasing for the life of the
            # process (the sender's cursor only moves forward), and from MAX(seq) + 1
            # after a restart, when the cursor starts again from 0.
            db.execute(
                "CREATE TABLE IF NOT EXISTS outbox ("
                " seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL,"
                " topic TEXT NOT NULL, payload BLOB NOT NULL, priority INTEGER NOT NULL,"
                " created_at REAL NOT NULL, size INTEGER NOT NULL)"
            )
            outbox = db.table("outbox")
            outbox.create_index(["priority", "seq"], if_not_exists=True)
            outbox.create_index(["created_at"], if_not_exists=True)
            db.table("drops").create({"reason": str, "count": int}, pk="reason", if_not_exists=True)
        if version < 2:
            # Events are confirmed by id (the hub's receipt), aged on the monotonic clock
            # of their boot, and carry their pending verdict.
            db.execute("ALTER TABLE outbox ADD COLUMN created_mono REAL NOT NULL DEFAULT 0")
            db.execute("ALTER TABLE outbox ADD COLUMN boot_id TEXT NOT NULL DEFAULT ''")
            db.execute("CREATE INDEX IF NOT EXISTS outbox_event_id ON outbox (event_id)")
            db.execute(
                "CREATE TABLE IF NOT EXISTS pending ("
                " event_id TEXT PRIMARY KEY, source TEXT NOT NULL, positive INTEGER NOT NULL,"
                " boxes TEXT NOT NULL, deadline_mono REAL NOT NULL, boot_id TEXT NOT NULL,"
                " fell_back INTEGER NOT NULL DEFAULT 0, stored_at REAL NOT NULL)"
            )
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", [SCHEMA_VERSION])

    @property
    def conn(self) -> sqlite3.Connection:
        """The open connection.

        Raises:
            OutboxError: The outbox is not open.
        """
        if self._conn is None:
            raise OutboxError(f"{self.path}: the outbox is not open")
        return self._conn

    # -- the one write path ----------------------------------------------------------

    def commit(
        self, add: Sequence[OutboxItem] = (), acked: Iterable[tuple[int, int]] = (),
        *, confirmed_ids: Sequence[str] = (), pending: PendingChanges | None = None,
    ) -> CommitResult:
        """In one transaction: delete confirmed events, drop expired ones, store ``add``
        (with their pending verdicts), and apply the pipeline's pending changes.

        Args:
            add: New events; each is stored with a new ``seq``.
            acked: ``(seq, disk_cost)`` of events the hub confirmed (known to the sender).
            confirmed_ids: Event ids the hub confirmed that the sender did not know.
            pending: Verdict waits resolved or fallen back since the last commit.

        Raises:
            OutboxError: SQLite failed (``full`` when the disk is full); nothing of this
                call is kept.
        """
        conn = self.conn
        result = CommitResult()
        acked = list(acked)
        count, stored_bytes, last_seq = self.count, self.stored_bytes, self._last_seq
        try:
            conn.execute("BEGIN IMMEDIATE")
            if acked:
                result.deleted = self._delete_acked(acked)
            if confirmed_ids:
                self._delete_by_id(confirmed_ids, result)
            now = self.clock.monotonic()
            if now >= self._next_expiry:
                self._next_expiry = now + EXPIRY_CHECK_S
                self._expire(result)
            if add and self._fits(add):
                self._insert_many(add, result)
            else:
                for item in add:
                    self._admit(item, result)
            if result.stored:
                self._store_pending(result.stored)
            if pending is not None:
                self._apply_pending(pending)
            self._count_drops(result.dropped)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.warning("outbox %s: rollback failed", self.path)
            self.count, self.stored_bytes, self._last_seq = count, stored_bytes, last_seq
            raise _outbox_error(self.path, "write failed", exc) from exc
        if result.deleted or result.dropped:
            self._deleting_commits += 1
            if self._deleting_commits % VACUUM_CHECK_EVERY == 0 or result.dropped:
                self._return_free_pages()
        return result

    def _return_free_pages(self) -> None:
        """Give freed pages back to the filesystem once there are many of them.

        New events reuse free pages anyway, so the file never grows past its high-water
        mark; this only shrinks it after a large backlog has drained or been evicted.
        """
        try:
            free = int(self.conn.execute("PRAGMA freelist_count").fetchone()[0])
            if free * self.page_size > self.config.max_bytes * VACUUM_FREE_SHARE:
                self.conn.execute("PRAGMA incremental_vacuum")
        except sqlite3.Error as exc:
            log.warning("outbox %s: could not return free pages: %s", self.path, exc)

    def _delete_acked(self, acked: list[tuple[int, int]]) -> int:
        """Delete by seq, one statement per chunk; sizes are known, so nothing is read."""
        removed = 0
        for start in range(0, len(acked), CHUNK):
            chunk = acked[start : start + CHUNK]
            marks = ",".join("?" * len(chunk))
            cursor = self.conn.execute(f"DELETE FROM outbox WHERE seq IN ({marks})",
                                       [seq for seq, _ in chunk])
            removed += cursor.rowcount
            if cursor.rowcount == len(chunk):
                self.count -= len(chunk)
                self.stored_bytes -= sum(cost for _, cost in chunk)
            else:  # some were evicted or expired while in flight: recount
                self._recount()
        return removed

    def _delete_by_id(self, event_ids: Sequence[str], result: CommitResult) -> None:
        for start in range(0, len(event_ids), CHUNK):
            chunk = list(event_ids[start : start + CHUNK])
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(
                f"DELETE FROM outbox WHERE event_id IN ({marks}) RETURNING seq, event_id, size",
                chunk).fetchall()
            result.deleted += len(rows)
            result.confirmed += [(int(r[0]), str(r[1])) for r in rows]
            self.count -= len(rows)
            self.stored_bytes -= sum(int(r[2]) for r in rows)

    def _recount(self) -> None:
        row = self.conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        self.count, self.stored_bytes = int(row[0]), int(row[1])

    def _fits(self, add: Sequence[OutboxItem]) -> bool:
        size = sum(disk_cost(len(item.payload), self.page_size) for item in add)
        return (
            self.count + len(add) <= self.config.max_events
            and self.stored_bytes + size <= self.byte_budget
        )

    def _stamp(self, item: OutboxItem, seq: int, cost: int) -> OutboxItem:
        return OutboxItem(item.event_id, item.topic, item.payload, item.priority,
                          item.created_at, seq, cost, item.pending,
                          item.created_mono or self.clock.monotonic())

    def _insert_many(self, add: Sequence[OutboxItem], result: CommitResult) -> None:
        """The common case, nothing to evict: one multi-row INSERT per chunk.

        One statement is one ``sqlite3_step``, so the GIL is released once for many rows,
        not once per row (which stalls behind paho's network thread).
        """
        boot = self.clock.boot_id
        for start in range(0, len(add), CHUNK // 9):
            chunk = add[start : start + CHUNK // 9]
            rows = ",".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
            values: list[object] = []
            stored = []
            for item in chunk:
                self._last_seq += 1
                placed = self._stamp(item, self._last_seq,
                                     disk_cost(len(item.payload), self.page_size))
                values += [placed.seq, placed.event_id, placed.topic, placed.payload,
                           placed.priority, placed.created_at, placed.cost,
                           placed.created_mono, boot]
                stored.append(placed)
            self.conn.execute(
                "INSERT INTO outbox (seq, event_id, topic, payload, priority, created_at,"
                f" size, created_mono, boot_id) VALUES {rows}", values,
            )
            self.count += len(chunk)
            self.stored_bytes += sum(item.cost for item in stored)
            result.stored += stored

    def _expire(self, result: CommitResult) -> None:
        condition, values = expiry_condition(self.clock, self.config.ttl_s)
        rows = self.conn.execute(
            f"DELETE FROM outbox WHERE {condition} RETURNING event_id, size", values
        ).fetchall()
        if rows:
            self.count -= len(rows)
            self.stored_bytes -= sum(int(r[1]) for r in rows)
            result.dropped += [(str(r[0]), "expired") for r in rows]
        # Fallbacks are remembered for late verdicts, but not for ever.
        self.conn.execute(
            "DELETE FROM pending WHERE fell_back = 1 AND event_id NOT IN"
            " (SELECT event_id FROM pending WHERE fell_back = 1"
            "  ORDER BY stored_at DESC LIMIT ?)", [REMEMBER_FALLBACKS])

    def _admit(self, item: OutboxItem, result: CommitResult) -> None:
        size = disk_cost(len(item.payload), self.page_size)
        if size > self.byte_budget:
            result.dropped.append((item.event_id, "too-large"))
            return
        while self.count + 1 > self.config.max_events or (
            self.stored_bytes + size > self.byte_budget
        ):
            if self.config.when_full == "refuse":
                result.dropped.append((item.event_id, "refused-full"))
                return
            victim = self.conn.execute(
                "SELECT seq, event_id, priority, size FROM outbox ORDER BY priority, seq LIMIT 1"
            ).fetchone()
            if victim is None or int(victim[2]) > item.priority:
                result.dropped.append((item.event_id, "outranked-full"))
                return
            self.conn.execute("DELETE FROM outbox WHERE seq = ?", [victim[0]])
            self.count -= 1
            self.stored_bytes -= int(victim[3])
            result.dropped.append((str(victim[1]), "evicted"))
        self._last_seq += 1
        placed = self._stamp(item, self._last_seq, size)
        self.conn.execute(
            "INSERT INTO outbox (seq, event_id, topic, payload, priority, created_at, size,"
            " created_mono, boot_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [placed.seq, placed.event_id, placed.topic, placed.payload, placed.priority,
             placed.created_at, size, placed.created_mono, self.clock.boot_id],
        )
        self.count += 1
        self.stored_bytes += size
        result.stored.append(placed)

    def _store_pending(self, stored: list[OutboxItem]) -> None:
        rows = [
            (p.event_id, p.source, int(p.positive), json.dumps(p.boxes), p.deadline_mono,
             p.boot_id, int(p.fell_back), item.created_at)
            for item in stored if (p := item.pending) is not None
        ]
        if rows:
            self.conn.executemany(
                "INSERT OR REPLACE INTO pending (event_id, source, positive, boxes,"
                " deadline_mono, boot_id, fell_back, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows)

    def _apply_pending(self, changes: PendingChanges) -> None:
        if changes.resolved:
            self.conn.executemany("DELETE FROM pending WHERE event_id = ?",
                                  [(e,) for e in changes.resolved])
        if changes.fell_back:
            self.conn.executemany("UPDATE pending SET fell_back = 1 WHERE event_id = ?",
                                  [(e,) for e in changes.fell_back])

    def _count_drops(self, dropped: list[tuple[str, str]]) -> None:
        if not dropped:
            return
        totals: dict[str, int] = {}
        for _, reason in dropped:
            totals[reason] = totals.get(reason, 0) + 1
        # One line per commit, not per event: a long outage must not flood the journal.
        log.warning("outbox dropped %d event(s): %s (first: %s)", len(dropped),
                    ", ".join(f"{n} {reason}" for reason, n in totals.items()), dropped[0][0])
        self.conn.executemany(
            "INSERT INTO drops (reason, count) VALUES (?, ?) "
            "ON CONFLICT(reason) DO UPDATE SET count = count + excluded.count",
            list(totals.items()),
        )

    # -- reads -----------------------------------------------------------------------

    def after(self, seq: int, limit: int) -> list[OutboxItem]:
        """Up to ``limit`` events stored after ``seq``, oldest first: the send order."""
        rows = self.conn.execute(
            "SELECT event_id, topic, payload, priority, created_at, seq, size FROM outbox"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            [seq, limit],
        ).fetchall()
        return [OutboxItem(r[0], r[1], bytes(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

    def by_seq(self, seqs: Sequence[int]) -> list[OutboxItem]:
        """The stored events among ``seqs`` (those still waiting), in seq order."""
        found: list[OutboxItem] = []
        for start in range(0, len(seqs), CHUNK):
            chunk = list(seqs[start : start + CHUNK])
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(
                "SELECT event_id, topic, payload, priority, created_at, seq, size FROM outbox"
                f" WHERE seq IN ({marks})", chunk).fetchall()
            found += [OutboxItem(r[0], r[1], bytes(r[2]), r[3], r[4], r[5], r[6]) for r in rows]
        return sorted(found, key=lambda item: item.seq)

    def pending(self) -> list[PendingRecord]:
        """Every verdict wait kept on disk (after a restart: what to wait for again)."""
        rows = self.conn.execute(
            "SELECT event_id, source, positive, boxes, deadline_mono, boot_id, fell_back"
            " FROM pending ORDER BY stored_at").fetchall()
        return [
            PendingRecord(str(r[0]), str(r[1]), bool(r[2]),
                          tuple(tuple(box) for box in json.loads(r[3])),
                          float(r[4]), str(r[5]), bool(r[6]))
            for r in rows
        ]

    def drops(self) -> dict[str, int]:
        """Events dropped since the database was created, by reason."""
        return {str(r[0]): int(r[1]) for r in self.conn.execute("SELECT reason, count FROM drops")}

    def file_bytes(self) -> int:
        """Size of the database file and its WAL on disk."""
        total = 0
        for suffix in ("", "-wal"):
            candidate = Path(f"{self.path}{suffix}")
            if candidate.exists():
                total += candidate.stat().st_size
        return total


def _outbox_error(path: Path, what: str, exc: sqlite3.Error) -> OutboxError:
    code = getattr(exc, "sqlite_errorcode", None)
    full = code is not None and (code & 0xFF) in (SQLITE_FULL, SQLITE_IOERR)
    return OutboxError(f"{path}: {what}: {exc}", full=full)
