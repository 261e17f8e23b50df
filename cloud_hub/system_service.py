"""The hub as a systemd service: its unit, user and folders (``cloud-hub install-service``).

The unit runs ``cloud-hub serve --settings /etc/cloud-hub/hub.env``: the settings file
holds the ``CLOUD_HUB_*`` lines (secrets included, so it is readable by root and the
service's group only). The data folder (SQLite store, TUF repository, signing keys) is
the unit's ``StateDirectory``. ``packaging/cloud-hub.service`` is :data:`UNIT_TEMPLATE`
rendered for ``/`` and ``/opt/cloud-hub`` (a test keeps the two the same).

Hardening (``systemd-analyze security`` at most 2.0), as the agent's
(:mod:`edge_agent.system_service`) but with no devices at all (``PrivateDevices=yes``;
a hub that judges on an NVIDIA GPU needs a drop-in that allows ``/dev/nvidia*``), and
the same syscall allow-list (``mbind`` and ``sched_setaffinity`` given back for ONNX
Runtime; tests/test_syscall_filter.py runs its inference under the filter).
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from sync import SANDBOX, ServiceFolder, SystemService, memory_high, under

NAME = "cloud-hub"
CONFIG_DIR = Path("/etc/cloud-hub")
STATE_DIR = Path("/var/lib/cloud-hub")
SETTINGS_NAME = "hub.env"
MEMORY_MAX = "4G"  # the judge's models, batches and the web workers; about 10x its RSS
CPU_QUOTA = "400%"

UNIT_TEMPLATE = """\
# systemd unit for the cloud hub, written by `cloud-hub install-service` (which also
# makes the cloud-hub user and its folders). Settings: {settings} (CLOUD_HUB_* lines).
# Change limits with a drop-in (`systemctl edit cloud-hub`), not here.
[Unit]
Description=Cloud hub (judge, fleet registry, signed model updates, dashboard)
Wants=network-online.target
After=network-online.target mosquitto.service postgresql.service

[Service]
Type=exec
ExecStart={program} serve --settings {settings}
Environment=CLOUD_HUB_DATA_DIR={state}
Restart=on-failure
RestartSec=5
TimeoutStopSec=30

User=cloud-hub
Group=cloud-hub
StateDirectory=cloud-hub
StateDirectoryMode=0700
ConfigurationDirectory=cloud-hub
ConfigurationDirectoryMode=0750

MemoryHigh={memory_high}
MemoryMax={memory_max}
CPUQuota={cpu_quota}
TasksMax=512

PrivateDevices=yes
{sandbox}
[Install]
WantedBy=multi-user.target
"""


def hub_unit(*, program: Path, root: Path = Path("/"), memory_max: str = MEMORY_MAX,
             cpu_quota: str = CPU_QUOTA) -> str:
    """The unit's text for a hub installed under ``root``, run by ``program``."""
    return UNIT_TEMPLATE.format(
        program=program, settings=under(root, CONFIG_DIR) / SETTINGS_NAME,
        state=under(root, STATE_DIR), memory_max=memory_max, memory_high=memory_high(memory_max),
        cpu_quota=cpu_quota, sandbox=SANDBOX)


def installed_program() -> Path:
    """The ``cloud-hub`` program of this installation (beside the running Python)."""
    return Path(sys.executable).parent / NAME


def hub_service(*, root: Path = Path("/"), program: Path | None = None,
                memory_max: str = MEMORY_MAX, cpu_quota: str = CPU_QUOTA) -> SystemService:
    """The hub's service: its unit, its user and its folders."""
    return SystemService(
        name=NAME, description="Cloud hub", home=STATE_DIR,
        unit=hub_unit(program=program or installed_program(), root=root,
                      memory_max=memory_max, cpu_quota=cpu_quota),
        folders=(ServiceFolder(CONFIG_DIR, 0o750, writable=False),
                 ServiceFolder(STATE_DIR, 0o700, writable=True)))


def first_settings(*, root: Path = Path("/")) -> str:
    """A settings file for a new hub: production mode, a fresh secret key, the data
    folder, and the hub's own broker user with a fresh password (``cloud-hub broker
    init`` writes that user into the broker); where the broker is, is for the operator
    to fill in (docs/deployment.md)."""
    return (
        "# cloud-hub settings (CLOUD_HUB_* lines); see docs/deployment.md\n"
        "CLOUD_HUB_MODE=production\n"
        f"CLOUD_HUB_SECRET_KEY={secrets.token_urlsafe(32)}\n"
        f"CLOUD_HUB_DATA_DIR={under(root, STATE_DIR)}\n"
        "CLOUD_HUB_MQTT_USERNAME=hub\n"
        f"CLOUD_HUB_MQTT_PASSWORD={secrets.token_urlsafe(24)}\n"
        "# CLOUD_HUB_PUBLIC_URL=https://hub.example.net\n"
        "# CLOUD_HUB_MQTT_HOST=hub.example.net\n"
        "# CLOUD_HUB_MQTT_PORT=8883\n"
        "# CLOUD_HUB_MQTT_TLS=true\n"
        "# CLOUD_HUB_MQTT_CA_FILE=/etc/cloud-hub/ca.pem\n"
        "# CLOUD_HUB_DEVICE_MQTT_URL=mqtts://hub.example.net:8883\n"
    )
