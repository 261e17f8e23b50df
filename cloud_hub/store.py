"""The hub's storage: one layer over SQLite (default) and PostgreSQL (scale-out).

SQLAlchemy Core, no ORM: tables are declared once, queries are explicit, and the only
dialect-specific piece is the idempotent insert. Ingest's statements, run for every
batch of escalations and verdicts, are SQL text on the driver's cursor (the same on both
but for the parameter marks: :class:`_IngestSql`), since building SQLAlchemy's
statements cost more CPU than running them. Schema changes are numbered
migrations recorded in ``schema_migrations``. Persistence functions take keyword-only
arguments.

Several hubs may share one database, so state that they all change is changed
atomically in the database, never under a process-local lock: a rollout carries a
``revision``, and :meth:`Store.update_rollout` writes a new state only where the
revision is still the one it read (compare-and-set, the same on SQLite and PostgreSQL),
reading again and re-applying the change when another hub won.

The one process-local lock, :class:`_ImageGate`, orders one hub's own image puts and
retention's image deletes (see :mod:`cloud_hub.images`); across hubs, an image's
put-refreshed age is what keeps retention from deleting it under a new event.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import pydantic
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from cloud_hub.errors import BadCursorError, NotFoundError, StoreError, StoreUnavailableError
from cloud_hub.images import ImageStore
from sync import InputHealth, JournalStep, SightingPayload, TrackEventMessage
from sync.errors import SyncError
from sync.messages import MAX_BACKLOG_VALUE
from sync.rollout import FAILED_STEPS, Rollout

log = logging.getLogger(__name__)

DeviceStanding = Literal["active", "revoked", "unknown"]
DeviceState = Literal["online", "offline", "revoked"]

metadata = sa.MetaData()
_Query = sa.Select[*tuple[Any, ...]]

devices = sa.Table(
    "devices", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("group_name", sa.String(64), nullable=False, server_default="default"),
    sa.Column("labels", sa.Text, nullable=False, server_default="{}"),
    sa.Column("credential_hash", sa.String(128), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=True),
    sa.Column("online", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("status_at", sa.Float, nullable=True),
    sa.Column("status_seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("models", sa.Text, nullable=False, server_default="{}"),
    sa.Column("backend", sa.String(128), nullable=False, server_default=""),
    # NULL: the device never said (an agent older than the field, or never connected).
    sa.Column("updates_enabled", sa.Boolean, nullable=True),
    sa.Column("agent_version", sa.String(64), nullable=False, server_default=""),
    sa.Column("telemetry", sa.Text, nullable=True),  # the latest telemetry's values, JSON
    sa.Column("telemetry_at", sa.Float, nullable=True),
    # Each camera source's input health (sync.InputHealth as JSON), from that telemetry.
    sa.Column("inputs", sa.Text, nullable=True),
    # When the device was revoked (NULL: it is not): its messages are refused.
    sa.Column("revoked_at", sa.Float, nullable=True),
)

events = sa.Table(
    "events", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("device_id", sa.String(64), nullable=False, index=True),
    sa.Column("source", sa.String(128), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("captured_at", sa.Float, nullable=False, index=True),
    sa.Column("received_at", sa.Float, nullable=False, index=True),
    sa.Column("edge_model", sa.String(64), nullable=False),
    sa.Column("edge_version", sa.String(64), nullable=False),
    sa.Column("edge_detections", sa.Text, nullable=False),
    sa.Column("anomaly_score", sa.Float, nullable=True),
    # Images: a reference into the image store (sha256), or, in rows stored before
    # schema 9 (and by a store without an image store), the bytes themselves.
    sa.Column("crop", sa.LargeBinary, nullable=True),
    sa.Column("thumbnail", sa.LargeBinary, nullable=True),
    sa.Column("crop_ref", sa.String(64), nullable=True, index=True),
    sa.Column("thumbnail_ref", sa.String(64), nullable=True, index=True),
    sa.Column("outcome", sa.String(16), nullable=True, index=True),
    sa.Column("hub_detections", sa.Text, nullable=True),
    sa.Column("hub_model", sa.String(64), nullable=True),
    sa.Column("hub_version", sa.String(64), nullable=True),
    sa.Column("inference_ms", sa.Float, nullable=True),
    sa.Column("decided_at", sa.Float, nullable=True),
    sa.Column("handled_by", sa.String(64), nullable=True),
    sa.Column("frame_width", sa.Integer, nullable=True),
    sa.Column("frame_height", sa.Integer, nullable=True),
    # The dashboard's totals read this index alone, never the rows that hold images.
    sa.Index("ix_events_totals", "received_at", "outcome", "device_id", "decided_at",
             "captured_at"),
)

models = sa.Table(
    "models", metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("task", sa.String(32), nullable=False),
    sa.Column("runtime", sa.String(16), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("uploaded_at", sa.Float, nullable=False),
)

tokens = sa.Table(
    "api_tokens", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_used", sa.Float, nullable=True),
)

rollouts = sa.Table(
    "rollouts", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("group_name", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False, server_default="0"),
)

update_reports = sa.Table(
    "update_reports", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(64), nullable=False, index=True),
    sa.Column("rollout_id", sa.String(64), nullable=True, index=True),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("step", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)

journal_steps = sa.Table(
    "journal_steps", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(64), nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("track_id", sa.BigInteger, nullable=False),
    sa.Column("first_frame", sa.BigInteger, nullable=False),
    sa.Column("step", sa.String(8), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False, index=True),
    sa.Column("last_frame", sa.BigInteger, nullable=False),
    sa.Column("label", sa.String(64), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("positive", sa.Boolean, nullable=False),
    sa.Column("sightings", sa.Text, nullable=False),
    sa.Column("event_id", sa.String(36), nullable=True, index=True),
    sa.Column("escalations", sa.BigInteger, nullable=False),
    sa.Column("verdict", sa.String(16), nullable=True),
    sa.Column("verdict_timing", sa.String(16), nullable=True),
    sa.Column("fell_back", sa.Boolean, nullable=False),
    sa.Column("agrees", sa.Boolean, nullable=True),
    sa.Index("ix_journal_steps_track", "device_id", "source", "track_id", "first_frame", "at"),
)

migrations_table = sa.Table(
    "schema_migrations", metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.Float, nullable=False),
)


def _v1(conn: Connection) -> None:
    for table in (devices, events, models, tokens):
        table.create(conn, checkfirst=True)


def _v2(conn: Connection) -> None:
    for table in (rollouts, update_reports):
        table.create(conn, checkfirst=True)


def _v3(conn: Connection) -> None:
    # A database made by _v2 of this code already has the column; an older one gets it.
    if "revision" not in {c["name"] for c in sa.inspect(conn).get_columns("rollouts")}:
        conn.execute(sa.text(
            "ALTER TABLE rollouts ADD COLUMN revision INTEGER NOT NULL DEFAULT 0"))


def _v4(conn: Connection) -> None:
    # Statuses are ordered by the device's (connection epoch, sequence), not by a time
    # that a last will, written at connect time, would carry from the past.
    if "status_seq" not in {c["name"] for c in sa.inspect(conn).get_columns("devices")}:
        conn.execute(sa.text(
            "ALTER TABLE devices ADD COLUMN status_seq BIGINT NOT NULL DEFAULT 0"))


def _v5(conn: Connection) -> None:
    # Whether a device installs updates, from its status: a rollout to a group whose
    # devices install none cannot progress, and says so (rollout warnings).
    if "updates_enabled" not in {c["name"] for c in sa.inspect(conn).get_columns("devices")}:
        conn.execute(sa.text("ALTER TABLE devices ADD COLUMN updates_enabled BOOLEAN"))


def _v6(conn: Connection) -> None:
    # The decision journal of escalated tracks (issue 10), and each event's frame size,
    # which its boxes are in (a timeline draws them on the thumbnail).
    journal_steps.create(conn, checkfirst=True)
    present = {c["name"] for c in sa.inspect(conn).get_columns("events")}
    for column in ("frame_width", "frame_height"):
        if column not in present:
            conn.execute(sa.text(f"ALTER TABLE events ADD COLUMN {column} INTEGER"))


def _v7(conn: Connection) -> None:
    # The dashboard's fleet health (agent version, the latest telemetry) and an index
    # that covers the event totals.
    _add_columns(conn, devices, ("agent_version VARCHAR(64) NOT NULL DEFAULT ''",
                                 "telemetry TEXT", "telemetry_at FLOAT"))
    for index in events.indexes:
        if index.name == "ix_events_totals":
            index.create(conn, checkfirst=True)


def _add_columns(conn: Connection, table: sa.Table, columns: tuple[str, ...]) -> None:
    """Add ``columns`` (name and SQL type, as DDL) to ``table`` where a database made by
    older code lacks them."""
    present = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    for column in columns:
        if column.split()[0] not in present:
            conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {column}"))


def _v8(conn: Connection) -> None:
    # A revoked device stays in the registry (its events are kept), marked as revoked.
    _add_columns(conn, devices, ("revoked_at FLOAT",))


def _v9(conn: Connection) -> None:
    # Images out of the database (issue 11): events reference them by sha256 in the
    # image store; rows stored before keep their bytes, still served.
    _add_columns(conn, events, ("crop_ref VARCHAR(64)", "thumbnail_ref VARCHAR(64)"))
    for index in events.indexes:
        if index.name in ("ix_events_crop_ref", "ix_events_thumbnail_ref"):
            index.create(conn, checkfirst=True)


def _v10(conn: Connection) -> None:
    # Each camera source's input health, typed (issue 10): a dark or frozen camera is
    # seen at the hub, not only in the device's own metrics.
    _add_columns(conn, devices, ("inputs TEXT",))


MIGRATIONS: tuple[tuple[int, Callable[[Connection], None]], ...] = (
    (1, _v1), (2, _v2), (3, _v3), (4, _v4), (5, _v5), (6, _v6), (7, _v7), (8, _v8),
    (9, _v9), (10, _v10))
SCHEMA_VERSION = MIGRATIONS[-1][0]
MIGRATION_ATTEMPTS = 5
ROLLOUT_CAS_ATTEMPTS = 50
MIGRATION_LOCK = 0x45444745  # any constant shared by every hub of one database


@dataclass(frozen=True, slots=True)
class NewDevice:
    """A device to register: its id, group and the fingerprint of its password."""

    device_id: str
    group: str
    credential_hash: str


@dataclass(frozen=True, slots=True)
class RolloutChange:
    """What :meth:`Store.update_rollout` did: the state it changed and the state it wrote
    (equal when the change left the rollout as it was, and nothing was written)."""

    before: Rollout
    after: Rollout


@dataclass(frozen=True, slots=True)
class TokenRow:
    """An API token as the store lists it (its hash stays inside)."""

    id: int
    name: str
    role: str
    created_at: float
    last_used: float | None


@dataclass(frozen=True, slots=True)
class EventPage:
    """One page of events and the cursor of the next page (``None`` at the end)."""

    items: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class TrackKey:
    """Which tracked object journal steps belong to. A track id is unique only while the
    agent runs, so after a restart a key may name a second lifecycle: its ``new`` step
    tells them apart (see :meth:`Store.journal_of_event`)."""

    device_id: str
    source: str
    track_id: int
    first_frame: int


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """One stored step of a track's lifecycle: a ``track/1`` message as the hub got it
    (see :class:`sync.TrackEventMessage` for the fields), and when it arrived."""

    id: int
    track: TrackKey
    step: JournalStep
    at: float
    received_at: float
    last_frame: int
    label: str
    action: Literal["local", "escalate", "drop"]
    reason: str
    positive: bool
    sightings: tuple[SightingPayload, ...]
    event_id: str | None
    escalations: int
    verdict: Literal["confirmed", "rejected"] | None
    verdict_timing: Literal["on-time", "late"] | None
    fell_back: bool
    agrees: bool | None


@dataclass(frozen=True, slots=True)
class FleetState:
    """Counts of the fleet for the hub's metrics.

    Attributes:
        devices: ``(group, online, devices)`` for every group and state present.
        rollouts: ``(status, rollouts)`` for every status present.
        update_steps: ``(step, devices)``: devices by the step of their latest update
            report.
    """

    devices: tuple[tuple[str, bool, int], ...]
    rollouts: tuple[tuple[str, int], ...]
    update_steps: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class EventTotals:
    """Escalations received in a window: by outcome (``pending`` for no verdict yet), by
    device, and the mean capture-to-verdict latency of those judged."""

    by_outcome: tuple[tuple[str, int], ...]
    by_device: tuple[tuple[str, int], ...]
    mean_verdict_latency_s: float | None


@dataclass(frozen=True, slots=True)
class UpdateFailure:
    """A device's latest failed install step (rolled back or refused) and why."""

    model: str
    version: str
    step: str
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class FleetCounts:
    """The whole fleet in numbers, without reading each device into a page.

    Attributes:
        devices: Registered devices, revoked ones included.
        online: Devices online now (never a revoked one).
        revoked: Revoked devices.
        outbox_events: Escalations waiting in the outboxes of devices not revoked (a
            revoked device's are refused), by each device's latest telemetry.
    """

    devices: int
    online: int
    revoked: int
    outbox_events: float

    @property
    def offline(self) -> int:
        """Devices neither online nor revoked."""
        return self.devices - self.online - self.revoked

    def of_state(self, state: DeviceState | None) -> int:
        """How many devices are in ``state`` (``None``: all)."""
        return {None: self.devices, "online": self.online, "offline": self.offline,
                "revoked": self.revoked}[state]


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    """One device as the dashboard's fleet table shows it.

    Attributes:
        telemetry: The latest telemetry's values (outbox backlog, per-source input
            health as ``name.source``), sent at ``telemetry_at``.
        last_error: The device's latest failed update, if any.
        inputs: Each camera source's input health, typed, from that telemetry.
        revoked: The device was revoked: its messages are refused.
    """

    id: str
    group: str
    online: bool
    last_seen: float | None
    agent_version: str
    models: tuple[tuple[str, str], ...]
    backend: str
    telemetry: tuple[tuple[str, float], ...]
    telemetry_at: float | None
    last_error: UpdateFailure | None
    inputs: tuple[tuple[str, InputHealth], ...] = ()
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class DeviceStep:
    """A device's latest install step for one rollout."""

    device_id: str
    step: str
    reason: str
    at: float


def totals_query(since: float) -> _Query:
    """The statement of :meth:`Store.event_totals`: ``(outcome, device, events, sum of
    capture-to-verdict seconds, judged events)`` groups, read from ``ix_events_totals``
    alone (a test checks SQLite's query plan). Grouped by an expression first, so that
    no one-column index offers its order (walking ``ix_events_outcome`` in order reads
    every row) and the planner searches the time range instead."""
    outcome = sa.func.coalesce(events.c.outcome, "pending")
    return (sa.select(outcome, events.c.device_id, sa.func.count(),
                      sa.func.sum(events.c.decided_at - events.c.captured_at),
                      sa.func.count(events.c.decided_at))
            .where(events.c.received_at >= since)
            .group_by(outcome, events.c.device_id))


class _ImageGate:
    """Puts (each from its first image put to its rows' commit) hold it shared, several
    at once; retention holds it alone while it re-checks references and deletes, so that
    no put of this hub sits between touching an image and committing the row that names
    it. Retention waiting keeps new puts out (a stream of puts never starves it)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._putting = 0
        self._deleting = False

    @contextmanager
    def putting(self) -> Iterator[None]:
        """Hold it shared, from the images' put to the rows' commit."""
        with self._changed:
            self._changed.wait_for(lambda: not self._deleting)
            self._putting += 1
        try:
            yield
        finally:
            with self._changed:
                self._putting -= 1
                self._changed.notify_all()

    @contextmanager
    def deleting(self) -> Iterator[None]:
        """Hold it alone, from the re-check of references to the last delete."""
        with self._changed:
            self._changed.wait_for(lambda: not self._deleting)
            self._deleting = True
            self._changed.wait_for(lambda: self._putting == 0)
        try:
            yield
        finally:
            with self._changed:
                self._deleting = False
                self._changed.notify_all()


@dataclass(frozen=True, slots=True)
class NewVerdict:
    """A verdict to record (:meth:`Store.set_verdicts`)."""

    event_id: str
    outcome: str
    detections: list[dict[str, Any]]
    model: str
    version: str
    inference_ms: float
    decided_at: float
    handled_by: str


class Store:
    """The database. Thread-safe: SQLAlchemy pools a connection per thread.

    Args:
        url: ``sqlite:///path`` or ``postgresql+psycopg://user@host/db``.
        connect_args: Passed to the driver (tests set a PostgreSQL ``search_path``).
        images: Where escalated images go (the rows keep their references); ``None``:
            in the rows themselves, as before schema 9.
    """

    def __init__(self, url: str, *, connect_args: dict[str, Any] | None = None,
                 images: ImageStore | None = None) -> None:
        self.url = url
        self.images = images
        self._image_gate = _ImageGate()
        self._connect_args = connect_args or {}
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        """The engine; :meth:`open` first."""
        if self._engine is None:
            raise StoreError("the store is not open")
        return self._engine

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def open(self) -> None:
        """Connect and apply pending migrations.

        Raises:
            StoreError: The database is unreachable or its schema is newer than ours.
        """
        try:
            if self.url.startswith("sqlite"):
                _private_sqlite_file(self.url)
                self._engine = sa.create_engine(
                    self.url, connect_args={"check_same_thread": False, "timeout": 30,
                                            **self._connect_args})
                sa.event.listen(self._engine, "connect", _sqlite_pragmas)
            else:
                self._engine = sa.create_engine(self.url, pool_pre_ping=True, pool_size=10,
                                                connect_args=self._connect_args)
            self._migrate()
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"cannot open the database: {exc}") from exc

    def close(self) -> None:
        """Dispose of the connection pool."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _migrate(self) -> None:
        # Hubs that start together race to migrate: PostgreSQL serialises them with an
        # advisory lock; SQLite has no such lock, so a loser retries once the winner is done.
        for attempt in range(MIGRATION_ATTEMPTS):
            try:
                self._migrate_once()
                return
            except (sa.exc.OperationalError, sa.exc.ProgrammingError,
                    sa.exc.IntegrityError) as exc:
                if attempt == MIGRATION_ATTEMPTS - 1:
                    raise
                log.info("migration raced another hub (%s); retrying", exc.orig)
                time.sleep(0.2 * (attempt + 1))

    def _migrate_once(self) -> None:
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                             {"key": MIGRATION_LOCK})
            migrations_table.create(conn, checkfirst=True)
            applied = {row[0] for row in conn.execute(sa.select(migrations_table.c.version))}
            newest = max(applied, default=0)
            if newest > SCHEMA_VERSION:
                raise StoreError(
                    f"the database has schema version {newest}; this hub knows up to "
                    f"{SCHEMA_VERSION}: upgrade the hub"
                )
            for version, step in MIGRATIONS:
                if version not in applied:
                    step(conn)
                    conn.execute(migrations_table.insert().values(
                        version=version, applied_at=time.time()))

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        # The driver's own errors too: ingest's statements run on its cursor (_driver).
        dbapi = self.engine.dialect.loaded_dbapi
        try:
            with self.engine.begin() as conn:
                yield conn
        except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError,
                dbapi.OperationalError, dbapi.InterfaceError) as exc:
            # Connection lost, database locked, disk full: the same call may work later.
            raise StoreUnavailableError(f"database unavailable: {exc}") from exc
        except (sa.exc.SQLAlchemyError, dbapi.Error) as exc:
            raise StoreError(f"database error: {exc}") from exc

    def _driver(self, conn: Connection) -> _DriverCursor:
        """A cursor of the driver itself in ``conn``'s transaction, and this dialect's
        statements for it (see :class:`_IngestSql`)."""
        return _DriverCursor(conn.connection.cursor(), _INGEST_SQL[self.dialect])

    def _insert_ignore(self, table: sa.Table) -> Any:
        """An INSERT that can take ``on_conflict_do_nothing`` / ``..._do_update``."""
        from sqlalchemy.dialects import postgresql, sqlite

        if self.dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    # -- devices ---------------------------------------------------------------------

    def add_device(self, *, device_id: str, group: str, credential_hash: str | None = None,
                   labels: dict[str, str] | None = None) -> dict[str, Any]:
        """Create or update a device."""
        values = {"id": device_id, "group_name": group, "credential_hash": credential_hash,
                  "labels": json.dumps(labels or {}), "created_at": time.time()}
        with self._tx() as conn:
            statement = self._insert_ignore(devices).values(**values)
            conn.execute(statement.on_conflict_do_update(
                index_elements=["id"],
                set_={"group_name": group, "credential_hash": credential_hash,
                      "labels": values["labels"], "revoked_at": None},
            ))
        return self.get_device(device_id=device_id)

    def add_new_devices(self, *, rows: Sequence[NewDevice]) -> None:
        """Register many new devices in one transaction, all or none (an id that exists
        fails the whole call).

        Raises:
            StoreError: The database failed, or a device exists.
        """
        now = time.time()
        with self._tx() as conn:
            if rows:
                conn.execute(devices.insert(), [
                    {"id": row.device_id, "group_name": row.group,
                     "credential_hash": row.credential_hash, "labels": "{}",
                     "created_at": now} for row in rows])

    def existing_devices(self, *, device_ids: list[str]) -> set[str]:
        """Which of ``device_ids`` were provisioned."""
        found: set[str] = set()
        with self._tx() as conn:
            for start in range(0, len(device_ids), 500):  # bound the IN list
                chunk = device_ids[start:start + 500]
                found.update(str(row[0]) for row in conn.execute(
                    sa.select(devices.c.id).where(devices.c.id.in_(chunk))))
        return found

    def get_device(self, *, device_id: str) -> dict[str, Any]:
        """One device.

        Raises:
            NotFoundError: No such device.
        """
        with self._tx() as conn:
            row = conn.execute(sa.select(devices).where(devices.c.id == device_id)).first()
        if row is None:
            raise NotFoundError("device", device_id)
        return _device(row._mapping)

    def revoke_device(self, *, device_id: str, at: float) -> None:
        """Mark a device revoked: offline, no credentials, its messages refused from now
        (until it is provisioned again)."""
        with self._tx() as conn:
            conn.execute(devices.update().where(devices.c.id == device_id).values(
                revoked_at=at, online=False, credential_hash=None))

    def device_standing(self, *, device_id: str) -> DeviceStanding:
        """Whether the hub takes a device's messages: ``active``, ``revoked`` or
        ``unknown`` (never provisioned)."""
        return self.device_standings(device_ids=(device_id,))[device_id]

    def device_standings(self, *, device_ids: Collection[str]) -> dict[str, DeviceStanding]:
        """:meth:`device_standing` of many devices, in one query."""
        if not device_ids:
            return {}
        with self._tx() as conn:
            revoked: dict[str, float | None] = dict(
                self._driver(conn).standings(sorted(device_ids)))
        return {device_id: "unknown" if device_id not in revoked
                else "active" if revoked[device_id] is None else "revoked"
                for device_id in device_ids}

    def device_exists(self, *, device_id: str) -> bool:
        """Whether a device was provisioned."""
        with self._tx() as conn:
            return conn.execute(
                sa.select(devices.c.id).where(devices.c.id == device_id)).first() is not None

    def list_devices(self, *, group: str | None = None) -> list[dict[str, Any]]:
        """All devices (of ``group``), by id."""
        query = sa.select(devices).order_by(devices.c.id)
        if group is not None:
            query = query.where(devices.c.group_name == group)
        with self._tx() as conn:
            return [_device(row._mapping) for row in conn.execute(query)]

    def record_status(self, *, device_id: str, online: bool, at: float,
                      models: dict[str, str], backend: str, seq: int = 0,
                      updates_enabled: bool | None = None,
                      agent_version: str = "") -> None:
        """Store a device's retained status (online or its last will), if newer.

        Args:
            at: Orders statuses together with ``seq``: the device's connection epoch (or,
                from a device that sends none, when the hub received it).
            seq: The status's place within its connection (a last will comes last).
            updates_enabled: Whether it installs model updates (``None``: it did not say).
        """
        newer = sa.or_(
            devices.c.status_at.is_(None), devices.c.status_at < at,
            sa.and_(devices.c.status_at == at, devices.c.status_seq <= seq),
        )
        with self._tx() as conn:
            conn.execute(devices.update().where(devices.c.id == device_id).where(newer)
                         .where(devices.c.revoked_at.is_(None)).values(
                online=online, status_at=at, status_seq=seq, models=json.dumps(models),
                backend=backend, last_seen=sa.func.coalesce(devices.c.last_seen, at),
                updates_enabled=updates_enabled, agent_version=agent_version))

    def record_telemetry(self, *, device_id: str, at: float, values: Mapping[str, float],
                         inputs: Mapping[str, InputHealth] | None = None) -> None:
        """Keep a device's latest telemetry (backlog, input health), if newer.

        Args:
            at: When the device took it (its clock).
            inputs: Each camera source's input health (typed), if the device sent it.
        """
        document = json.dumps({name: health.model_dump(mode="json")
                               for name, health in (inputs or {}).items()})
        with self._tx() as conn:
            conn.execute(devices.update().where(devices.c.id == device_id).where(sa.or_(
                devices.c.telemetry_at.is_(None), devices.c.telemetry_at < at)).values(
                telemetry=json.dumps(dict(values)), telemetry_at=at, inputs=document))

    def touch_device(self, *, device_id: str, at: float) -> None:
        """Note that a device was heard from."""
        with self._tx() as conn:
            conn.execute(devices.update().where(devices.c.id == device_id)
                         .values(last_seen=at))

    # -- events ----------------------------------------------------------------------

    def add_event(self, **values: Any) -> bool:
        """Store an escalation once; ``False`` if its id was already stored.

        Raises:
            ImageStoreUnavailableError: The image store failed (retry).
            ImageStoreError: An image is larger than the image store takes.
        """
        return bool(self.add_events([values]))

    def add_events(self, rows: Sequence[Mapping[str, Any]], *,
                   seen: Mapping[str, float] | None = None) -> set[str]:
        """Store escalations in one transaction (one commit, one sync to disk), each id
        once, and note when their devices were heard from (``seen``: device id to time).

        Their ``crop`` and ``thumbnail`` go to the image store first (when there is one),
        the rows keeping their references: a row never names an image not yet stored,
        and retention (:meth:`prune`) deletes none of them before the rows commit.

        Returns:
            The ids that were new (the others were already stored).

        Raises:
            ImageStoreUnavailableError: The image store failed (retry).
            ImageStoreError: An image is larger than the image store takes.
        """
        with self._image_gate.putting():
            return self._add_events(rows, seen)

    def _add_events(self, rows: Sequence[Mapping[str, Any]],
                    seen: Mapping[str, float] | None) -> set[str]:
        if self.images is not None:
            rows = [self._with_image_refs(values) for values in rows]
        # One statement for the batch (executemany: SQLAlchemy sends it as one multi-row
        # INSERT ... RETURNING), its rows with the same columns: building and caching a
        # statement per row cost the intake thread about 0.5 ms of CPU per event (issue
        # 11). Rows in id order and devices in id order: replicas storing batches at once
        # then take their row locks in one order and wait for each other instead of
        # deadlocking (PostgreSQL breaks a deadlock after a second, and the batch is
        # retried).
        if not rows:
            return set()
        columns = sorted({column for values in rows for column in values})
        unknown = set(columns) - _EVENT_COLUMN_NAMES
        if unknown:
            raise StoreError(f"events have no column {', '.join(sorted(unknown))}")
        ordered = [[values.get(column) for column in columns]
                   for values in sorted(rows, key=lambda values: str(values["id"]))]
        with self._tx() as conn:
            driver = self._driver(conn)
            new = driver.insert_events(tuple(columns), ordered)
            if seen:
                driver.heard_from(sorted(seen.items()))
        return new

    def _with_image_refs(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A row's images put in the image store, the row naming them instead."""
        assert self.images is not None
        row = dict(values)
        for column in ("crop", "thumbnail"):
            data = row.pop(column, None)
            row[f"{column}_ref"] = self.images.put(data) if data is not None else None
        return row

    def set_verdict(self, *, event_id: str, outcome: str, detections: list[dict[str, Any]],
                    model: str, version: str, inference_ms: float, decided_at: float,
                    handled_by: str) -> None:
        """Record the hub's verdict for an event (the first one wins)."""
        self.set_verdicts([NewVerdict(event_id, outcome, detections, model, version,
                                      inference_ms, decided_at, handled_by)])

    def set_verdicts(self, verdicts: Sequence[NewVerdict]) -> dict[str, dict[str, Any]]:
        """Record verdicts in one transaction (one commit, one sync to disk); for each
        event the first verdict recorded wins.

        Returns:
            The events as stored now (another replica's verdict where it was first), read
            in the same transaction, without their images; an event no longer stored is
            absent.
        """
        if not verdicts:
            return {}
        with self._tx() as conn:
            driver = self._driver(conn)
            # In id order, as add_events: replicas' batches wait for, not deadlock on,
            # each other's row locks. One statement for all (executemany).
            driver.set_verdicts([
                (v.outcome, json.dumps(v.detections), v.model, v.version, v.inference_ms,
                 v.decided_at, v.handled_by, v.event_id)
                for v in sorted(verdicts, key=lambda v: v.event_id)])
            return {row["id"]: _event(row)
                    for row in driver.events([v.event_id for v in verdicts])}

    def get_event(self, *, event_id: str) -> dict[str, Any]:
        """One event, without its images.

        Raises:
            NotFoundError: No such event.
        """
        with self._tx() as conn:
            row = conn.execute(_GET_EVENT, {"event": event_id}).first()
        if row is None:
            raise NotFoundError("event", event_id)
        return _event(row._mapping)

    def event_image(self, *, event_id: str, kind: str) -> bytes | None:
        """An event's ``crop`` or ``thumbnail`` JPEG (``None`` if pruned or absent), from
        the image store, or from the row itself if it was stored before schema 9.

        Raises:
            NotFoundError: No such event.
            ImageStoreUnavailableError: The image store failed (retry).
        """
        blob, ref = ((events.c.crop, events.c.crop_ref) if kind == "crop"
                     else (events.c.thumbnail, events.c.thumbnail_ref))
        with self._tx() as conn:
            row = conn.execute(sa.select(blob, ref).where(events.c.id == event_id)).first()
        if row is None:
            raise NotFoundError("event", event_id)
        if row[1] is not None:
            return self.images.get(row[1]) if self.images is not None else None
        return bytes(row[0]) if row[0] is not None else None

    def list_events(self, *, device_id: str | None = None, outcome: str | None = None,
                    reason: str | None = None, since: float | None = None,
                    until: float | None = None, limit: int = 50,
                    cursor: str | None = None) -> EventPage:
        """Newest first, with a cursor for the next page.

        Raises:
            StoreError: The cursor is not one this store made.
        """
        query = sa.select(*_EVENT_COLUMNS).order_by(events.c.received_at.desc(),
                                                    events.c.id.desc()).limit(limit + 1)
        if device_id is not None:
            query = query.where(events.c.device_id == device_id)
        if outcome == "pending":
            query = query.where(events.c.outcome.is_(None))
        elif outcome is not None:
            query = query.where(events.c.outcome == outcome)
        if reason is not None:
            query = query.where(events.c.reason == reason)
        if since is not None:
            query = query.where(events.c.captured_at >= since)
        if until is not None:
            query = query.where(events.c.captured_at < until)
        if cursor is not None:
            received_at, last_id = _decode_cursor(cursor)
            query = query.where(sa.or_(
                events.c.received_at < received_at,
                sa.and_(events.c.received_at == received_at, events.c.id < last_id),
            ))
        with self._tx() as conn:
            rows = [_event(row._mapping) for row in conn.execute(query)]
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = _encode_cursor(rows[-1]["received_at"], rows[-1]["id"])
        return EventPage(rows, next_cursor)

    def event_counts(self, *, since: float) -> dict[str, Any]:
        """Totals for the dashboard and metrics: by outcome, and escalations per device."""
        totals = self.event_totals(since=since)
        return {"by_outcome": dict(totals.by_outcome), "by_device": dict(totals.by_device),
                "mean_verdict_latency_s": totals.mean_verdict_latency_s}

    def event_totals(self, *, since: float) -> EventTotals:
        """Escalations received since ``since``: by outcome, by device, and the mean
        capture-to-verdict latency, read from an index that covers them (a scan of the
        rows would read every image with them)."""
        with self._tx() as conn:
            groups = conn.execute(totals_query(since)).all()
        by_outcome: dict[str, int] = {}
        by_device: dict[str, int] = {}
        latency_s, judged = 0.0, 0
        for outcome, device_id, count, latency_sum, decided in groups:
            key = str(outcome)
            by_outcome[key] = by_outcome.get(key, 0) + int(count)
            by_device[str(device_id)] = by_device.get(str(device_id), 0) + int(count)
            latency_s += float(latency_sum or 0.0)
            judged += int(decided)
        return EventTotals(by_outcome=tuple(sorted(by_outcome.items())),
                           by_device=tuple(sorted(by_device.items())),
                           mean_verdict_latency_s=latency_s / judged if judged else None)

    def prune(self, *, images_before: float, events_before: float, images_idle_before: float,
              unescalated_before: float | None = None) -> tuple[int, int]:
        """Retention: drop images of older events first, then whole old events, and the
        journal steps as old as those events.

        Args:
            images_before: Drop the images of events received before this.
            events_before: Drop the events received before this.
            images_idle_before: Delete a released image from the image store only if no
                event references it and no put touched it since this (now less
                :data:`cloud_hub.images.IMAGE_GRACE_S`: a put whose event is not
                committed yet touched it less long ago).
            unescalated_before: Also drop journal steps received before this of tracks
                never escalated (their end step, which would have removed them, was lost).

        Returns:
            ``(events whose images were pruned, events deleted)``.
        """
        refs = events.c.crop_ref, events.c.thumbnail_ref
        with self._tx() as conn:
            aged = sa.or_(events.c.received_at < images_before,
                          events.c.received_at < events_before)
            released = {ref for row in conn.execute(sa.select(*refs).where(aged))
                        for ref in row if ref is not None}
            images = conn.execute(events.update().where(events.c.received_at < images_before)
                                  .where(sa.or_(events.c.crop.is_not(None),
                                                events.c.thumbnail.is_not(None),
                                                *(ref.is_not(None) for ref in refs)))
                                  .values(crop=None, thumbnail=None, crop_ref=None,
                                          thumbnail_ref=None)).rowcount
            deleted = conn.execute(events.delete()
                                   .where(events.c.received_at < events_before)).rowcount
            conn.execute(journal_steps.delete()
                         .where(journal_steps.c.received_at < events_before))
            if unescalated_before is not None:
                escalated = sa.select(sa.literal(1)).select_from(other).where(
                    other.c.device_id == journal_steps.c.device_id,
                    other.c.source == journal_steps.c.source,
                    other.c.track_id == journal_steps.c.track_id,
                    other.c.first_frame == journal_steps.c.first_frame,
                    other.c.event_id.is_not(None))
                conn.execute(journal_steps.delete()
                             .where(journal_steps.c.received_at < unescalated_before)
                             .where(~escalated.exists()))
        self._forget_images(released, idle_before=images_idle_before)
        return int(images), int(deleted)

    def _forget_images(self, released: set[str], *, idle_before: float) -> None:
        """Delete released images that no row references any more (the same image may be
        another event's too) and that no put touched since ``idle_before`` (the same image
        may be a new event's, its row not committed yet: on another hub, or on this one
        before the gate was taken)."""
        if self.images is None or not released:
            return
        ordered = sorted(released)
        for start in range(0, len(ordered), 500):  # an hour of a large fleet: bound the IN
            chunk = ordered[start:start + 500]
            with self._image_gate.deleting():
                with self._tx() as conn:
                    kept = {ref for column in (events.c.crop_ref, events.c.thumbnail_ref)
                            for ref in conn.execute(sa.select(column)
                                                    .where(column.in_(chunk))).scalars()}
                for ref in sorted(set(chunk) - kept):
                    self.images.delete_if_idle(ref, idle_before=idle_before)

    # -- the decision journal --------------------------------------------------------

    def add_journal_step(self, *, message: TrackEventMessage, received_at: float) -> None:
        """Keep one journal step (the caller has checked it, see :mod:`cloud_hub.journal`)."""
        with self._tx() as conn:
            conn.execute(journal_steps.insert().values(
                device_id=message.device_id, source=message.source,
                track_id=message.track_id, first_frame=message.first_frame,
                step=message.step, at=message.at, received_at=received_at,
                last_frame=message.last_frame, label=message.label, action=message.action,
                reason=message.reason, positive=message.positive,
                sightings=json.dumps([s.model_dump(mode="json") for s in message.sightings]),
                event_id=message.event_id, escalations=message.escalations,
                verdict=message.verdict, verdict_timing=message.verdict_timing,
                fell_back=message.fell_back, agrees=message.agrees))

    def forget_track(self, *, track: TrackKey, since: float) -> int:
        """Delete the steps of ``track``'s lifecycle from ``since`` (the ``at`` of its
        ``new`` step) on, when it ended never escalated; the number deleted. Steps that
        name an escalation are kept."""
        with self._tx() as conn:
            return int(conn.execute(journal_steps.delete()
                                    .where(*_of_track(track))
                                    .where(journal_steps.c.at >= since)
                                    .where(journal_steps.c.event_id.is_(None))
                                    .where(journal_steps.c.escalations == 0)).rowcount)

    def lifecycle_start(self, *, track: TrackKey, before: float) -> float | None:
        """The ``at`` of ``track``'s latest ``new`` step at or before ``before``."""
        with self._tx() as conn:
            return _lifecycle_bounds(conn, track, before)[0]

    def journal_of_event(self, *, event_id: str, device_id: str,
                         limit: int) -> tuple[list[JournalRecord], bool]:
        """The lifecycle of the track that ``device_id`` escalated as ``event_id``: its
        steps in the device's order (``at``, then arrival), and whether there were more
        than ``limit``. Empty when no stored step names the event.

        A track's key may name several lifecycles (track ids restart with the agent):
        the one returned runs from the last ``new`` step at or before the event's first
        step to the next ``new`` step of that key.
        """
        with self._tx() as conn:
            named = conn.execute(
                sa.select(journal_steps).where(journal_steps.c.event_id == event_id)
                .where(journal_steps.c.device_id == device_id)
                .order_by(journal_steps.c.at, journal_steps.c.id).limit(1)).first()
            if named is None:
                return [], False
            track = _track_key(named._mapping)
            start, end = _lifecycle_bounds(conn, track, named.at)
            query = (sa.select(journal_steps).where(*_of_track(track))
                     .order_by(journal_steps.c.at, journal_steps.c.id).limit(limit + 1))
            if start is not None:
                query = query.where(journal_steps.c.at >= start)
            if end is not None:
                query = query.where(journal_steps.c.at < end)
            rows = [_journal_record(row._mapping) for row in conn.execute(query)]
        return rows[:limit], len(rows) > limit

    # -- models and tokens -----------------------------------------------------------

    def add_model(self, *, name: str, version: str, task: str, runtime: str, sha256: str,
                  size_bytes: int, path: str) -> dict[str, Any]:
        """Record a model version (idempotent for the same name and version)."""
        with self._tx() as conn:
            conn.execute(self._insert_ignore(models).values(
                name=name, version=version, task=task, runtime=runtime, sha256=sha256,
                size_bytes=size_bytes, path=path, uploaded_at=time.time(),
            ).on_conflict_do_nothing(index_elements=["name", "version"]))
            row = conn.execute(sa.select(models).where(models.c.name == name)
                               .where(models.c.version == version)).first()
        assert row is not None
        return dict(row._mapping)

    def list_models(self, *, name: str | None = None) -> list[dict[str, Any]]:
        """Model versions, newest upload first."""
        query = sa.select(models).order_by(models.c.name, models.c.uploaded_at.desc())
        if name is not None:
            query = query.where(models.c.name == name)
        with self._tx() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def add_rollout(self, *, rollout: Rollout) -> None:
        """Store a new rollout (its revision 0).

        Raises:
            StoreError: A rollout with this id exists, or the database failed.
        """
        now = time.time()
        with self._tx() as conn:
            conn.execute(rollouts.insert().values(
                id=rollout.id, model=rollout.model, version=rollout.version,
                group_name=rollout.group, status=rollout.status,
                state=json.dumps(rollout.to_dict()), created_at=now, updated_at=now,
                revision=0))

    def update_rollout(self, *, rollout_id: str,
                       change: Callable[[Rollout], Rollout]) -> RolloutChange:
        """Apply ``change`` to a rollout atomically, whichever hub runs it.

        ``change`` must be pure: it runs again on the newer state when another writer
        stored one between this read and this write (compare-and-set on ``revision``).

        Raises:
            NotFoundError: No such rollout.
            StoreError: The database failed, holds a state that is not a rollout, or
                other writers won :data:`ROLLOUT_CAS_ATTEMPTS` times in a row (retry later).
        """
        for _ in range(ROLLOUT_CAS_ATTEMPTS):
            with self._tx() as conn:
                row = conn.execute(sa.select(rollouts.c.state, rollouts.c.revision)
                                   .where(rollouts.c.id == rollout_id)).first()
            if row is None:
                raise NotFoundError("rollout", rollout_id)
            before = _rollout(row[0])
            after = change(before)
            if after == before:
                return RolloutChange(before, after)
            with self._tx() as conn:
                written = conn.execute(
                    rollouts.update().where(rollouts.c.id == rollout_id)
                    .where(rollouts.c.revision == row[1])
                    .values(status=after.status, state=json.dumps(after.to_dict()),
                            revision=row[1] + 1, updated_at=time.time())).rowcount
            if written == 1:
                return RolloutChange(before, after)
            log.debug("rollout %s changed under us at revision %d; again", rollout_id, row[1])
        raise StoreError(f"rollout {rollout_id}: {ROLLOUT_CAS_ATTEMPTS} writes in a row lost "
                         "to other writers")

    def get_rollout(self, *, rollout_id: str) -> dict[str, Any]:
        """One rollout's state.

        Raises:
            NotFoundError: No such rollout.
        """
        with self._tx() as conn:
            row = conn.execute(sa.select(rollouts.c.state)
                               .where(rollouts.c.id == rollout_id)).first()
        if row is None:
            raise NotFoundError("rollout", rollout_id)
        state: dict[str, Any] = json.loads(row[0])
        return state

    def list_rollouts(self, *, status: str | None = None) -> list[dict[str, Any]]:
        """Rollouts, newest first."""
        query = sa.select(rollouts.c.state).order_by(rollouts.c.created_at.desc())
        if status is not None:
            query = query.where(rollouts.c.status == status)
        with self._tx() as conn:
            return [json.loads(row[0]) for row in conn.execute(query)]

    def add_update_report(self, *, device_id: str, rollout_id: str | None, model: str,
                          version: str, step: str, reason: str, at: float) -> None:
        """Keep a device's install step."""
        with self._tx() as conn:
            conn.execute(update_reports.insert().values(
                device_id=device_id, rollout_id=rollout_id, model=model, version=version,
                step=step, reason=reason, at=at))

    def update_reports_of(self, *, device_id: str) -> list[dict[str, Any]]:
        """A device's install steps, oldest first."""
        with self._tx() as conn:
            return [dict(row._mapping) for row in conn.execute(
                sa.select(update_reports).where(update_reports.c.device_id == device_id)
                .order_by(update_reports.c.id))]

    def fleet_state(self) -> FleetState:
        """Devices by group and state, rollouts by status, devices by update step."""
        latest = sa.select(sa.func.max(update_reports.c.id)).group_by(
            update_reports.c.device_id)
        with self._tx() as conn:
            by_group = conn.execute(
                sa.select(devices.c.group_name, devices.c.online, sa.func.count())
                .group_by(devices.c.group_name, devices.c.online)).all()
            by_status = conn.execute(
                sa.select(rollouts.c.status, sa.func.count()).group_by(rollouts.c.status)).all()
            by_step = conn.execute(
                sa.select(update_reports.c.step, sa.func.count())
                .where(update_reports.c.id.in_(latest))
                .group_by(update_reports.c.step)).all()
        return FleetState(
            devices=tuple((str(g), bool(o), int(n)) for g, o, n in by_group),
            rollouts=tuple((str(status), int(n)) for status, n in by_status),
            update_steps=tuple((str(step), int(n)) for step, n in by_step))

    def fleet_health(self, *, limit: int | None = None, after: str | None = None,
                     state: DeviceState | None = None,
                     offline_first: bool = False) -> list[DeviceHealth]:
        """Devices with their latest telemetry and latest failed update: by id after
        ``after`` (a page: ``limit`` of them, the next page after the last one's id), in
        ``state`` if given; with ``offline_first``, devices that are offline (not revoked)
        first, then online, then revoked, each by id (not pageable: the first ``limit``)."""
        revoked = devices.c.revoked_at.is_not(None)
        query = sa.select(devices)
        if state == "revoked":
            query = query.where(revoked)
        elif state is not None:
            query = query.where(devices.c.revoked_at.is_(None),
                                devices.c.online.is_(state == "online"))
        if after is not None:
            query = query.where(devices.c.id > after)
        order: tuple[sa.ColumnElement[Any], ...] = (devices.c.id,)
        if offline_first:
            order = (sa.case((revoked, 2), (devices.c.online.is_(True), 1), else_=0),
                     devices.c.id)
        query = query.order_by(*order)
        if limit is not None:
            query = query.limit(limit)
        with self._tx() as conn:
            rows = conn.execute(query).all()
            condition: sa.ColumnElement[bool] = update_reports.c.step.in_(
                sorted(FAILED_STEPS))
            if limit is not None:
                condition = sa.and_(condition,
                                    update_reports.c.device_id.in_([r.id for r in rows]))
            failed = {r.device_id: UpdateFailure(r.model, r.version, r.step, r.reason, r.at)
                      for r in conn.execute(self._latest_reports(condition))}
        return [DeviceHealth(
            id=r.id, group=r.group_name, online=bool(r.online), last_seen=r.last_seen,
            agent_version=r.agent_version, models=tuple(sorted(json.loads(r.models).items())),
            backend=r.backend,
            telemetry=tuple(sorted(json.loads(r.telemetry).items())) if r.telemetry else (),
            telemetry_at=r.telemetry_at, last_error=failed.get(r.id),
            inputs=tuple(sorted((name, InputHealth.model_validate(health))
                                for name, health in json.loads(r.inputs or "{}").items())),
            revoked=r.revoked_at is not None,
        ) for r in rows]

    def fleet_counts(self) -> FleetCounts:
        """How many devices there are, online and revoked, and their outboxes' backlog."""
        online = sa.and_(devices.c.online.is_(True), devices.c.revoked_at.is_(None))
        with self._tx() as conn:
            total, online_count, revoked_count = conn.execute(sa.select(
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(sa.case((online, 1), else_=0)), 0),
                sa.func.coalesce(sa.func.sum(
                    sa.case((devices.c.revoked_at.is_not(None), 1), else_=0)), 0),
            ).select_from(devices)).one()
            telemetry = conn.execute(sa.select(devices.c.telemetry).where(
                devices.c.telemetry.is_not(None), devices.c.revoked_at.is_(None),
            )).scalars().all()
        backlog = 0.0
        for document in telemetry:  # checked on arrival; a row an older hub wrote may not be
            value = json.loads(document).get("outbox_events", 0.0)
            if isinstance(value, int | float) and 0 <= value <= MAX_BACKLOG_VALUE:
                backlog += value
        return FleetCounts(int(total), int(online_count), int(revoked_count), backlog)

    def rollout_steps(self, *, rollout_id: str) -> list[DeviceStep]:
        """Each device's latest install step for one rollout, by device."""
        query = self._latest_reports(update_reports.c.rollout_id == rollout_id)
        with self._tx() as conn:
            return [DeviceStep(r.device_id, r.step, r.reason, r.at)
                    for r in conn.execute(query.order_by(update_reports.c.device_id))]

    @staticmethod
    def _latest_reports(condition: sa.ColumnElement[bool]) -> _Query:
        """Each device's latest update report among those that meet ``condition``."""
        latest = (sa.select(sa.func.max(update_reports.c.id)).where(condition)
                  .group_by(update_reports.c.device_id))
        return sa.select(update_reports).where(update_reports.c.id.in_(latest))

    def add_token(self, *, name: str, role: str, token_hash: str) -> int:
        """Store an API token's hash; returns its id."""
        with self._tx() as conn:
            result = conn.execute(tokens.insert().values(
                name=name, role=role, token_hash=token_hash, created_at=time.time()))
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def list_tokens(self) -> list[TokenRow]:
        """Every API token (never its hash), oldest first."""
        with self._tx() as conn:
            return [TokenRow(int(r.id), str(r.name), str(r.role), float(r.created_at),
                             r.last_used)
                    for r in conn.execute(sa.select(tokens.c.id, tokens.c.name, tokens.c.role,
                                                    tokens.c.created_at, tokens.c.last_used)
                                          .order_by(tokens.c.id))]

    def revoke_token(self, *, token_id: int) -> TokenRow:
        """Delete a token: the next request that carries it is refused (every request
        looks its token up here, so no cache outlives this).

        Raises:
            NotFoundError: No such token.
        """
        with self._tx() as conn:
            row = conn.execute(sa.select(tokens.c.id, tokens.c.name, tokens.c.role,
                                         tokens.c.created_at, tokens.c.last_used)
                               .where(tokens.c.id == token_id)).first()
            if row is None:
                raise NotFoundError("token", str(token_id))
            conn.execute(tokens.delete().where(tokens.c.id == token_id))
        return TokenRow(int(row.id), str(row.name), str(row.role), float(row.created_at),
                        row.last_used)

    def token_role(self, *, token_hash: str) -> tuple[str, str] | None:
        """``(name, role)`` of a token, or ``None``."""
        with self._tx() as conn:
            row = conn.execute(sa.select(tokens.c.name, tokens.c.role)
                               .where(tokens.c.token_hash == token_hash)).first()
        return (str(row[0]), str(row[1])) if row is not None else None


other = journal_steps.alias("other")


def _of_track(track: TrackKey) -> tuple[sa.ColumnElement[bool], ...]:
    return (journal_steps.c.device_id == track.device_id,
            journal_steps.c.source == track.source,
            journal_steps.c.track_id == track.track_id,
            journal_steps.c.first_frame == track.first_frame)


def _lifecycle_bounds(conn: Connection, track: TrackKey,
                      at: float) -> tuple[float | None, float | None]:
    """The ``at`` of the ``new`` steps of ``track`` that begin the lifecycle holding
    ``at`` and the one after it (``None``: not stored)."""
    new = sa.select(journal_steps.c.at).where(*_of_track(track)).where(
        journal_steps.c.step == "new").subquery()
    start = conn.execute(sa.select(sa.func.max(new.c.at)).where(new.c.at <= at)).scalar()
    end = conn.execute(sa.select(sa.func.min(new.c.at)).where(new.c.at > at)).scalar()
    return (float(start) if start is not None else None,
            float(end) if end is not None else None)


def _track_key(row: Any) -> TrackKey:
    return TrackKey(str(row["device_id"]), str(row["source"]), int(row["track_id"]),
                    int(row["first_frame"]))


_SIGHTINGS = pydantic.TypeAdapter(tuple[SightingPayload, ...])


def _journal_record(row: Any) -> JournalRecord:
    try:
        sightings = _SIGHTINGS.validate_json(row["sightings"])
    except pydantic.ValidationError as exc:
        raise StoreError(f"journal step {row['id']} holds unreadable sightings") from exc
    return JournalRecord(
        id=int(row["id"]), track=_track_key(row), step=cast(JournalStep, row["step"]),
        at=float(row["at"]), received_at=float(row["received_at"]),
        last_frame=int(row["last_frame"]), label=str(row["label"]),
        action=cast(Literal["local", "escalate", "drop"], row["action"]),
        reason=str(row["reason"]), positive=bool(row["positive"]), sightings=sightings,
        event_id=row["event_id"], escalations=int(row["escalations"]),
        verdict=row["verdict"], verdict_timing=row["verdict_timing"],
        fell_back=bool(row["fell_back"]),
        agrees=None if row["agrees"] is None else bool(row["agrees"]))


# An event's images (bytes in old rows, references in new ones): never read with its row.
_IMAGE_COLUMNS = ("crop", "thumbnail", "crop_ref", "thumbnail_ref")
_EVENT_COLUMNS = [c for c in events.c if c.name not in _IMAGE_COLUMNS] + [
    sa.or_(events.c.crop.is_not(None), events.c.crop_ref.is_not(None)).label("has_crop"),
    sa.or_(events.c.thumbnail.is_not(None),
           events.c.thumbnail_ref.is_not(None)).label("has_thumbnail"),
]

_GET_EVENT = sa.select(*_EVENT_COLUMNS).where(events.c.id == sa.bindparam("event"))
_EVENT_COLUMN_NAMES = frozenset(column.name for column in events.c)

# Ingest's statements, run for every batch of escalations and of verdicts, go to the
# driver's cursor as SQL text, not through SQLAlchemy's statements: each of those cost
# 25-45 us of CPU a call to build its parameters and execution context (cache key,
# compiled parameters, result metadata), 40 % of the store's CPU per event at the
# batch sizes a hub under moderate load sees (issue 11: 1.2 ms of CPU per event for a
# batch of one, 0.7 ms this way). The text is the same on SQLite (3.35 and later:
# RETURNING) and PostgreSQL but for the drivers' parameter marks.
_SELECTED_EVENT_COLUMNS = ", ".join(
    [c.name for c in events.c if c.name not in _IMAGE_COLUMNS]
    + ["(crop IS NOT NULL OR crop_ref IS NOT NULL) AS has_crop",
       "(thumbnail IS NOT NULL OR thumbnail_ref IS NOT NULL) AS has_thumbnail"])
# One multi-row INSERT holds at most this many rows: well under SQLite's 32,766 and
# PostgreSQL's 65,535 parameters at the events table's 27 columns.
_INSERT_ROWS = 512


@dataclass(frozen=True, slots=True)
class _IngestSql:
    """Ingest's statements for one driver, whose parameter mark is ``mark``."""

    mark: str

    def marks(self, count: int) -> str:
        return ", ".join([self.mark] * count)

    def standings(self, count: int) -> str:
        return f"SELECT id, revoked_at FROM devices WHERE id IN ({self.marks(count)})"

    def insert_events(self, columns: Sequence[str], rows: int) -> str:
        row = f"({self.marks(len(columns))})"
        # RETURNING, not rowcount: psycopg reports 1 for a skipped conflicting row.
        return (f"INSERT INTO events ({', '.join(columns)}) VALUES "
                f"{', '.join([row] * rows)} ON CONFLICT (id) DO NOTHING RETURNING id")

    def heard_from(self) -> str:
        return f"UPDATE devices SET last_seen = {self.mark} WHERE id = {self.mark}"

    def set_verdict(self) -> str:
        assignments = ", ".join(f"{name} = {self.mark}" for name in (
            "outcome", "hub_detections", "hub_model", "hub_version", "inference_ms",
            "decided_at", "handled_by"))
        return (f"UPDATE events SET {assignments} WHERE id = {self.mark} "
                "AND outcome IS NULL")

    def events(self, count: int) -> str:
        return (f"SELECT {_SELECTED_EVENT_COLUMNS} FROM events "
                f"WHERE id IN ({self.marks(count)})")


_INGEST_SQL = {"sqlite": _IngestSql("?"), "postgresql": _IngestSql("%s")}


class _DriverCursor:
    """Ingest's statements on one driver cursor (in a :meth:`Store._tx` transaction)."""

    def __init__(self, cursor: Any, sql: _IngestSql) -> None:
        self._cursor = cursor
        self._sql = sql

    def standings(self, device_ids: Sequence[str]) -> list[tuple[str, float | None]]:
        self._cursor.execute(self._sql.standings(len(device_ids)), device_ids)
        return [(row[0], row[1]) for row in self._cursor.fetchall()]

    def insert_events(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> set[str]:
        """Insert rows (each ``columns``' values) not stored yet; the ids inserted."""
        new: set[str] = set()
        for start in range(0, len(rows), _INSERT_ROWS):
            chunk = rows[start:start + _INSERT_ROWS]
            self._cursor.execute(self._sql.insert_events(columns, len(chunk)),
                                 [value for row in chunk for value in row])
            new.update(row[0] for row in self._cursor.fetchall())
        return new

    def heard_from(self, devices_at: Sequence[tuple[str, float]]) -> None:
        self._cursor.executemany(self._sql.heard_from(),
                                 [(at, device_id) for device_id, at in devices_at])

    def set_verdicts(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self._cursor.executemany(self._sql.set_verdict(), rows)

    def events(self, event_ids: Sequence[str]) -> list[dict[str, Any]]:
        self._cursor.execute(self._sql.events(len(event_ids)), event_ids)
        names = [column[0] for column in self._cursor.description]
        return [dict(zip(names, row, strict=True)) for row in self._cursor.fetchall()]


def _device(row: Any) -> dict[str, Any]:
    device = dict(row)
    device.pop("credential_hash", None)
    device.pop("status_seq", None)
    device["group"] = device.pop("group_name")
    device["labels"] = json.loads(device["labels"])
    device["models"] = json.loads(device["models"])
    device["inputs"] = {name: InputHealth.model_validate(health)
                        for name, health in json.loads(device["inputs"] or "{}").items()}
    device["online"] = bool(device["online"])
    device["telemetry"] = json.loads(device["telemetry"]) if device["telemetry"] else {}
    device["revoked"] = device["revoked_at"] is not None
    return device


def _rollout(state: str) -> Rollout:
    try:
        return Rollout.from_dict(json.loads(state))
    except (ValueError, SyncError) as exc:
        raise StoreError(f"a stored rollout is unreadable: {exc}") from exc


def _event(row: Any) -> dict[str, Any]:
    event = dict(row)
    width, height = event.pop("frame_width"), event.pop("frame_height")
    event["frame_size"] = (width, height) if width and height else None
    event["edge_detections"] = json.loads(event["edge_detections"])
    event["hub_detections"] = (json.loads(event["hub_detections"])
                               if event["hub_detections"] else None)
    event["has_crop"] = bool(event["has_crop"])
    event["has_thumbnail"] = bool(event["has_thumbnail"])
    return event


def _encode_cursor(received_at: float, event_id: str) -> str:
    return base64.urlsafe_b64encode(f"{received_at!r}|{event_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        received_at, event_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return float(received_at), event_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadCursorError(f"invalid cursor {cursor!r}") from exc


def _private_sqlite_file(url: str) -> None:
    """Create the database file ``0600`` before SQLite does (it would take the umask's
    ``0644``), and tighten one that exists: it holds face crops. SQLite gives its WAL and
    shared-memory files the database file's mode."""
    database = sa.engine.make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        for existing in (path, path.with_name(f"{path.name}-wal"),
                         path.with_name(f"{path.name}-shm")):
            if existing.exists():
                existing.chmod(0o600)
    except OSError as exc:
        raise StoreError(f"{path}: cannot create the database file: {exc.strerror}") from exc


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode = WAL")
    # FULL: the hub acknowledges an escalation once its commit returns, and after that the
    # device forgets it, so the commit must survive a power cut, not only a crash.
    cursor.execute("PRAGMA synchronous = FULL")
    cursor.execute("PRAGMA busy_timeout = 30000")
    cursor.close()
