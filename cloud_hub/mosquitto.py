"""Mosquitto as the project runs it: its config, its authorization, and a private broker.

Every broker config the project writes comes from :func:`config_text`: the production
files of ``cloud-hub broker init``, the one-machine demo, the test suite's and the
benchmarks' private brokers. Each loads the dynamic security plugin (authorization, see
:mod:`cloud_hub.provisioning`) and sets the limits of :class:`BrokerLimits`: the largest
packet the broker accepts (a bigger one disconnects its sender before the hub sees a
byte of it), and how much it queues per client.

:class:`MosquittoBroker` is one private ``mosquitto`` on a free port, for the demo, the
tests and ``python -m bench``; the agent in production talks to whatever broker its
config names.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cloud_hub.errors import HubError
from cloud_hub.provisioning import dynsec_document
from sync import DEFAULT_MAX_MESSAGE_BYTES, TopicLayout

PLUGIN_NAME = "mosquitto_dynamic_security.so"
# Debian and Ubuntu (multiarch), Fedora and Alpine, a source build.
PLUGIN_GLOBS = (f"lib/*/{PLUGIN_NAME}", f"lib*/{PLUGIN_NAME}", f"lib*/mosquitto/{PLUGIN_NAME}",
                f"local/lib*/{PLUGIN_NAME}")
PACKET_HEADROOM_BYTES = 64 * 1024  # topic, properties and framing around the payload


def find_dynsec_plugin() -> Path:
    """Where Mosquitto's dynamic security plugin is installed.

    Raises:
        HubError: It is not installed (it comes with Debian's ``mosquitto`` 2.0 package).
    """
    for pattern in PLUGIN_GLOBS:
        for match in sorted(Path("/usr").glob(pattern)):
            return match
    raise HubError(f"{PLUGIN_NAME} is not installed; it comes with mosquitto 2.0 "
                   "(Debian: apt-get install mosquitto)")


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_LISTEN_PORT = 10000
_handed_out: set[int] = set()  # never the same port twice to one process (its two brokers)


def _ephemeral_start() -> int:
    """Where the kernel's ephemeral (client source) ports begin (Linux; 32768 elsewhere)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port nothing listens on right now, below the ephemeral range.

    A port the kernel hands out for ``bind(0)`` is an ephemeral port, the same pool every
    client's source port comes from: a broker started on it later, or restarted, can find
    it taken by a client's connection (another program's, or one of the broker's own
    clients connecting to itself while nothing listened: TCP's simultaneous open), and
    exit with "Address already in use". Ports below the ephemeral range are only ever
    taken by a listener that chose them.
    """
    high = _ephemeral_start()
    low = _LOWEST_LISTEN_PORT if high > _LOWEST_LISTEN_PORT + 1000 else 1024
    for port in random.sample(range(low, high), k=min(200, high - low)):
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:  # everything below the range is taken: any free one
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class BrokerLimits:
    """What the broker accepts and keeps per client (``0`` means unlimited to Mosquitto,
    and is refused here for the packet size).

    Attributes:
        max_packet_size_bytes: Largest MQTT packet; a client sending more is
            disconnected. Default: the hub's message limit plus room for the headers.
        max_queued_messages: Messages queued for one client (offline, or beyond its
            in-flight window) before the broker drops more. Devices resend what the hub
            did not acknowledge end to end, so a drop here delays, never loses.
        max_queued_bytes: The same, in payload bytes.
        max_inflight_messages: QoS 1 messages in flight to one client at a time, and
            the Receive Maximum the broker announces to MQTT 5 clients (how many of its
            QoS 1 messages one client may have in flight to the broker). The hub is one
            client carrying every device's verdicts, so it is sized for a fleet.
        max_connections: Clients connected at once (``-1``: no limit but the process's
            file descriptors).
    """

    max_packet_size_bytes: int = DEFAULT_MAX_MESSAGE_BYTES + PACKET_HEADROOM_BYTES
    max_queued_messages: int = 1000
    max_queued_bytes: int = 64 * 1024 * 1024
    max_inflight_messages: int = 1000
    max_connections: int = -1

    def __post_init__(self) -> None:
        if self.max_packet_size_bytes < 20:
            raise ValueError(f"max_packet_size_bytes must be at least 20, "
                             f"got {self.max_packet_size_bytes}")
        if self.max_connections < -1:
            raise ValueError(f"max_connections must be -1 or more, got {self.max_connections}")
        for name in ("max_queued_messages", "max_queued_bytes", "max_inflight_messages"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    def lines(self) -> list[str]:
        """The config lines."""
        return [f"max_packet_size {self.max_packet_size_bytes}",
                f"max_queued_messages {self.max_queued_messages}",
                f"max_queued_bytes {self.max_queued_bytes}",
                f"max_inflight_messages {self.max_inflight_messages}",
                f"max_connections {self.max_connections}"]


# Deep queues for test brokers whose stand-in subscribers let thousands of messages wait.
TEST_LIMITS = BrokerLimits(max_queued_messages=1_000_000, max_queued_bytes=1024 ** 3,
                           max_inflight_messages=0)


@dataclass(frozen=True, slots=True)
class ListenerTls:
    """A TLS listener's files.

    Attributes:
        ca_file: CA that signed the clients' certificates (and usually the broker's).
        cert_file: The broker's certificate.
        key_file: Its private key.
        require_certificate: Mutual TLS: refuse clients without a certificate from the CA.
    """

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False

    def lines(self) -> list[str]:
        """The config lines that follow the ``listener`` line."""
        return [f"cafile {self.ca_file}", f"certfile {self.cert_file}",
                f"keyfile {self.key_file}", "tls_version tlsv1.2",
                f"require_certificate {'true' if self.require_certificate else 'false'}"]


def config_text(*, port: int, bind: str | None, dynsec_file: Path, plugin: Path,
                limits: BrokerLimits, tls: ListenerTls | None = None,
                anonymous: bool = False, persistence_dir: Path | None = None,
                log_file: Path | None = None, run_as_root: bool = False,
                autosave_interval_s: int = 60) -> str:
    """A whole ``mosquitto.conf``: one listener, the dynamic security plugin, limits.

    Args:
        port: The listener's port (TLS only when ``tls`` is given).
        bind: Address to listen on, or ``None`` for all.
        dynsec_file: The plugin's state; the plugin rewrites it on every change.
        plugin: The plugin's shared object.
        limits: Packet and per-client queue limits.
        tls: TLS files for the listener; ``None``: plain TCP.
        anonymous: Let clients without a username in (the plugin then gives them its
            anonymous group's roles); never in production.
        persistence_dir: Where to keep sessions across restarts (``None``: none).
        autosave_interval_s: How often to save them as well as at shutdown (0: only then).
        log_file: Where to log (``None``: syslog defaults).
        run_as_root: Keep root's rights (a private broker writing into a test folder).
    """
    lines = [
        "# Written by cloud-hub. Authorization is the dynamic security plugin's: change",
        "# clients and roles through its $CONTROL/dynamic-security/v1 topic (cloud-hub",
        "# devices add/revoke), not by editing these files.",
        "per_listener_settings false",
        f"listener {port}{f' {bind}' if bind else ''}",
        *(tls.lines() if tls is not None else []),
        f"allow_anonymous {'true' if anonymous else 'false'}",
        f"plugin {plugin}",
        f"plugin_opt_config_file {dynsec_file}",
        *limits.lines(),
    ]
    if run_as_root:
        lines.append("user root")
    if persistence_dir is not None:
        lines += ["persistence true", f"persistence_location {persistence_dir}/",
                  f"autosave_interval {autosave_interval_s}"]
    if log_file is not None:
        lines += [f"log_dest file {log_file}", "log_type error", "log_type warning",
                  "log_type notice"]
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    partial.replace(path)


class MosquittoBroker:
    """One ``mosquitto`` process on a free port, with persistence, that can be restarted.

    Authorization is the dynamic security plugin's, as in production; the hub's client
    (``hub_username``, ``hub_password``) may administer it.

    Args:
        folder: Where its config, plugin state, persistence file and log go.
        anonymous: Let clients without a username do anything (a stand-in for a plain
            local broker in tests of one side); ``False``: only the hub and the devices
            it provisions get in, each confined to its own topics.
        hub_password: The hub's password; default: a random one (``self.hub_password``).
        limits: Packet and queue limits; default: deep queues for tests.
        tls: Serve TLS (only) on the port.
        layout: Topic layout of the hub's rules.
        share_group: The hub's shared-subscription group.
    """

    def __init__(self, folder: Path, *, anonymous: bool = True, hub_username: str = "hub",
                 hub_password: str | None = None, limits: BrokerLimits = TEST_LIMITS,
                 tls: ListenerTls | None = None, layout: TopicLayout | None = None,
                 share_group: str = "hub") -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise HubError("mosquitto is not installed; see the README's set-up")
        self.binary = binary
        self.folder = folder
        self.port = free_port()
        self.hub_username = hub_username
        self.hub_password = hub_password or secrets.token_urlsafe(16)
        self.config = folder / "mosquitto.conf"
        self.dynsec_file = folder / "dynamic-security.json"
        self.log_file = folder / "mosquitto.log"
        folder.mkdir(parents=True, exist_ok=True)
        write_private(self.dynsec_file, json.dumps(dynsec_document(
            layout or TopicLayout(), hub_username=hub_username,
            hub_password=self.hub_password, share_group=share_group,
            open_to_anonymous=anonymous), indent=1))
        self.config.write_text(config_text(
            port=self.port, bind="127.0.0.1", dynsec_file=self.dynsec_file,
            plugin=find_dynsec_plugin(), limits=limits, tls=tls, anonymous=anonymous,
            persistence_dir=folder, log_file=self.log_file,
            # Started as root, mosquitto would switch to its own user and could not
            # write its persistence file and plugin state into the test folder.
            run_as_root=os.geteuid() == 0, autosave_interval_s=0,
        ))
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
