"""The durable escalation outbox: SQLite in WAL mode, bounded, prioritised.

Every escalation is committed here before it is published and deleted only when the
broker's PUBACK for it arrives, so nothing is lost to a dead process, a dead broker or a
power cut (with ``synchronous = FULL``). Commits are grouped: one transaction carries
every event that arrived while the previous commit ran, and the deletes of every event
acknowledged meanwhile.

Bounds: ``max_events``, and ``max_bytes`` for the whole database file. Payloads may use
:data:`PAYLOAD_SHARE` of the byte bound; the rest is left for pages, index and WAL, which
is kept short (``journal_size_limit``, frequent checkpoints) and freed pages are returned
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
PAGE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One escalation waiting for its PUBACK."""

    event_id: str
    topic: str
    payload: bytes
    priority: int
    created_at: float
    seq: int = 0


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
        self.payload_bytes = 0
        self.payload_budget = int(config.max_bytes * PAYLOAD_SHARE)

    # -- lifecycle -------------------------------------------------------------------

    def open(self) -> None:
        """Open (and if needed create) the database and load its counters.

        Raises:
            OutboxError: The file cannot be opened or is not an outbox database.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            wal_pages = max(16, min(1000, self.config.max_bytes // PAGE_SIZE // 16))
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.config.synchronous}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
            conn.execute(f"PRAGMA journal_size_limit = {wal_pages * PAGE_SIZE}")
            self._migrate(sqlite_utils.Database(conn))
            row = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"{self.path}: cannot open the outbox: {exc}") from exc
        self._conn = conn
        self.count, self.payload_bytes = int(row[0]), int(row[1])
        log.info("outbox %s: %d events, %d bytes waiting", self.path, self.count,
                 self.payload_bytes)

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
            # AUTOINCREMENT: a sequence number is never reused, even after the outbox
            # empties, because the sender's cursor only moves forward.
            db.execute(
                "CREATE TABLE IF NOT EXISTS outbox ("
                " seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL,"
                " topic TEXT NOT NULL, payload BLOB NOT NULL, priority INTEGER NOT NULL,"
                " created_at REAL NOT NULL, size INTEGER NOT NULL)"
            )
            outbox = db.table("outbox")
            outbox.create_index(["event_id"], unique=True, if_not_exists=True)
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

    def commit(self, add: Sequence[OutboxItem] = (), acked: Iterable[str] = ()) -> CommitResult:
        """In one transaction: delete ``acked``, drop expired events, store ``add``.

        Raises:
            OutboxError: SQLite failed (disk full, I/O error); nothing of this call is kept.
        """
        conn = self.conn
        result = CommitResult()
        acked = list(acked)
        count, payload_bytes = self.count, self.payload_bytes
        try:
            conn.execute("BEGIN IMMEDIATE")
            if acked:
                result.deleted = self._delete(acked)
            self._expire(result)
            for item in add:
                self._admit(item, result)
            self._count_drops(result.dropped)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self.count, self.payload_bytes = count, payload_bytes
            raise OutboxError(f"{self.path}: write failed: {exc}") from exc
        if result.deleted or result.dropped:
            conn.execute("PRAGMA incremental_vacuum")
        return result

    def _delete(self, event_ids: list[str]) -> int:
        conn = self.conn
        removed = 0
        for start in range(0, len(event_ids), 500):
            chunk = event_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            row = conn.execute(
                f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox WHERE event_id IN ({marks})",
                chunk,
            ).fetchone()
            conn.execute(f"DELETE FROM outbox WHERE event_id IN ({marks})", chunk)
            removed += int(row[0])
            self.count -= int(row[0])
            self.payload_bytes -= int(row[1])
        return removed

    def _expire(self, result: CommitResult) -> None:
        cutoff = self._clock() - self.config.ttl_s
        rows = self.conn.execute(
            "SELECT event_id, size FROM outbox WHERE created_at < ?", [cutoff]
        ).fetchall()
        if rows:
            self.conn.execute("DELETE FROM outbox WHERE created_at < ?", [cutoff])
            self.count -= len(rows)
            self.payload_bytes -= sum(int(r[1]) for r in rows)
            result.dropped += [(str(r[0]), "expired") for r in rows]

    def _admit(self, item: OutboxItem, result: CommitResult) -> None:
        size = len(item.payload)
        if size > self.payload_budget:
            result.dropped.append((item.event_id, "too-large"))
            return
        while self.count + 1 > self.config.max_events or (
            self.payload_bytes + size > self.payload_budget
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
            self.payload_bytes -= int(victim[3])
            result.dropped.append((str(victim[1]), "evicted"))
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO outbox (event_id, topic, payload, priority, created_at, size)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [item.event_id, item.topic, item.payload, item.priority, item.created_at, size],
        )
        if cursor.rowcount:
            self.count += 1
            self.payload_bytes += size
            result.stored.append(OutboxItem(item.event_id, item.topic, item.payload,
                                            item.priority, item.created_at,
                                            int(cursor.lastrowid or 0)))

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

    def record_drop(self, event_id: str, reason: str) -> None:
        """Delete one event for good (e.g. the broker refused it) and count why."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._delete([event_id])
            self._count_drops([(event_id, reason)])
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise OutboxError(f"{self.path}: write failed: {exc}") from exc

    # -- reads -----------------------------------------------------------------------

    def after(self, seq: int, limit: int) -> list[OutboxItem]:
        """Up to ``limit`` events stored after ``seq``, oldest first: the send order."""
        rows = self.conn.execute(
            "SELECT event_id, topic, payload, priority, created_at, seq FROM outbox"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            [seq, limit],
        ).fetchall()
        return [OutboxItem(r[0], r[1], bytes(r[2]), r[3], r[4], r[5]) for r in rows]

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
