"""The agent as a systemd service: its unit, user and folders (``edge-agent
install-service``).

The unit is written from :data:`UNIT_TEMPLATE` with the paths of this install: the
``edge-agent`` program that runs the installer (the virtual environment the device
installed the package into), and the configuration, state and cache folders under the
install root. ``packaging/edge-agent.service`` is this template rendered for ``/`` and
``/opt/edge-agent`` (a test keeps the two the same).

Hardening (``systemd-analyze security`` rates it at most 2.0): a system user with no
capabilities, the file system read-only but for its state and cache folders, no other
users' files or processes, a syscall allow-list, memory and CPU caps. What it keeps, and
why:

- ``SystemCallFilter=@system-service`` less ``@privileged @resources``, but for ``mbind``
  and ``sched_setaffinity``, which both runtimes make (on their arenas and their own
  threads) and die without: LiteRT (XNNPACK), ONNX Runtime, OpenCV's video decoding,
  SQLite and paho run under it (tests/test_syscall_filter.py runs the agent under the
  same seccomp filter); a call outside it kills the process (SIGSYS) and systemd
  restarts it, rather than letting it go on half-working.
- ``MemoryDenyWriteExecute=no``: runtimes and delegates may JIT-compile kernels.
- ``PrivateDevices=no`` with ``DevicePolicy=closed``: cameras (``/dev/video*``), a Coral
  (``/dev/apex_*`` or USB) and Jetson GPUs, and nothing else.
- Network: the broker and the hub's TUF repository (``AF_INET``/``AF_INET6``), and
  ``AF_UNIX`` for systemd's notify socket; ``AF_NETLINK`` for the C library's address
  lookups.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sync import SANDBOX, ServiceFolder, SystemService, memory_high, under

NAME = "edge-agent"
CONFIG_DIR = Path("/etc/edge-agent")
STATE_DIR = Path("/var/lib/edge-agent")
CACHE_DIR = Path("/var/cache/edge-agent")
MEMORY_MAX = "768M"  # about 3x the agent's RSS with one camera; a model swap holds two
CPU_QUOTA = "200%"  # two cores' worth: room for the camera's decoding beside inference

UNIT_TEMPLATE = """\
# systemd unit for the edge agent, written by `edge-agent install-service` (which also
# makes the edge-agent user and its folders, and enrolls the device from a bundle).
# Change limits with a drop-in (`systemctl edit edge-agent`), not here.
[Unit]
Description=Edge inference agent (local models, escalation to the cloud hub)
Wants=network-online.target
After=network-online.target mosquitto.service

[Service]
Type=notify
NotifyAccess=main
ExecStart={program} run --config {config}
# Optional: EDGE_AGENT_MQTT_PASSWORD=... for a configuration without mqtt.password_file.
EnvironmentFile=-{secrets}
Environment=EDGE_AGENT_MODEL_STORE={state}/models
Environment=XDG_CACHE_HOME={cache}
# The agent pings every WatchdogSec/2 while its pipeline moves; a wedged accelerator or
# a hung inference stops the pings and systemd restarts the service.
WatchdogSec=60
Restart=on-failure
RestartSec=5
# SIGTERM: stop taking input, finish the inference in flight, persist, exit.
KillSignal=SIGTERM
TimeoutStopSec=45

User=edge-agent
Group=edge-agent
StateDirectory=edge-agent
StateDirectoryMode=0750
CacheDirectory=edge-agent
CacheDirectoryMode=0750
ConfigurationDirectory=edge-agent
ConfigurationDirectoryMode=0750

# Resources: a runaway inference or leak is capped, not the whole device's memory.
MemoryHigh={memory_high}
MemoryMax={memory_max}
CPUQuota={cpu_quota}
TasksMax=256

# Hardening: the agent writes only its state and cache folders.
{sandbox}# Cameras (/dev/video*), Coral (/dev/apex_*, USB) and Jetson GPUs, nothing else.
PrivateDevices=no
DevicePolicy=closed
DeviceAllow=char-video4linux rw
DeviceAllow=char-usb_device rw
DeviceAllow=char-apex rw
DeviceAllow=char-nvidia-frontend rw
DeviceAllow=char-nvhost rw

[Install]
WantedBy=multi-user.target
"""


def agent_unit(*, program: Path, root: Path = Path("/"), memory_max: str = MEMORY_MAX,
               cpu_quota: str = CPU_QUOTA) -> str:
    """The unit's text for an agent installed under ``root``, run by ``program``."""
    return UNIT_TEMPLATE.format(
        program=program, config=under(root, CONFIG_DIR) / "agent.toml",
        secrets=under(root, CONFIG_DIR) / "secrets.env",
        state=under(root, STATE_DIR), cache=under(root, CACHE_DIR),
        memory_max=memory_max, memory_high=memory_high(memory_max), cpu_quota=cpu_quota,
        sandbox=SANDBOX)


def installed_program() -> Path:
    """The ``edge-agent`` program of this installation (beside the running Python)."""
    return Path(sys.executable).parent / NAME


def agent_service(*, root: Path = Path("/"), program: Path | None = None,
                  memory_max: str = MEMORY_MAX, cpu_quota: str = CPU_QUOTA) -> SystemService:
    """The agent's service: its unit, its user (in ``video`` and ``plugdev`` for cameras
    and USB accelerators) and its folders."""
    return SystemService(
        name=NAME, description="Edge inference agent", home=STATE_DIR,
        unit=agent_unit(program=program or installed_program(), root=root,
                        memory_max=memory_max, cpu_quota=cpu_quota),
        folders=(ServiceFolder(CONFIG_DIR, 0o750, writable=False),
                 ServiceFolder(STATE_DIR, 0o750, writable=True),
                 ServiceFolder(STATE_DIR / "models", 0o750, writable=True),
                 ServiceFolder(CACHE_DIR, 0o750, writable=True)),
        groups=("video", "plugdev"))
