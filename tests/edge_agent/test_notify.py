"""systemd notifications on a real NOTIFY_SOCKET, and the watchdog of a stuck pipeline."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from edge_agent.notify import SystemdNotifier
from models import ModelStore
from tests.broker import MosquittoBroker
from tests.edge_agent.agent_helpers import AgentThread, agent_config, fake_model_loader

pytestmark = pytest.mark.integration


class NotifySocket:
    """A datagram socket standing in for systemd's, recording every message."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while self.running:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def watchdog_times(self) -> list[float]:
        return [t for t, m in self.messages if "WATCHDOG=1" in m.split("\n")]

    def close(self) -> None:
        self.running = False
        self.thread.join(2)
        self.sock.close()


def test_notifier_formats_and_abstract_socket(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"edge-agent-test-{time.monotonic_ns()}"
    listener.bind("\0" + name)
    notifier = SystemdNotifier("@" + name, watchdog_usec=3_000_000)
    assert notifier.watchdog_interval_s == 1.5
    assert notifier.ready("up")
    assert listener.recv(100) == b"READY=1\nSTATUS=up"
    assert SystemdNotifier(None).ready("x") is False
    listener.close()


def test_ready_watchdog_and_silence_when_the_pipeline_is_stuck(
    broker: MosquittoBroker, zoo_store: ModelStore, tmp_path: Path
) -> None:
    bundle = zoo_store.resolve("blazeface-short")
    release = threading.Event()
    calls = {"n": 0}

    def handler(batch: npt.NDArray[np.generic]) -> dict[str, npt.NDArray[np.generic]]:
        calls["n"] += 1
        if calls["n"] > 20:
            release.wait(30)  # the inference hangs (a wedged accelerator, say)
        return {"regressors": np.zeros((1, 896, 16), np.float32),
                "classificators": np.full((1, 896, 1), -10.0, np.float32)}

    loader = fake_model_loader(bundle, "stuck-after-20", handler)

    systemd = NotifySocket(tmp_path / "notify.sock")
    raw = agent_config(tmp_path, broker.port, zoo_store.root,
                       watchdog={"stuck_after_s": 1.0})
    raw["sources"] = [{"name": "yard", "kind": "sample", "model": "blazeface-short",
                       "loop": True, "max_fps": 50.0, "motion": {"enabled": False}}]
    notifier = SystemdNotifier(str(tmp_path / "notify.sock"), watchdog_usec=400_000)
    run = AgentThread(raw, model_loader=loader, notifier=notifier).start()
    try:
        deadline = time.monotonic() + 30
        while calls["n"] <= 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        stuck_at = time.monotonic()
        time.sleep(3.0)
        messages = [m for _, m in systemd.messages]
        assert messages[0].startswith("READY=1\nSTATUS=")
        pings = systemd.watchdog_times()
        before = [t for t in pings if t < stuck_at]
        assert len(before) >= 2
        # Pings stop within stuck_after_s (+ one ping interval) of the hang.
        assert not [t for t in pings if t > stuck_at + 1.0 + 0.3]
        assert any("pipeline stuck" in m for m in messages)
        release.set()
        time.sleep(1.0)
        assert [t for t in systemd.watchdog_times() if t > stuck_at + 3.0]  # pinging again
    finally:
        release.set()
        assert run.finish() == 0
        systemd.close()
    assert "STOPPING=1" in systemd.messages[-1][1]
