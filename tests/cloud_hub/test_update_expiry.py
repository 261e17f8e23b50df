"""Signed updates stay valid while the hub runs: with the clock moved 25 hours, 30 days
and 100 days ahead (the hub's refresher and the device under the same moved clock), a
device still installs a new version; the expiry dates are metrics and on the dashboard."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn

from cloud_hub.api import create_app
from cloud_hub.api.auth import hash_token
from cloud_hub.service import HubService
from cloud_hub.updates import ROLES
from models import ModelBundle, ModelStore
from sync.install import Step
from tests.broker import free_port
from tests.cloud_hub.hub_helpers import SECRET, hub_settings
from tests.edge_agent.update_device import UpdatingDevice

pytestmark = pytest.mark.integration

NAME = "blazeface-short"


class MovedClock:
    """The real clock plus an offset the test moves."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


def _bundle(zoo_store: ModelStore, store: ModelStore, version: str) -> ModelBundle:
    base = zoo_store.resolve(NAME)
    return store.add(base.manifest.model_copy(update={"version": version}),
                     base.read_verified_model())


def _wait(predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_devices_install_with_the_clock_25_hours_30_and_100_days_ahead(
    tmp_path: Path, zoo_store: ModelStore,
) -> None:
    clock = MovedClock()
    hub_models = ModelStore(tmp_path / "hub-models")
    port = free_port()
    settings = hub_settings(tmp_path, hub_models.root, landmark_model=None,
                            detector_model=NAME, batch_autotune=False, http_port=port,
                            tuf_refresh_interval_s=0.05)
    seed = _bundle(zoo_store, hub_models, "1.0.0")
    service = HubService(settings, ingest=False, clock=clock)
    service.open_store()
    assert service.distribution is not None
    service.distribution.repository.init()
    for version in ("1.1.0", "1.2.0", "1.3.0"):  # all signed now, installed much later
        service.distribution.publish(_bundle(zoo_store, hub_models, version))
    service.store.add_token(name="viewer", role="viewer",
                            token_hash=hash_token(SECRET, "viewer-token"))
    service.store.close()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port,
                                           log_level="warning"))
    web = threading.Thread(target=server.run, name="test-hub", daemon=True)
    web.start()
    device = UpdatingDevice(tmp_path / "device", f"http://127.0.0.1:{port}/tuf",
                            service.distribution.repository.trusted_root(), seed, clock=clock)
    registry = service.metrics.registry

    def expiry(role: str) -> float:
        return registry.get_sample_value("hub_tuf_metadata_expiry_timestamp_seconds",
                                         {"role": role}) or 0.0

    try:
        _wait(lambda: service.ready and server.started, "the hub")
        for ahead, version in ((timedelta(hours=25), "1.1.0"), (timedelta(days=30), "1.2.0"),
                               (timedelta(days=100), "1.3.0")):
            clock.ahead = ahead
            # The refresher, under the moved clock, re-signs what expired meanwhile.
            _wait(lambda: all(expiry(role) > clock().timestamp() for role in ROLES),
                  f"the refresher at +{ahead}")
            record = device.install(NAME, version)
            assert record is not None and record.step == Step.COMMITTED, (ahead, record)
            assert device.installer.active_version(NAME) == version

        resigned = {role: registry.get_sample_value("hub_tuf_metadata_resigned_total",
                                                    {"role": role}) for role in ROLES}
        assert resigned["root"] is None and resigned["targets"] == 1
        assert resigned["snapshot"] == 2 and resigned["timestamp"] == 3  # type: ignore[operator]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/dashboard",
                                         headers={"Authorization": "Bearer viewer-token"})
        with urllib.request.urlopen(request, timeout=30) as response:
            page = response.read().decode()
        for role in ROLES:
            assert f"data-role='{role}'" in page
        assert "class='due'" not in page
    finally:
        device.close()
        server.should_exit = True
        web.join(30)
