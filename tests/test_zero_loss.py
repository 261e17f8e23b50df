"""Zero loss end to end (issue 8): every event the agent committed is stored at the hub
once, through the faults of the issue's table, on a 5,000-event stream.

The faults are real: ``kill -9`` of the agent (five times), of the broker (twice, 5 s
down each) and of a hub (twice); a clean SIGTERM restart of a hub (twice); the broker
down for 60 s while the agent produces. The hub runs as ``make demo`` runs it (no client
id set) on its embedded SQLite store; the second test runs two replicas on PostgreSQL
sharing the subscription (each with its own client id, as two replicas on one host must).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from models import ModelStore
from tests.support.faults import FaultRig

pytestmark = pytest.mark.e2e

log = logging.getLogger(__name__)

EVENTS = 5000
RATE_PER_S = 30.0  # the stream (167 s) outlasts the faults (130-150 s of them here)
HUB_CATCH_UP_S = 120.0  # a lost receipt is waited for 30 s, then retried
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A database of this test's own, dropped afterwards; yields its URL."""
    name = f"zero_loss_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield f"{POSTGRES}/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _run(rig: FaultRig) -> None:
    try:
        rig.start()
        rig.run_fault_table()
        report = rig.finish(timeout_s=HUB_CATCH_UP_S)
    finally:
        rig.close()
    log.warning("zero-loss run:\n%s", report.summary())
    assert report.committed >= EVENTS * 0.95, report.summary()  # kills cost a few uncommitted
    assert len(report.unexpected) == 0, report.summary()
    assert len(report.stored_twice) == 0, report.summary()
    assert len(report.lost) == 0, report.summary()


def test_no_event_lost_or_stored_twice_through_the_fault_table(
    tmp_path: Path, zoo_store: ModelStore
) -> None:
    _run(FaultRig(tmp_path, model_store=zoo_store.root, total=EVENTS, rate_per_s=RATE_PER_S))


def test_two_hubs_on_postgresql_lose_nothing_through_the_fault_table(
    tmp_path: Path, zoo_store: ModelStore, postgres_database: str
) -> None:
    _run(FaultRig(tmp_path, model_store=zoo_store.root, hubs=2,
                  database_url=postgres_database, client_ids=True, total=EVENTS,
                  rate_per_s=RATE_PER_S))
