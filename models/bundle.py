"""Model bundles on disk: a folder holding ``manifest.json`` and one model file.

Reading a bundle checks the manifest; reading its model bytes checks size and sha256
every time, so a file swapped after the bundle was opened is still caught. Backends load
from the verified bytes, never from the path, so nothing unverified reaches a runtime.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from models.errors import BundleError, IntegrityError, ManifestError
from models.manifest import MANIFEST_FILENAME, FileSpec, Manifest, parse_manifest


def sha256_hex(data: bytes) -> str:
    """Lower-case hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class ModelBundle:
    """A bundle folder with its validated manifest."""

    root: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        """Path of the model file."""
        return self.root / self.manifest.file.path

    @property
    def label(self) -> str:
        """``name@version``, for logs and messages."""
        return f"{self.manifest.name}@{self.manifest.version}"

    def read_verified_model(self) -> bytes:
        """Read the model file and check it against the manifest.

        Raises:
            IntegrityError: Size or sha256 differs; the message names the file and both values.
            ManifestError: The model file is missing.
        """
        spec = self.manifest.file
        try:
            data = self.model_path.read_bytes()
        except FileNotFoundError as exc:
            raise ManifestError(
                self.root / MANIFEST_FILENAME, f"names {spec.path}, which does not exist",
                field="file.path",
            ) from exc
        if len(data) != spec.size_bytes:
            raise IntegrityError(
                self.model_path, what="size",
                expected=f"{spec.size_bytes} bytes", actual=f"{len(data)} bytes",
            )
        digest = sha256_hex(data)
        if digest != spec.sha256:
            raise IntegrityError(
                self.model_path, what="sha256", expected=spec.sha256, actual=digest
            )
        return data


def open_bundle(root: Path) -> ModelBundle:
    """Open the bundle in folder ``root`` and verify its model file.

    Raises:
        ManifestError: No manifest, or a field missing or wrong.
        IntegrityError: The model file's size or sha256 differs from the manifest.
    """
    manifest_path = root / MANIFEST_FILENAME
    try:
        text = manifest_path.read_bytes()
    except FileNotFoundError as exc:
        raise ManifestError(manifest_path, "not found: this folder is not a model bundle") from exc
    except IsADirectoryError as exc:
        raise ManifestError(manifest_path, "is a folder, not a manifest file") from exc
    bundle = ModelBundle(root=root, manifest=parse_manifest(text, path=manifest_path))
    bundle.read_verified_model()
    return bundle


def write_bundle(destination: Path, manifest: Manifest, model_bytes: bytes) -> ModelBundle:
    """Write a bundle atomically: it appears whole at ``destination`` or not at all.

    The manifest's ``file`` entry is recomputed from ``model_bytes`` so that a bundle
    written here always verifies. An existing bundle at ``destination`` is replaced.
    """
    file_spec = FileSpec(
        path=manifest.file.path, sha256=sha256_hex(model_bytes), size_bytes=len(model_bytes)
    )
    manifest = manifest.model_copy(update={"file": file_spec})
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        _write_synced(staging / file_spec.path, model_bytes)
        _write_synced(staging / MANIFEST_FILENAME, manifest.to_json().encode())
        if destination.exists():
            retired = destination.with_name(f".{destination.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            destination.rename(retired)
            staging.rename(destination)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(destination)
        _fsync_dir(destination.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ModelBundle(root=destination, manifest=manifest)


_EOCD = b"PK\x05\x06"  # end of central directory record
_EOCD_SIZE = 22
_MAX_COMMENT = 0xFFFF
_MAX_DIRECTORY_BYTES = 64 * 1024
_COPY_CHUNK = 1024 * 1024


def unpack_bundle_archive(archive: Path, destination: Path, *, max_bytes: int,
                          max_entries: int) -> None:
    """Unpack a zip of ``manifest.json`` and one model file into ``destination``,
    streaming each entry to disk and never past the limits.

    Before Python's ``zipfile`` parses anything, the archive's end record must declare
    at most ``max_entries`` entries in a central directory of at most 64 KiB (a 10 MB
    zip of empty entries would otherwise become 200,000 objects); the declared sizes
    must add up to at most ``max_bytes``; and each entry is copied in 1 MiB chunks,
    stopping at its declared size, so a header that lies cannot expand it either. Only
    base names are used, so no entry writes outside ``destination``.

    Raises:
        BundleError: Not a zip, over a limit, or not exactly two plain files.
    """
    entries, directory_bytes = _central_directory(archive)
    if entries > max_entries or directory_bytes > _MAX_DIRECTORY_BYTES:
        raise BundleError(f"the zip declares {entries} entries in {directory_bytes} bytes; "
                          f"at most {max_entries} entries are accepted")
    try:
        with zipfile.ZipFile(archive) as bundle_zip:
            members = [m for m in bundle_zip.infolist() if not m.is_dir()]
            bases = [Path(m.filename).name for m in members]
            if len(members) != 2 or len(set(bases)) != 2 or any(
                    not b or b.startswith(".") for b in bases):
                raise BundleError("the zip must hold manifest.json and one model file")
            declared = sum(m.file_size for m in members)
            if declared > max_bytes:
                raise BundleError(f"the zip expands to {declared} bytes, over the limit of "
                                  f"{max_bytes} uncompressed bytes")
            destination.mkdir(parents=True, exist_ok=True)
            for member, base in zip(members, bases, strict=True):
                _copy_bounded(bundle_zip, member, destination / base)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError,
            EOFError) as exc:
        raise BundleError(f"not a usable zip archive: {exc}") from exc


def _central_directory(archive: Path) -> tuple[int, int]:
    """Entry count and central directory size from the zip's end record."""
    size = archive.stat().st_size
    with archive.open("rb") as handle:
        start = max(0, size - _EOCD_SIZE - _MAX_COMMENT)
        handle.seek(start)
        tail = handle.read()
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < _EOCD_SIZE:
        raise BundleError("not a zip archive: no end of central directory record")
    entries, directory_bytes = struct.unpack_from("<HI", tail, at + 10)
    return entries, directory_bytes


def _copy_bounded(bundle_zip: zipfile.ZipFile, member: zipfile.ZipInfo, path: Path) -> None:
    left = member.file_size
    with bundle_zip.open(member) as source, path.open("wb") as target:
        while chunk := source.read(min(_COPY_CHUNK, left + 1)):
            left -= len(chunk)
            if left < 0:
                raise BundleError(f"{member.filename} expands past its declared "
                                  f"{member.file_size} bytes")
            target.write(chunk)


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
