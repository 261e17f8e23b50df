"""The hub's worker threads, owned and supervised.

Every long-lived thread of the hub (intake, judge, verdict writer, retention) is started
through :class:`Supervisor`. A thread that raises, or returns while the hub is not
stopping, is a failure of the whole process: a hub that silently lost its intake threads
would stay up, answer ``/healthz`` and take no escalation again. The failure is logged
with its traceback, ``/readyz`` names it, and ``cloud-hub serve`` exits non-zero (70,
``EX_SOFTWARE``) so that systemd or Kubernetes starts it again; what it held
unacknowledged the broker delivers again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

EXIT_THREAD_FAILED = 70  # EX_SOFTWARE: an internal error, restart me


class Supervisor:
    """Starts named daemon threads and records the first that fails."""

    def __init__(self) -> None:
        self.failed = threading.Event()
        self.failure: str | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def spawn(self, target: Callable[[], None], name: str) -> threading.Thread:
        """Start ``target`` on a daemon thread called ``name``; it is expected to run
        until :meth:`stopping` is called."""
        thread = threading.Thread(target=self._run, args=(target, name), name=name,
                                  daemon=True)
        thread.start()
        return thread

    def stopping(self) -> None:
        """The hub is stopping: threads may end now."""
        self._stopping.set()

    def fail(self, failure: str) -> None:
        """Record a failure (the first one is kept) and wake whoever waits on it."""
        with self._lock:
            if self.failure is None:
                self.failure = failure
        self.failed.set()

    def _run(self, target: Callable[[], None], name: str) -> None:
        try:
            target()
        except BaseException as exc:
            log.critical("hub thread %s died; the hub stops so that it is restarted",
                         name, exc_info=True)
            self.fail(f"thread {name} died: {type(exc).__name__}: {exc}")
            return  # logged above with its traceback; the process stops on the failure
        if not self._stopping.is_set():
            log.critical("hub thread %s ended while the hub runs; the hub stops so that it "
                         "is restarted", name)
            self.fail(f"thread {name} ended")


class Server(Protocol):
    """What :func:`run_until_failure` runs: uvicorn's ``Server``, or a test's fake."""

    should_exit: bool

    def run(self) -> None:
        """Serve until :attr:`should_exit` is set."""


def run_until_failure(server: Server, supervisor: Supervisor) -> int:
    """Run ``server`` until it stops, or until a supervised thread fails (then it is told
    to stop gracefully); the process's exit status: 0, or :data:`EXIT_THREAD_FAILED`."""

    def stop_on_failure() -> None:
        supervisor.failed.wait()
        server.should_exit = True

    threading.Thread(target=stop_on_failure, name="serve-watchdog", daemon=True).start()
    server.run()
    return EXIT_THREAD_FAILED if supervisor.failure is not None else 0
