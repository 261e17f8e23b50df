"""Enrollment: the hub's enrollment bundle turned into this device's configuration.

``edge-agent enroll FILE`` reads the bundle (:mod:`sync.enrollment`) and writes, in one
configuration folder (``/etc/edge-agent`` by default):

- ``agent.toml``: ``[device]``, ``[mqtt]`` and ``[updates]`` from the bundle; everything
  else (sources, policy, actions ...) from the site's own configuration: the
  ``agent.toml`` already there (its comments kept: it is edited with tomlkit, which
  preserves them), a ``--site-config`` file, or one camera given on the command line;
- ``ca.pem``: the CA that signed the broker's certificate;
- ``root.json``: the TUF root the update client starts from;
- ``mqtt-password``: the device's MQTT password, readable by its owner only (the
  configuration names it as ``mqtt.password_file``, never holds the password itself).

The result is validated as ``edge-agent run`` would validate it, files included, before
``agent.toml`` is replaced, so a bad bundle or site configuration leaves the old
configuration in place. :func:`enrolled_document` is the pure part: values in, a TOML
document out.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.toml_document import TOMLDocument

from edge_agent.config import AgentConfig, file_problems, parse_config, read_secrets
from edge_agent.errors import ConfigError
from sync import EnrollmentBundle, MessageError, decode_enrollment

CONFIG_NAME = "agent.toml"
CA_NAME = "ca.pem"
ROOT_NAME = "root.json"
PASSWORD_NAME = "mqtt-password"
DEFAULT_CONFIG_DIR = Path("/etc/edge-agent")
DEFAULT_STATE_DIR = Path("/var/lib/edge-agent")
# Keys of [mqtt] that the bundle decides; the site's other [mqtt] keys (keepalive,
# drain rate ...) are kept.
BUNDLE_MQTT_KEYS = ("host", "port", "prefix", "username", "password", "password_file", "tls",
                    "ca_file")


@dataclass(frozen=True, slots=True)
class EnrolledPaths:
    """Where enrollment puts each file.

    Attributes:
        config_dir: The configuration folder.
        state_dir: The agent's state folder (written into ``agent.toml`` as ``state_dir``
            when the site's configuration names none).
    """

    config_dir: Path = DEFAULT_CONFIG_DIR
    state_dir: Path = DEFAULT_STATE_DIR

    @property
    def config(self) -> Path:
        """``agent.toml``."""
        return self.config_dir / CONFIG_NAME

    @property
    def ca_file(self) -> Path:
        """The broker's CA."""
        return self.config_dir / CA_NAME

    @property
    def trusted_root(self) -> Path:
        """The TUF trusted root."""
        return self.config_dir / ROOT_NAME

    @property
    def password_file(self) -> Path:
        """The MQTT password (mode 0600)."""
        return self.config_dir / PASSWORD_NAME


def camera_site(url: str, model: str) -> TOMLDocument:
    """A site configuration of one video source (a camera's stream or a video file)."""
    document = tomlkit.document()
    sources = tomlkit.aot()
    sources.append(tomlkit.table().add("name", "camera").add("kind", "video")
                   .add("url", url).add("model", model))
    document.add("sources", sources)
    return document


def enrolled_document(bundle: EnrollmentBundle, site: TOMLDocument,
                      paths: EnrolledPaths) -> TOMLDocument:
    """``site`` with the bundle's device, broker and update settings in it.

    Args:
        bundle: The hub's enrollment bundle.
        site: The site's configuration (not changed; a copy is returned).
        paths: Where the CA, root and password files go.

    Returns:
        The configuration to write as ``agent.toml``.
    """
    document = tomlkit.parse(tomlkit.dumps(site))  # a deep copy that keeps the comments
    if "state_dir" not in document:
        document["state_dir"] = str(paths.state_dir)
    device = _table(document, "device")
    device["id"] = bundle.device_id
    device["group"] = bundle.group
    mqtt = _table(document, "mqtt")
    for key in BUNDLE_MQTT_KEYS:
        if key in mqtt:
            del mqtt[key]
    broker = bundle.broker
    mqtt["host"] = broker.host
    mqtt["port"] = broker.port
    mqtt["prefix"] = broker.prefix
    mqtt["username"] = broker.username
    mqtt["password_file"] = str(paths.password_file)
    mqtt["tls"] = broker.tls
    if broker.ca_pem is not None:
        mqtt["ca_file"] = str(paths.ca_file)
    updates = _table(document, "updates")
    if bundle.updates is not None:
        updates["enabled"] = True
        updates["url"] = bundle.updates.url
        updates["trusted_root"] = str(paths.trusted_root)
    else:
        updates["enabled"] = False
    return document


def _table(document: TOMLDocument, name: str) -> Any:
    if name not in document:
        document.add(name, tomlkit.table())
    return document[name]


def read_bundle(path: Path) -> EnrollmentBundle:
    """Read and validate an enrollment bundle file.

    Raises:
        ConfigError: The file cannot be read or is not a valid bundle.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the enrollment bundle: {exc.strerror}") from exc
    try:
        return decode_enrollment(data)
    except MessageError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def read_site(path: Path) -> TOMLDocument:
    """A site configuration file (TOML).

    Raises:
        ConfigError: It cannot be read or is not TOML.
    """
    try:
        return tomlkit.parse(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except TOMLKitError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def enroll(bundle: EnrollmentBundle, site: TOMLDocument, paths: EnrolledPaths) -> AgentConfig:
    """Write this device's configuration from ``bundle`` and ``site``; return it validated.

    The CA, root and password files are written first (the password readable by its
    owner only), then the configuration is validated with its files, and only then is
    ``agent.toml`` replaced (atomically, mode 0640).

    Raises:
        ConfigError: The resulting configuration is invalid; every problem is listed.
    """
    try:
        paths.config_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{paths.config_dir}: cannot create: {exc.strerror}") from exc
    _write(paths.password_file, bundle.broker.password + "\n", 0o600)
    if bundle.broker.ca_pem is not None:
        _write(paths.ca_file, bundle.broker.ca_pem, 0o644)
    if bundle.updates is not None:
        _write(paths.trusted_root, json.dumps(bundle.updates.trusted_root, indent=1), 0o644)
    document = enrolled_document(bundle, site, paths)
    origin = str(paths.config)
    config = parse_config(document.unwrap(), origin=origin, environ={})
    problems = file_problems(config, origin=origin)
    if problems:
        raise ConfigError(problems[0], problems=tuple(problems))
    _write(paths.config, tomlkit.dumps(document), 0o640)
    return read_secrets(config)


def _write(path: Path, text: str, mode: int) -> None:
    """Write ``text`` atomically with ``mode`` (the mode is set before any byte lands).

    Raises:
        ConfigError: The file cannot be written (not root for /etc, say).
    """
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.unlink(missing_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        partial.chmod(mode)  # the umask may have taken bits away
        partial.replace(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror}") from exc
