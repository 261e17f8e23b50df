"""Removing and stopping things (issue 12, "nothing can be removed"): API tokens revoked
and refused at once, rollouts cancelled, paused and resumed, and warnings on a rollout
that cannot progress, through the API and the command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloud_hub.api import create_app
from cloud_hub.api.auth import hash_token
from cloud_hub.cli import main
from cloud_hub.distribution import ModelDistribution
from cloud_hub.service import HubService
from sync import ModelAnnouncement, UpdateReport, decode
from sync.rollout import start
from tests.broker import Collector, MosquittoBroker
from tests.cloud_hub.hub_helpers import SECRET, hub_settings

pytestmark = pytest.mark.integration

ADMIN, VIEWER = "tok-admin", "tok-viewer"
GROUP = [f"cam-{i}" for i in range(4)]


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[TestClient, HubService, list[ModelAnnouncement]]]:
    """A hub with its store open, a published model, a group of four devices, and the
    announcements it would publish kept in a list (no broker)."""
    service = HubService(hub_settings(tmp_path, tmp_path / "models"), ingest=False)
    service.open_store()
    announced: list[ModelAnnouncement] = []
    service.distribution = ModelDistribution(
        service.settings, service.store,
        lambda _topic, payload, _retain: announced.append(decode(payload, ModelAnnouncement)))
    store = service.store
    store.add_token(name="root", role="admin", token_hash=hash_token(SECRET, ADMIN))
    store.add_token(name="watcher", role="viewer", token_hash=hash_token(SECRET, VIEWER))
    store.add_model(name="m", version="1.1.0", task="detector", runtime="onnx", sha256="0" * 64,
                    size_bytes=1, path=str(tmp_path))
    for device in GROUP:
        store.add_device(device_id=device, group="lobby")
        store.record_status(device_id=device, online=True, at=1.0, models={}, backend="",
                            updates_enabled=True)
    try:
        with TestClient(create_app(service, manage=False)) as client:
            yield client, service, announced
    finally:
        store.close()


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_revoked_token_is_refused_at_once(
        hub: tuple[TestClient, HubService, list[ModelAnnouncement]]) -> None:
    client, _, _ = hub
    issued = client.post("/v1/tokens", headers=_as(ADMIN), json={"name": "ci", "role": "viewer"})
    assert issued.status_code == 201, issued.text
    token, token_id = issued.json()["token"], issued.json()["id"]
    assert client.get("/v1/devices", headers=_as(token)).status_code == 200
    listed = client.get("/v1/tokens", headers=_as(ADMIN)).json()
    assert [t["name"] for t in listed] == ["root", "watcher", "ci"]
    assert token not in json.dumps(listed) and "hash" not in json.dumps(listed)
    assert client.delete(f"/v1/tokens/{token_id}", headers=_as(VIEWER)).status_code == 403
    assert client.delete(f"/v1/tokens/{token_id}", headers=_as(ADMIN)).status_code == 204
    refused = client.get("/v1/devices", headers=_as(token))
    assert refused.status_code == 401 and refused.json()["detail"] == "unknown API token"
    # The dashboard's cookie is the same token: refused too.
    client.cookies.set("hub_token", token)
    assert client.get("/v1/devices").status_code == 401
    client.cookies.clear()
    assert client.delete(f"/v1/tokens/{token_id}", headers=_as(ADMIN)).status_code == 404


def test_cancel_pause_and_resume_a_rollout_through_the_api(
        hub: tuple[TestClient, HubService, list[ModelAnnouncement]]) -> None:
    client, service, announced = hub
    started = client.post("/v1/rollouts", headers=_as(ADMIN), json={
        "model": "m", "version": "1.1.0", "group": "lobby", "canary_percent": 50})
    assert started.status_code == 201, started.text
    rollout = started.json()
    assert rollout["status"] == "running" and rollout["warnings"] == []
    canaries = rollout["waves"][0]
    assert set(announced[-1].devices or ()) == set(canaries)
    path = f"/v1/rollouts/{rollout['id']}"
    assert client.post(f"{path}/pause", headers=_as(VIEWER)).status_code == 403
    paused = client.post(f"{path}/pause", headers=_as(ADMIN))
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert client.post(f"{path}/pause", headers=_as(ADMIN)).json()["status"] == "paused"
    distribution = service.distribution
    assert distribution is not None
    for device in canaries:  # the canaries finish while paused: no second wave yet
        distribution.report(UpdateReport(device_id=device, rollout_id=rollout["id"], model="m",
                                         version="1.1.0", step="committed", at=1.0))
    assert client.get(path, headers=_as(VIEWER)).json()["wave"] == 0
    resumed = client.post(f"{path}/resume", headers=_as(ADMIN)).json()
    assert resumed["status"] == "running" and resumed["wave"] == 1
    assert set(announced[-1].devices or ()) == set(GROUP)
    cancelled = client.post(f"{path}/cancel", headers=_as(ADMIN), json={"reason": "bad build"})
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["reason"] == "bad build"
    # Devices that did not install are no longer told to.
    assert set(announced[-1].devices or ()) == set(canaries)
    again = client.post(f"{path}/resume", headers=_as(ADMIN))
    assert again.status_code == 409 and "it is cancelled" in again.json()["detail"]
    assert client.post("/v1/rollouts/none/cancel", headers=_as(ADMIN)).status_code == 404


def test_a_rollout_to_devices_with_updates_off_warns_in_api_and_cli(
        hub: tuple[TestClient, HubService, list[ModelAnnouncement]],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client, service, _ = hub
    for device in GROUP:  # the agents say so in their status (updates.enabled: false)
        service.store.record_status(device_id=device, online=True, at=2.0, models={},
                                    backend="", updates_enabled=False)
    service.store.add_rollout(rollout=start(
        rollout_id="r-stuck", model="m", version="1.1.0", group="lobby", devices=GROUP,
        canary_percent=100))
    [listed] = client.get("/v1/rollouts", headers=_as(VIEWER)).json()
    assert listed["status"] == "running"
    [warning] = listed["warnings"]
    assert "updates are turned off on 4 device(s)" in warning
    assert client.get("/v1/rollouts/r-stuck", headers=_as(VIEWER)).json()["warnings"] == [
        warning]

    monkeypatch.setenv("CLOUD_HUB_DATA_DIR", str(tmp_path / "hub"))
    monkeypatch.setenv("CLOUD_HUB_SECRET_KEY", SECRET)
    monkeypatch.setenv("CLOUD_HUB_BROKER_CONTROL", "none")
    assert main(["rollout", "list"]) == 0
    assert f"  warning: {warning}" in capsys.readouterr().out
    assert main(["rollout", "list", "--json"]) == 0
    [shown] = json.loads(capsys.readouterr().out)["rollouts"]
    assert shown["warnings"] == [warning]
    assert main(["rollout", "pause", "r-stuck"]) == 0
    out = capsys.readouterr().out
    assert "rollout r-stuck: paused" in out and f"warning: {warning}" in out
    assert main(["rollout", "pause", "r-stuck"]) == 0
    capsys.readouterr()
    assert main(["rollout", "resume", "r-stuck"]) == 0
    resumed = capsys.readouterr()
    assert "rollout r-stuck: running" in resumed.out
    # A command that may publish names the broker it uses (on stderr: stdout is data).
    assert resumed.err == ("cloud-hub: announcing the resume on the broker at "
                           "mqtt://127.0.0.1:1883 anonymously\n")


def test_tokens_list_and_revoke_from_the_cli(
        hub: tuple[TestClient, HubService, list[ModelAnnouncement]],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client, _, _ = hub
    monkeypatch.setenv("CLOUD_HUB_DATA_DIR", str(tmp_path / "hub"))
    monkeypatch.setenv("CLOUD_HUB_SECRET_KEY", SECRET)
    assert main(["tokens", "list", "--json"]) == 0
    tokens = json.loads(capsys.readouterr().out)["tokens"]
    [watcher] = [t for t in tokens if t["name"] == "watcher"]
    assert client.get("/v1/devices", headers=_as(VIEWER)).status_code == 200
    assert main(["tokens", "revoke", str(watcher["id"])]) == 0
    assert "revoked" in capsys.readouterr().out
    assert client.get("/v1/devices", headers=_as(VIEWER)).status_code == 401
    assert main(["tokens", "revoke", str(watcher["id"])]) == 1
    assert f"no token '{watcher['id']}'" in capsys.readouterr().err


def test_rollout_start_and_cancel_from_the_cli_name_the_broker_and_announce_on_it(
        hub: tuple[TestClient, HubService, list[ModelAnnouncement]],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, service, _ = hub
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    announcements = Collector(broker.port, "fleet/v1/groups/lobby/models", receipts=False)
    try:
        monkeypatch.setenv("CLOUD_HUB_DATA_DIR", str(tmp_path / "hub"))
        monkeypatch.setenv("CLOUD_HUB_SECRET_KEY", SECRET)
        monkeypatch.setenv("CLOUD_HUB_BROKER_CONTROL", "none")
        monkeypatch.setenv("CLOUD_HUB_MQTT_PORT", str(broker.port))
        service.store.record_status(device_id="cam-3", online=True, at=3.0, models={},
                                    backend="", updates_enabled=False)
        assert main(["rollout", "start", "m", "1.1.0", "--group", "lobby",
                     "--canary", "50"]) == 0
        started = capsys.readouterr()
        assert "  warning: updates are turned off on 1 device(s) (cam-3)" in started.out
        assert f"on the broker at mqtt://127.0.0.1:{broker.port}" in started.err
        rollout_id = started.out.split()[1].rstrip(":")
        assert main(["rollout", "cancel", rollout_id, "--reason", "wrong build"]) == 0
        cancelled = capsys.readouterr()
        assert f"rollout {rollout_id}: cancelled" in cancelled.out
        assert f"announcing the cancel on the broker at mqtt://127.0.0.1:{broker.port}" in (
            cancelled.err)
        # The group's retained announcement now names no device: nobody else installs.
        assert announcements.wait_for(lambda m: len(m) >= 2, 30)
        first, last = (decode(payload, ModelAnnouncement)
                       for _, payload in (announcements.messages[0],
                                          announcements.messages[-1]))
        assert len(first.devices or ()) == 2 and last.devices == ()
    finally:
        announcements.close()
        broker.stop()
