"""The hub judges with any detector bundle (NudeNet's YOLOv8n named by
CLOUD_HUB_JUDGE_MODEL) and serves the precision the hardware plan chooses."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from skimage import data

from cloud_hub import HubService
from cloud_hub.errors import SettingsError
from cloud_hub.judge import Judge, load_hub_model
from cloud_hub.settings import load_settings
from edge_agent.footage import SampleFootage
from hardware import int8_acceleration, machine_signature, probe_hardware
from models import AccuracyFigures, LatencyFigures, ModelStore, iou, quantize_detector
from tests.cloud_hub.hub_helpers import face_event

pytestmark = pytest.mark.integration

FACE = (178, 82, 271, 174)  # the astronaut's face in astronaut.png


@pytest.fixture(scope="module")
def yolo_hub(nudenet_store: ModelStore, tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[HubService]:
    """A hub (no ingest) whose judge is the YOLO model, configured as an operator would."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("CLOUD_HUB_JUDGE_MODEL", "nudenet-320n")
    monkeypatch.setenv("CLOUD_HUB_JUDGE_LABELS", "FACE_FEMALE, FACE_MALE")
    settings = load_settings(data_dir=tmp_path_factory.mktemp("hub"),
                             model_store=nudenet_store.root, landmark_model=None,
                             batch_autotune=False, batch_max_size=4)
    monkeypatch.undo()
    assert settings.detector_model == "nudenet-320n"
    assert settings.judge_label_set == {"FACE_FEMALE", "FACE_MALE"}
    service = HubService(settings, ingest=False)
    service.start()
    yield service
    service.stop()


def test_the_yolo_judge_confirms_the_face_and_rejects_the_cat(yolo_hub: HubService) -> None:
    judge = yolo_hub.judge
    assert judge is not None
    verdict = judge.judge(face_event("cam-1", data.astronaut()))
    assert verdict.outcome == "confirmed"
    assert (verdict.model, verdict.version) == ("nudenet-320n", "1.0.0")
    assert verdict.detections[0].label == "FACE_FEMALE"
    assert iou(verdict.detections[0].box, FACE) > 0.6
    assert judge.judge(face_event("cam-1", data.coffee())).outcome == "rejected"


def test_only_the_configured_labels_confirm(yolo_hub: HubService) -> None:
    judge = yolo_hub.judge
    assert judge is not None
    feet_only = Judge(judge.detector, judge.batcher, None, confirm_score=0.6,
                      max_image_pixels=judge.max_image_pixels,
                      labels=frozenset({"FEET_EXPOSED"}))
    assert feet_only.judge(face_event("cam-1", data.astronaut())).outcome == "rejected"
    with pytest.raises(SettingsError, match="CLOUD_HUB_JUDGE_LABELS: face are not labels"):
        Judge(judge.detector, judge.batcher, None, confirm_score=0.6,
              max_image_pixels=judge.max_image_pixels, labels=frozenset({"face"}))


def test_the_old_setting_name_still_works(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, detector_model="blazeface-short")
    assert settings.detector_model == "blazeface-short"


def test_the_hub_serves_the_precision_the_plan_chooses(zoo_store: ModelStore,
                                                        tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    source = zoo_store.resolve("blazeface-short-onnx")
    shutil.copytree(source.root, store.path_for("blazeface-short-onnx", "1.0.0"))
    frames = [frame.image for frame in SampleFootage(static_frames=2).frames()][::10]
    profile = probe_hardware()
    result = quantize_detector(store.resolve("blazeface-short-onnx"), store,
                               calibration=frames[:4], held_out=frames[4:8], timing_calls=4)
    # Its report, made deterministic: accurate, and measured faster on this very machine.
    perfect = AccuracyFigures(frames=4, reference_detections=4, matched=4, mean_iou=1.0,
                              lost=0, gained=0)
    report = result.quantization.model_copy(update={
        "calibration": perfect, "held_out": perfect,
        "latency": LatencyFigures(float_ms=2.0, int8_ms=1.0,
                                  measured_on=machine_signature(profile))})
    store.add(result.bundle.manifest.model_copy(update={"quantization": report}),
              result.bundle.read_verified_model())
    copies = store.quantized_copies("blazeface-short-onnx")
    assert [copy.name for copy in copies] == ["blazeface-short-onnx-int8"]
    accelerated = int8_acceleration(profile) is not None
    settings = load_settings(data_dir=tmp_path / "hub", model_store=store.root,
                             judge_model="blazeface-short-onnx")
    model, _ = load_hub_model(settings, settings.detector_model)
    try:
        assert model.manifest.name == ("blazeface-short-onnx-int8" if accelerated
                                       else "blazeface-short-onnx")
    finally:
        model.close()
