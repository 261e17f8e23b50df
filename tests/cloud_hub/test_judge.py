"""The hub's judge on real models: crop first, the whole frame when the crop shows none."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from pydantic import ValidationError
from skimage import data

from cloud_hub.batching import MicroBatcher
from cloud_hub.judge import Judge, load_hub_model
from cloud_hub.settings import HubSettings
from models import DEFAULT_MAX_IMAGE_PIXELS, BackendSpec, Model, ModelStore, create_backend, iou
from tests.cloud_hub.hub_helpers import face_event, jpeg

pytestmark = pytest.mark.integration

FACE = (178, 82, 271, 174)  # the astronaut's face in astronaut.png


def _load(zoo_store: ModelStore, name: str, spec: BackendSpec) -> Model:
    bundle = zoo_store.resolve(name)
    backend = create_backend(bundle, spec)
    backend.load()
    return Model(bundle, backend)


@pytest.fixture(scope="module")
def judge(zoo_store: ModelStore) -> Iterator[Judge]:
    detector = _load(zoo_store, "blazeface-full-onnx", BackendSpec("onnxruntime", "cpu"))
    landmarks = _load(zoo_store, "face-landmark", BackendSpec("litert", "xnnpack"))
    registry = CollectorRegistry()
    batcher = MicroBatcher(
        "blazeface-full-onnx", detector, max_size=4, max_delay_s=0.002,
        batch_sizes=Histogram("size", "", ["model"], registry=registry),
        batch_waits=Histogram("wait", "", ["model"], registry=registry))
    batcher.start()
    yield Judge(detector, batcher, landmarks, confirm_score=0.6,
                max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS)
    batcher.stop()
    detector.close()
    landmarks.close()


def test_a_face_in_the_crop_is_confirmed_in_frame_pixels(judge: Judge) -> None:
    frame = data.astronaut()
    box = (130, 40, 330, 230)
    crop = np.ascontiguousarray(frame[box[1] : box[3], box[0] : box[2]])
    verdict = judge.judge(face_event("cam-1", frame, crop_jpeg=jpeg(crop, 95),
                                     crop_box=tuple(float(v) for v in box)))
    assert verdict.outcome == "confirmed"
    assert iou(verdict.detections[0].box, FACE) > 0.6  # mapped back from the crop


def test_a_crop_that_cut_the_face_off_is_saved_by_the_whole_frame(judge: Judge) -> None:
    frame = data.astronaut()
    box = (300, 300, 500, 500)  # the suit and the flag: no face in it
    crop = np.ascontiguousarray(frame[box[1] : box[3], box[0] : box[2]])
    verdict = judge.judge(face_event("cam-1", frame, crop_jpeg=jpeg(crop, 95),
                                     crop_box=tuple(float(v) for v in box)))
    assert verdict.outcome == "confirmed"
    assert iou(verdict.detections[0].box, FACE) > 0.6  # from the thumbnail, frame pixels


def test_no_face_in_crop_or_frame_is_rejected(judge: Judge) -> None:
    cat = data.chelsea()
    box = (100, 20, 360, 290)
    crop = np.ascontiguousarray(cat[box[1] : box[3], box[0] : box[2]])
    verdict = judge.judge(face_event("cam-1", cat, crop_jpeg=jpeg(crop, 95),
                                     crop_box=tuple(float(v) for v in box)))
    assert verdict.outcome == "rejected"
    assert judge.judge(face_event("cam-1", data.coffee())).outcome == "rejected"


@pytest.mark.parametrize("threads", [None, 1])
def test_the_hub_runs_its_models_with_the_configured_threads(
        zoo_store: ModelStore, tmp_path: Path, threads: int | None) -> None:
    """CLOUD_HUB_RUNTIME_THREADS reaches both of the judge's runtimes (ONNX Runtime's
    intra-op threads, LiteRT's); unset, each runtime chooses (LiteRT: every CPU)."""
    settings = HubSettings(secret_key="k" * 40, data_dir=tmp_path, model_store=zoo_store.root,
                           runtime_threads=threads)
    detector, _ = load_hub_model(settings, "blazeface-full-onnx")
    landmarks, _ = load_hub_model(settings, "face-landmark")
    assert detector.describe().details.get("threads") == (None if threads is None else "1")
    assert landmarks.describe().details["threads"] == str(threads or os.cpu_count())


@pytest.mark.parametrize("threads", ["0", "-1", "257", "two"])
def test_runtime_threads_out_of_range_is_refused(threads: str) -> None:
    with pytest.raises(ValidationError):
        HubSettings.model_validate({"secret_key": "k" * 40, "runtime_threads": threads})
