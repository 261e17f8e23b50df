"""The hub judges with any detector bundle: NudeNet's YOLOv8n named by CLOUD_HUB_JUDGE_MODEL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from skimage import data

from cloud_hub import HubService
from cloud_hub.errors import SettingsError
from cloud_hub.judge import Judge
from cloud_hub.settings import load_settings
from models import ModelStore, iou
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
