"""Fixtures for edge agent tests: a private broker per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker import MosquittoBroker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A private Mosquitto on a free port, restartable by the test."""
    instance = MosquittoBroker(tmp_path / "broker")
    instance.start()
    yield instance
    instance.stop()
