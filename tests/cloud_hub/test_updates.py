"""Signed model distribution: python-tuf's guarantees through our repository and client,
and the checks TUF cannot make (rollback of a model version, runtime, hardware)."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloud_hub.updates import ModelRepository
from edge_agent.errors import UpdateRefusedError
from edge_agent.updates import DeviceFit, UpdateClient
from models import ModelBundle, ModelStore
from tests.broker import free_port

pytestmark = pytest.mark.integration

FIT = DeviceFit(runtimes=frozenset({"tflite", "onnx"}), hardware=frozenset({"x86_64"}))


class Server:
    """Serves a repository folder over HTTP; tests tamper with the files on disk."""

    def __init__(self, folder: Path) -> None:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *a: None  # type: ignore[method-assign]
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[tuple[ModelRepository, Server]]:
    repository = ModelRepository(tmp_path / "repo", tmp_path / "keys")
    repository.init()
    server = Server(tmp_path / "repo")
    yield repository, server
    server.close()


def _version(store: ModelStore, version: str, folder: Path) -> ModelBundle:
    base = store.resolve("blazeface-short")
    return ModelStore(folder / "published").add(
        base.manifest.model_copy(update={"version": version}), base.read_verified_model())


def _client(tmp_path: Path, repo: ModelRepository, server: Server) -> UpdateClient:
    return UpdateClient(tmp_path / "device", server.url, trusted_root=repo.trusted_root())


def test_publish_refresh_download_and_verify(repo: tuple[ModelRepository, Server],
                                             zoo_store: ModelStore, tmp_path: Path) -> None:
    repository, server = repo
    repository.publish(_version(zoo_store, "1.1.0", tmp_path))
    client = _client(tmp_path, repository, server)
    client.refresh()
    offer = client.choose("blazeface-short", "1.1.0", installed="1.0.0", fit=FIT)
    assert offer is not None
    assert (offer.version, offer.runtime, offer.hardware) == ("1.1.0", "tflite", ("any",))
    archive = client.download(offer)
    assert archive.stat().st_size == offer.length
    assert client.choose("blazeface-short", "1.1.0", installed="1.1.0", fit=FIT) is None


def test_rollback_to_a_lower_version_is_refused(repo: tuple[ModelRepository, Server],
                                                zoo_store: ModelStore, tmp_path: Path) -> None:
    repository, server = repo
    repository.publish(_version(zoo_store, "0.9.0", tmp_path))
    client = _client(tmp_path, repository, server)
    client.refresh()
    with pytest.raises(UpdateRefusedError, match=r"older than the installed 1\.0\.0") as caught:
        client.choose("blazeface-short", "0.9.0", installed="1.0.0", fit=FIT)
    assert caught.value.kind == "rollback"


def test_expired_timestamp_is_refused(tmp_path: Path, zoo_store: ModelStore) -> None:
    past = datetime.now(UTC) - timedelta(days=3)
    repository = ModelRepository(tmp_path / "repo", tmp_path / "keys", clock=lambda: past)
    repository.init()
    server = Server(tmp_path / "repo")
    try:
        client = _client(tmp_path, repository, server)
        with pytest.raises(UpdateRefusedError) as caught:
            client.refresh()
        assert caught.value.kind == "expired" and "timestamp" in str(caught.value)
    finally:
        server.close()


def test_unknown_key_is_refused_and_trust_unchanged(repo: tuple[ModelRepository, Server],
                                                    zoo_store: ModelStore,
                                                    tmp_path: Path) -> None:
    repository, server = repo
    client = _client(tmp_path, repository, server)
    client.refresh()
    trusted = (tmp_path / "device" / "metadata" / "timestamp.json").read_bytes()
    # An attacker with his own key re-signs the timestamp.
    from securesystemslib.signer import CryptoSigner

    timestamp = repository.load("timestamp")
    timestamp.signed.version += 1
    timestamp.signatures.clear()
    timestamp.sign(CryptoSigner.generate_ed25519())
    repository._write(timestamp, "timestamp.json")
    with pytest.raises(UpdateRefusedError) as caught:
        client.refresh()
    assert caught.value.kind == "signature"
    assert (tmp_path / "device" / "metadata" / "timestamp.json").read_bytes() == trusted


def test_tampered_target_is_refused_and_not_cached(repo: tuple[ModelRepository, Server],
                                                   zoo_store: ModelStore,
                                                   tmp_path: Path) -> None:
    repository, server = repo
    repository.publish(_version(zoo_store, "1.2.0", tmp_path))
    [stored] = list((repository.targets_dir / "models" / "blazeface-short").glob("*.zip"))
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    client = _client(tmp_path, repository, server)
    client.refresh()
    offer = client.choose("blazeface-short", "1.2.0", installed="1.0.0", fit=FIT)
    assert offer is not None
    with pytest.raises(UpdateRefusedError) as caught:
        client.download(offer)
    assert caught.value.kind == "integrity"
    assert not list((tmp_path / "device" / "targets").rglob("*.zip"))


def test_endless_data_is_cut_at_the_signed_length(repo: tuple[ModelRepository, Server],
                                                  zoo_store: ModelStore,
                                                  tmp_path: Path) -> None:
    repository, server = repo
    repository.publish(_version(zoo_store, "1.3.0", tmp_path))
    [stored] = list((repository.targets_dir / "models" / "blazeface-short").glob("*.zip"))
    stored.write_bytes(stored.read_bytes() + b"\0" * 5_000_000)
    client = _client(tmp_path, repository, server)
    client.refresh()
    offer = client.choose("blazeface-short", "1.3.0", installed="1.0.0", fit=FIT)
    assert offer is not None
    with pytest.raises(UpdateRefusedError) as caught:
        client.download(offer)
    assert caught.value.kind in ("too-long", "integrity")
    assert not list((tmp_path / "device" / "targets").rglob("*.zip"))


def test_targets_not_matching_snapshot_is_refused(repo: tuple[ModelRepository, Server],
                                                  zoo_store: ModelStore,
                                                  tmp_path: Path) -> None:
    repository, server = repo
    repository.publish(_version(zoo_store, "1.4.0", tmp_path))
    # Mix and match: serve version 1 of targets under the name snapshot promises (2).
    metadata = repository.metadata_dir
    (metadata / "2.targets.json").write_bytes((metadata / "1.targets.json").read_bytes())
    client = _client(tmp_path, repository, server)
    with pytest.raises(UpdateRefusedError) as caught:
        client.refresh()
    assert caught.value.kind == "mix-and-match"


def test_other_runtime_or_hardware_is_refused(repo: tuple[ModelRepository, Server],
                                              zoo_store: ModelStore, tmp_path: Path) -> None:
    repository, server = repo
    repository.publish(_version(zoo_store, "2.0.0", tmp_path), hardware=["edgetpu"])
    client = _client(tmp_path, repository, server)
    client.refresh()
    with pytest.raises(UpdateRefusedError, match="built for edgetpu") as caught:
        client.choose("blazeface-short", "2.0.0", installed="1.0.0", fit=FIT)
    assert caught.value.kind == "hardware"
    no_tflite = DeviceFit(runtimes=frozenset({"onnx"}), hardware=frozenset({"x86_64"}))
    with pytest.raises(UpdateRefusedError, match="needs tflite") as caught:
        client.choose("blazeface-short", "2.0.0", installed="1.0.0", fit=no_tflite)
    assert caught.value.kind == "runtime"


def test_root_rotation_needs_both_thresholds(repo: tuple[ModelRepository, Server],
                                             tmp_path: Path) -> None:
    repository, server = repo
    client = _client(tmp_path, repository, server)
    client.refresh()
    repository.rotate_root()
    repository.refresh()
    client.refresh()  # signed by the old and the new key: accepted
    trusted = json.loads((tmp_path / "device" / "metadata" / "root.json").read_text())
    assert trusted["signed"]["version"] == 2
    # A rotation signed only by the new key does not meet the old threshold.
    root = repository.load("root")
    root.signed.version += 1
    from securesystemslib.signer import CryptoSigner

    stranger = CryptoSigner.generate_ed25519()
    for keyid in list(root.signed.roles["root"].keyids):
        root.signed.revoke_key(keyid, "root")
    root.signed.add_key(stranger.public_key, "root")
    root.signatures.clear()
    root.sign(stranger)
    repository._write(root, "3.root.json")
    with pytest.raises(UpdateRefusedError) as caught:
        client.refresh()
    assert caught.value.kind == "signature"
    trusted = json.loads((tmp_path / "device" / "metadata" / "root.json").read_text())
    assert trusted["signed"]["version"] == 2


def test_expired_snapshot_is_refused(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path / "repo", tmp_path / "keys")
    repository.init()
    server = Server(tmp_path / "repo")
    try:
        # Snapshot re-signed with an expiry in the past, under a fresh timestamp.
        from cloud_hub.updates import _read_key

        snapshot = repository.load("snapshot")
        snapshot.signed.version += 1
        snapshot.signed.expires = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        snapshot.signatures.clear()
        snapshot.sign(_read_key(tmp_path / "keys" / "snapshot.pem"))
        repository._write(snapshot, f"{snapshot.signed.version}.snapshot.json")
        timestamp = repository.load("timestamp")
        timestamp.signed.version += 1
        timestamp.signed.snapshot_meta.version = snapshot.signed.version
        timestamp.signatures.clear()
        timestamp.sign(_read_key(tmp_path / "keys" / "timestamp.pem"))
        repository._write(timestamp, "timestamp.json")
        client = _client(tmp_path, repository, server)
        with pytest.raises(UpdateRefusedError) as caught:
            client.refresh()
        assert caught.value.kind == "expired" and "snapshot" in str(caught.value)
    finally:
        server.close()


def test_fewer_signatures_than_the_root_threshold_are_refused(tmp_path: Path) -> None:
    repository = ModelRepository(tmp_path / "repo", tmp_path / "keys")
    repository.init(root_keys=2, root_threshold=2)
    server = Server(tmp_path / "repo")
    try:
        client = _client(tmp_path, repository, server)
        client.refresh()
        from cloud_hub.updates import _read_key

        # A new root signed by one of the two root keys only.
        keys = sorted((tmp_path / "keys" / "root").glob("*.pem"))
        root = repository.load("root")
        root.signed.version += 1
        root.signatures.clear()
        root.sign(_read_key(keys[0]))
        repository._write(root, "2.root.json")
        with pytest.raises(UpdateRefusedError) as caught:
            client.refresh()
        assert caught.value.kind == "signature" and "signed by 1/2 keys" in str(caught.value)
        trusted = json.loads((tmp_path / "device" / "metadata" / "root.json").read_text())
        assert trusted["signed"]["version"] == 1
    finally:
        server.close()
