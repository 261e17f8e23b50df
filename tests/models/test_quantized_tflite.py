"""A quantized TFLite model built here: its scale and zero point read, applied, undone."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
import tflite

from models import (
    BackendSpec,
    ImportRequest,
    LiteRTBackend,
    Model,
    ModelStore,
    golden_input,
    import_model,
)

pytestmark = pytest.mark.integration

SCALE = 1 / 127.5
ZERO_POINT = -1


def _vector(builder: flatbuffers.Builder, start: Callable[[flatbuffers.Builder, int], None],
            items: list[int] | list[float], kind: str) -> int:
    start(builder, len(items))
    for item in reversed(items):
        getattr(builder, f"Prepend{kind}")(item)
    return int(builder.EndVector())


def _int8_reshape_model() -> bytes:
    """An int8 TFLite model: image ``[1, 2, 2, 3]`` reshaped to ``values [1, 12]``, both
    quantized with :data:`SCALE` and :data:`ZERO_POINT` (the flatbuffer written by hand)."""
    b = flatbuffers.Builder(1024)
    shape_data = b.CreateByteVector(np.array([1, 12], np.int32).tobytes())
    tflite.BufferStart(b)
    empty = tflite.BufferEnd(b)
    tflite.BufferStart(b)
    tflite.BufferAddData(b, shape_data)
    shape_buffer = tflite.BufferEnd(b)

    def tensor(name: str, shape: list[int], kind: int, buffer: int, quantized: bool) -> int:
        quantization = None
        if quantized:
            scales = _vector(b, tflite.QuantizationParametersStartScaleVector, [SCALE],
                             "Float32")
            zeros = _vector(b, tflite.QuantizationParametersStartZeroPointVector,
                            [ZERO_POINT], "Int64")
            tflite.QuantizationParametersStart(b)
            tflite.QuantizationParametersAddScale(b, scales)
            tflite.QuantizationParametersAddZeroPoint(b, zeros)
            quantization = tflite.QuantizationParametersEnd(b)
        text = b.CreateString(name)
        dims = _vector(b, tflite.TensorStartShapeVector, shape, "Int32")
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, dims)
        tflite.TensorAddType(b, kind)
        tflite.TensorAddBuffer(b, buffer)
        tflite.TensorAddName(b, text)
        if quantization is not None:
            tflite.TensorAddQuantization(b, quantization)
        return int(tflite.TensorEnd(b))

    int8 = tflite.TensorType.INT8
    tensors = [tensor("image", [1, 2, 2, 3], int8, 0, True),
               tensor("shape", [2], tflite.TensorType.INT32, 1, False),
               tensor("values", [1, 12], int8, 0, True)]
    inputs = _vector(b, tflite.OperatorStartInputsVector, [0, 1], "Int32")
    outputs = _vector(b, tflite.OperatorStartOutputsVector, [2], "Int32")
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, 0)
    tflite.OperatorAddInputs(b, inputs)
    tflite.OperatorAddOutputs(b, outputs)
    operator = tflite.OperatorEnd(b)
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddBuiltinCode(b, tflite.BuiltinOperator.RESHAPE)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, tflite.BuiltinOperator.RESHAPE)
    tflite.OperatorCodeAddVersion(b, 1)
    code = tflite.OperatorCodeEnd(b)

    def offsets(start: Callable[[flatbuffers.Builder, int], None], items: list[int]) -> int:
        start(b, len(items))
        for item in reversed(items):
            b.PrependUOffsetTRelative(item)
        return int(b.EndVector())

    tensor_vector = offsets(tflite.SubGraphStartTensorsVector, tensors)
    graph_inputs = _vector(b, tflite.SubGraphStartInputsVector, [0], "Int32")
    graph_outputs = _vector(b, tflite.SubGraphStartOutputsVector, [2], "Int32")
    operators = offsets(tflite.SubGraphStartOperatorsVector, [operator])
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tensor_vector)
    tflite.SubGraphAddInputs(b, graph_inputs)
    tflite.SubGraphAddOutputs(b, graph_outputs)
    tflite.SubGraphAddOperators(b, operators)
    subgraph = tflite.SubGraphEnd(b)
    codes = offsets(tflite.ModelStartOperatorCodesVector, [code])
    subgraphs = offsets(tflite.ModelStartSubgraphsVector, [subgraph])
    buffers = offsets(tflite.ModelStartBuffersVector, [empty, shape_buffer])
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, codes)
    tflite.ModelAddSubgraphs(b, subgraphs)
    tflite.ModelAddBuffers(b, buffers)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_tflite_quantization_is_read_applied_to_the_input_and_undone_on_the_output(
        tmp_path: Path) -> None:
    path = tmp_path / "tiny-int8.tflite"
    path.write_bytes(_int8_reshape_model())
    labels = tuple(f"v{i}" for i in range(12))
    bundle = import_model(path, ImportRequest(task="classifier", labels=labels, mean=(128.0,),
                                              std=(127.5,)), ModelStore(tmp_path / "store"))
    spec = bundle.manifest.input
    assert (spec.layout, spec.dtype, spec.shape) == ("NHWC", "int8", (1, 2, 2, 3))
    assert spec.quantization is not None
    assert spec.quantization.scale == pytest.approx(SCALE)
    assert spec.quantization.zero_point == ZERO_POINT
    assert bundle.manifest.quantization is not None
    assert bundle.manifest.quantization.scheme == "tflite"

    # (pixel - 128) / 127.5 quantized with 1/127.5 and -1 is pixel - 129, saturated.
    pixels = np.array([[[0, 1, 128], [129, 200, 255]], [[64, 127, 130], [2, 3, 250]]],
                      np.uint8)
    model = Model(bundle, LiteRTBackend(bundle, BackendSpec("litert", "cpu")))
    model.backend.load()
    try:
        tensor = model.prepare_image(pixels).row
        assert tensor.dtype == np.int8
        expected_q = np.clip(pixels.astype(np.int64) - 129, -128, 127)
        np.testing.assert_array_equal(tensor, expected_q)
        [values] = model.infer_tensor(tensor[np.newaxis]).values()
        assert values.dtype == np.float32  # dequantized by the backend
        np.testing.assert_allclose(values.reshape(2, 2, 3), (expected_q + 1) / 127.5,
                                   atol=1e-6)
        assert golden_input(bundle).dtype == np.int8
        assert model.classify(pixels).label == "v5"  # the largest value: 255 -> 126
    finally:
        model.close()


def test_ultralytics_metadata_appended_to_a_tflite_file_is_read(tmp_path: Path) -> None:
    """Ultralytics appends a zip holding metadata.json to its TFLite exports."""
    names = {str(i): f"class{i}" for i in range(12)}
    metadata = {"author": "Ultralytics", "task": "classify", "names": names,
                "imgsz": [2, 2], "version": "8.3.0"}
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("metadata.json", json.dumps(metadata))
    path = tmp_path / "yolo-cls_int8.tflite"
    path.write_bytes(_int8_reshape_model() + archive.getvalue())
    bundle = import_model(path, ImportRequest(), ModelStore(tmp_path / "store"))
    manifest = bundle.manifest
    assert manifest.task == "classifier"
    assert manifest.output.model_dump()["labels"][:2] == ("class0", "class1")
    assert manifest.input.normalization is not None
    assert manifest.input.normalization.std == (255.0, 255.0, 255.0)  # Ultralytics: 0..1
    assert "Ultralytics 8.3.0" in manifest.source
