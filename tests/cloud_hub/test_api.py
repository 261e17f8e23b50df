"""The web API: auth, bad input, events, models, inference, health, OpenAPI."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from skimage import data

from cloud_hub.api import create_app
from cloud_hub.api.auth import hash_token
from cloud_hub.errors import SettingsError
from cloud_hub.service import HubService
from cloud_hub.settings import load_settings
from cloud_hub.supervision import Supervisor
from models import ModelStore, iou
from tests.cloud_hub.hub_helpers import SECRET, hub_settings, jpeg
from tests.conftest import ASTRONAUT_FACE

pytestmark = pytest.mark.integration

TOKENS = {"admin": "tok-admin", "operator": "tok-operator", "viewer": "tok-viewer"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, zoo_store: ModelStore
           ) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("api")
    service = HubService(hub_settings(tmp, zoo_store.root, max_upload_bytes=2 * 1024 * 1024,
                                      model_store=tmp / "models-upload"), ingest=False)
    # The hub's own store starts as a copy of the session's zoo models.
    upload_store = ModelStore(tmp / "models-upload")
    for entry in zoo_store.entries():
        assert entry.bundle is not None
        upload_store.add(entry.bundle.manifest, entry.bundle.read_verified_model())
    with TestClient(create_app(service)) as test_client:
        for role, token in TOKENS.items():
            service.store.add_token(name=role, role=role, token_hash=hash_token(SECRET, token))
        yield test_client


def _auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def test_health_ready_metrics_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert "hub_batch_size" in client.get("/metrics", headers=_auth("viewer")).text
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/devices", "/v1/events", "/v1/events/{event_id}", "/v1/models",
                 "/v1/infer/{model}", "/healthz", "/readyz", "/metrics"):
        assert path in paths


def test_metrics_take_a_token_unless_made_public(client: TestClient, tmp_path: Path,
                                                zoo_store: ModelStore) -> None:
    """The metrics name every device id: no longer readable by anyone who can connect."""
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert "hub_events_ingested" not in refused.text
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/metrics", headers=_auth("viewer")).status_code == 200
    public = HubService(hub_settings(tmp_path, zoo_store.root, public_metrics=True),
                        ingest=False)
    public.open_store()
    try:
        with TestClient(create_app(public, manage=False)) as anonymous:
            assert "hub_batch_size" in anonymous.get("/metrics").text
    finally:
        public.store.close()


def test_a_model_name_outside_the_store_names_nothing_there(client: TestClient) -> None:
    """``..`` once listed the folder above the model store in the 404's message."""
    # The client collapses a literal ``..``; an encoded one reaches the route as ``..``.
    for name, shown in (("%2E%2E", "'..'"), ("%2e", "'.'"), ("~", "'~'"), ("..", None),
                        ("..%2F..", None)):
        response = client.post(f"/v1/models/{name}/1.0.0/publish", headers=_auth("admin"),
                               json={})
        assert response.status_code == 404, (name, response.text)
        if shown is not None:
            assert response.json()["detail"] == f"{shown} is not a model name"
        assert "models-upload" not in response.text and "has no version" not in response.text


def test_no_token_is_401_wrong_role_is_403(client: TestClient) -> None:
    response = client.get("/v1/devices")
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/devices", headers={"Authorization": "Bearer nope"}).status_code == 401
    forbidden = client.post("/v1/devices", json={"id": "cam-x"}, headers=_auth("viewer"))
    assert forbidden.status_code == 403 and "needs the admin role" in forbidden.json()["detail"]
    assert client.get("/v1/devices", headers=_auth("viewer")).status_code == 200


def test_provisioning_ignores_server_owned_fields(client: TestClient) -> None:
    response = client.post("/v1/devices", headers=_auth("admin"), json={
        "id": "cam-api", "group": "lobby", "online": True, "last_seen": 1.0,
        "created_at": 5.0, "credential_hash": "evil", "verified": True,
    })
    assert response.status_code == 201, response.text
    device = response.json()
    assert device["online"] is False and device["last_seen"] is None
    assert device["created_at"] > 1_000_000 and "credential_hash" not in device
    assert device["mqtt"]["username"] == "cam-api" and len(device["mqtt"]["password"]) > 20
    listed = client.get("/v1/devices/cam-api", headers=_auth("viewer")).json()
    assert "mqtt" not in listed and listed["group"] == "lobby"


def test_malformed_bodies_are_422_naming_the_field(client: TestClient) -> None:
    response = client.post("/v1/devices", headers=_auth("admin"), json={"group": "g"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "id"]
    bad_id = client.post("/v1/devices", headers=_auth("admin"), json={"id": "a/b"})
    assert bad_id.status_code == 422 and "must be 1-64 characters" in bad_id.text
    bad_query = client.get("/v1/events?limit=0", headers=_auth("viewer"))
    assert bad_query.status_code == 422 and bad_query.json()["detail"][0]["loc"] == [
        "query", "limit"]
    bad_cursor = client.get("/v1/events?cursor=zzz", headers=_auth("viewer"))
    assert bad_cursor.status_code == 422


def test_infer_finds_the_face_through_the_batcher(client: TestClient) -> None:
    response = client.post("/v1/infer/blazeface-full-onnx", headers=_auth("operator"),
                           content=jpeg(data.astronaut(), 95))
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["backend"] == "onnxruntime:cpu" and result["width"] == 512
    [face] = result["detections"]
    assert iou(tuple(face["box"]), ASTRONAUT_FACE) > 0.6
    coffee = client.post("/v1/infer/blazeface-full-onnx", headers=_auth("operator"),
                         content=jpeg(data.coffee()))
    assert coffee.json()["detections"] == []
    assert client.post("/v1/infer/blazeface-full-onnx", headers=_auth("viewer"),
                       content=b"x").status_code == 403
    assert client.post("/v1/infer/blazeface-full-onnx", headers=_auth("operator"),
                       content=b"not an image").status_code == 422
    assert client.post("/v1/infer/no-such-model", headers=_auth("operator"),
                       content=jpeg(data.coffee())).status_code == 404


def test_oversized_upload_is_413(client: TestClient) -> None:
    big = b"\xff" * (2 * 1024 * 1024 + 1)
    response = client.post("/v1/infer/blazeface-full-onnx", headers=_auth("operator"),
                           content=big)
    assert response.status_code == 413 and "exceeds the limit" in response.json()["detail"]
    assert client.post("/v1/models", headers=_auth("admin"), content=big).status_code == 413


def _bundle_zip(store: ModelStore, name: str, *, tamper: bool = False) -> bytes:
    bundle = store.resolve(name)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("manifest.json", bundle.manifest.to_json())
        model = bytearray(bundle.read_verified_model())
        if tamper:
            model[len(model) // 2] ^= 0xFF
        archive.writestr(bundle.manifest.file.path, bytes(model))
    return buffer.getvalue()


def test_model_upload_and_list(client: TestClient, zoo_store: ModelStore) -> None:
    uploaded = client.post("/v1/models", headers=_auth("admin"),
                           content=_bundle_zip(zoo_store, "blazeface-short"))
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["name"] == "blazeface-short"
    assert uploaded.json()["sha256"] == zoo_store.resolve("blazeface-short").manifest.file.sha256
    names = {m["name"] for m in client.get("/v1/models", headers=_auth("viewer")).json()}
    assert "blazeface-short" in names
    tampered = client.post("/v1/models", headers=_auth("admin"),
                           content=_bundle_zip(zoo_store, "blazeface-short", tamper=True))
    assert tampered.status_code == 422 and "sha256 mismatch" in tampered.text
    assert client.post("/v1/models", headers=_auth("admin"),
                       content=b"PK not a zip").status_code == 422


def test_events_pages_filters_and_images(client: TestClient) -> None:
    service: HubService = client.app.state.service  # type: ignore[attr-defined]
    thumb = jpeg(data.astronaut())
    for i in range(5):
        service.store.add_event(
            id=f"0190a000-0000-7000-8000-00000000000{i}", device_id="cam-api", source="door",
            reason="uncertain", priority=5, captured_at=1000.0 + i,
            received_at=time.time() + i, edge_model="m", edge_version="1",
            edge_detections=json.dumps([]), thumbnail=thumb,
        )
    page = client.get("/v1/events?limit=2&device_id=cam-api", headers=_auth("viewer")).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = client.get(f"/v1/events?limit=10&device_id=cam-api&cursor={page['next_cursor']}",
                      headers=_auth("viewer")).json()
    assert len(rest["items"]) == 3 and rest["next_cursor"] is None
    event_id = rest["items"][0]["id"]
    image = client.get(f"/v1/events/{event_id}/thumbnail.jpg", headers=_auth("viewer"))
    assert image.status_code == 200 and image.content == thumb
    assert client.get(f"/v1/events/{event_id}/crop.jpg",
                      headers=_auth("viewer")).status_code == 404
    assert client.get("/v1/events/nope", headers=_auth("viewer")).status_code == 404


def test_placeholder_secret_is_refused_in_production(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="CLOUD_HUB_SECRET_KEY"):
        load_settings(mode="production", secret_key="changethis", data_dir=tmp_path)
    assert load_settings(mode="development", secret_key="changethis", data_dir=tmp_path)
    with pytest.raises(SettingsError, match="CLOUD_HUB_BATCH_MAX_SIZE"):
        load_settings(batch_max_size=0, data_dir=tmp_path)
    settings_file = tmp_path / "hub.env"
    settings_file.write_text("CLOUD_HUB_MQTT_PORT=18883\nCLOUD_HUB_SHARE_GROUP=eu\n")
    from_file = load_settings(settings_file=settings_file, data_dir=tmp_path)
    assert (from_file.mqtt_port, from_file.share_group) == (18883, "eu")
    settings_file.write_text("CLOUD_HUB_MQTT_PORT=not-a-port\n")
    with pytest.raises(SettingsError, match="CLOUD_HUB_MQTT_PORT"):
        load_settings(settings_file=settings_file, data_dir=tmp_path)
    with pytest.raises(SettingsError, match="no such settings file"):
        load_settings(settings_file=tmp_path / "absent.env")


def test_publish_and_rollouts_through_the_api(client: TestClient) -> None:
    service: HubService = client.app.state.service  # type: ignore[attr-defined]
    assert service.distribution is not None
    no_keys = client.post("/v1/models/blazeface-short/1.0.0/publish", headers=_auth("admin"),
                          json={"hardware": ["any"]})
    assert no_keys.status_code == 409 and "keys init" in no_keys.json()["detail"]
    service.distribution.repository.init()
    published = client.post("/v1/models/blazeface-short/1.0.0/publish",
                            headers=_auth("admin"), json={"hardware": ["any"]})
    assert published.status_code == 201, published.text
    assert published.json()["target"] == "models/blazeface-short/blazeface-short-1.0.0.zip"
    metadata = client.get("/tuf/metadata/timestamp.json")
    assert metadata.status_code == 200 and metadata.json()["signed"]["_type"] == "timestamp"
    assert client.post("/v1/models/nope/1.0.0/publish", headers=_auth("admin"),
                       json={}).status_code == 404
    missing_group = client.post("/v1/rollouts", headers=_auth("operator"), json={
        "model": "blazeface-short", "version": "1.0.0", "group": "empty"})
    assert missing_group.status_code == 409 and "no devices" in missing_group.text
    bad = client.post("/v1/rollouts", headers=_auth("operator"), json={
        "model": "blazeface-short", "version": "1.0.0", "group": "lobby",
        "canary_percent": 150})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == [
        "body", "canary_percent"]
    assert client.post("/v1/rollouts", headers=_auth("viewer"), json={}).status_code == 403
    assert client.get("/v1/rollouts/none", headers=_auth("viewer")).status_code == 404


def test_readyz_names_a_failed_hub_thread(client: TestClient) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    healthy = service.supervisor
    service.supervisor = Supervisor()  # the module's service stays healthy for other tests
    try:
        service.supervisor.fail("thread intake-0 died: RuntimeError: boom")
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"ready": False,
                                "problems": ["failed: thread intake-0 died: RuntimeError: boom"]}
    finally:
        service.supervisor = healthy
