"""Enrollment: the hub's bundle, decoded strictly, turned into a valid agent configuration
whose password lives in a file of its own (mode 0600), the site's settings kept."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import tomlkit

from edge_agent.config import load_config
from edge_agent.enrollment import EnrolledPaths, enroll, enrolled_document
from edge_agent.errors import ConfigError
from sync import (
    BrokerAddress,
    EnrollmentBundle,
    MalformedMessageError,
    decode_enrollment,
    encode_enrollment,
)

pytestmark = pytest.mark.unit

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
SITE = """# the site's own settings
[[sources]]
name = "door"   # the front door
kind = "video"
url = "rtsp://192.0.2.1/stream"
model = "blazeface-short"

[mqtt]
keepalive_s = 45
password = "an old one"
"""


def bundle(**changes: object) -> EnrollmentBundle:
    fields: dict[str, object] = {
        "device_id": "cam-1", "group": "yard", "hub_url": "https://hub.example.net",
        "broker": BrokerAddress(url="mqtts://hub.example.net:8883", ca_pem=CA,
                                username="cam-1", password="s3cret-password")}
    fields.update(changes)
    return EnrollmentBundle.model_validate(fields)


def test_bundle_round_trips_and_refuses_other_schemas() -> None:
    original = bundle()
    assert decode_enrollment(encode_enrollment(original)) == original
    assert b'"schema": "enrollment/1"' in encode_enrollment(original)
    with pytest.raises(MalformedMessageError, match="schema"):
        decode_enrollment(b'{"schema": "enrollment/9"}')
    with pytest.raises(MalformedMessageError, match="broker"):
        decode_enrollment(encode_enrollment(original).replace(b"mqtts://", b"http://"))


def test_document_takes_broker_and_device_from_the_bundle_and_keeps_the_site() -> None:
    paths = EnrolledPaths(config_dir=Path("/etc/edge-agent"))
    document = enrolled_document(bundle(), tomlkit.parse(SITE), paths)
    text = tomlkit.dumps(document)
    assert "# the front door" in text  # the operator's comments survive
    raw = document.unwrap()
    assert raw["mqtt"] == {"keepalive_s": 45, "host": "hub.example.net", "port": 8883,
                           "prefix": "fleet", "username": "cam-1",
                           "password_file": "/etc/edge-agent/mqtt-password", "tls": True,
                           "ca_file": "/etc/edge-agent/ca.pem"}
    assert raw["device"] == {"id": "cam-1", "group": "yard"}
    assert raw["updates"] == {"enabled": False}
    assert "s3cret-password" not in text


def test_enroll_writes_a_config_that_loads_with_its_password(tmp_path: Path) -> None:
    paths = EnrolledPaths(config_dir=tmp_path / "etc", state_dir=tmp_path / "state")
    enroll(bundle(), tomlkit.parse(SITE), paths)
    assert stat.S_IMODE(paths.password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.config.stat().st_mode) == 0o640
    config = load_config(paths.config, environ={})
    assert config.mqtt.password == "s3cret-password" and config.mqtt.tls
    assert config.mqtt.ca_file == paths.ca_file and paths.ca_file.read_text() == CA


def test_a_site_without_sources_leaves_no_config(tmp_path: Path) -> None:
    paths = EnrolledPaths(config_dir=tmp_path / "etc", state_dir=tmp_path / "state")
    with pytest.raises(ConfigError, match="sources"):
        enroll(bundle(), tomlkit.parse("[policy]\nconfident_score = 0.9\n"), paths)
    assert not paths.config.exists()
