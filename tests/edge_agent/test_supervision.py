"""The composition root: the threads it starts are the ones it documents, a dead worker
ends the agent, and local faults (a full disk, a damaged outbox) are degraded around."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

import edge_agent.agent
from edge_agent.agent import EXIT_WORKER_CRASHED, ModelLoader
from models import ModelStore
from sync import TopicLayout
from tests.broker import Collector, MosquittoBroker, free_port
from tests.edge_agent.agent_helpers import (
    AgentThread,
    agent_config,
    agent_process,
    fake_model_loader,
    read_status,
    write_config,
)

pytestmark = pytest.mark.integration

LAYOUT = TopicLayout()


def documented_threads() -> list[str]:
    """The thread names the composition root's docstring lists (with placeholders)."""
    doc = edge_agent.agent.__doc__ or ""
    return re.findall(r"^``([^`]+)``", doc, flags=re.MULTILINE)


def test_the_running_threads_are_exactly_the_documented_ones(
    broker: MosquittoBroker, zoo_store: ModelStore, tmp_path: Path
) -> None:
    templates = documented_threads()
    assert {"MainThread", "pipeline", "uplink", "actions"} <= set(templates)
    raw = agent_config(tmp_path, broker.port, zoo_store.root,
                       metrics={"port": free_port(), "host": "127.0.0.1"})
    raw["sources"] = [{"name": "yard", "kind": "sample", "model": "blazeface-short",
                       "loop": True, "max_fps": 20.0}]
    raw["actions"] = [{"kind": "mqtt", "on": ["decision"], "topic": "home/yard"}]
    config = write_config(tmp_path / "agent.toml", raw)
    process = agent_process(config)
    try:
        deadline = time.monotonic() + 60
        status: dict[str, object] = {}
        while time.monotonic() < deadline and not status.get("connected"):
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            time.sleep(0.2)
            status = read_status(tmp_path / "state")
        assert status.get("connected"), status
    finally:
        process.terminate()
        process.wait(30)
    # Fill in the placeholders for this configuration: one sample source, metrics and
    # an action on, no sensor source, signed updates and Home Assistant off.
    expected = set()
    for template in templates:
        name = (template.replace("<name>", "yard").replace("<device id>", "cam-test"))
        if template.startswith("sensor:") or template in ("updater", "home-assistant"):
            continue
        expected.add(name)
    assert set(status["threads"]) == expected  # type: ignore[arg-type]


def _crashing_loader(
    zoo_store: ModelStore, after: int
) -> tuple[ModelLoader, dict[str, int]]:
    calls = {"n": 0}

    def handler(batch: npt.NDArray[np.generic]) -> dict[str, npt.NDArray[np.generic]]:
        calls["n"] += 1
        if calls["n"] > after:  # a bug, not a model error: nothing in the pipeline expects it
            raise RuntimeError("a bug in the pipeline")
        return {"regressors": np.zeros((1, 896, 16), np.float32),
                "classificators": np.full((1, 896, 1), -10.0, np.float32)}

    return fake_model_loader(zoo_store.resolve("blazeface-short"), "crashes", handler), calls


def test_a_worker_that_dies_ends_the_agent_with_a_non_zero_code(
    broker: MosquittoBroker, zoo_store: ModelStore, tmp_path: Path
) -> None:
    loader, calls = _crashing_loader(zoo_store, after=5)
    raw = agent_config(tmp_path, broker.port, zoo_store.root)
    raw["sources"] = [{"name": "yard", "kind": "sample", "model": "blazeface-short",
                       "loop": True, "max_fps": 50.0, "motion": {"enabled": False}}]
    run = AgentThread(raw, model_loader=loader).start()
    run.thread.join(60)  # no stop is ever requested: only the crash can end it
    assert not run.thread.is_alive()
    assert run.error is None and run.exit_code == EXIT_WORKER_CRASHED
    assert calls["n"] == 6  # it stopped at the crash, not later


def test_a_full_disk_degrades_to_local_decisions_and_recovers(
    broker: MosquittoBroker, zoo_store: ModelStore, tmp_path: Path
) -> None:
    hub = Collector(broker.port, LAYOUT.all_devices("events"))
    raw = agent_config(tmp_path, broker.port, zoo_store.root,
                       fallback={"verdict_timeout_s": 30.0})
    raw["sources"] = [{"name": "yard", "kind": "sample", "model": "blazeface-short",
                       "loop": True, "max_fps": 30.0}]
    raw["policy"] = {**raw["policy"], "confident_score": 0.99, "uncertain_score": 0.3}
    # Every frame's face a new track, so every frame escalates: the outbox keeps growing.
    raw["tracking"] = {"min_iou": 0.99, "max_missed_frames": 1}
    run = AgentThread(raw).start()
    try:
        run.wait_until(lambda s: s["escalations"] >= 3 and s["connected"], 60)
        outbox = run.agent.outbox
        pages = int(outbox.conn.execute("PRAGMA page_count").fetchone()[0])
        # SQLITE_FULL exactly as a full disk gives it, from the next page on.
        outbox.conn.execute(f"PRAGMA max_page_count = {pages}")
        full = run.wait_until(lambda s: s["outbox"]["degraded"] == "disk-full", 60)
        dropped = run.agent.metrics.registry.get_sample_value(
            "edge_dropped_total", {"reason": "disk-full"})
        assert dropped is not None and dropped >= 1
        # Still serving: frames are read and decided, escalations decided locally at once.
        later = run.wait_until(lambda s: s["fallbacks"] >= 1 and
                               s["sources"]["yard"]["processed"] >
                               full["sources"]["yard"]["processed"] + 20, 60)
        assert later["running"]
        outbox.conn.execute("PRAGMA max_page_count = 1073741823")  # space returns
        run.wait_until(lambda s: s["outbox"]["degraded"] is None, 60)
        before = run.agent.snapshot()["escalations"]
        run.wait_until(lambda s: s["escalations"] > before + 2 and s["outbox"]["events"] == 0,
                       60)
    finally:
        assert run.finish() == 0
        hub.close()


def test_a_damaged_outbox_is_moved_aside_and_the_agent_serves(
    broker: MosquittoBroker, zoo_store: ModelStore, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.sqlite3").write_bytes(b"\x00garbage page " * 5000)
    raw = agent_config(tmp_path, broker.port, zoo_store.root)
    raw["sources"] = [{"name": "yard", "kind": "sample", "model": "blazeface-short",
                       "loop": True, "max_fps": 30.0}]
    run = AgentThread(raw).start()
    try:
        status = run.wait_until(lambda s: s["sources"]["yard"]["processed"] > 10, 60)
        salvage = status["outbox"]["salvage"]
        assert salvage is not None and Path(salvage["moved_to"]).exists()
        assert salvage["recovered"] == 0
        assert run.agent.metrics.registry.get_sample_value("edge_outbox_damaged_total") == 1.0
    finally:
        assert run.finish() == 0
