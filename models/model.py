"""A loaded model: bundle + backend + the pre- and post-processing of its task."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from models.backends.base import Backend, BackendDescription, Outputs
from models.bundle import ModelBundle
from models.decode import (
    FamilyDecoder,
    decode_anomaly,
    decode_classification,
    decode_landmarks,
    detector_decoder,
)
from models.errors import InferenceError, InputSpecError, ModelError
from models.manifest import (
    AnomalyOutput,
    BoxesScoresOutput,
    ClassifierOutput,
    DetectorOutput,
    LandmarksOutput,
    Manifest,
    YoloOutput,
)
from models.preprocess import ImagePreprocessor, Placement
from models.results import AnomalyScore, Classification, Detection, Landmarks

_Spec = TypeVar("_Spec")


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """One image made ready for the model: its input row and where the image sits in it."""

    row: npt.NDArray[np.generic]
    placement: Placement


class Model:
    """Runs one bundle on one loaded backend and speaks in typed results.

    Images are ``HxWx3`` RGB ``uint8`` arrays (grey and RGBA are converted); boxes and
    points come back in that image's pixels.
    """

    def __init__(self, bundle: ModelBundle, backend: Backend) -> None:
        self.bundle = bundle
        self.backend = backend
        manifest = bundle.manifest
        self._preprocess = ImagePreprocessor(manifest.input) if manifest.input.is_image else None
        self._detector: FamilyDecoder | None = None
        if isinstance(manifest.output, DetectorOutput | YoloOutput | BoxesScoresOutput):
            self._detector = detector_decoder(manifest.output, manifest.input.width,
                                              manifest.input.height)

    @property
    def manifest(self) -> Manifest:
        """The bundle's manifest."""
        return self.bundle.manifest

    def describe(self) -> BackendDescription:
        """The backend that serves this model."""
        return self.backend.describe()

    def infer_tensor(self, batch: npt.NDArray[np.generic]) -> Outputs:
        """Run a prepared tensor batch and return raw outputs by name."""
        return self.backend.infer(batch)

    def detect(self, image: object) -> list[Detection]:
        """Detections in one image, best first."""
        decoder = self._require_detector()
        assert self._preprocess is not None
        tensor, placement = self._preprocess(image)
        outputs = self.backend.infer(tensor)
        return decoder.decode({name: value[0] for name, value in outputs.items()}, placement)

    def detect_batch(self, images: Sequence[object]) -> list[list[Detection]]:
        """Detections for each image of a batch, in one runtime call."""
        self._require_detector()
        prepared = [self.prepare_image(image) for image in images]
        return [self.decode_detections(p, outputs)
                for p, outputs in zip(prepared, self.infer_prepared(prepared), strict=True)]

    # The three steps of detect_batch, apart, so that a server can prepare and decode in
    # its callers' threads while one thread keeps the runtime busy with whole batches.

    def prepare_image(self, image: object) -> PreparedImage:
        """Check, resize and normalise one image (no runtime call).

        Raises:
            InputSpecError: ``image`` is not a usable picture.
        """
        if self._preprocess is None:
            raise ModelError(f"{self.bundle.label} does not take images")
        tensor, placement = self._preprocess(image)
        return PreparedImage(tensor[0], placement)

    def infer_prepared(self, prepared: Sequence[PreparedImage]) -> list[Outputs]:
        """Run prepared images as one batch; each image's raw outputs (views, no copies)."""
        outputs = self.backend.infer(np.stack([p.row for p in prepared]))
        return [{name: value[i] for name, value in outputs.items()}
                for i in range(len(prepared))]

    def decode_detections(self, prepared: PreparedImage, outputs: Outputs) -> list[Detection]:
        """One image's detections from its raw outputs, in its own pixels."""
        return self._require_detector().decode(outputs, prepared.placement)

    def classify(self, image: object) -> Classification:
        """The classifier's verdict on one image."""
        spec = self._require(ClassifierOutput)
        tensor = self._image_tensor(image)
        return decode_classification(spec, self._output(self.backend.infer(tensor), spec.output))

    def landmarks(self, image: object) -> Landmarks:
        """Landmarks of the object filling ``image`` (usually a detector's crop)."""
        spec = self._require(LandmarksOutput)
        assert self._preprocess is not None
        tensor, placement = self._preprocess(image)
        outputs = self.backend.infer(tensor)
        return decode_landmarks(
            spec, self._output(outputs, spec.points_output)[0],
            self._output(outputs, spec.presence_output)[0], placement,
        )

    def score(self, features: npt.NDArray[np.generic]) -> list[AnomalyScore]:
        """Anomaly scores, one per row of a ``[N, features]`` array."""
        spec = self._require(AnomalyOutput)
        if not isinstance(features, np.ndarray):
            raise InputSpecError(f"features must be a numpy array, got {type(features).__name__}")
        if features.ndim == 1:
            features = features[np.newaxis]
        batch = features.astype(np.dtype(self.manifest.input.dtype), copy=False)
        return decode_anomaly(spec, self._output(self.backend.infer(batch), spec.output))

    def close(self) -> None:
        """Release the backend."""
        self.backend.close()

    def _image_tensor(self, image: object) -> npt.NDArray[np.generic]:
        assert self._preprocess is not None
        return self._preprocess(image)[0]

    def _require_detector(self) -> FamilyDecoder:
        if self._detector is None:
            raise ModelError(
                f"{self.bundle.label} is a {self.manifest.task} model; "
                "this call needs a detector model"
            )
        return self._detector

    def _require(self, kind: type[_Spec]) -> _Spec:
        output = self.manifest.output
        if not isinstance(output, kind):
            raise ModelError(
                f"{self.bundle.label} is a {self.manifest.task} model; "
                f"this call needs a {kind.__name__.removesuffix('Output').lower()} model"
            )
        return output

    def _output(self, outputs: Outputs, name: str) -> npt.NDArray[np.generic]:
        try:
            return outputs[name]
        except KeyError:
            raise InferenceError(
                self.backend.name,
                f"model has no output {name!r} (it has {', '.join(outputs)}); "
                "fix the manifest's output names",
            ) from None
