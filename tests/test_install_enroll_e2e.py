"""Issue 12's Done-when: a device enrolled from a bundle, installed as a service layout in
a temporary root, started from its installed unit, seen online on the hub over TLS,
revoked, and refused.

Everything is real: Mosquitto with a TLS-only listener and the dynamic security plugin,
``cloud-hub serve``, ``cloud-hub devices add --bundle`` and ``devices revoke``, ``edge-agent
install-service --root``; the agent is started as systemd would start it, from the
installed unit's ``ExecStart=`` and ``Environment=`` lines.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.mosquitto import ListenerTls
from cloud_hub.store import Store
from models import ModelBundle, ModelStore
from sync import TlsFiles, client_context
from tests.broker import MosquittoBroker, Pki, make_pki
from tests.cloud_hub.hub_helpers import SECRET
from tests.support.processes import HubProcess, ManagedProcess
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

DEVICE = "cam-enrolled"
BIN = Path(sys.executable).parent
NOT_AUTHORIZED = {134, 135}  # MQTT 5: bad user name or password, not authorized


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[MosquittoBroker]:
    """TLS only, passwords (no client certificates), the dynamic security plugin."""
    broker = MosquittoBroker(tmp_path / "broker", anonymous=False, tls=ListenerTls(
        pki.ca_file, pki.server_cert, pki.server_key))
    broker.start()
    yield broker
    broker.stop()


def hub_env(tmp_path: Path, broker: MosquittoBroker, pki: Pki,
            store: ModelStore) -> dict[str, str]:
    """``CLOUD_HUB_*`` settings (without the prefix) of the hub and its CLI."""
    return {"data_dir": str(tmp_path / "hub"), "secret_key": SECRET,
            "model_store": str(store.root), "batch_autotune": "false",
            "mqtt_host": "127.0.0.1", "mqtt_port": str(broker.port), "mqtt_tls": "true",
            "mqtt_ca_file": str(pki.ca_file), "mqtt_username": broker.hub_username,
            "mqtt_password": broker.hub_password, "mqtt_client_id": "hub-e2e"}


def cloud_hub(settings: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_HUB_")}
    env.update({f"CLOUD_HUB_{key.upper()}": value for key, value in settings.items()})
    return subprocess.run([str(BIN / "cloud-hub"), *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def unit_process(unit: Path, folder: Path) -> ManagedProcess:
    """The service as systemd would start it: ``ExecStart=`` with ``Environment=`` and
    ``EnvironmentFile=`` (a ``-`` one may be missing)."""
    command: list[str] = []
    env = {"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1"}
    if "PYTHONPATH" in os.environ:  # a checkout run without installing it
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    for line in unit.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "ExecStart":
            command = shlex.split(value)
        elif key == "Environment":
            name, _, setting = value.partition("=")
            env[name] = setting
        elif key == "EnvironmentFile" and Path(value.removeprefix("-")).exists():
            for assignment in Path(value.removeprefix("-")).read_text().splitlines():
                name, _, setting = assignment.partition("=")
                env[name.strip()] = setting.strip()
    assert command, f"no ExecStart in {unit}"
    return ManagedProcess("agent", command, env, folder)


def connect_code(pki: Pki, username: str, password: str, port: int) -> int:
    """The CONNACK reason code the broker gives ``username`` (0: accepted)."""
    answered = threading.Event()
    code: list[int] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username,
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    client.tls_set_context(client_context(TlsFiles(pki.ca_file)))

    def on_connect(client: mqtt.Client, userdata: object, flags: object, reason: object,
                   properties: object) -> None:
        code.append(int(reason.value))  # type: ignore[attr-defined]
        answered.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert answered.wait(30), "the broker did not answer CONNECT"
    finally:
        client.disconnect()
        client.loop_stop()
    return code[0]


def test_enroll_install_start_online_revoke_refused(
    tmp_path: Path, tls_broker: MosquittoBroker, pki: Pki, zoo_store: ModelStore,
    short_tflite: ModelBundle,
) -> None:
    settings = hub_env(tmp_path, tls_broker, pki, zoo_store)
    hub = HubProcess("hub", settings, tmp_path)
    hub.start()
    agent: ManagedProcess | None = None
    store = Store(f"sqlite:///{tmp_path / 'hub' / 'hub.sqlite3'}")
    try:
        hub.wait_ready()
        # The hub writes the bundle: one file, readable by its owner only.
        bundle = tmp_path / "enroll.json"
        added = cloud_hub(settings, "devices", "add", DEVICE, "--group", "yard",
                          "--bundle", str(bundle))
        assert added.returncode == 0, added.stderr
        assert f"mqtts://127.0.0.1:{tls_broker.port}" in added.stderr  # names its broker
        assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
        assert json.loads(bundle.read_text())["broker"]["ca_pem"] == pki.ca_file.read_text()

        # The device: installed under a temporary root, its sources from the site.
        root = tmp_path / "root"
        site = tmp_path / "site.toml"
        site.write_text('[[sources]]\nname = "yard"\nkind = "sample"\n'
                        'model = "blazeface-short"\nloop = true\nmax_fps = 5\n')
        models = ModelStore(root / "var/lib/edge-agent/models")
        shutil.copytree(short_tflite.root, models.path_for(
            short_tflite.manifest.name, short_tflite.manifest.version))
        installed = subprocess.run(
            [str(BIN / "edge-agent"), "install-service", "--bundle", str(bundle),
             "--root", str(root), "--site-config", str(site)],
            capture_output=True, text=True, timeout=120, check=False)
        assert installed.returncode == 0, installed.stderr
        config_dir = root / "etc/edge-agent"
        assert stat.S_IMODE((config_dir / "mqtt-password").stat().st_mode) == 0o600
        password = (config_dir / "mqtt-password").read_text().strip()
        assert password and password not in (config_dir / "agent.toml").read_text()
        assert "edge-agent:" in (root / "etc/passwd").read_text()

        agent = unit_process(root / "etc/systemd/system/edge-agent.service", tmp_path)
        agent.start()
        store.open()

        def online() -> bool:
            devices = {d["id"]: d for d in store.list_devices()}
            return bool(devices.get(DEVICE, {}).get("online"))

        assert wait_until(online, timeout_s=90, alive=agent.check_alive), agent.log_tail()
        assert connect_code(pki, "probe-" + DEVICE, password, tls_broker.port) in (
            NOT_AUTHORIZED)  # a sentinel: a wrong user is refused with the same codes

        revoked = cloud_hub(settings, "devices", "revoke", DEVICE)
        assert revoked.returncode == 0, revoked.stderr
        assert f"mqtts://127.0.0.1:{tls_broker.port}" in revoked.stderr
        # The device's own credentials no longer get in.
        assert connect_code(pki, DEVICE, password, tls_broker.port) in NOT_AUTHORIZED
        # The hub lists it as revoked (and offline), and takes no status of it any more.
        listed = cloud_hub(settings, "devices", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        device = {d["id"]: d for d in json.loads(listed.stdout)["devices"]}[DEVICE]
        assert device["revoked"] and not device["online"]
        assert store.device_standing(device_id=DEVICE) == "revoked"
    finally:
        if agent is not None:
            agent.terminate()
        store.close()
        hub.terminate()
