"""What the device decides on top of TUF, through its real update path (python-tuf client,
installer, updater) against a real signed repository served over HTTP: builds for other
hardware never block a fitting version, a lower version is refused as a rollback, a
hostile model name never becomes a path, and metadata is bounded as python-tuf bounds it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_hub.updates import ModelRepository, _read_key
from edge_agent.errors import InstallError, UpdateRefusedError
from edge_agent.updates import ModelInstaller
from models import ModelBundle, ModelStore
from sync import MalformedMessageError, ModelAnnouncement, decode, encode
from sync.install import Step
from tests.cloud_hub.test_updates import Server
from tests.edge_agent.install_driver import load
from tests.edge_agent.update_device import UpdatingDevice

pytestmark = pytest.mark.integration

NAME = "blazeface-short"


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[tuple[ModelRepository, Server]]:
    repo = ModelRepository(tmp_path / "repo", tmp_path / "keys")
    repo.init()
    server = Server(tmp_path / "repo")
    yield repo, server
    server.close()


@pytest.fixture
def device(tmp_path: Path, zoo_store: ModelStore,
           repository: tuple[ModelRepository, Server]) -> Iterator[UpdatingDevice]:
    repo, server = repository
    instance = UpdatingDevice(tmp_path / "device", server.url, repo.trusted_root(),
                              zoo_store.resolve(NAME))
    yield instance
    instance.close()


def _version(zoo_store: ModelStore, version: str, folder: Path) -> ModelBundle:
    base = zoo_store.resolve(NAME)
    return ModelStore(folder / "published").add(
        base.manifest.model_copy(update={"version": version}), base.read_verified_model())


def test_a_build_for_other_hardware_never_blocks_a_fitting_version(
    repository: tuple[ModelRepository, Server], device: UpdatingDevice,
    zoo_store: ModelStore, tmp_path: Path,
) -> None:
    repo, _ = repository
    repo.publish(_version(zoo_store, "2.0.0", tmp_path), hardware=["edgetpu"])
    repo.publish(_version(zoo_store, "1.3.0", tmp_path), hardware=["x86_64"])

    record = device.install(NAME, "1.3.0")
    assert record is not None and record.step == Step.COMMITTED, record
    assert device.installer.active_version(NAME) == "1.3.0"

    # The edge TPU release announced to the whole group: this device takes the newest
    # build for its own hardware up to it, which it already serves; it says why it takes
    # nothing newer, and keeps serving.
    record = device.install(NAME, "2.0.0")
    assert record is not None and record.step == Step.REFUSED
    assert "hardware" in record.reason and "built for edgetpu" in record.reason
    assert device.installer.active_version(NAME) == "1.3.0"


def test_an_edge_tpu_release_brings_the_x86_build_published_beside_it(
    repository: tuple[ModelRepository, Server], device: UpdatingDevice,
    zoo_store: ModelStore, tmp_path: Path,
) -> None:
    repo, _ = repository
    repo.publish(_version(zoo_store, "1.9.0", tmp_path), hardware=["x86_64"])
    repo.publish(_version(zoo_store, "2.0.0", tmp_path), hardware=["edgetpu"])
    repo.publish(_version(zoo_store, "2.1.0", tmp_path), hardware=["x86_64"])

    record = device.install(NAME, "2.0.0")
    # The highest x86 build not newer than the announced release (2.1.0 waits for its own
    # rollout and canaries).
    assert record is not None and record.step == Step.COMMITTED, record
    assert (record.candidate, device.installer.active_version(NAME)) == ("1.9.0", "1.9.0")


def test_a_signed_lower_version_is_refused_as_a_rollback(
    repository: tuple[ModelRepository, Server], device: UpdatingDevice,
    zoo_store: ModelStore, tmp_path: Path,
) -> None:
    repo, _ = repository
    repo.publish(_version(zoo_store, "0.9.0", tmp_path))
    repo.publish(_version(zoo_store, "1.1.0", tmp_path))  # a newer one is signed too
    record = device.install(NAME, "0.9.0")
    assert record is not None and record.step == Step.REFUSED
    assert "(rollback)" in record.reason and "older than the installed 1.0.0" in record.reason
    assert device.reports[-1].step == "refused" and "(rollback)" in device.reports[-1].reason
    assert device.installer.active_version(NAME) == "1.0.0"


def test_a_model_name_that_climbs_out_is_refused_before_any_path_use(
    tmp_path: Path, zoo_store: ModelStore,
) -> None:
    hostile = {"schema": "announce/1", "rollout_id": "r-1", "group": "site-a",
               "model": "../../../outside", "version": "1.0.0",
               "target": "models/x/x-1.0.0.zip", "at": 1.0}
    for field, value in (("model", "../../../outside"), ("model", ".."),
                         ("version", "../../x"), ("version", "..")):
        payload = json.dumps({**hostile, "model": "blazeface-short", field: value}).encode()
        with pytest.raises(MalformedMessageError, match="model name or version"):
            decode(payload, ModelAnnouncement)
    fine = ModelAnnouncement(rollout_id="r-1", group="site-a", model=NAME, version="1.1.0",
                             target="models/x.zip", at=1.0)
    assert decode(encode(fine), ModelAnnouncement) == fine

    # The installer itself never builds a path from such a name either.
    state = tmp_path / "device" / "state"
    installer = ModelInstaller(state, load)
    for name in ("../../../outside", "..", "a/b"):
        with pytest.raises(InstallError, match="model name"):
            installer.begin(name, "1.0.0")
    for version in ("../../x", ".."):
        with pytest.raises(InstallError, match="model version"):
            installer.slot(NAME, version)
    assert [p.name for p in tmp_path.rglob("install.json")] == []


def test_metadata_larger_than_python_tufs_limit_is_refused(
    repository: tuple[ModelRepository, Server], device: UpdatingDevice,
    zoo_store: ModelStore, tmp_path: Path,
) -> None:
    repo, _ = repository
    repo.publish(_version(zoo_store, "1.1.0", tmp_path))
    # A validly signed targets.json of 6 MB (python-tuf's limit is 5 MB): endless data
    # from a repository whose targets key was stolen must not fill the device.
    targets = repo.load("targets")
    targets.signed.unrecognized_fields["padding"] = "x" * 6_000_000
    repo._sign_targets(targets, _read_key(repo.keys / "targets.pem"))
    repo._sign_snapshot()
    repo._sign_timestamp()
    assert (repo.metadata_dir / f"{targets.signed.version}.targets.json").stat().st_size > (
        5_000_000)
    with pytest.raises(UpdateRefusedError) as caught:
        device.client.refresh()
    assert caught.value.kind == "too-long"
    assert not (tmp_path / "device" / "tuf" / "metadata" / "targets.json").exists()
