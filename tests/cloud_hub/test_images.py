"""The content-addressed image store, on files (and through obstore's in-memory store, the
adapter that S3 uses): named by sha256, sharded, written atomically, bounded, checked."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
from obstore.store import MemoryStore

from cloud_hub.errors import ImageStoreError, RetryLaterError
from cloud_hub.images import FileImageStore, ImageStore, ObjectImageStore

pytestmark = pytest.mark.unit

JPEG = b"\xff\xd8" + bytes(range(256)) * 20


@pytest.fixture(params=["file", "object"])
def images(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    if request.param == "file":
        return FileImageStore(tmp_path / "images", max_image_bytes=64 * 1024)
    return ObjectImageStore(MemoryStore(), prefix="hub/images", max_image_bytes=64 * 1024)


def test_an_image_is_named_by_its_hash_kept_once_and_forgotten(images: ImageStore) -> None:
    ref = images.put(JPEG)
    assert ref == hashlib.sha256(JPEG).hexdigest()
    assert images.put(JPEG) == ref
    assert images.get(ref) == JPEG
    images.delete(ref)
    assert images.get(ref) is None
    images.delete(ref)  # gone already: nothing


def test_only_an_image_idle_since_the_cutoff_is_deleted(images: ImageStore) -> None:
    ref = images.put(JPEG)
    assert not images.delete_if_idle(ref, idle_before=time.time() - 3600)  # just put
    assert images.get(ref) == JPEG
    assert images.delete_if_idle(ref, idle_before=time.time() + 3600)
    assert images.get(ref) is None
    assert not images.delete_if_idle(ref, idle_before=time.time() + 3600)  # gone already


def test_a_put_of_an_image_already_there_touches_it(tmp_path: Path) -> None:
    images = FileImageStore(tmp_path / "images", max_image_bytes=1 << 20)
    ref = images.put(JPEG)
    path = images.path(ref)
    os.utime(path, (1000.0, 1000.0))  # put long ago
    images.put(JPEG)  # again: now it is a new event's too
    assert path.stat().st_mtime > 2000.0
    assert not images.delete_if_idle(ref, idle_before=2000.0)
    assert [p.name for p in path.parent.iterdir()] == [ref]  # put back, no tombstone left


@pytest.mark.parametrize("ref", ["../../etc/passwd", "ab", "A" * 64, "g" * 64, "", "0" * 64 + "\n"])
def test_a_reference_is_never_a_path(images: ImageStore, ref: str) -> None:
    with pytest.raises(ImageStoreError, match="not an image reference"):
        images.get(ref)
    with pytest.raises(ImageStoreError):
        images.delete(ref)


def test_images_are_bounded(images: ImageStore) -> None:
    with pytest.raises(ImageStoreError, match="exceeds"):
        images.put(bytes(64 * 1024 + 1))


def test_files_are_sharded_private_and_whole(tmp_path: Path) -> None:
    images = FileImageStore(tmp_path / "images", max_image_bytes=1 << 20)
    ref = images.put(JPEG)
    path = images.path(ref)
    assert path == tmp_path / "images" / ref[:2] / ref[2:4] / ref
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == [ref]  # no temporary file left
    path.write_bytes(JPEG[:-1])  # damaged on disk: not served as that image
    assert images.get(ref) is None


def test_writers_of_the_same_image_at_once_leave_it_whole(tmp_path: Path) -> None:
    images = FileImageStore(tmp_path / "images", max_image_bytes=1 << 20)
    data = bytes(range(256)) * 1000
    threads = [threading.Thread(target=images.put, args=(data,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    ref = hashlib.sha256(data).hexdigest()
    assert images.get(ref) == data
    assert [p.name for p in images.path(ref).parent.iterdir()] == [ref]


def test_a_full_disk_is_a_transient_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "images"
    blocker.write_text("a file where the folder should be")
    images = FileImageStore(blocker, max_image_bytes=1 << 20)
    with pytest.raises(RetryLaterError):
        images.put(JPEG)


def test_an_image_and_every_folder_entry_made_for_it_are_synced_before_put_returns(
        tmp_path: Path) -> None:
    """A power cut after the event's row commits must not lose its image: the file, its
    name in its folder, and any folder made for it are synced (a rename alone is not)."""
    synced: list[str] = []

    def record(fd: int) -> None:
        synced.append(str(Path(f"/proc/self/fd/{fd}").readlink()))
        os.fsync(fd)

    root = tmp_path / "images"
    images = FileImageStore(root, max_image_bytes=1 << 20, sync=record)
    ref = images.put(b"first image")
    target = images.path(ref)
    # The partial file's data first, then the folders, deepest first, up to the one that
    # already existed (tmp_path gained the root).
    assert synced[0].startswith(str(target.parent / ".partial-"))
    assert synced[1:] == [str(target.parent), str(target.parent.parent), str(root),
                          str(tmp_path)]
    synced.clear()
    images.put(b"first image")  # already there: touched, nothing to sync
    assert synced == []
    other = images.put(b"another image")
    if images.path(other).parent == target.parent:  # same shard: only that folder's entry
        assert synced[1:] == [str(target.parent)]
    else:
        assert str(images.path(other).parent) in synced[1:]
        assert str(tmp_path) not in synced
