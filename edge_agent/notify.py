"""systemd notifications (``sd_notify``) over the ``NOTIFY_SOCKET`` datagram socket.

Implemented directly (it is one datagram per message) so the agent needs no libsystemd.
Outside systemd, ``NOTIFY_SOCKET`` is unset and every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends ``READY=1``, ``STATUS=...``, ``WATCHDOG=1`` and ``STOPPING=1``.

    Args:
        address: The socket path; a leading ``@`` means Linux's abstract namespace.
        watchdog_usec: ``WATCHDOG_USEC`` from the environment; 0 when there is no watchdog.
    """

    def __init__(self, address: str | None, watchdog_usec: int = 0) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._socket: socket.socket | None = None

    @classmethod
    def from_environment(cls) -> SystemdNotifier:
        """Configure from ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` (ignored for other PIDs)."""
        usec = 0
        watchdog_pid = os.environ.get("WATCHDOG_PID")
        if watchdog_pid is None or watchdog_pid == str(os.getpid()):
            try:
                usec = int(os.environ.get("WATCHDOG_USEC", "0"))
            except ValueError:
                usec = 0
        return cls(os.environ.get("NOTIFY_SOCKET") or None, usec)

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify."""
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half the watchdog timeout, as systemd recommends."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` as one message; ``False`` if it could not be sent."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.sendto("\n".join(fields).encode(), target)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        """Startup finished."""
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        """One line for ``systemctl status``."""
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        """The pipeline is alive."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """Shutdown has begun."""
        return self.notify("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
