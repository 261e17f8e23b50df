"""The durable escalation outbox: SQLite in WAL mode, bounded, prioritised.

Every escalation is committed here before it is published and deleted only when the
broker's PUBACK for it arrives, so nothing is lost to a dead process, a dead broker or a
power cut (with ``synchronous = FULL``). Commits are grouped: one transaction carries
every event that arrived while the previous commit ran, and the deletes of every event
acknowledged meanwhile.

Bounds: ``max_events``, and ``max_bytes`` for the whole database file. Each event is
charged what it takes on disk (:func:`disk_cost`: its share of a page, or its overflow
pages), and events may use :data:`PAYLOAD_SHARE` of the byte bound; the rest is left for
the index, free pages and the WAL, which is kept short (``journal_size_limit``). Freed
pages are reused, and returned to the filesystem after a large backlog is gone
(``auto_vacuum = INCREMENTAL``). When full, ``evict`` drops the lowest-priority oldest
events to make room (never one that outranks the newcomer), ``refuse`` drops the
newcomer. Expired events (``ttl_s``) are dropped too. Every drop is counted by reason in
the database itself, so the counts survive restarts.

Not thread-safe: one thread (the uplink) owns it.
"""

from __future__ import annotations

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

SCHEMA_VERSION = 1
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
class OutboxItem:
    """One escalation waiting for its PUBACK."""

    event_id: str
    topic: str
    payload: bytes
    priority: int
    created_at: float
    seq: int = 0
    cost: int = 0  # bytes on disk, set once stored


@dataclass(slots=True)
class CommitResult:
    """What one commit did."""

    stored: list[OutboxItem] = field(default_factory=list)
    deleted: int = 0
    dropped: list[tuple[str, str]] = field(default_factory=list)


class Outbox:
    """The outbox database.

    Args:
        path: Database file; its folder is created if missing.
        config: Bounds, TTL, policy when full, and durability.
        clock: Unix time; injected for TTL tests.
    """

    def __init__(
        self, path: Path, config: OutboxConfig, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.config = config
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self.count = 0
        self.stored_bytes = 0
        self.byte_budget = int(config.max_bytes * PAYLOAD_SHARE)
        self._next_expiry = 0.0
        self._last_seq = 0
        self.page_size = LARGE_PAGE
        self._deleting_commits = 0

    # -- lifecycle -------------------------------------------------------------------

    def open(self) -> None:
        """Open (and if needed create) the database and load its counters.

        Raises:
            OutboxError: The file cannot be opened or is not an outbox database.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # A longer WAL means fewer checkpoints (faster); it counts towards max_bytes.
            wanted = LARGE_PAGE if self.config.max_bytes >= 64 * 1024 * 1024 else SMALL_PAGE
            conn.execute(f"PRAGMA page_size = {wanted}")  # no effect on an existing file
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("PRAGMA journal_mode = WAL")
            self.page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            wal_pages = max(8, min(2048, self.config.max_bytes // self.page_size // 16))
            conn.execute(f"PRAGMA synchronous = {self.config.synchronous}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
            conn.execute(f"PRAGMA journal_size_limit = {wal_pages * self.page_size}")
            self._migrate(sqlite_utils.Database(conn))
            row = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(MAX(seq), 0) FROM outbox"
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"{self.path}: cannot open the outbox: {exc}") from exc
        self._conn = conn
        self.count, self.stored_bytes = int(row[0]), int(row[1])
        self._last_seq = int(row[2])
        log.info("outbox %s: %d events, %d bytes waiting", self.path, self.count,
                 self.stored_bytes)

    def close(self) -> None:
        """Checkpoint and close."""
        if self._conn is not None:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._conn.close()
                self._conn = None

    @staticmethod
    def _migrate(db: sqlite_utils.Database) -> None:
        db.table("meta").create({"key": str, "value": int}, pk="key", if_not_exists=True)
        version_row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        version = int(version_row[0]) if version_row else 0
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
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
        self, add: Sequence[OutboxItem] = (), acked: Iterable[tuple[int, int]] = ()
    ) -> CommitResult:
        """In one transaction: delete ``acked``, drop expired events, store ``add``.

        Args:
            add: New events; each is stored with a new ``seq``.
            acked: ``(seq, disk_cost)`` of events whose PUBACK arrived.


        Raises:
            OutboxError: SQLite failed (disk full, I/O error); nothing of this call is kept.
        """
        conn = self.conn
        result = CommitResult()
        acked = list(acked)
        count, stored_bytes = self.count, self.stored_bytes
        try:
            conn.execute("BEGIN IMMEDIATE")
            if acked:
                result.deleted = self._delete_acked(acked)
            now = self._clock()
            if now >= self._next_expiry:
                self._next_expiry = now + EXPIRY_CHECK_S
                self._expire(result)
            if add and self._fits(add):
                self._insert_many(add, result)
            else:
                for item in add:
                    self._admit(item, result)
            self._count_drops(result.dropped)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.count, self.stored_bytes = count, stored_bytes
            raise OutboxError(f"{self.path}: write failed: {exc}") from exc
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
        free = int(self.conn.execute("PRAGMA freelist_count").fetchone()[0])
        if free * self.page_size > self.config.max_bytes * VACUUM_FREE_SHARE:
            self.conn.execute("PRAGMA incremental_vacuum")

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
                row = self.conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
                self.count, self.stored_bytes = int(row[0]), int(row[1])
        return removed

    def _fits(self, add: Sequence[OutboxItem]) -> bool:
        size = sum(disk_cost(len(item.payload), self.page_size) for item in add)
        return (
            self.count + len(add) <= self.config.max_events
            and self.stored_bytes + size <= self.byte_budget
        )

    def _insert_many(self, add: Sequence[OutboxItem], result: CommitResult) -> None:
        """The common case, nothing to evict: one multi-row INSERT per chunk.

        One statement is one ``sqlite3_step``, so the GIL is released once for many rows,
        not once per row (which stalls behind paho's network thread).
        """
        for start in range(0, len(add), CHUNK // 7):
            chunk = add[start : start + CHUNK // 7]
            rows = ",".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
            values: list[object] = []
            stored = []
            for item in chunk:
                self._last_seq += 1
                cost = disk_cost(len(item.payload), self.page_size)
                values += [self._last_seq, item.event_id, item.topic, item.payload,
                           item.priority, item.created_at, cost]
                stored.append(OutboxItem(item.event_id, item.topic, item.payload,
                                         item.priority, item.created_at, self._last_seq, cost))
            self.conn.execute(
                "INSERT INTO outbox (seq, event_id, topic, payload, priority, created_at,"
                f" size) VALUES {rows}", values,
            )
            self.count += len(chunk)
            self.stored_bytes += sum(item.cost for item in stored)
            result.stored += stored

    def _expire(self, result: CommitResult) -> None:
        cutoff = self._clock() - self.config.ttl_s
        rows = self.conn.execute(
            "SELECT event_id, size FROM outbox WHERE created_at < ?", [cutoff]
        ).fetchall()
        if rows:
            self.conn.execute("DELETE FROM outbox WHERE created_at < ?", [cutoff])
            self.count -= len(rows)
            self.stored_bytes -= sum(int(r[1]) for r in rows)
            result.dropped += [(str(r[0]), "expired") for r in rows]

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
        self.conn.execute(
            "INSERT INTO outbox (seq, event_id, topic, payload, priority, created_at, size)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [self._last_seq, item.event_id, item.topic, item.payload, item.priority,
             item.created_at, size],
        )
        self.count += 1
        self.stored_bytes += size
        result.stored.append(OutboxItem(item.event_id, item.topic, item.payload,
                                        item.priority, item.created_at, self._last_seq, size))

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

    def record_drop(self, item: OutboxItem, reason: str) -> None:
        """Delete one stored event for good (e.g. the broker refused it) and count why."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._delete_acked([(item.seq, item.cost)])
            self._count_drops([(item.event_id, reason)])
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise OutboxError(f"{self.path}: write failed: {exc}") from exc

    # -- reads -----------------------------------------------------------------------

    def after(self, seq: int, limit: int) -> list[OutboxItem]:
        """Up to ``limit`` events stored after ``seq``, oldest first: the send order."""
        rows = self.conn.execute(
            "SELECT event_id, topic, payload, priority, created_at, seq, size FROM outbox"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            [seq, limit],
        ).fetchall()
        return [OutboxItem(r[0], r[1], bytes(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

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
