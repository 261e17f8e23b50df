"""Device credentials and the broker ACL that confines each device to its own topics.

The hub writes Mosquitto's password file (through ``mosquitto_passwd``, which hashes) and
an ACL file of ``pattern`` rules keyed on ``%u``, the authenticated username, never on
``%c``, the client id, which a client chooses itself. A device may publish only its own
events, status and telemetry, and read only its own verdicts and its group's model
announcements. Mosquitto rereads both files on SIGHUP.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cloud_hub.errors import ProvisioningError
from sync import TopicError, TopicLayout, check_name


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    """MQTT credentials of one device; the password is shown once and not stored."""

    username: str
    password: str

    @property
    def fingerprint(self) -> str:
        """sha256 of the password, kept by the hub to recognise a rotation."""
        return hashlib.sha256(self.password.encode()).hexdigest()


def new_credentials(device_id: str) -> DeviceCredentials:
    """Fresh random credentials for ``device_id`` (its username is its id).

    Raises:
        ProvisioningError: The id could match other devices' topics.
    """
    try:
        check_name(device_id)
    except TopicError as exc:
        raise ProvisioningError(str(exc)) from exc
    return DeviceCredentials(device_id, secrets.token_urlsafe(24))


def set_password(password_file: Path, username: str, password: str) -> None:
    """Add or replace one user in a Mosquitto password file (hashed by mosquitto_passwd).

    Raises:
        ProvisioningError: ``mosquitto_passwd`` is missing or failed.
    """
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(tool).exists():
        raise ProvisioningError("mosquitto_passwd is not installed (package mosquitto)")
    password_file.parent.mkdir(parents=True, exist_ok=True)
    if not password_file.exists():
        password_file.touch(mode=0o600)
    result = subprocess.run([tool, "-b", str(password_file), username, password],
                            capture_output=True, text=True, check=False, timeout=30)
    if result.returncode != 0:
        raise ProvisioningError(
            f"mosquitto_passwd failed for {username}: {result.stderr.strip()}")


def acl_text(layout: TopicLayout, *, hub_username: str,
             device_groups: dict[str, str]) -> str:
    """The whole ACL file: device patterns, each device's group, and the hub's rights."""
    root = layout.root
    lines = [
        "# Written by cloud-hub; edits are overwritten. %u is the authenticated username.",
        f"pattern write {root}/%u/events",
        f"pattern write {root}/%u/status",
        f"pattern write {root}/%u/telemetry",
        f"pattern write {root}/%u/updates",
        f"pattern read {root}/%u/verdicts",
        "",
        f"user {hub_username}",
        f"topic read {root}/+/events",
        f"topic read {root}/+/status",
        f"topic read {root}/+/telemetry",
        f"topic read {root}/+/updates",
        f"topic write {root}/+/verdicts",
        f"topic readwrite {root}/groups/#",
    ]
    for device_id, group in sorted(device_groups.items()):
        lines += ["", f"user {device_id}", f"topic read {layout.models(group)}"]
    return "\n".join(lines) + "\n"


def write_acl(acl_file: Path, text: str) -> None:
    """Replace the ACL file atomically."""
    acl_file.parent.mkdir(parents=True, exist_ok=True)
    partial = acl_file.with_suffix(".partial")
    partial.write_text(text)
    partial.replace(acl_file)
