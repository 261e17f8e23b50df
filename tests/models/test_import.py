"""Importing model files: YOLO graphs built here in each layout, decoded exactly."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_agent.cli import main
from models import (
    BackendSpec,
    ImportRequest,
    Model,
    ModelImportError,
    ModelStore,
    OnnxRuntimeBackend,
    import_model,
    open_bundle,
    read_model_facts,
    smoke_test,
)
from models.manifest import YoloOutput

pytestmark = pytest.mark.integration

NAMES = ("helmet", "vest", "person", "forklift", "pallet")  # five classes, not eighty
# A 128x64 image letterboxed into the 64x64 input: scale 0.5, 16 px of padding above.
IMAGE = np.full((64, 128, 3), 90, np.uint8)


def _source(cx: float, cy: float, w: float, h: float) -> tuple[float, ...]:
    """Centre-size input pixels as corners in the 128x64 image."""
    return ((cx - w / 2) / 0.5, (cy - h / 2 - 16) / 0.5, (cx + w / 2) / 0.5,
            (cy + h / 2 - 16) / 0.5)


def _yolo_graph(constant: npt.NDArray[np.float32], *, dynamic: bool,
                metadata: dict[str, str]) -> bytes:
    """A graph whose output is ``constant`` for any image (it still reads the image)."""
    dims: list[int | str] = ["batch", 3, "height", "width"] if dynamic else [1, 3, 64, 64]
    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)
    out_dims: list[int | str] = ["batch", *constant.shape]
    output = helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_dims)
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Reshape", ["mean", "shape"], ["column"]),
        helper.make_node("Mul", ["column", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "table"], ["output0"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape"),
        numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
        numpy_helper.from_array(constant[np.newaxis], "table"),
    ]
    graph = helper.make_graph(nodes, "yolo", [image], [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _load(bundle_root: Path) -> Model:
    bundle = open_bundle(bundle_root)
    backend = OnnxRuntimeBackend(bundle, BackendSpec("onnxruntime", "cpu"))
    backend.load()
    return Model(bundle, backend)


@pytest.fixture
def v8_file(tmp_path: Path) -> Path:
    table = np.zeros((4 + len(NAMES), 40), np.float32)
    table[:, 0] = [32, 30, 20, 10, 0, 0, 0.9, 0, 0]        # person
    table[:, 1] = [33, 30, 20, 10, 0, 0, 0.6, 0, 0]        # the same person, worse
    table[:, 2] = [32, 30, 20, 10, 0, 0, 0, 0.7, 0]        # a forklift there too
    table[:, 3] = [10, 40, 6, 8, 0.3, 0, 0, 0, 0]          # a helmet
    table[:, 4] = [50, 20, 6, 6, 0, 0.2, 0, 0, 0]          # a vest under the threshold
    names = "{" + ", ".join(f"{i}: {n!r}" for i, n in enumerate(NAMES)) + "}"
    data = _yolo_graph(table, dynamic=True, metadata={
        "author": "Ultralytics", "task": "detect", "names": names, "imgsz": "[64, 64]",
        "stride": "32", "version": "8.3.0"})
    path = tmp_path / "site-v8.onnx"
    path.write_bytes(data)
    return path


def test_v8_export_imports_from_its_metadata_and_decodes_exactly(v8_file: Path,
                                                                 tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    bundle = import_model(v8_file, ImportRequest(), store)
    manifest = bundle.manifest
    assert manifest.name == "site-v8"
    assert isinstance(manifest.output, YoloOutput)
    assert manifest.output.labels == NAMES and manifest.output.layout == "v8"
    assert manifest.input.shape == (1, 3, 64, 64)
    assert manifest.golden is not None and set(manifest.golden) == {"output0"}
    model = _load(bundle.root)
    try:
        detections = model.detect(IMAGE)
        assert smoke_test(model, {k: list(v) for k, v in manifest.golden.items()}) is None
    finally:
        model.close()
    assert [(d.label, round(d.score, 4)) for d in detections] == [
        ("person", 0.9), ("forklift", 0.7), ("helmet", 0.3)]
    for detection, box in zip(detections, [(32, 30, 20, 10), (32, 30, 20, 10),
                                           (10, 40, 6, 8)], strict=True):
        np.testing.assert_allclose(detection.box, _source(*box), atol=1e-3)


def test_v5_export_with_objectness_imports_with_the_task_given(tmp_path: Path) -> None:
    table = np.zeros((30, 5 + len(NAMES)), np.float32)     # [candidates, 5 + classes]
    table[0] = [20, 40, 10, 10, 0.8, 0, 0, 0, 0, 1.0]      # pallet 0.8
    table[1] = [21, 40, 10, 10, 0.7, 0, 0, 0, 0, 1.0]      # the same pallet, suppressed
    table[2] = [40, 30, 8, 12, 0.9, 0.5, 0.5, 0, 0, 0]     # helmet 0.45 (first of a tie)
    table[3] = [40, 30, 8, 12, 0.5, 0, 0, 0.4, 0, 0]       # person 0.2: under 0.25
    path = tmp_path / "yolov5s.onnx"
    names = "{" + ", ".join(f"{i}: {n!r}" for i, n in enumerate(NAMES)) + "}"
    path.write_bytes(_yolo_graph(table, dynamic=False, metadata={"stride": "32",
                                                                  "names": names}))
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ModelImportError) as caught:
        import_model(path, ImportRequest(), store)
    assert caught.value.missing is not None and "--task" in caught.value.missing
    with pytest.raises(ModelImportError, match="how its input is normalised"):
        import_model(path, ImportRequest(task="detector"), store)
    bundle = import_model(path, ImportRequest(task="detector", mean=(0.0,), std=(255.0,)),
                          store)
    assert isinstance(bundle.manifest.output, YoloOutput)
    assert bundle.manifest.output.layout == "v5"
    model = _load(bundle.root)
    try:
        detections = model.detect(IMAGE)
    finally:
        model.close()
    assert [(d.label, round(d.score, 4)) for d in detections] == [
        ("pallet", 0.8), ("helmet", 0.45)]
    np.testing.assert_allclose(detections[0].box, _source(20, 40, 10, 10), atol=1e-3)
    np.testing.assert_allclose(detections[1].box, _source(40, 30, 8, 12), atol=1e-3)


def test_an_export_with_nms_inside_imports_as_boxes_scores(tmp_path: Path) -> None:
    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
               for name, shape in (("out0", [1, 3, 4]), ("out1", [1, 3]), ("out2", [1, 3]))]
    tables = {  # boxes, scores, classes: named by nothing but their order
        "out0": np.array([[[10, 20, 30, 40], [40, 30, 50, 50], [0, 0, 5, 5]]], np.float32),
        "out1": np.array([[0.9, 0.5, 0.1]], np.float32),
        "out2": np.array([[4, 1, 0]], np.float32),
    }
    nodes = [helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0)]
    initializers = []
    for name, table in tables.items():
        # Each output is its table plus 0 x the image's mean: constant, yet fed by the image.
        nodes += [helper.make_node("Mul", ["mean", "zero"], [f"{name}/nothing"]),
                  helper.make_node("Add", [f"{name}/nothing", f"{name}/table"], [name])]
        initializers.append(numpy_helper.from_array(table, f"{name}/table"))
    initializers.append(numpy_helper.from_array(np.zeros((), np.float32), "zero"))
    graph = helper.make_graph(nodes, "nms-inside", [image], outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "detr.onnx"
    path.write_bytes(model.SerializeToString())
    request = ImportRequest(task="detector", labels=NAMES, mean=(0.0,), std=(255.0,),
                            score_threshold=0.4)
    bundle = import_model(path, request, ModelStore(tmp_path / "store"))
    assert bundle.manifest.output.model_dump()["family"] == "boxes-scores"
    model_ = _load(bundle.root)
    try:
        detections = model_.detect(IMAGE)
    finally:
        model_.close()
    assert [(d.label, round(d.score, 3)) for d in detections] == [("pallet", 0.9),
                                                                 ("vest", 0.5)]
    np.testing.assert_allclose(detections[0].box, (20, 8, 60, 48), atol=1e-3)


def test_a_file_that_is_no_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07not a model at all")
    with pytest.raises(ModelImportError, match=r"broken\.onnx"):
        import_model(path, ImportRequest(), ModelStore(tmp_path / "store"))
    with pytest.raises(ModelImportError, match=r"neither an \.onnx nor a \.tflite"):
        import_model(tmp_path / "model.pt", ImportRequest(), ModelStore(tmp_path / "s"))
    with pytest.raises(ModelImportError, match=r"x\.tflite: is not a TFLite model"):
        read_model_facts(b"\x00" * 64, path="x.tflite", runtime="tflite")


def test_cli_import_then_infer_json(v8_file: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    assert main(["--store", store, "models", "import", str(v8_file), "--name", "site",
                 "--label-threshold", "helmet=0.5"]) == 0
    assert "imported site@1.0.0" in capsys.readouterr().out
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), IMAGE)
    assert main(["--store", store, "infer", "site", str(image), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"model", "backend", "skipped", "image", "detections"}
    assert [d["label"] for d in result["detections"]] == ["person", "forklift"]
    assert set(result["detections"][0]) == {"label", "score", "box", "keypoints"}
