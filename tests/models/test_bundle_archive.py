"""Unpacking an uploaded bundle zip: streamed to disk, never past its limits."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pytest

from models import BundleError, unpack_bundle_archive
from tests.bombs import zip_bomb

pytestmark = pytest.mark.unit

MIB = 1024 * 1024


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _unpack(tmp_path: Path, data: bytes, **limits: int) -> Path:
    archive = tmp_path / "upload.zip"
    archive.write_bytes(data)
    values = {"max_bytes": MIB, "max_entries": 16, **limits}
    unpack_bundle_archive(archive, tmp_path / "out", **values)
    return tmp_path / "out"


def test_a_bundle_unpacks_by_base_name(tmp_path: Path) -> None:
    out = _unpack(tmp_path, _zip({"../../manifest.json": b"{}", "x/model.onnx": b"m" * 10}))
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    assert (out / "model.onnx").read_bytes() == b"m" * 10


def test_a_zip_bomb_is_refused_from_its_declared_sizes(tmp_path: Path) -> None:
    bomb = zip_bomb(expanded_bytes=64 * MIB)
    assert len(bomb) < MIB // 4
    with pytest.raises(BundleError, match="over the limit of 1048576 uncompressed bytes"):
        _unpack(tmp_path, bomb)
    assert not (tmp_path / "out").exists()


def test_too_many_entries_are_refused_before_zipfile_reads_them(tmp_path: Path) -> None:
    many = _zip({f"f{i}": b"" for i in range(17)})
    with pytest.raises(BundleError, match="declares 17 entries"):
        _unpack(tmp_path, many)


def test_an_entry_whose_header_lies_small_is_cut_at_its_declared_size(tmp_path: Path) -> None:
    data = bytearray(_zip({"manifest.json": b"{}", "model.onnx": b"m" * 100_000}))
    central = data.rindex(b"PK\x01\x02")  # the model's central directory entry
    struct.pack_into("<I", data, central + 24, 10)  # uncompressed size: 10 bytes
    with pytest.raises(BundleError):
        _unpack(tmp_path, bytes(data))
    model = tmp_path / "out" / "model.onnx"
    assert not model.exists() or model.stat().st_size <= 10


@pytest.mark.parametrize("files", [
    {"manifest.json": b"{}"},
    {"manifest.json": b"{}", "a.onnx": b"", "b.onnx": b""},
    {"manifest.json": b"{}", "x/manifest.json": b"{}"},
    {"manifest.json": b"{}", ".hidden": b""},
])
def test_anything_but_two_plain_files_is_refused(tmp_path: Path,
                                                 files: dict[str, bytes]) -> None:
    with pytest.raises(BundleError, match=r"manifest\.json and one model file"):
        _unpack(tmp_path, _zip(files))


@pytest.mark.parametrize("data", [b"", b"PK not a zip", b"x" * 100])
def test_not_a_zip_is_refused(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(BundleError, match="not a"):
        _unpack(tmp_path, data)
