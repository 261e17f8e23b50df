"""Secrets at rest and the online keys: signing keys created private (never readable by
others, not even for a moment), a hub that refuses readable keys, a private store, a
targets key that can stay offline, and ``cloud-hub keys refresh`` for cron."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud_hub.api import create_app
from cloud_hub.api.auth import hash_token
from cloud_hub.cli import main
from cloud_hub.errors import UnprotectedKeyError
from cloud_hub.service import HubService
from cloud_hub.store import Store
from cloud_hub.updates import ModelRepository
from edge_agent.errors import UpdateRefusedError
from edge_agent.updates import UpdateClient
from models import ModelBundle, ModelStore
from tests.cloud_hub.hub_helpers import SECRET, hub_settings
from tests.cloud_hub.test_updates import Server

pytestmark = pytest.mark.integration


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, whatever the test runner's."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode)
            for p in [folder, *folder.rglob("*")] if p.exists()}


def _too_open(folder: Path) -> list[str]:
    return [f"{name} {mode:04o}" for name, mode in _modes(folder).items()
            if mode != (0o700 if (folder / name).is_dir() else 0o600)]


def test_keys_are_private_from_the_moment_they_exist(
    tmp_path: Path, umask_022: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = tmp_path / "keys"
    seen: list[str] = []

    def watched(original: Callable[..., Any], *, before: bool = False) -> Callable[..., Any]:
        # After (or before) every file-system step of key writing, nothing under keys/
        # may be readable by group or others.
        def step(*args: Any, **kwargs: Any) -> Any:
            if before and keys.exists():
                seen.extend(_too_open(keys))
            result = original(*args, **kwargs)
            if keys.exists():
                seen.extend(_too_open(keys))
            return result
        return step

    for name in ("write_bytes", "mkdir", "replace", "rename", "touch"):
        monkeypatch.setattr(Path, name, watched(getattr(Path, name)))
    monkeypatch.setattr(Path, "chmod", watched(Path.chmod, before=True))
    for name in ("fsync", "close", "write", "replace", "rename"):
        monkeypatch.setattr(os, name, watched(getattr(os, name)))
    ModelRepository(tmp_path / "repo", keys).init(root_keys=2, root_threshold=1)
    monkeypatch.undo()

    assert seen == []
    assert _modes(keys) == {".": 0o700, "root": 0o700, "root/root-0.pem": 0o600,
                            "root/root-1.pem": 0o600, "targets.pem": 0o600,
                            "snapshot.pem": 0o600, "timestamp.pem": 0o600}


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_the_hub_refuses_readable_keys_naming_the_file(
    mode: int, tmp_path: Path, zoo_store: ModelStore, umask_022: None,
) -> None:
    settings = hub_settings(tmp_path, zoo_store.root, landmark_model=None,
                            detector_model="blazeface-short", batch_autotune=False)
    repository = ModelRepository(settings.repository_dir, settings.signing_keys_dir)
    repository.init()
    key = settings.signing_keys_dir / "timestamp.pem"
    key.chmod(mode)
    service = HubService(settings, ingest=False)
    expected = re.escape(f"{key}: permissions {mode:04o} are too open")
    with pytest.raises(UnprotectedKeyError, match=expected):
        service.start()
    assert not service.ready
    # Nor does it sign with one.
    with pytest.raises(UnprotectedKeyError, match=re.escape(str(key))):
        repository.refresh(force=True)


def test_the_store_is_private(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "hub.sqlite3"
    store = Store(f"sqlite:///{path}")
    store.open()
    store.add_device(device_id="cam-1", group="site-a")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    store.close()
    assert modes["hub.sqlite3"] == 0o600
    assert all(mode == 0o600 for mode in modes.values()), modes  # -wal and -shm too
    path.chmod(0o644)  # a store from an earlier version
    store.open()
    store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _bundle(zoo_store: ModelStore, store: ModelStore, version: str) -> ModelBundle:
    base = zoo_store.resolve("blazeface-short")
    return store.add(base.manifest.model_copy(update={"version": version}),
                     base.read_verified_model())


def test_with_the_targets_key_offline_only_the_operator_signs_targets(
    tmp_path: Path, zoo_store: ModelStore, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hub_models = ModelStore(tmp_path / "hub-models")
    settings = hub_settings(tmp_path, hub_models.root, landmark_model=None,
                            detector_model="blazeface-short", batch_autotune=False,
                            targets_key_offline=True)
    _bundle(zoo_store, hub_models, "1.0.0")
    _bundle(zoo_store, hub_models, "1.1.0")
    ModelRepository(settings.repository_dir, settings.signing_keys_dir).init()
    offline = tmp_path / "usb-stick" / "targets.pem"
    offline.parent.mkdir()
    (settings.signing_keys_dir / "targets.pem").rename(offline)

    service = HubService(settings, ingest=False)
    with TestClient(create_app(service)) as client:
        service.store.add_token(name="admin", role="admin",
                                token_hash=hash_token(SECRET, "admin-token"))
        response = client.post("/v1/models/blazeface-short/1.1.0/publish", json={},
                               headers={"Authorization": "Bearer admin-token"})
        assert response.status_code == 403
        assert "publishing is off on this hub" in response.json()["detail"]
        assert "cloud-hub models publish BUNDLE --targets-key FILE" in (
            response.json()["detail"])
        assert service.refresher is not None
        service.refresher.check()
    repository = ModelRepository(settings.repository_dir, settings.signing_keys_dir)
    assert repository.load("targets").signed.version == 1

    for name, value in settings.model_dump(mode="json").items():
        if value is not None:  # complex settings (lists) travel as JSON in the environment
            text = json.dumps(value) if isinstance(value, list | dict) else str(value)
            monkeypatch.setenv(f"CLOUD_HUB_{name.upper()}", text)
    bundle = hub_models.resolve("blazeface-short@1.1.0").root
    assert main(["models", "publish", str(bundle)]) == 1
    assert "publishing is off on this hub" in capsys.readouterr().err
    assert main(["models", "publish", str(bundle), "--targets-key", str(offline)]) == 0
    assert repository.load("targets").signed.version == 2
    assert repository.targets_index()["models/blazeface-short/blazeface-short-1.1.0.zip"][
        "version"] == "1.1.0"

    # `keys refresh` re-signs the online roles; targets only with the key in hand.
    capsys.readouterr()
    assert main(["keys", "refresh", "--force"]) == 0
    out = capsys.readouterr().out
    assert "re-signed: snapshot, timestamp" in out and "(key offline)" in out
    assert repository.load("targets").signed.version == 2
    assert main(["keys", "refresh", "--force", "--targets-key", str(offline)]) == 0
    assert "re-signed: targets, snapshot, timestamp" in capsys.readouterr().out
    assert repository.load("targets").signed.version == 3


def test_keys_refresh_from_cron_revives_an_expired_timestamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "hub"
    last_publish = datetime.now(UTC) - timedelta(hours=25)
    repository = ModelRepository(data / "tuf", data / "keys", clock=lambda: last_publish)
    repository.init()
    server = Server(data / "tuf")
    try:
        client = UpdateClient(tmp_path / "device", server.url,
                              trusted_root=repository.trusted_root())
        with pytest.raises(UpdateRefusedError, match=r"timestamp\.json is expired"):
            client.refresh()
        monkeypatch.setenv("CLOUD_HUB_DATA_DIR", str(data))
        assert main(["keys", "refresh"]) == 0
        assert "re-signed: timestamp" in capsys.readouterr().out
        client.refresh()  # the device's own clock: accepted again
        assert main(["keys", "refresh"]) == 0
        assert "re-signed: nothing was due" in capsys.readouterr().out
        # The yearly root renewal, with the root keys brought online for it.
        assert main(["keys", "rotate-root"]) == 0
        assert "root version 2" in capsys.readouterr().out
        client.refresh()
        trusted = json.loads((tmp_path / "device" / "metadata" / "root.json").read_text())
        assert trusted["signed"]["version"] == 2
        assert _too_open(data / "keys") == []
    finally:
        server.close()
