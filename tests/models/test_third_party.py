"""A real third-party YOLO model (NudeNet's YOLOv8n) and static INT8 quantization."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from edge_agent.cli import main
from models import (
    BackendSpec,
    LiteRTBackend,
    Model,
    ModelBundle,
    ModelStore,
    ModelZoo,
    OnnxRuntimeBackend,
    iou,
    open_bundle,
    read_model_facts,
    smoke_test,
)
from models.manifest import YoloOutput

pytestmark = pytest.mark.integration


def _png(path: Path, image: npt.NDArray[np.uint8]) -> Path:
    cv2.imwrite(str(path), np.ascontiguousarray(image[:, :, ::-1]))
    return path


def test_nudenet_is_pulled_pinned_and_imported_without_hand_written_fields(
        nudenet_store: ModelStore) -> None:
    manifest = nudenet_store.resolve("nudenet-320n").manifest
    assert manifest.source.startswith("pypi:nudenet==3.4.2#nudenet/320n.onnx")
    assert manifest.file.sha256 == (
        "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f")
    assert isinstance(manifest.output, YoloOutput)
    assert len(manifest.output.labels) == 18
    assert {"FACE_FEMALE", "FACE_MALE"} <= set(manifest.output.labels)
    assert manifest.input.shape == (1, 3, 320, 320) and manifest.input.layout == "NCHW"


def test_imported_nudenet_finds_the_astronauts_face_where_blazeface_does(
        nudenet_store: ModelStore, short_tflite: ModelBundle, tmp_path: Path,
        astronaut: npt.NDArray[np.uint8], coffee: npt.NDArray[np.uint8],
        capsys: pytest.CaptureFixture[str]) -> None:
    model_file = tmp_path / "320n.onnx"
    model_file.write_bytes(ModelZoo(nudenet_store).fetch_file("nudenet-320n"))
    store = str(tmp_path / "store")
    assert main(["--store", store, "models", "import", str(model_file),
                 "--name", "nudenet-320n"]) == 0
    capsys.readouterr()
    blazeface = Model(short_tflite, LiteRTBackend(short_tflite, BackendSpec("litert", "cpu")))
    blazeface.backend.load()
    try:
        [face] = blazeface.detect(astronaut)
    finally:
        blazeface.close()

    assert main(["--store", store, "infer", "nudenet-320n",
                 str(_png(tmp_path / "astronaut.png", astronaut)), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "nudenet-320n@1.0.0"
    faces = [d for d in result["detections"] if d["label"] == "FACE_FEMALE"]
    assert faces, result["detections"]
    assert iou(tuple(faces[0]["box"]), face.box) >= 0.5  # type: ignore[arg-type]
    assert set(faces[0]) == {"label", "score", "box", "keypoints"}

    assert main(["--store", store, "infer", "nudenet-320n",
                 str(_png(tmp_path / "coffee.png", coffee)), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["detections"] == []


def test_quantize_makes_a_proven_int8_bundle_with_its_report(
        zoo_store: ModelStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ModelStore(tmp_path / "store")
    source = zoo_store.resolve("blazeface-short-onnx")
    shutil.copytree(source.root, store.path_for("blazeface-short-onnx", "1.0.0"))
    assert main(["--store", str(store.root), "models", "quantize",
                 "blazeface-short-onnx"]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["model"] == "blazeface-short-onnx-int8@1.0.0"
    assert report["source"] == "blazeface-short-onnx@1.0.0"
    for frames in ("calibration", "held_out"):
        figures = report[frames]
        assert figures["frames"] > 0 and figures["reference_detections"] > 0
        assert 0.0 < figures["mean_iou"] <= 1.0
        assert figures["matched"] + figures["lost"] == figures["reference_detections"]
    assert report["latency_ms"]["float"] > 0 and report["latency_ms"]["int8"] > 0
    assert report["measured_on"] and report["cpu"]

    bundle = open_bundle(store.path_for("blazeface-short-onnx-int8", "1.0.0"))
    quantization = bundle.manifest.quantization
    assert quantization is not None and quantization.held_out is not None
    assert quantization.held_out.model_dump()["lost"] == report["held_out"]["lost"]
    assert quantization.latency is not None
    assert quantization.latency.measured_on == report["measured_on"]
    facts = read_model_facts(bundle.read_verified_model(), path="q.onnx", runtime="onnx")
    assert facts.quantized  # QDQ nodes in the graph
    assert bundle.manifest.golden is not None
    model = Model(bundle, OnnxRuntimeBackend(bundle, BackendSpec("onnxruntime", "cpu")))
    model.backend.load()
    try:
        golden = {name: list(values) for name, values in bundle.manifest.golden.items()}
        assert smoke_test(model, golden) is None
    finally:
        model.close()
