"""Bundles: a tampered or truncated model file never reaches a runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import (
    MANIFEST_FILENAME,
    BackendSpec,
    IntegrityError,
    LiteRTBackend,
    ManifestError,
    ModelBundle,
    ModelNotFoundError,
    ModelStore,
    open_bundle,
    sha256_hex,
    write_bundle,
)

pytestmark = pytest.mark.integration


def test_tampered_model_is_refused_naming_file_and_both_hashes(bundle_copy: Path) -> None:
    model = bundle_copy / "model.tflite"
    original = model.read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF
    model.write_bytes(bytes(tampered))
    with pytest.raises(IntegrityError) as caught:
        open_bundle(bundle_copy)
    message = str(caught.value)
    assert str(model) in message
    assert sha256_hex(original) in message
    assert sha256_hex(bytes(tampered)) in message


def test_truncated_model_is_refused_by_size(bundle_copy: Path) -> None:
    model = bundle_copy / "model.tflite"
    model.write_bytes(model.read_bytes()[:-10])
    with pytest.raises(IntegrityError, match="size mismatch"):
        open_bundle(bundle_copy)


def test_swap_after_open_is_caught_at_load(bundle_copy: Path) -> None:
    bundle = open_bundle(bundle_copy)
    (bundle_copy / "model.tflite").write_bytes(b"\0" * bundle.manifest.file.size_bytes)
    backend = LiteRTBackend(bundle, BackendSpec("litert", "xnnpack"))
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        backend.load()


def test_missing_manifest_and_missing_model(bundle_copy: Path) -> None:
    (bundle_copy / "model.tflite").unlink()
    with pytest.raises(ManifestError) as caught:
        open_bundle(bundle_copy)
    assert caught.value.field == "file.path"
    (bundle_copy / MANIFEST_FILENAME).unlink()
    with pytest.raises(ManifestError, match="not a model bundle"):
        open_bundle(bundle_copy)


def test_write_bundle_recomputes_integrity_and_replaces(
    tmp_path: Path, short_tflite: ModelBundle
) -> None:
    data = short_tflite.read_verified_model()
    first = write_bundle(tmp_path / "b", short_tflite.manifest, data)
    assert open_bundle(first.root).manifest.file.sha256 == sha256_hex(data)
    second = write_bundle(tmp_path / "b", short_tflite.manifest.model_copy(
        update={"description": "replaced"}), data)
    assert open_bundle(second.root).manifest.description == "replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_store_resolves_newest_and_lists_broken(
    tmp_path: Path, short_tflite: ModelBundle
) -> None:
    store = ModelStore(tmp_path)
    data = short_tflite.read_verified_model()
    for version in ("1.2.0", "1.10.0", "1.9.0-rc.1"):
        store.add(short_tflite.manifest.model_copy(update={"version": version}), data)
    assert store.resolve("blazeface-short").manifest.version == "1.10.0"
    assert store.resolve("blazeface-short@1.2.0").manifest.version == "1.2.0"
    (store.path_for("blazeface-short", "1.2.0") / "model.tflite").write_bytes(b"x")
    problems = {e.version: e.problem for e in store.entries()}
    assert problems["1.2.0"] is not None and "size mismatch" in problems["1.2.0"]
    assert problems["1.10.0"] is None
    with pytest.raises(ModelNotFoundError, match=r"no model named 'nope'.*blazeface-short"):
        store.resolve("nope")
    with pytest.raises(ModelNotFoundError, match=r"has no version 3\.0\.0"):
        store.resolve("blazeface-short@3.0.0")
