"""Configuration: wrong values are refused naming key, value and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import PASSWORD_ENV, load_config, parse_config
from edge_agent.errors import ConfigError

pytestmark = pytest.mark.unit

MINIMAL = """
[device]
id = "cam-1"

[[sources]]
name = "door"
kind = "sample"
model = "blazeface-short"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_minimal_config_and_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL), environ={})
    assert config.device.id == "cam-1" and config.mqtt.port == 1883
    assert config.outbox.synchronous == "FULL" and config.outbox.when_full == "evict"
    assert config.outbox_path == Path("/var/lib/edge-agent/outbox.sqlite3")


def test_password_comes_from_the_environment(tmp_path: Path) -> None:
    text = MINIMAL + '\n[mqtt]\npassword = "in-file"\n'
    assert load_config(_write(tmp_path, text), environ={}).mqtt.password == "in-file"
    config = load_config(_write(tmp_path, text), environ={PASSWORD_ENV: "from-env"})
    assert config.mqtt.password == "from-env"


@pytest.mark.parametrize(("extra", "message"), [
    ('[mqtt]\nport = "1883x"', "mqtt.port = '1883x': Input should be a valid integer"),
    ("[mqtt]\nport = 70000", "mqtt.port = 70000: Input should be less than or equal to 65535"),
    ('[outbox]\nwhen_full = "panic"', "outbox.when_full = 'panic': Input should be 'evict'"),
    ("[policy]\nuncertain_score = 0.9\nconfident_score = 0.8", "uncertain_score must be below"),
    ("[mqtt]\nhots = 'x'", "mqtt.hots: unknown key"),
    ("[fallback]\nverdict_timeout_s = -1", "fallback.verdict_timeout_s = -1: Input should be"),
])
def test_wrong_values_are_named(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"agent\.toml: ") as caught:
        load_config(_write(tmp_path, MINIMAL + "\n" + extra), environ={})
    assert message in str(caught.value)


def test_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="device: required key is missing"):
        parse_config({"sources": []}, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[device\nid="))
    with pytest.raises(ConfigError, match="a video source needs url"):
        parse_config({"device": {"id": "c"},
                      "sources": [{"name": "s", "kind": "video", "model": "m"}]}, environ={})


@pytest.mark.parametrize(("source", "allowed"), [
    ({"kind": "video", "url": "clip.avi"}, True),
    ({"kind": "folder", "url": "frames"}, True),
    ({"kind": "sample"}, True),
    ({"kind": "video", "url": "rtsp://cam/stream"}, False),
    ({"kind": "video", "url": "0"}, False),
    ({"kind": "sensor", "topic": "plant/line-1"}, False),
])
def test_only_recorded_footage_can_await_verdicts(source: dict[str, str],
                                                   allowed: bool) -> None:
    raw = {"device": {"id": "c"}, "sources": [
        {"name": "s", "model": "m", "await_verdicts": True, **source}]}
    if allowed:
        assert parse_config(raw, environ={}).sources[0].await_verdicts
    else:
        with pytest.raises(ConfigError, match=r"await_verdicts: .* is live"):
            parse_config(raw, environ={})


def test_packaged_example_config_is_valid() -> None:
    example = Path(__file__).parent.parent.parent / "packaging" / "agent.example.toml"
    config = load_config(example, environ={PASSWORD_ENV: "secret"})
    assert [s.kind for s in config.sources] == ["video", "sensor"]
    assert config.mqtt.password == "secret"
    # Issue 12: its Home Assistant action published on the hub's broker, which refused
    # every message; Home Assistant now gets MQTT discovery on the local broker.
    assert config.home_assistant.enabled and config.home_assistant.broker.host == "127.0.0.1"
    assert not any(action.kind == "mqtt" for action in config.actions)


def test_systemd_unit_has_the_promised_settings() -> None:
    unit = (Path(__file__).parent.parent.parent / "packaging" / "edge-agent.service").read_text()
    for setting in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=",
                    "ProtectSystem=strict", "NoNewPrivileges=yes", "User=edge-agent"):
        assert setting in unit
