"""Manifests: every wrong or missing field is refused, by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from models import ManifestError, ModelBundle, parse_manifest, semver_key

pytestmark = pytest.mark.integration


def _raw(bundle: ModelBundle) -> dict[str, Any]:
    return json.loads(bundle.manifest.to_json())


def _parse(raw: dict[str, Any]) -> None:
    parse_manifest(json.dumps(raw), path=Path("manifest.json"))


def test_zoo_manifest_round_trips(short_tflite: ModelBundle) -> None:
    again = parse_manifest(short_tflite.manifest.to_json(), path=Path("m.json"))
    assert again == short_tflite.manifest
    assert again.input.height == 128 and again.input.channels == 3


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("version",), "1.0", "version"),
        (("task",), "segmenter", "task"),
        (("file", "sha256"), "abc", "file.sha256"),
        (("file", "size_bytes"), -1, "file.size_bytes"),
        (("file", "path"), "../escape.tflite", "file.path"),
        (("input", "layout"), "HWC", "input.layout"),
        (("input", "dtype"), "float64", "input.dtype"),
        (("input", "shape"), [1, 128, 128], "input"),
        (("output", "score_threshold"), 1.5, "output.score_threshold"),
        (("output", "anchors", "strides"), [], "output.anchors.strides"),
    ],
)
def test_wrong_field_is_named(
    short_tflite: ModelBundle, path: tuple[str, ...], value: object, field: str
) -> None:
    raw = _raw(short_tflite)
    target = raw
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ManifestError) as caught:
        _parse(raw)
    assert caught.value.field == field
    assert field in str(caught.value)


@pytest.mark.parametrize("missing", ["name", "file", "input", "output", "runtime"])
def test_missing_field_is_named(short_tflite: ModelBundle, missing: str) -> None:
    raw = _raw(short_tflite)
    del raw[missing]
    with pytest.raises(ManifestError, match=f"{missing}: required field is missing"):
        _parse(raw)


def test_unknown_key_is_refused(short_tflite: ModelBundle) -> None:
    raw = _raw(short_tflite)
    raw["input"]["mean"] = [0, 0, 0]
    with pytest.raises(ManifestError) as caught:
        _parse(raw)
    assert caught.value.field == "input.mean"


def test_task_must_match_output_kind(short_tflite: ModelBundle) -> None:
    raw = _raw(short_tflite)
    raw["task"] = "classifier"
    with pytest.raises(ManifestError, match="does not match task"):
        _parse(raw)


def test_runtime_must_match_file_suffix(short_tflite: ModelBundle) -> None:
    raw = _raw(short_tflite)
    raw["runtime"] = "onnx"
    with pytest.raises(ManifestError, match=r"needs a \.onnx file"):
        _parse(raw)


def test_not_json_and_not_object() -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_manifest(b"{nope", path=Path("m.json"))
    with pytest.raises(ManifestError, match="must be a JSON object"):
        parse_manifest(b"[1, 2]", path=Path("m.json"))


def test_semver_order() -> None:
    versions = ["1.10.0", "1.2.0", "1.2.0-rc.1", "0.9.9", "1.2.0-alpha"]
    assert sorted(versions, key=semver_key) == [
        "0.9.9", "1.2.0-alpha", "1.2.0-rc.1", "1.2.0", "1.10.0"
    ]
    with pytest.raises(ValueError, match="not a semantic version"):
        semver_key("v1")
