"""Provisioning many devices at once, on a real Mosquitto with the dynamic security plugin:
every device created connects at once (no reload) and reaches only its own topics; the
same batch again changes nothing; parallel batches naming the same devices create each
once; a registration that fails takes its broker clients back."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloud_hub.api import create_app
from cloud_hub.api.auth import hash_token, new_token
from cloud_hub.cli import main as cloud_hub_main
from cloud_hub.errors import StoreError
from cloud_hub.mosquitto import BrokerLimits
from cloud_hub.provisioning import BrokerControl, DeviceSpec, ProvisionOutcome
from cloud_hub.service import HubService
from sync import TopicLayout
from tests.broker import MosquittoBroker
from tests.cloud_hub.hub_helpers import hub_settings, old_layout_commands
from tests.cloud_hub.test_acl import NOT_AUTHORIZED, Device

pytestmark = pytest.mark.integration

LAYOUT = TopicLayout()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubService]:
    """A broker as production runs it, and a hub (store only) that provisions through it."""
    broker = MosquittoBroker(tmp_path / "broker", anonymous=False, limits=BrokerLimits())
    broker.start()
    settings = hub_settings(tmp_path, tmp_path / "models", mqtt_port=broker.port,
                            mqtt_username=broker.hub_username,
                            mqtt_password=broker.hub_password, mqtt_client_id="hub-bulk",
                            broker_control="mosquitto-dynsec")
    service = HubService(settings, ingest=False)
    service.open_store()
    yield service
    service.store.close()
    broker.stop()


def _port(hub: HubService) -> int:
    return hub.broker.port


def _assert_confined(hub: HubService, device_id: str, password: str, other: str) -> None:
    """The device connects with its password and reaches its own topics, not ``other``'s."""
    own = Device(_port(hub), device_id, password)
    try:
        assert not own.refused, device_id
        assert own.publish(LAYOUT.events(device_id)) < 0x80
        assert own.subscribe(LAYOUT.verdicts(other)) == NOT_AUTHORIZED
        assert own.subscribe(LAYOUT.verdicts(device_id)) < 0x80
    finally:
        own.close()
    thief = Device(_port(hub), device_id, password)  # a refused publish closes the session
    try:
        assert thief.publish(LAYOUT.events(other)) >= 0x80
    finally:
        thief.close()


def _cli(hub: HubService, *args: str, capsys: pytest.CaptureFixture[str],
         monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    settings = hub.settings
    env = {"DATA_DIR": str(settings.data_dir), "SECRET_KEY": settings.secret_key,
           "MQTT_PORT": str(hub.broker.port), "MQTT_USERNAME": hub.broker.username or "",
           "MQTT_PASSWORD": hub.broker.password or "", "MQTT_CLIENT_ID": "hub-cli",
           "MODEL_STORE": str(settings.model_store), "BROKER_CONTROL": "mosquitto-dynsec"}
    with monkeypatch.context() as patch:
        for name, value in env.items():
            patch.setenv(f"CLOUD_HUB_{name}", value)
        code = cloud_hub_main(list(args))
    return code, capsys.readouterr().out


def test_two_hundred_devices_from_a_file_connect_at_once_each_confined(
    hub: HubService, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listing = tmp_path / "fleet.csv"
    listing.write_text("id,group\n" + "".join(f"cam-{i:03d},floor-{i % 3}\n"
                                              for i in range(200)))
    code, out = _cli(hub, "devices", "add", "--from", str(listing), capsys=capsys,
                     monkeypatch=monkeypatch)
    assert code == 0, out
    rows = [line.split(",") for line in out.strip().splitlines()[1:]]
    assert len(rows) == 200 and {row[2] for row in rows} == {"created"}
    passwords = {row[0]: row[3] for row in rows}
    assert len(set(passwords.values())) == 200
    assert len(hub.store.list_devices()) == 200
    assert hub.store.get_device(device_id="cam-007")["group"] == "floor-1"
    for device_id, other in (("cam-000", "cam-001"), ("cam-123", "cam-000"),
                             ("cam-199", "cam-198")):
        _assert_confined(hub, device_id, passwords[device_id], other)
    # The same file again: nothing changes, every password still works.
    code, out = _cli(hub, "devices", "add", "--from", str(listing), "--json", capsys=capsys,
                     monkeypatch=monkeypatch)
    assert code == 0
    again = json.loads(out)["devices"]
    assert {item["status"] for item in again} == {"exists"}
    assert all("password" not in item for item in again)
    _assert_confined(hub, "cam-042", passwords["cam-042"], "cam-043")


def test_parallel_overlapping_batches_create_each_device_once(hub: HubService) -> None:
    """Four batches of 60 at once, each sharing 30 devices with the next: every device is
    created by exactly one batch, and the password that batch returned is the one that
    works."""
    batches = [[DeviceSpec(f"par-{i:03d}", "yard") for i in range(start, start + 60)]
               for start in (0, 30, 60, 90)]
    results: list[tuple[ProvisionOutcome, ...]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def provision(batch: list[DeviceSpec]) -> None:
        try:
            outcome = hub.provision_devices(batch)
        except BaseException as exc:  # reported by the assertion below
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=provision, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == [] and len(results) == 4
    created: dict[str, str] = {}
    for outcome in (o for result in results for o in result):
        if outcome.status == "created":
            assert outcome.device_id not in created, outcome.device_id
            assert outcome.credentials is not None
            created[outcome.device_id] = outcome.credentials.password
        else:
            # A loser hears that another call has it (or, while that call is still
            # registering, that the broker refused it).
            assert outcome.status in ("exists", "failed"), outcome
    assert set(created) == {f"par-{i:03d}" for i in range(150)}
    assert len(hub.store.existing_devices(device_ids=list(created))) == 150
    for device_id in ("par-030", "par-075", "par-100"):  # each in two batches
        other = "par-000"
        _assert_confined(hub, device_id, created[device_id], other)


def test_a_failed_registration_takes_its_broker_clients_back(
    hub: HubService, monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch = [DeviceSpec(f"undo-{i}", "lab") for i in range(5)]

    def broken(**_: object) -> None:
        raise StoreError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(hub.store, "add_new_devices", broken)
        with pytest.raises(StoreError):
            hub.provision_devices(batch)
    assert hub.store.existing_devices(device_ids=[s.device_id for s in batch]) == set()
    # The clients were deleted: the same batch now creates them afresh, and they work.
    outcomes = hub.provision_devices(batch)
    assert [o.status for o in outcomes] == ["created"] * 5
    assert outcomes[0].credentials is not None
    _assert_confined(hub, "undo-0", outcomes[0].credentials.password, "undo-1")


def test_the_batch_route_is_for_admins_and_reports_each_device(hub: HubService) -> None:
    tokens = {}
    for role in ("operator", "admin"):
        tokens[role] = new_token()
        hub.store.add_token(name=role, role=role,
                            token_hash=hash_token(hub.settings.secret_key, tokens[role]))
    body = {"devices": [{"id": "api-1", "group": "gate"}, {"id": "api-2"}]}
    with TestClient(create_app(hub, manage=False)) as client:
        refused = client.post("/v1/devices/batch", json=body,
                              headers={"Authorization": f"Bearer {tokens['operator']}"})
        assert refused.status_code == 403
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        first = client.post("/v1/devices/batch", json=body, headers=admin)
        assert first.status_code == 200, first.text
        assert (first.json()["created"], first.json()["exists"]) == (2, 0)
        again = client.post("/v1/devices/batch", json=body, headers=admin).json()
        assert (again["created"], again["exists"]) == (0, 2)
        odd = client.post("/v1/devices/batch", headers=admin, json={"devices": [
            {"id": "x"}, {"id": "x"}, {"id": "hub-api"}, {"id": ".."},
            {"id": "groups"}]}).json()  # groups: the announcements' branch of the tree
        assert [d["status"] for d in odd["devices"]] == ["created"] + ["failed"] * 4
        assert "twice" in odd["devices"][1]["reason"]
        assert "reserved" in odd["devices"][2]["reason"]
        assert "reserved" in odd["devices"][4]["reason"]
    credentials = first.json()["devices"][0]["mqtt"]
    _assert_confined(hub, "api-1", credentials["password"], "api-2")


def test_a_role_left_behind_by_the_old_layout_is_made_anew(hub: HubService,
                                                           tmp_path: Path) -> None:
    """A device's role of the old layout (its group's rules in it) without its client, as
    an interrupted older hub left it: the batch that creates the client replaces the role,
    so the device does not keep the old group's announcements."""
    BrokerControl(hub.broker).run(old_layout_commands("left-a", "old-group", "pw")[:1])
    outcomes = hub.provision_devices([DeviceSpec("left-a", "new-group"),
                                      DeviceSpec("left-b", "new-group")])
    assert [o.status for o in outcomes] == ["created", "created"]
    state = json.loads((tmp_path / "broker" / "dynamic-security.json").read_text())
    roles = {r["rolename"]: r["acls"] for r in state["roles"]}
    assert len(roles["device-left-a"]) == len(roles["device-left-b"]) == 6
    assert "group-new-group" in roles and "group-old-group" not in roles
    assert outcomes[0].credentials is not None
    device = Device(_port(hub), "left-a", outcomes[0].credentials.password)
    try:
        assert device.subscribe(LAYOUT.models("old-group")) == NOT_AUTHORIZED
        assert device.subscribe(LAYOUT.models("new-group")) < 0x80
    finally:
        device.close()
