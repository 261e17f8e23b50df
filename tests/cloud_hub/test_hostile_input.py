"""Hostile input against a real ``cloud-hub -v serve`` process on a real Mosquitto.

Each test is a finding of issue 9, reproduced on the hub as it runs: decompression bombs
at ingest and at ``/v1/infer``, a zip bomb uploaded as a model, an event with a
non-finite number, an event id replayed by another device, ``/metrics`` without a token
and tokens in the access log. Memory is judged by the hub's own peak resident set
(``VmHWM``, reset through ``/proc/<pid>/clear_refs`` before each attack), never by time.

The hub runs with its data segment capped (``RLIMIT_DATA``), so that a hub that did
decode a bomb fails its allocation instead of taking the test machine's memory.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloud_hub.api.auth import hash_token
from cloud_hub.store import Store
from models import ModelStore
from sync import EventIdFactory, TopicLayout, VerdictMessage, decode, encode
from tests.bombs import jpeg_bomb, zip_bomb
from tests.broker import Collector, MosquittoBroker, free_port
from tests.cloud_hub.hub_helpers import SECRET, face_event

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parent.parent.parent
LAYOUT = TopicLayout()
ADMIN = "hub_admin-token-for-the-hostile-input-tests"
MIB = 1024 * 1024
DATA_LIMIT = 3 * 1024 * MIB  # a 30000x30000 decode needs 2.7 GB for one BGR copy
RSS_BUDGET = 20 * MIB
ids = EventIdFactory()


@dataclass
class ServedHub:
    """The hub process, its broker and its log."""

    process: subprocess.Popen[bytes]
    port: int
    broker: MosquittoBroker
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def request(self, method: str, path: str, body: bytes | None = None, *,
                token: str | None = ADMIN,
                content_type: str = "application/octet-stream") -> tuple[int, bytes]:
        headers = {"Content-Type": content_type}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url(path), data=body, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def sample(self, name: str, **labels: str) -> float:
        status, text = self.request("GET", "/metrics")
        assert status == 200, text
        for family in text_string_to_metric_families(text.decode()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def peak_growth(self, attack: Callable[[], Any]) -> tuple[int, Any]:
        """Run ``attack``; return how far the hub's peak RSS rose above its RSS before."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        before = _status_kib(self.process.pid, "VmRSS")
        result = attack()
        return (_status_kib(self.process.pid, "VmHWM") - before) * 1024, result


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _cap_data_segment() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (DATA_LIMIT, DATA_LIMIT))


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, zoo_store: ModelStore
        ) -> Iterator[ServedHub]:
    folder = tmp_path_factory.mktemp("hostile")
    broker = MosquittoBroker(folder / "broker")
    broker.start()
    store = Store(f"sqlite:///{folder / 'hub' / 'hub.sqlite3'}")
    (folder / "hub").mkdir()
    store.open()
    store.add_token(name="admin", role="admin", token_hash=hash_token(SECRET, ADMIN))
    for device in ("cam-a", "cam-b"):
        store.add_device(device_id=device, group="yard")
    store.close()
    port = free_port()
    env = {
        **os.environ, "CLOUD_HUB_DATA_DIR": str(folder / "hub"),
        "CLOUD_HUB_MODEL_STORE": str(zoo_store.root), "CLOUD_HUB_SECRET_KEY": SECRET,
        "CLOUD_HUB_MQTT_PORT": str(broker.port), "CLOUD_HUB_HTTP_PORT": str(port),
        "CLOUD_HUB_INGEST_WORKERS": "2", "CLOUD_HUB_BATCH_AUTOTUNE": "false",
        "CLOUD_HUB_MAX_BUNDLE_BYTES": str(16 * MIB),
    }
    log = folder / "hub.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "cloud_hub.cli", "-v", "serve"], cwd=ROOT, env=env,
            stdout=sink, stderr=subprocess.STDOUT, preexec_fn=_cap_data_segment)
    served = ServedHub(process, port, broker, log)
    try:
        deadline = time.monotonic() + 120
        while not _ready(served):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        yield served
    finally:
        process.terminate()
        process.wait(30)
        broker.stop()


def _ready(hub: ServedHub) -> bool:
    try:
        return hub.request("GET", "/readyz", token=None)[0] == 200
    except (urllib.error.URLError, OSError):
        return False


def _publish(hub: ServedHub, device: str, payload: bytes) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", hub.broker.port)
    client.loop_start()
    try:
        client.publish(LAYOUT.events(device), payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def _verdicts(collector: Collector) -> list[VerdictMessage]:
    with collector.lock:
        return [decode(payload, VerdictMessage) for _, payload in collector.messages]


def _wait_for_verdict(collector: Collector, event_id: str) -> None:
    assert collector.wait_for(
        lambda got: any(decode(p, VerdictMessage).event_id == event_id for _, p in got), 60
    ), f"no verdict for {event_id}"


def _image(seed: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    return np.random.default_rng(seed).integers(0, 255, (96, 128, 3), dtype=np.uint8)


def test_a_jpeg_bomb_at_infer_is_refused_from_its_header(hub: ServedHub) -> None:
    """A 629-byte JPEG claiming 30000x30000 took the hub to 5.5 GB, on the event loop."""
    bomb = jpeg_bomb(30000, 30000)
    answers: dict[str, tuple[int, bytes]] = {}

    def attack() -> None:
        sender = threading.Thread(target=lambda: answers.__setitem__(
            "bomb", hub.request("POST", "/v1/infer/blazeface-full-onnx", bomb,
                                content_type="image/jpeg")), name="bomb-sender")
        sender.start()
        answers["health"] = hub.request("GET", "/healthz", token=None)
        sender.join(60)

    growth, _ = hub.peak_growth(attack)
    status, body = answers["bomb"]
    assert status == 422, body
    [error] = json.loads(body)["detail"]
    assert error["loc"] == ["body"] and "image refused (too-large)" in error["msg"]
    assert "30000x30000" in error["msg"]
    assert answers["health"] == (200, b'{"status":"ok"}')
    assert hub.sample("hub_images_refused_total", reason="too-large", path="infer") == 1
    assert growth < RSS_BUDGET, f"peak RSS grew by {growth / MIB:.1f} MiB"
    assert hub.process.poll() is None


def test_a_jpeg_bomb_at_ingest_is_refused_and_the_device_still_hears_back(
        hub: ServedHub) -> None:
    bomb_event = face_event("cam-b", _image(1), thumbnail_jpeg=None,
                            crop_jpeg=jpeg_bomb(30000, 30000), crop_box=(0, 0, 64, 64))
    verdicts = Collector(hub.broker.port, LAYOUT.verdicts("cam-b"))
    try:
        def attack() -> None:
            _publish(hub, "cam-b", encode(bomb_event))
            _wait_for_verdict(verdicts, bomb_event.event_id)

        growth, _ = hub.peak_growth(attack)
    finally:
        verdicts.close()
    [verdict] = [v for v in _verdicts(verdicts) if v.event_id == bomb_event.event_id]
    assert verdict.outcome == "rejected" and verdict.model.version == "unjudged"
    assert hub.sample("hub_images_refused_total", reason="too-large", path="ingest") == 1
    assert growth < RSS_BUDGET, f"peak RSS grew by {growth / MIB:.1f} MiB"
    assert hub.request("GET", "/healthz", token=None)[0] == 200


def test_a_zip_bomb_upload_is_refused_unexpanded(hub: ServedHub) -> None:
    """A 1 MiB zip once added 2 GB to the hub and froze its API for seconds."""
    bomb = zip_bomb(expanded_bytes=256 * MIB)
    assert len(bomb) < MIB
    answers: dict[str, tuple[int, bytes]] = {}

    def attack() -> None:
        sender = threading.Thread(target=lambda: answers.__setitem__(
            "bomb", hub.request("POST", "/v1/models", bomb, content_type="application/zip")),
            name="zip-sender")
        sender.start()
        answers["health"] = hub.request("GET", "/healthz", token=None)
        sender.join(60)

    growth, _ = hub.peak_growth(attack)
    status, body = answers["bomb"]
    assert status == 422, body
    [error] = json.loads(body)["detail"]
    assert f"over the limit of {16 * MIB} uncompressed bytes" in error["msg"]
    assert answers["health"][0] == 200
    assert growth < RSS_BUDGET, f"peak RSS grew by {growth / MIB:.1f} MiB"


def test_an_event_with_a_non_finite_number_is_dropped_as_malformed(hub: ServedHub) -> None:
    """``captured_at: Infinity`` once showed as ``-inf ms`` on the dashboard."""
    infinite = face_event("cam-b", _image(2))
    payload = json.loads(encode(infinite))
    payload["captured_at"] = "__INFINITY__"
    sentinel = face_event("cam-b", _image(3))
    verdicts = Collector(hub.broker.port, LAYOUT.verdicts("cam-b"))
    malformed = hub.sample("hub_messages_dropped_total", reason="malformed")
    try:
        _publish(hub, "cam-b", json.dumps(payload).replace('"__INFINITY__"', "Infinity")
                 .encode())
        _publish(hub, "cam-b", encode(sentinel))
        _wait_for_verdict(verdicts, sentinel.event_id)
    finally:
        verdicts.close()
    assert infinite.event_id not in {v.event_id for v in _verdicts(verdicts)}
    assert hub.sample("hub_messages_dropped_total", reason="malformed") == malformed + 1
    assert hub.request("GET", f"/v1/events/{infinite.event_id}")[0] == 404


def test_another_devices_event_id_is_dropped_not_answered(hub: ServedHub) -> None:
    """Device A re-sending B's event id made the hub send B's verdict again."""
    original = face_event("cam-b", _image(4))
    replay = face_event("cam-a", _image(5), event_id=original.event_id)
    sentinel = face_event("cam-a", _image(6))
    to_a = Collector(hub.broker.port, LAYOUT.verdicts("cam-a"))
    to_b = Collector(hub.broker.port, LAYOUT.verdicts("cam-b"))
    try:
        _publish(hub, "cam-b", encode(original))
        _wait_for_verdict(to_b, original.event_id)
        _publish(hub, "cam-a", encode(replay))
        _publish(hub, "cam-a", encode(sentinel))
        _wait_for_verdict(to_a, sentinel.event_id)
        # B's sentinel, published after the replay: once it is answered, anything the
        # replay caused on B's topic has arrived before it.
        b_sentinel = face_event("cam-b", _image(7))
        _publish(hub, "cam-b", encode(b_sentinel))
        _wait_for_verdict(to_b, b_sentinel.event_id)
    finally:
        to_a.close()
        to_b.close()
    assert [v.event_id for v in _verdicts(to_a)] == [sentinel.event_id]
    assert [v.event_id for v in _verdicts(to_b)] == [original.event_id, b_sentinel.event_id]
    assert hub.sample("hub_messages_dropped_total", reason="replayed-event-id") == 1
    status, body = hub.request("GET", f"/v1/events/{original.event_id}")
    assert status == 200 and json.loads(body)["device_id"] == "cam-b"


def test_metrics_need_a_token_and_no_token_reaches_the_log(hub: ServedHub) -> None:
    status, body = hub.request("GET", "/metrics", token=None)
    assert status == 401 and b"cam-b" not in body
    assert hub.request("GET", "/metrics")[0] == 200
    hub.request("GET", f"/dashboard/login?token={ADMIN}", token=None)
    hub.request("GET", "/v1/devices")
    marker = f"sentinel-{ids()}"
    hub.request("GET", f"/healthz?{marker}=1", token=None)
    deadline = time.monotonic() + 30
    while marker not in hub.log.read_text():  # the access log line of the last request
        assert time.monotonic() < deadline, "the access log shows no requests at -v"
        time.sleep(0.1)
    log = hub.log.read_text()
    assert "GET /dashboard/login?token=[redacted]" in log
    assert ADMIN not in log and ADMIN.removeprefix("hub_") not in log
