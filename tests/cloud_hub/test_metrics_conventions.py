"""Both ``/metrics`` endpoints follow Prometheus's rules (Debian's ``promtool check
metrics`` finds nothing), counters are counters, both export process and build-info
metrics, and the hub exports the fleet's state (issue 12).

A hub (ingest on a private broker) and an agent on the sample footage run together: the
agent's telemetry reaches the hub's metrics as the device's backlog, its retained status
as a device online, and each camera's input health reaches the API's device data.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud_hub.api import create_app
from cloud_hub.api.auth import hash_token
from cloud_hub.service import HubService
from models import ModelStore
from sync.install import Step
from sync.rollout import start
from tests.broker import MosquittoBroker, free_port
from tests.cloud_hub.hub_helpers import SECRET, hub_settings
from tests.edge_agent.agent_helpers import AgentThread, agent_config

pytestmark = pytest.mark.integration

VIEWER_TOKEN = "viewer-token-for-metrics-test"


def _promtool(exposition: str) -> str:
    """What ``promtool check metrics`` says about ``exposition`` (empty: nothing)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is missing: `make test` installs it"
    result = subprocess.run([promtool, "check", "metrics"], input=exposition,
                            capture_output=True, text=True, timeout=60, check=False)
    problems = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 or problems, result
    return problems


def test_both_endpoints_pass_promtool_and_the_hub_shows_the_fleet(
    zoo_store: ModelStore, tmp_path: Path,
) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    try:
        agent_page, hub_page, device = _run_hub_and_agent(broker, zoo_store, tmp_path)
    finally:
        broker.stop()
    # The sample footage's camera, as the hub's API shows it: in daylight, not frozen.
    yard = device["inputs"]["yard"]
    assert yard["brightness"] > 40 and yard["contrast"] > 12 and yard["sharpness"] > 0.02
    assert yard["problems"] == [] and yard["frozen_frames"] == 0
    assert device["telemetry"]["brightness.yard"] == yard["brightness"]
    assert 'edge_input_brightness{source="yard"}' in agent_page
    assert 'edge_input_problem{problem="dark",source="yard"} 0.0' in agent_page
    assert _promtool(agent_page) == ""
    assert _promtool(hub_page) == ""
    assert "# TYPE edge_mqtt_reconnects_total counter" in agent_page
    for page, side in ((agent_page, "edge"), (hub_page, "hub")):
        assert f'{side}_build_info{{' in page and 'version="' in page
        assert "process_resident_memory_bytes" in page and "process_cpu_seconds_total" in page
        assert "python_info{" in page
    for sample in ('hub_devices{group="lobby",state="offline"} 1.0',
                   'hub_rollouts{status="running"} 1.0',
                   'hub_device_update_steps{step="verified"} 1.0',
                   'hub_device_outbox_bytes{device="cam-test"}',
                   'hub_device_telemetry_timestamp_seconds{device="cam-test"}'):
        assert sample in hub_page, sample


def _run_hub_and_agent(broker: MosquittoBroker, zoo_store: ModelStore,
                       tmp_path: Path) -> tuple[str, str, dict[str, Any]]:
    """Both /metrics pages once the hub has seen the agent online and its telemetry, and
    the device as the API shows it."""
    service = HubService(hub_settings(tmp_path, zoo_store.root, mqtt_port=broker.port,
                                      public_metrics=True))
    metrics_port = free_port()
    raw = agent_config(tmp_path, broker.port, zoo_store.root, metrics={"port": metrics_port},
                       mqtt={"telemetry_interval_s": 0.3})
    raw["device"] = {"id": "cam-test", "group": "lobby"}
    with TestClient(create_app(service)) as client:
        for device in ("cam-test", "cam-idle"):
            service.store.add_device(device_id=device, group="lobby")
        service.store.add_token(name="viewer", role="viewer",
                                token_hash=hash_token(SECRET, VIEWER_TOKEN))
        service.store.add_rollout(rollout=start(
            rollout_id="r-metrics", model="blazeface-short", version="1.0.1", group="lobby",
            devices=["cam-test", "cam-idle"], canary_percent=50))
        service.store.add_update_report(device_id="cam-idle", rollout_id="r-metrics",
                                        model="blazeface-short", version="1.0.1",
                                        step=Step.VERIFIED, reason="", at=time.time())
        agent = AgentThread(raw).start()
        try:
            agent.wait_until(lambda s: s["connected"])
            deadline = time.monotonic() + 30
            while True:
                hub_page = client.get("/metrics").text
                device = client.get("/v1/devices/cam-test",
                                    headers={"Authorization": f"Bearer {VIEWER_TOKEN}"}).json()
                if ('hub_device_outbox_events{device="cam-test"}' in hub_page
                        and 'hub_devices{group="lobby",state="online"} 1.0' in hub_page
                        and device.get("inputs")):
                    break
                assert time.monotonic() < deadline, hub_page
                time.sleep(0.1)
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as page:
                agent_page = page.read().decode()
        finally:
            assert agent.finish() == 0
    return agent_page, hub_page, device


def test_promtool_finds_a_counter_without_total() -> None:
    """The check can fail: a counter named against the rules is reported."""
    bad = "# HELP edge_frames Frames read\n# TYPE edge_frames counter\nedge_frames 3\n"
    assert "_total" in _promtool(bad)
