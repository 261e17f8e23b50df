"""Whole processes that a test starts, kills (``kill -9``) and stops cleanly (SIGTERM).

Each process writes its output to a log file in the test's folder, never to a pipe that
nobody reads (a full pipe would block it). :meth:`ManagedProcess.check_alive` raises with
the tail of that log, so that a crash fails the test at once and says why.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from cloud_hub.mosquitto import MosquittoBroker, free_port
from tests.support.producer import ProducerPlan, ProducerStatus, read_status
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent.parent
LOG_TAIL_BYTES = 3000
STOP_TIMEOUT_S = 30.0


class ManagedProcess:
    """One command that can be started again after it was killed or stopped.

    Args:
        name: For messages and the log file's name.
        command: The argument vector.
        env: The whole environment of the process.
        folder: Where the log goes (``<name>.log``, appended across restarts).
    """

    def __init__(self, name: str, command: list[str], env: Mapping[str, str],
                 folder: Path) -> None:
        self.name = name
        self.command = command
        self.env = dict(env)
        self.log = folder / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        """Start the process (it must not be running)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        with self.log.open("ab") as log:
            log.write(f"--- start {self.starts + 1}\n".encode())
            log.flush()
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """``kill -9`` and reap it."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def terminate(self) -> int | None:
        """SIGTERM, and wait for it to exit (killing it if it takes too long).

        Returns:
            Its exit status, or ``None`` if it was not running.
        """
        if not self.running:
            return None
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not stop within {STOP_TIMEOUT_S} s of "
                                 f"SIGTERM\n{self.log_tail()}") from None

    def check_alive(self) -> None:
        """Raise if the process died by itself."""
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.process.returncode}\n"
                                 f"{self.log_tail()}")

    def log_tail(self) -> str:
        """The end of the process's log."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as log:
            log.seek(max(0, self.log.stat().st_size - LOG_TAIL_BYTES))
            return log.read().decode(errors="replace")


class HubProcess(ManagedProcess):
    """``cloud-hub serve`` with ``CLOUD_HUB_*`` settings; ready when ``/readyz`` says so.

    Args:
        name: For messages and logs.
        settings: ``CLOUD_HUB_<NAME>`` values (without the prefix), added to the test's
            environment stripped of any ``CLOUD_HUB_*`` of its own.
        folder: For the log.
    """

    def __init__(self, name: str, settings: Mapping[str, str], folder: Path) -> None:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("CLOUD_HUB_")}
        env.update({f"CLOUD_HUB_{key.upper()}": value for key, value in settings.items()})
        super().__init__(name, [sys.executable, "-m", "cloud_hub.cli", "serve"], env, folder)
        self.http_port = 0

    def start(self) -> None:
        """Start on a port free right now: one picked earlier may since have become the
        local end of some outgoing connection."""
        self.http_port = free_port()
        self.env["CLOUD_HUB_HTTP_PORT"] = str(self.http_port)
        super().start()

    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200 (models loaded, database and broker up)."""
        url = f"http://127.0.0.1:{self.http_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Wait until ready.

        Raises:
            AssertionError: It died or was not ready in time.
        """
        if not wait_until(self.ready, timeout_s=timeout_s, interval_s=0.3,
                          alive=self.check_alive):
            raise AssertionError(f"{self.name} not ready within {timeout_s} s\n"
                                 f"{self.log_tail()}")


class ProducerProcess(ManagedProcess):
    """The agent-side producer (:mod:`tests.support.producer`) of one plan."""

    def __init__(self, name: str, plan: ProducerPlan, folder: Path) -> None:
        self.plan = plan
        plan_file = folder / f"{name}.plan.json"
        plan.write(plan_file)
        super().__init__(name, [sys.executable, "-m", "tests.support.producer",
                                str(plan_file)], os.environ, folder)

    def status(self) -> ProducerStatus | None:
        """The status the running process last wrote (``None`` before its first)."""
        status = read_status(Path(self.plan.status))
        if status is None or self.process is None or status.pid != self.process.pid:
            return None
        return status

    def wait_connected(self, timeout_s: float = 60.0) -> None:
        """Wait until the current process reports its broker session up.

        Raises:
            AssertionError: It died or did not connect in time.
        """
        def connected() -> bool:
            status = self.status()
            return status is not None and status.connected

        if not wait_until(connected, timeout_s=timeout_s, alive=self.check_alive):
            raise AssertionError(f"{self.name} did not connect within {timeout_s} s\n"
                                 f"{self.log_tail()}")


def kill_broker(broker: MosquittoBroker) -> None:
    """``kill -9`` the broker: what it had not saved is gone (sessions, queued messages)."""
    if broker.process is not None:
        broker.process.kill()
        broker.process.wait()
        broker.process = None
