"""The importer's pure middle: a manifest from what a file says plus what the user says."""

from __future__ import annotations

from typing import Any

import pytest

from models import AccuracyFigures, AccuracyTolerance, Detection, ModelImportError
from models.importer import ImportRequest, ModelFacts, TensorFacts, draft_manifest
from models.manifest import BoxesScoresOutput, Manifest, YoloOutput
from models.quantize import compare_detections

pytestmark = pytest.mark.unit

NAMES = "{0: 'FACE_FEMALE', 1: 'FACE_MALE', 2: 'FEET_EXPOSED'}"


def _facts(**changes: object) -> ModelFacts:
    fields: dict[str, object] = {
        "runtime": "onnx",
        "input": TensorFacts("images", (None, 3, None, None), "float32"),
        "outputs": (TensorFacts("output0", (None, 7, None), "float32"),),
        "metadata": {"author": "Ultralytics", "task": "detect", "names": NAMES,
                     "imgsz": "[320, 256]", "version": "8.2.46"},
    }
    fields.update(changes)
    return ModelFacts(**fields)  # type: ignore[arg-type]


def _draft(facts: ModelFacts, **request: Any) -> Manifest:
    return draft_manifest(facts, ImportRequest(**request), path="320n.onnx",
                          file_bytes=b"model")


def test_an_ultralytics_export_needs_no_hand_written_field() -> None:
    manifest = draft_manifest(_facts(), ImportRequest(), path="dir/320n.onnx",
                              file_bytes=b"model")
    assert manifest.name == "320n"
    assert manifest.task == "detector"
    assert manifest.input.shape == (1, 3, 320, 256)
    assert manifest.input.layout == "NCHW"
    assert manifest.input.normalization is not None
    assert manifest.input.normalization.std == (255.0, 255.0, 255.0)
    assert isinstance(manifest.output, YoloOutput)
    assert manifest.output.labels == ("FACE_FEMALE", "FACE_MALE", "FEET_EXPOSED")
    assert manifest.output.layout == "v8"
    assert manifest.output.coordinates == "pixels"
    assert "Ultralytics 8.2.46" in manifest.source


def test_a_v5_export_is_recognised_by_its_objectness_column() -> None:
    facts = _facts(outputs=(TensorFacts("output", (1, 6300, 8), "float32"),))
    manifest = _draft(facts)
    assert isinstance(manifest.output, YoloOutput)
    assert manifest.output.layout == "v5"


@pytest.mark.parametrize(("changes", "missing"), [
    ({"metadata": {}}, "--task"),
    ({"metadata": {"task": "detect"}}, "--input-size HxW"),
    ({"metadata": {"task": "detect", "imgsz": "320"}}, "--mean and --std"),
])
def test_what_the_file_does_not_say_is_asked_for_by_name(changes: dict[str, object],
                                                         missing: str) -> None:
    with pytest.raises(ModelImportError) as caught:
        _draft(_facts(**changes))
    assert caught.value.missing is not None
    assert caught.value.missing.startswith(missing)


def test_the_request_fills_the_gaps() -> None:
    facts = _facts(metadata={})
    manifest = _draft(facts, task="detector", labels=("a", "b", "c"), input_size=(64, 96),
                      mean=(0.0,), std=(255.0,), name="mine", score_threshold=0.4,
                      label_thresholds={"b": 0.7})
    assert manifest.input.shape == (1, 3, 64, 96)
    assert isinstance(manifest.output, YoloOutput)
    assert manifest.output.thresholds() == (0.4, 0.7, 0.4)
    with pytest.raises(ModelImportError, match="fits neither 4 \\+ 4 \\(v8\\) nor 5 \\+ 4"):
        _draft(facts, task="detector", labels=("a", "b", "c", "d"), input_size=(64, 96),
               mean=(0.0,), std=(255.0,))


@pytest.mark.parametrize("names", ["{1: 'a', 2: 'b'}", "__import__('os')", "[1, 2]", "{"])
def test_hostile_metadata_is_refused_or_ignored_never_run(names: str) -> None:
    facts = _facts(metadata={"task": "detect", "names": names, "imgsz": "[64, 64]",
                             "author": "Ultralytics"})
    with pytest.raises(ModelImportError, match="names"):
        _draft(facts)


def test_tflite_detection_postprocess_outputs_become_boxes_scores() -> None:
    facts = ModelFacts(
        runtime="tflite",
        input=TensorFacts("input", (1, 300, 300, 3), "uint8", (0.0078125, 128)),
        outputs=(TensorFacts("boxes", (1, 10, 4), "float32"),
                 TensorFacts("classes", (1, 10), "float32"),
                 TensorFacts("scores", (1, 10), "float32"),
                 TensorFacts("count", (1,), "float32")),
        quantized=True,
    )
    manifest = _draft(facts, task="detector", labels=("cat", "dog"), mean=(127.5,),
                      std=(127.5,))
    output = manifest.output
    assert isinstance(output, BoxesScoresOutput)
    assert (output.boxes_output, output.classes_output, output.scores_output,
            output.count_output) == ("boxes", "classes", "scores", "count")
    assert output.box_order == "yxyx"
    assert manifest.input.layout == "NHWC"
    assert manifest.input.quantization is not None
    assert manifest.input.quantization.zero_point == 128
    assert manifest.quantization is not None
    assert manifest.quantization.scheme == "tflite"


def test_compare_detections_counts_matches_losses_and_gains() -> None:
    face = Detection((0, 0, 10, 10), 0.9, "face")
    shifted = Detection((1, 0, 11, 10), 0.8, "face")
    other_label = Detection((0, 0, 10, 10), 0.9, "cat")
    far = Detection((50, 50, 60, 60), 0.7, "face")
    figures = compare_detections([[face, far], [], [face]],
                                 [[shifted], [far], [other_label]])
    assert (figures.frames, figures.reference_detections, figures.matched) == (3, 3, 1)
    assert figures.mean_iou == pytest.approx(90 / 110)
    assert (figures.lost, figures.gained) == (2, 2)
    assert not figures.within(AccuracyTolerance())
    perfect = AccuracyFigures(frames=2, reference_detections=4, matched=4, mean_iou=0.97,
                              lost=0, gained=0)
    assert perfect.within(AccuracyTolerance())
    assert not perfect.within(AccuracyTolerance(min_mean_iou=0.98))
