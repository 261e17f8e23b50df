"""The real models on real photographs, through both runtimes."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from skimage import data

from models import BackendSpec, Model, ModelBundle, ModelStore, create_backend, iou
from tests.conftest import ASTRONAUT_FACE

pytestmark = pytest.mark.integration


def _model(bundle: ModelBundle, engine: str, accelerator: str) -> Model:
    backend = create_backend(bundle, BackendSpec(engine, accelerator))  # type: ignore[arg-type]
    backend.load()
    return Model(bundle, backend)


@pytest.fixture(scope="module", params=["litert", "onnxruntime"])
def short_model(request: pytest.FixtureRequest, short_tflite: ModelBundle,
                short_onnx: ModelBundle) -> Model:
    if request.param == "litert":
        return _model(short_tflite, "litert", "xnnpack")
    return _model(short_onnx, "onnxruntime", "cpu")


def test_finds_the_astronauts_face(short_model: Model,
                                   astronaut: npt.NDArray[np.uint8]) -> None:
    detections = short_model.detect(astronaut)
    assert len(detections) == 1
    [face] = detections
    assert face.label == "face" and face.score > 0.8
    assert iou(face.box, ASTRONAUT_FACE) > 0.8
    assert all(170 <= x <= 280 and 75 <= y <= 185 for x, y in face.keypoints)


def test_no_face_in_coffee_cat_or_bricks(short_model: Model) -> None:
    for image in (data.coffee(), data.brick()):
        assert short_model.detect(image) == []


def test_batch_matches_single(short_model: Model, astronaut: npt.NDArray[np.uint8],
                              coffee: npt.NDArray[np.uint8]) -> None:
    batched = short_model.detect_batch([astronaut, coffee, astronaut[:, ::-1].copy()])
    assert [len(d) for d in batched] == [1, 0, 1]
    assert batched[0][0].box == pytest.approx(short_model.detect(astronaut)[0].box, abs=0.01)
    mirrored = batched[2][0].box
    assert iou((512 - mirrored[2], mirrored[1], 512 - mirrored[0], mirrored[3]),
               ASTRONAUT_FACE) > 0.7


def _precision_recall(model: Model) -> tuple[float, float]:
    crops = data.lfw_subset()  # 100 faces, then 100 non-faces, 25x25 grey in [0, 1]
    images = [
        cv2.resize((crop * 255).astype(np.uint8), (128, 128), interpolation=cv2.INTER_LINEAR)
        for crop in crops
    ]
    found = np.array([bool(model.detect(image)) for image in images])
    true_positives = int(found[:100].sum())
    false_positives = int(found[100:].sum())
    precision = true_positives / max(true_positives + false_positives, 1)
    return precision, true_positives / 100


def test_lfw_precision_recall_agree_across_runtimes(
    short_tflite: ModelBundle, short_onnx: ModelBundle, capsys: pytest.CaptureFixture[str]
) -> None:
    litert = _precision_recall(_model(short_tflite, "litert", "xnnpack"))
    onnx = _precision_recall(_model(short_onnx, "onnxruntime", "cpu"))
    with capsys.disabled():
        print(f"\nlfw_subset BlazeFace short-range: LiteRT precision {litert[0]:.1%} recall "
              f"{litert[1]:.1%}; ONNX Runtime precision {onnx[0]:.1%} recall {onnx[1]:.1%}")
    assert litert[1] > 0.9 and litert[0] > 0.9
    assert abs(litert[0] - onnx[0]) <= 0.02
    assert abs(litert[1] - onnx[1]) <= 0.02


def test_full_range_and_landmarks(zoo_store: ModelStore,
                                  astronaut: npt.NDArray[np.uint8]) -> None:
    full = _model(zoo_store.resolve("blazeface-full"), "litert", "xnnpack")
    [face] = full.detect(astronaut)
    assert iou(face.box, ASTRONAUT_FACE) > 0.6
    landmarks = _model(zoo_store.resolve("face-landmark"), "litert", "xnnpack")
    x1, y1, x2, y2 = (int(v) for v in face.box)
    pad = (x2 - x1) // 4
    crop = astronaut[y1 - pad : y2 + pad, x1 - pad : x2 + pad]
    marks = landmarks.landmarks(crop)
    assert marks.present and len(marks.points) == 468
    xs = np.array([p[0] for p in marks.points]) + x1 - pad
    ys = np.array([p[1] for p in marks.points]) + y1 - pad
    # The mesh covers the face the detector found.
    assert iou((xs.min(), ys.min(), xs.max(), ys.max()), ASTRONAUT_FACE) > 0.5
    assert not landmarks.landmarks(data.coffee()).present


def test_task_mismatch_is_a_clear_error(zoo_store: ModelStore,
                                        astronaut: npt.NDArray[np.uint8]) -> None:
    landmarks = _model(zoo_store.resolve("face-landmark"), "litert", "xnnpack")
    with pytest.raises(Exception, match="is a landmarks model; this call needs a detector"):
        landmarks.detect(astronaut)
