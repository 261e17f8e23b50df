"""A private Mosquitto broker on a free port: for the one-machine demo, tests and benchmarks.

Not used by the agent in production (it talks to whatever broker its config names); it
lives here so that the demo, the test suite and ``python -m bench`` start their brokers
the same way.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from cloud_hub.errors import HubError


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MosquittoBroker:
    """One ``mosquitto`` process on a free port, with persistence, that can be restarted.

    Args:
        folder: Where its config, persistence file and log go.
        extra_config: Lines appended to the generated config (ACLs, password file, ...).
    """

    def __init__(self, folder: Path, extra_config: str = "", *,
                 anonymous: bool = True) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise HubError("mosquitto is not installed; see the README's set-up")
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.config = folder / "mosquitto.conf"
        folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            # Started as root, mosquitto would switch to its own user and could not
            # write its persistence file into the test folder.
            "user root\n"
            f"allow_anonymous {'true' if anonymous else 'false'}\n"
            "persistence true\n"
            f"persistence_location {folder}/\n"
            "autosave_interval 0\n"
            "max_queued_messages 0\n"
            "max_inflight_messages 0\n"
            f"log_dest file {folder}/mosquitto.log\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            + extra_config
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the broker and wait until it accepts connections."""
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode() if self.process.stderr else ""
                raise HubError(f"mosquitto exited at start: {error.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise HubError(f"mosquitto did not listen on port {self.port} within 10 s")

    def reload(self) -> None:
        """Reread the password file and ACL (SIGHUP)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)
            time.sleep(0.2)  # mosquitto reloads asynchronously; give it a moment

    def stop(self) -> None:
        """Stop gracefully (SIGTERM): it saves its persistent state."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)
        self.process = None

    def restart(self, down_s: float = 0.3) -> None:
        """Stop, stay down for ``down_s``, start again."""
        self.stop()
        time.sleep(down_s)
        self.start()
