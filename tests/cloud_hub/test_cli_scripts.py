"""``cloud-hub`` for scripts and people (issue 12): ``--version``, ``--json`` on every
list, log level and JSON log lines, shared options after the subcommand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_hub.service import HubService
from models import ModelStore
from sync.rollout import start
from tests.cloud_hub.hub_helpers import hub_settings

pytestmark = pytest.mark.integration


def _hub(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLOUD_HUB_DATA_DIR": str(tmp_path / "hub"),
           "CLOUD_HUB_SECRET_KEY": "a-test-secret-key-that-is-long-enough-0123456789",
           "CLOUD_HUB_BROKER_CONTROL": "none"}
    return subprocess.run([sys.executable, "-m", "cloud_hub", *args], capture_output=True,
                          text=True, timeout=120, env=env, check=False)


def test_version(tmp_path: Path) -> None:
    result = _hub(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("cloud-hub 0.1.0 (Python ")


def test_lists_take_json(tmp_path: Path, zoo_store: ModelStore) -> None:
    service = HubService(hub_settings(tmp_path, zoo_store.root), ingest=False)
    service.open_store()
    try:
        service.store.add_device(device_id="cam-json", group="lobby")
        service.store.add_rollout(rollout=start(
            rollout_id="r-json", model="blazeface-short", version="1.0.1", group="lobby",
            devices=["cam-json"], canary_percent=10))
    finally:
        service.store.close()
    devices = _hub(tmp_path, "devices", "list", "--json")
    assert devices.returncode == 0, devices.stderr
    [device] = json.loads(devices.stdout)["devices"]
    assert device["id"] == "cam-json" and device["group"] == "lobby"
    rollouts = _hub(tmp_path, "rollout", "list", "--json")
    assert rollouts.returncode == 0, rollouts.stderr
    [rollout] = json.loads(rollouts.stdout)["rollouts"]
    assert rollout["id"] == "r-json" and rollout["status"] == "running"


def test_json_log_lines_and_options_after_the_subcommand(tmp_path: Path) -> None:
    settings = tmp_path / "hub.env"
    settings.write_text("CLOUD_HUB_MQTT_PORT=notaport\n")
    # --settings and --log-format after the subcommand; the error is a JSON log line.
    result = _hub(tmp_path, "devices", "list", "--settings", str(settings),
                  "--log-format", "json")
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert lines and lines[-1]["level"] == "error" and "MQTT_PORT" in lines[-1]["message"]
    assert {"time", "logger", "thread"} <= set(lines[-1])
