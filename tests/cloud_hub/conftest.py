"""Hub fixtures: a store on SQLite and on the real PostgreSQL, each test in its own schema."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cloud_hub.store import Store

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def postgres_schema() -> Iterator[str]:
    """A fresh schema in the ``test`` database, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    yield schema
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


def postgres_store_url(schema: str) -> str:
    """A URL whose connections use ``schema``."""
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An open, migrated store on each backend."""
    if request.param == "sqlite":
        instance = Store(f"sqlite:///{tmp_path / 'hub.sqlite3'}")
    else:
        schema = request.getfixturevalue("postgres_schema")
        instance = Store(postgres_store_url(schema))
    instance.open()
    yield instance
    instance.close()
