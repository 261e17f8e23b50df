"""The README's main command: broker, hub and agent on one machine, stopped cleanly."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cloud_hub.demo import run_demo
from cloud_hub.store import Store
from models import ModelStore
from tests.broker import free_port

pytestmark = pytest.mark.e2e


def test_demo_runs_the_whole_system_and_stops(
    tmp_path: Path, zoo_store: ModelStore, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EDGE_AGENT_MODEL_STORE", str(zoo_store.root))
    stop = threading.Event()
    outcome: dict[str, int] = {}
    port = free_port()
    thread = threading.Thread(target=lambda: outcome.update(
        code=run_demo(port=port, loop=False, stop=stop, folder=tmp_path)))
    thread.start()
    try:
        database = tmp_path / "hub" / "hub.sqlite3"
        # A hang guard, not a speed test: on two loaded cores the hub's model load and
        # batch autotune alone can take a minute.
        deadline = time.monotonic() + 300
        while not database.exists():
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.2)
        store = Store(f"sqlite:///{database}")
        store.open()
        while True:
            counts = store.event_counts(since=0)["by_outcome"]
            # The agent tracks objects, so one pass of the footage escalates each face's track
            # (and the cat) rather than many frames: both outcomes, faces more than once.
            if counts.get("confirmed", 0) >= 2 and counts.get("rejected", 0) >= 1:
                break
            assert time.monotonic() < deadline and thread.is_alive(), counts
            time.sleep(0.5)
        store.close()
    finally:
        stop.set()
        thread.join(90)
    assert outcome == {"code": 0}
    printed = capsys.readouterr().out
    assert f"http://127.0.0.1:{port}/dashboard/login?token=hub_" in printed
    assert "stopped" in printed
