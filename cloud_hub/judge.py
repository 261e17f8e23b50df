"""The heavy model's judgement of an escalation: confirmed or rejected.

By default BlazeFace full-range looks at the escalated crop (or, without one, the
thumbnail); if it finds a face above ``confirm_score``, the face-landmark model looks at
that face and must agree that a face is present. Boxes come back in the device's frame
coordinates. Any detector bundle in the store or the zoo can replace BlazeFace
(``CLOUD_HUB_JUDGE_MODEL``: an SSD, YOLO or boxes-scores detector, float or INT8), with
``CLOUD_HUB_JUDGE_LABELS`` naming the labels that confirm (a multi-class YOLO model's
face classes, say); without a landmark model the detector alone decides.

Ingest needs only :class:`EventJudge` of a judge: :class:`Judge` is the hub's, and
:class:`~cloud_hub.service.HubService` takes another in its place (the scale-out
benchmark's fixed-cost judge, ``bench/replica.py``), which then loads no model.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from cloud_hub.batching import MicroBatcher
from cloud_hub.errors import BadImageError, SettingsError
from cloud_hub.settings import HubSettings
from hardware import Selection, choose_precision, load_model, plan_backends, probe_hardware
from models import (
    Detection,
    ImageRefusedError,
    Model,
    ModelStore,
    ModelZoo,
    decode_image,
    default_store_path,
)
from sync import DetectionPayload, EventMessage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Judgement:
    """The hub's verdict on one escalation, before it is sent."""

    outcome: str
    detections: tuple[DetectionPayload, ...]
    model: str
    version: str
    inference_ms: float


class EventJudge(Protocol):
    """What ingest asks of a judge."""

    @property
    def model_name(self) -> str:
        """The model named in the verdict of an event it could not judge."""

    def judge(self, event: EventMessage) -> Judgement:
        """Decide on one escalation.

        Raises:
            JudgeError: The event cannot be judged (its image is refused, say).
        """


def decode_untrusted(data: bytes, *, max_pixels: int) -> npt.NDArray[np.uint8]:
    """RGB pixels of an image file's bytes, its header checked against ``max_pixels``
    before anything is allocated.

    Raises:
        BadImageError: Refused (unknown format, malformed header, too large) or does
            not decode; ``reason`` says which.
    """
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImageRefusedError as exc:
        raise BadImageError(exc.reason, str(exc)) from exc


def load_hub_model(settings: HubSettings, name: str) -> tuple[Model, Selection]:
    """Load a model from the hub's store, pulling (and converting) zoo models if missing.

    Where the store also holds an INT8 copy of the model, the hardware plan decides which
    precision serves (:func:`hardware.choose_precision`: INT8 acceleration here, accuracy
    within its tolerance, not measured slower on this kind of machine).
    """
    store = ModelStore(settings.model_store or default_store_path())
    bundle = ModelZoo(store).ensure(name)
    profile = probe_hardware()
    copies = store.quantized_copies(bundle.manifest.name)
    if copies and bundle.manifest.quantization is None:
        choice = choose_precision(profile, bundle.manifest, copies)
        log.info("hub model %s: %s", bundle.label, choice.reason)
        if choice.manifest != bundle.manifest:
            bundle = store.resolve(choice.label)
    plan = plan_backends(profile, bundle.manifest, threads=settings.runtime_threads)
    model, selection = load_model(bundle, plan, only=settings.backend)
    log.info("hub model %s on %s", bundle.label, selection.chosen)
    return model, selection


class Judge:
    """Judges escalations with the detector (through its batcher) and the landmark model."""

    def __init__(self, detector: Model, batcher: MicroBatcher, landmarks: Model | None, *,
                 confirm_score: float, max_image_pixels: int,
                 labels: frozenset[str] = frozenset()) -> None:
        """``labels``: only detections with these labels confirm (empty: any label).

        Raises:
            SettingsError: A label is not one the detector can return.
        """
        known = set(getattr(detector.manifest.output, "labels", ()))
        unknown = sorted(labels - known)
        if unknown:
            raise SettingsError(f"CLOUD_HUB_JUDGE_LABELS: {', '.join(unknown)} are not labels of "
                             f"{detector.bundle.label} (it has {', '.join(sorted(known))})")
        self.labels = labels
        self.detector = detector
        self.max_image_pixels = max_image_pixels
        self.batcher = batcher
        self.landmarks = landmarks
        self.confirm_score = confirm_score
        # Runtimes' sessions are not safe to call from several ingest threads at once.
        self._landmarks_lock = threading.Lock()

    @property
    def model_name(self) -> str:
        """The detector's name."""
        return self.detector.manifest.name

    def judge(self, event: EventMessage) -> Judgement:
        """Decide on one escalation.

        Raises:
            BadImageError: Its image was refused before decoding, or does not decode.
        """
        started = time.perf_counter()
        manifest = self.detector.manifest
        if event.crop_jpeg is None and event.thumbnail_jpeg is None:
            # A sensor window: the hub has no second opinion on readings; it records the
            # edge model's verdict so that the device hears back.
            outcome = "confirmed" if event.anomaly_score is not None and (
                event.anomaly_score < 0) else "rejected"
            return Judgement(outcome, (), event.model.name, event.model.version,
                             (time.perf_counter() - started) * 1e3)
        # The crop first: the edge's detection at full resolution. If it shows no face,
        # the whole frame (the thumbnail) too: a tight crop can cut a face off, and a
        # distant face is what the heavy model sees best in context.
        views: list[tuple[bytes, float, float, float | None]] = []
        if event.crop_jpeg is not None and event.crop_box is not None:
            views.append((event.crop_jpeg, event.crop_box[0], event.crop_box[1],
                          (event.crop_box[2] - event.crop_box[0])))
        if event.thumbnail_jpeg is not None:
            views.append((event.thumbnail_jpeg, 0.0, 0.0,
                          event.frame_size[0] if event.frame_size is not None else None))
        if not views:  # a crop with no box to place it
            views.append((event.crop_jpeg or b"", 0.0, 0.0, None))
        rejected: tuple[DetectionPayload, ...] = ()  # faces the landmarks did not confirm
        for jpeg, offset_x, offset_y, source_width in views:
            image = decode_untrusted(jpeg, max_pixels=self.max_image_pixels)
            scale = source_width / image.shape[1] if source_width else 1.0
            faces = [d for d in self.batcher.detect(image) if d.score >= self.confirm_score
                     and (not self.labels or d.label in self.labels)]
            in_frame = tuple(_to_frame(d, offset_x, offset_y, scale) for d in faces)
            if faces and (self.landmarks is None or self._landmarks_agree(image, faces[0])):
                return Judgement("confirmed", in_frame, manifest.name, manifest.version,
                                 (time.perf_counter() - started) * 1e3)
            rejected = rejected or in_frame
        return Judgement("rejected", rejected, manifest.name, manifest.version,
                         (time.perf_counter() - started) * 1e3)

    def _landmarks_agree(self, image: npt.NDArray[np.uint8], face: Detection) -> bool:
        assert self.landmarks is not None
        x1, y1, x2, y2 = face.box
        margin_x, margin_y = (x2 - x1) * 0.25, (y2 - y1) * 0.25
        height, width = image.shape[:2]
        left, top = max(0, int(x1 - margin_x)), max(0, int(y1 - margin_y))
        right = min(width, int(x2 + margin_x) + 1)
        bottom = min(height, int(y2 + margin_y) + 1)
        if right - left < 4 or bottom - top < 4:
            return False
        region = np.ascontiguousarray(image[top:bottom, left:right])
        with self._landmarks_lock:
            return self.landmarks.landmarks(region).present


def _to_frame(detection: Detection, dx: float, dy: float, scale: float) -> DetectionPayload:
    x1, y1, x2, y2 = detection.box
    return DetectionPayload(
        box=(x1 * scale + dx, y1 * scale + dy, x2 * scale + dx, y2 * scale + dy),
        score=min(max(detection.score, 0.0), 1.0), label=detection.label,
        keypoints=tuple((x * scale + dx, y * scale + dy) for x, y in detection.keypoints),
    )
