"""Where the hub keeps escalated images: a content-addressed store, the database holding
only each image's reference (its sha256, hex).

:class:`ImageStore` is the seam (``put``, ``get``, ``delete``, ``delete_if_idle``);
:class:`FileImageStore` keeps each image in a file named after its hash, in two levels
of sharded folders (``ab/cd/abcd...``) so that no folder holds more than a few thousand
files, written to a unique temporary name and renamed into place (atomic: a reader sees
the whole image or none; two hubs writing the same image at once write the same bytes).
The same image escalated twice is kept once. Images are bounded in size
(``max_image_bytes``, the hub's message limit), readable by the hub's user only (face
crops), and checked against their name when read back.

Deleting an image races with storing it again: the same bytes escalated anew find the
image there and reference it, while retention, having found no reference, deletes it.
Three things close that (nothing acknowledged is ever lost):

* ``put`` always touches the image, even one already there: a file's mtime is set to
  now (``os.utime``; if the file is gone by then it is written anew), an object is
  written again (its ``last_modified`` is now). The event's row commits after ``put``.
* Retention deletes only with :meth:`ImageStore.delete_if_idle`: an image untouched
  since ``idle_before``, which the hub sets :data:`IMAGE_GRACE_S` before now, far above
  any ingest's put-to-commit time (one transaction attempt; a retry puts again). An image
  touched by a put whose row is not yet committed is therefore never idle.
* Inside one hub, the store re-checks references and deletes under a gate that every
  put-to-commit holds shared (:class:`cloud_hub.store.Store`): no put is between its
  touch and its commit while retention decides.

Across replicas sharing a store only the first two hold. On files they suffice:
:class:`FileImageStore` first renames an idle image to a tombstone (atomic), then reads
the tombstone's mtime: a put that touched it before the rename shows (the image is put
back; a reader in that instant finds it missing, once), a put after the rename finds no
file and writes it again. On S3 a put landing between retention's ``HEAD`` and its
``DELETE`` (S3 has no delete conditional on modification time) is still lost: a window
of one round trip, for an image identical to one unreferenced for
``image_retention_days`` and untouched for the grace period, put by any replica's
ingest. Keep bucket versioning on, where that matters: such a delete is then
recoverable.

:class:`ObjectImageStore` keeps them in S3-compatible object storage through
``obstore`` (optional: ``pip install obstore``): one small wheel with no Python
dependencies, where ``fsspec`` needs ``s3fs``, ``aiobotocore`` and ``aiohttp`` for the
same three calls.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud_hub.errors import ImageStoreError, ImageStoreUnavailableError

_REF = re.compile(r"^[0-9a-f]{64}$")

IMAGE_GRACE_S = 3600.0
"""How long an image stays after its last put before retention may delete it (when no
event references it): far above the seconds from a put to its event's commit."""


def image_ref(data: bytes) -> str:
    """The reference of an image: its sha256, lower-case hex."""
    return hashlib.sha256(data).hexdigest()


def check_ref(ref: str) -> str:
    """Return ``ref`` if it is a reference this store makes (never a path).

    Raises:
        ImageStoreError: It is not 64 lower-case hex digits.
    """
    if not _REF.fullmatch(ref):
        raise ImageStoreError(f"{ref[:80]!r} is not an image reference (sha256, hex)")
    return ref


class ImageStore(ABC):
    """Content-addressed images. ``put`` is a template method: it bounds the size and
    names the image; subclasses only store and fetch bytes by name.

    Args:
        max_image_bytes: The largest image accepted.
    """

    def __init__(self, *, max_image_bytes: int) -> None:
        self.max_image_bytes = max_image_bytes

    def put(self, data: bytes) -> str:
        """Keep ``data`` (once, whoever sends it again); return its reference.

        Raises:
            ImageStoreError: It is larger than ``max_image_bytes``.
            ImageStoreUnavailableError: The storage failed (full, unreachable): retry.
        """
        if len(data) > self.max_image_bytes:
            raise ImageStoreError(f"image of {len(data)} bytes exceeds the limit of "
                                  f"{self.max_image_bytes} bytes")
        ref = image_ref(data)
        self._write(ref, data)
        return ref

    def get(self, ref: str) -> bytes | None:
        """The image named ``ref``; ``None`` if it is gone (or no longer matches its name).

        Raises:
            ImageStoreError: ``ref`` is not a reference.
            ImageStoreUnavailableError: The storage failed: retry.
        """
        data = self._read(check_ref(ref))
        if data is None or image_ref(data) != ref:
            return None
        return data

    def delete(self, ref: str) -> None:
        """Forget the image named ``ref`` (nothing if it is gone).

        Raises:
            ImageStoreError: ``ref`` is not a reference.
            ImageStoreUnavailableError: The storage failed: retry.
        """
        self._remove(check_ref(ref))

    def delete_if_idle(self, ref: str, *, idle_before: float) -> bool:
        """Forget the image named ``ref`` only if no put touched it since ``idle_before``
        (seconds since the epoch); whether it was deleted (``False`` if gone already).

        Raises:
            ImageStoreError: ``ref`` is not a reference.
            ImageStoreUnavailableError: The storage failed: retry.
        """
        return self._remove_if_idle(check_ref(ref), idle_before)

    @abstractmethod
    def _write(self, ref: str, data: bytes) -> None: ...

    @abstractmethod
    def _read(self, ref: str) -> bytes | None: ...

    @abstractmethod
    def _remove(self, ref: str) -> None: ...

    @abstractmethod
    def _remove_if_idle(self, ref: str, idle_before: float) -> bool: ...


class FileImageStore(ImageStore):
    """Images as files under ``root`` (sharded by the hash's first four digits)."""

    def __init__(self, root: Path, *, max_image_bytes: int,
                 sync: Callable[[int], None] = os.fsync) -> None:
        """``sync`` makes a file descriptor's data durable (a test may record the calls)."""
        super().__init__(max_image_bytes=max_image_bytes)
        self.root = root
        self._sync = sync

    def path(self, ref: str) -> Path:
        """Where the image named ``ref`` lives."""
        return self.root / ref[:2] / ref[2:4] / ref

    def _write(self, ref: str, data: bytes) -> None:
        target = self.path(ref)
        try:
            os.utime(target)  # the same bytes, by their name: touched, so retention waits
            return
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ImageStoreUnavailableError(f"cannot touch image {ref[:12]}… under "
                                             f"{self.root}: {exc.strerror}") from exc
        try:
            created = self._make_folders(target.parent)
            # A unique name per writer: concurrent writers never share a temporary file.
            fd, partial = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    self._sync(handle.fileno())
                Path(partial).replace(target)
            except BaseException:
                Path(partial).unlink(missing_ok=True)
                raise
            # The new name, and any folder made for it, are durable before the event's
            # row commits: a power cut cannot leave a stored event without its image.
            for folder in (target.parent, *created):
                self._sync_folder(folder)
        except OSError as exc:
            raise ImageStoreUnavailableError(f"cannot write image {ref[:12]}… under "
                                             f"{self.root}: {exc.strerror}") from exc

    def _make_folders(self, folder: Path) -> list[Path]:
        """Make ``folder`` and its missing parents under the root; the parents whose
        entries changed (each new folder's parent), deepest first."""
        missing = []
        while not folder.exists() and folder != self.root.parent:
            missing.append(folder)
            folder = folder.parent
        for new in reversed(missing):
            new.mkdir(mode=0o700, exist_ok=True)
        return [new.parent for new in missing]

    def _sync_folder(self, folder: Path) -> None:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._sync(fd)
        finally:
            os.close(fd)

    def _read(self, ref: str) -> bytes | None:
        try:
            return self.path(ref).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ImageStoreUnavailableError(f"cannot read image {ref[:12]}…: "
                                             f"{exc.strerror}") from exc

    def _remove(self, ref: str) -> None:
        try:
            self.path(ref).unlink(missing_ok=True)
        except OSError as exc:
            raise ImageStoreUnavailableError(f"cannot delete image {ref[:12]}…: "
                                             f"{exc.strerror}") from exc

    def _remove_if_idle(self, ref: str, idle_before: float) -> bool:
        target = self.path(ref)
        # Renamed away first (atomic): a put from now on finds no file and writes it
        # again; one that touched it before the rename shows in the tombstone's mtime.
        tombstone = target.with_name(f".doomed-{uuid.uuid4().hex}")
        try:
            target.rename(tombstone)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise ImageStoreUnavailableError(f"cannot delete image {ref[:12]}…: "
                                             f"{exc.strerror}") from exc
        try:
            if tombstone.stat().st_mtime >= idle_before:
                tombstone.replace(target)  # put since: kept (a rewrite has the same bytes)
                return False
            tombstone.unlink()
            return True
        except OSError as exc:
            raise ImageStoreUnavailableError(f"cannot delete image {ref[:12]}…: "
                                             f"{exc.strerror}") from exc


class ObjectImageStore(ImageStore):
    """Images as objects ``<prefix>/ab/cd/<sha256>`` in S3-compatible storage.

    Args:
        store: An ``obstore`` store (``obstore.store.S3Store`` and friends); built by
            :func:`object_store_from_url` from the hub's settings.
        prefix: Key prefix inside the bucket.
    """

    def __init__(self, store: Any, *, prefix: str = "", max_image_bytes: int) -> None:
        super().__init__(max_image_bytes=max_image_bytes)
        self._store = store
        self._prefix = prefix.strip("/")

    def key(self, ref: str) -> str:
        """The object key of the image named ``ref``."""
        name = f"{ref[:2]}/{ref[2:4]}/{ref}"
        return f"{self._prefix}/{name}" if self._prefix else name

    def _write(self, ref: str, data: bytes) -> None:
        import obstore

        try:
            obstore.put(self._store, self.key(ref), data)
        except Exception as exc:  # obstore raises its own tree; mapped here, once
            raise ImageStoreUnavailableError(f"cannot write image {ref[:12]}…: {exc}") from exc

    def _read(self, ref: str) -> bytes | None:
        import obstore

        try:
            return bytes(obstore.get(self._store, self.key(ref)).bytes())
        except FileNotFoundError:
            return None
        except Exception as exc:  # as above
            raise ImageStoreUnavailableError(f"cannot read image {ref[:12]}…: {exc}") from exc

    def _remove(self, ref: str) -> None:
        import obstore

        try:
            obstore.delete(self._store, self.key(ref))
        except FileNotFoundError:
            return
        except Exception as exc:  # as above
            raise ImageStoreUnavailableError(f"cannot delete image {ref[:12]}…: {exc}") from exc

    def _remove_if_idle(self, ref: str, idle_before: float) -> bool:
        import obstore

        try:
            meta = obstore.head(self._store, self.key(ref))
        except FileNotFoundError:
            return False
        except Exception as exc:  # as above
            raise ImageStoreUnavailableError(f"cannot delete image {ref[:12]}…: {exc}") from exc
        if meta["last_modified"].timestamp() >= idle_before:
            return False  # written again since: a new event may be about to reference it
        self._remove(ref)  # no conditional delete on S3: see the module's docstring
        return True


def object_store_from_url(url: str) -> tuple[Any, str]:
    """An ``obstore`` store and key prefix for ``s3://bucket/prefix`` (credentials and
    endpoint from the usual ``AWS_*`` environment variables).

    Raises:
        ImageStoreError: ``obstore`` is not installed, or the URL is not ``s3://``.
    """
    if not url.startswith("s3://"):
        raise ImageStoreError(f"{url!r}: the object store URL must be s3://bucket[/prefix]")
    try:
        from obstore.store import S3Store
    except ImportError as exc:
        raise ImageStoreError("CLOUD_HUB_IMAGE_STORE=s3 needs obstore: pip install "
                              "obstore") from exc
    bucket, _, prefix = url[len("s3://"):].partition("/")
    return S3Store(bucket), prefix
