"""The bundle manifest: what a model is, what it eats, and how to read what it returns.

A manifest is JSON (``manifest.json``) beside exactly one model file. It is validated
strictly: unknown keys are refused, every error names the field, the bad value and what
was expected.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from models.errors import ManifestError

MANIFEST_FILENAME = "manifest.json"
#: A model's name: also a folder name in every store, so never ``.``, ``..`` or a path.
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
SCHEMA_VERSION = 1

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)

Task = Literal["detector", "classifier", "anomaly", "landmarks"]
Runtime = Literal["tflite", "onnx"]
RUNTIME_SUFFIX: dict[str, str] = {"tflite": ".tflite", "onnx": ".onnx"}


def semver_key(version: str) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
    """Sort key for a semantic version: releases sort after their pre-releases.

    Raises:
        ValueError: ``version`` is not a semantic version.
    """
    match = _SEMVER.match(version)
    if match is None:
        raise ValueError(f"{version!r} is not a semantic version (MAJOR.MINOR.PATCH)")
    major, minor, patch, pre = match.groups()
    if pre is None:
        return (int(major), int(minor), int(patch), 1, ())
    parts = tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split("."))
    return (int(major), int(minor), int(patch), 0, parts)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class FileSpec(_Strict):
    """The model file of a bundle and its integrity data."""

    path: str = Field(description="file name inside the bundle folder")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="lower-case hex sha256")
    size_bytes: int = Field(gt=0)

    @field_validator("path")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        if not value or "/" in value or "\\" in value or value in {".", ".."}:
            raise ValueError("must be a plain file name inside the bundle, without folders")
        return value


class Normalization(_Strict):
    """Per-channel ``(pixel - mean) / std``, in 0-255 pixel units, channel order of the input."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @model_validator(mode="after")
    def _check(self) -> Normalization:
        if len(self.mean) != len(self.std):
            raise ValueError("mean and std must have one value per channel")
        if any(s == 0 for s in self.std):
            raise ValueError("std must not contain 0")
        return self


class TensorQuantization(_Strict):
    """Affine quantization of an integer tensor: ``real = (q - zero_point) * scale``."""

    scale: float = Field(gt=0.0)
    zero_point: int


class InputSpec(_Strict):
    """The model's single input tensor.

    Image models use layout NHWC or NCHW with a colour order, a resize mode and a
    normalisation; feature models (anomaly windows) use layout NC with none of those.
    A quantized integer input (``dtype`` int8 or uint8 with ``quantization``) takes the
    normalised values quantized with its scale and zero point.
    """

    name: str | None = None
    shape: tuple[int, ...]
    layout: Literal["NHWC", "NCHW", "NC"]
    dtype: Literal["float32", "uint8", "int8"]
    color_order: Literal["RGB", "BGR", "GRAY"] | None = None
    resize: Literal["letterbox", "stretch"] | None = None
    normalization: Normalization | None = None
    feature_set: str | None = Field(
        default=None, description="for NC inputs: the named feature extractor, e.g. window-stats/1"
    )
    quantization: TensorQuantization | None = None

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if any(dim < 1 for dim in self.shape):
            raise ValueError(f"shape {list(self.shape)} must hold positive sizes")
        if self.quantization is not None and self.dtype == "float32":
            raise ValueError("quantization applies to an int8 or uint8 input only")
        if self.layout == "NC":
            if len(self.shape) != 2:
                raise ValueError(f"layout NC needs a 2-dimensional shape, got {list(self.shape)}")
            if self.color_order or self.resize or self.normalization:
                raise ValueError("layout NC takes no color_order, resize or normalization")
            return self
        if self.feature_set is not None:
            raise ValueError("feature_set applies to layout NC only")
        if len(self.shape) != 4:
            raise ValueError(
                f"layout {self.layout} needs a 4-dimensional shape, got {list(self.shape)}"
            )
        if self.color_order is None or self.resize is None:
            raise ValueError(f"layout {self.layout} needs color_order and resize")
        expected_channels = 1 if self.color_order == "GRAY" else 3
        if self.channels != expected_channels:
            raise ValueError(
                f"color_order {self.color_order} needs {expected_channels} channel(s), "
                f"shape {list(self.shape)} has {self.channels}"
            )
        if self.normalization and len(self.normalization.mean) != self.channels:
            raise ValueError("normalization needs one mean and std per input channel")
        return self

    @property
    def is_image(self) -> bool:
        """Whether this input is an image (NHWC or NCHW)."""
        return self.layout != "NC"

    @property
    def height(self) -> int:
        """Input height in pixels (image inputs only)."""
        return self.shape[1] if self.layout == "NHWC" else self.shape[2]

    @property
    def width(self) -> int:
        """Input width in pixels (image inputs only)."""
        return self.shape[2] if self.layout == "NHWC" else self.shape[3]

    @property
    def channels(self) -> int:
        """Number of channels (image inputs) or features (NC inputs)."""
        if self.layout == "NHWC":
            return self.shape[3]
        return self.shape[1]


class SsdAnchors(_Strict):
    """MediaPipe SSD anchor grid (``ssd_anchors_calculator``), centres only, fixed size."""

    scheme: Literal["ssd"] = "ssd"
    strides: tuple[int, ...] = Field(min_length=1)
    offset_x: float = 0.5
    offset_y: float = 0.5
    interpolated_scale_aspect_ratio: float = 1.0


def _check_label_thresholds(labels: tuple[str, ...], thresholds: dict[str, float]) -> None:
    unknown = sorted(set(thresholds) - set(labels))
    if unknown:
        raise ValueError(f"label_thresholds names labels the model lacks: {', '.join(unknown)}")
    bad = {label: value for label, value in thresholds.items() if not 0.0 < value < 1.0}
    if bad:
        raise ValueError(f"label_thresholds must lie between 0 and 1 (exclusive), got {bad}")


class _DetectorBase(_Strict):
    """What every detector family shares: labels, thresholds, NMS."""

    kind: Literal["detector"]
    labels: tuple[str, ...] = Field(min_length=1)
    score_threshold: float = Field(gt=0.0, lt=1.0)
    label_thresholds: dict[str, float] = Field(
        default_factory=dict, description="per-label score thresholds overriding score_threshold"
    )
    max_detections: int = Field(default=100, ge=1)

    @model_validator(mode="after")
    def _thresholds_name_labels(self) -> _DetectorBase:
        _check_label_thresholds(self.labels, self.label_thresholds)
        return self

    def thresholds(self) -> tuple[float, ...]:
        """The score threshold of each label, in label order."""
        return tuple(self.label_thresholds.get(label, self.score_threshold)
                     for label in self.labels)


class DetectorOutput(_DetectorBase):
    """Family ``ssd-anchors``: an SSD-style detector (BlazeFace) over MediaPipe's anchors,
    with box, keypoint and score outputs and weighted NMS."""

    family: Literal["ssd-anchors"] = "ssd-anchors"
    boxes_output: str
    scores_output: str
    anchors: SsdAnchors
    num_keypoints: int = Field(ge=0)
    nms_iou: float = Field(gt=0.0, le=1.0)
    raw_score_clip: float = Field(default=80.0, gt=0.0)


class YoloOutput(_DetectorBase):
    """Family ``yolo``: one output of candidates with centre-size boxes.

    Layout ``v8`` (Ultralytics v8/v11) is ``[batch, 4 + classes, candidates]``; ``v5``
    is ``[batch, candidates, 5 + classes]`` with an objectness score after the box that
    multiplies each class score. Either is accepted transposed. Boxes are in input pixels
    (ONNX exports) or normalised to 0..1 (Ultralytics' TFLite exports).
    """

    family: Literal["yolo"]
    output: str
    layout: Literal["v8", "v5"] = "v8"
    coordinates: Literal["pixels", "normalized"] = "pixels"
    nms_iou: float = Field(default=0.45, gt=0.0, le=1.0)
    class_agnostic_nms: bool = False


class BoxesScoresOutput(_DetectorBase):
    """Family ``boxes-scores``: a model that already outputs boxes, scores and classes
    (TFLite's detection post-processing op, an ONNX export with NMS inside).

    ``boxes`` is ``[batch, n, 4]``; ``scores`` ``[batch, n]`` (with ``classes``
    ``[batch, n]``) or ``[batch, n, classes]``; ``count`` (optional) says how many rows
    are valid. ``nms_iou`` (optional) runs class-aware NMS again on what comes out.
    """

    family: Literal["boxes-scores"]
    boxes_output: str
    scores_output: str
    classes_output: str | None = None
    count_output: str | None = None
    box_order: Literal["xyxy", "yxyx"] = "xyxy"
    coordinates: Literal["pixels", "normalized"] = "normalized"
    class_offset: int = Field(default=0, description="added to each class index before lookup")
    nms_iou: float | None = Field(default=None, gt=0.0, le=1.0)


DetectorSpec = DetectorOutput | YoloOutput | BoxesScoresOutput
DETECTOR_FAMILIES = ("ssd-anchors", "yolo", "boxes-scores")


class ClassifierOutput(_Strict):
    """How to decode a classifier: one score per label."""

    kind: Literal["classifier"]
    output: str
    labels: tuple[str, ...] = Field(min_length=1)
    activation: Literal["softmax", "sigmoid", "none"] = "softmax"


class AnomalyOutput(_Strict):
    """How to decode an anomaly model: one score per input row, compared to a threshold."""

    kind: Literal["anomaly"]
    output: str
    threshold: float
    higher_is_anomalous: bool = True


class LandmarksOutput(_Strict):
    """How to decode a landmark regressor (face mesh): points plus a presence score."""

    kind: Literal["landmarks"]
    points_output: str
    presence_output: str
    num_points: int = Field(ge=1)
    point_dims: Literal[2, 3] = 3
    presence_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)


def _output_tag(value: Any) -> str | None:
    """``kind``, and for detectors ``detector:<family>`` (``ssd-anchors`` when absent,
    as every manifest before the families had it)."""
    def get(key: str) -> object:
        return value.get(key) if isinstance(value, dict) else getattr(value, key, None)

    kind = get("kind")
    if kind != "detector":
        return kind if isinstance(kind, str) else None
    family = get("family") or "ssd-anchors"
    return f"detector:{family}" if isinstance(family, str) else None


OutputSpec = Annotated[
    Annotated[DetectorOutput, Tag("detector:ssd-anchors")]
    | Annotated[YoloOutput, Tag("detector:yolo")]
    | Annotated[BoxesScoresOutput, Tag("detector:boxes-scores")]
    | Annotated[ClassifierOutput, Tag("classifier")]
    | Annotated[AnomalyOutput, Tag("anomaly")]
    | Annotated[LandmarksOutput, Tag("landmarks")],
    Discriminator(
        _output_tag,
        custom_error_type="output_kind",
        custom_error_message="unknown output kind or detector family (kinds: detector, "
        f"classifier, anomaly, landmarks; detector families: {', '.join(DETECTOR_FAMILIES)})",
    ),
]


class AccuracyTolerance(_Strict):
    """How far a quantized model may stray from its float source and still serve."""

    min_mean_iou: float = Field(default=0.8, ge=0.0, le=1.0)
    max_lost_share: float = Field(
        default=0.05, ge=0.0, le=1.0, description="detections lost, over the float model's")
    max_gained_share: float = Field(default=0.05, ge=0.0, le=1.0)


class AccuracyFigures(_Strict):
    """One frame set's comparison of a quantized model with its float source."""

    frames: int = Field(ge=0)
    reference_detections: int = Field(ge=0)
    matched: int = Field(ge=0)
    mean_iou: float = Field(ge=0.0, le=1.0)
    lost: int = Field(ge=0)
    gained: int = Field(ge=0)

    @property
    def lost_share(self) -> float:
        """Detections lost, over the float model's detections (at least one)."""
        return self.lost / max(self.reference_detections, 1)

    @property
    def gained_share(self) -> float:
        """Detections gained, over the float model's detections (at least one)."""
        return self.gained / max(self.reference_detections, 1)

    def within(self, tolerance: AccuracyTolerance) -> bool:
        """Whether these figures meet ``tolerance`` (with nothing to match, any IoU does)."""
        iou_ok = self.matched == 0 or self.mean_iou >= tolerance.min_mean_iou
        return (iou_ok and self.lost_share <= tolerance.max_lost_share
                and self.gained_share <= tolerance.max_gained_share)


class LatencyFigures(_Strict):
    """Median milliseconds per inference of the float and the quantized model, measured
    alternately on one machine."""

    float_ms: float = Field(gt=0.0)
    int8_ms: float = Field(gt=0.0)
    measured_on: str = Field(default="", description="the machine, as the hardware probe names it")

    @property
    def speedup(self) -> float:
        """How many times faster the quantized model ran."""
        return self.float_ms / self.int8_ms


class Quantization(_Strict):
    """What a quantized bundle is and how it compares with the model it was made from."""

    precision: Literal["int8"] = "int8"
    scheme: Literal["onnx-qdq", "tflite"] = "onnx-qdq"
    source: str = Field(default="", description="name@version of the float model, if known")
    tolerance: AccuracyTolerance = Field(default_factory=AccuracyTolerance)
    calibration: AccuracyFigures | None = None
    held_out: AccuracyFigures | None = None
    latency: LatencyFigures | None = None

    @property
    def source_name(self) -> str:
        """The float model's name (without its version)."""
        return self.source.partition("@")[0]

    def within_tolerance(self) -> bool:
        """Measured, and every measured frame set within :attr:`tolerance`."""
        figures = [f for f in (self.calibration, self.held_out) if f is not None]
        return bool(figures) and all(f.within(self.tolerance) for f in figures)


class Manifest(_Strict):
    """Everything the runtime needs to know about one model file."""

    schema_version: Literal[1]
    name: str = Field(pattern=MODEL_NAME_PATTERN)
    version: str
    task: Task
    runtime: Runtime
    accelerators: tuple[str, ...] = Field(
        default=(),
        description="accelerators the file was compiled for (e.g. 'edgetpu'); empty = generic",
    )
    file: FileSpec
    input: InputSpec
    output: OutputSpec
    description: str = ""
    source: str = Field(default="", description="where the weights came from")
    quantization: Quantization | None = Field(
        default=None, description="set on INT8 models: scheme, float source, accuracy report")
    golden: dict[str, tuple[float, ...]] | None = Field(
        default=None, description="first outputs on the golden input, recorded at import")

    @field_validator("version")
    @classmethod
    def _semver(cls, value: str) -> str:
        semver_key(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.output.kind != self.task:
            raise ValueError(f"output.kind {self.output.kind!r} does not match task {self.task!r}")
        suffix = RUNTIME_SUFFIX[self.runtime]
        if not self.file.path.endswith(suffix):
            raise ValueError(f"runtime {self.runtime} needs a {suffix} file, got {self.file.path}")
        if self.task in ("detector", "landmarks") and not self.input.is_image:
            raise ValueError(f"task {self.task} needs an image input (NHWC or NCHW)")
        return self

    def to_json(self) -> str:
        """Serialise to the canonical JSON text written into bundles."""
        # Unset optional fields are left out, so that a manifest written before they
        # existed reads back the same and older readers are not handed unknown nulls.
        return json.dumps(self.model_dump(mode="json", exclude_none=True), indent=2,
                          sort_keys=True) + "\n"


def parse_manifest(data: bytes | str, *, path: Path) -> Manifest:
    """Parse and validate manifest text.

    Args:
        data: The JSON text.
        path: Where it came from, for error messages.

    Raises:
        ManifestError: The text is not JSON, or a field is missing or wrong; the message
            names the field, the bad value and what was expected.
    """
    try:
        raw: Any = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(path, f"is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ManifestError(path, f"must be a JSON object, got {type(raw).__name__}")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _location(first) or None
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise ManifestError(path, problems, field=field) from exc


_UNION_TAGS = frozenset({"detector:ssd-anchors", "detector:yolo", "detector:boxes-scores",
                         "classifier", "anomaly", "landmarks"})


def _location(error: Any) -> str:
    """The dotted field path, without the union member pydantic inserts (``output.labels``,
    not ``output.detector:yolo.labels``)."""
    parts = list(error["loc"])
    if len(parts) > 1 and parts[0] == "output" and parts[1] in _UNION_TAGS:
        del parts[1]
    return ".".join(str(part) for part in parts)


def _describe(error: Any) -> str:
    loc = _location(error) or "(manifest)"
    if error["type"] == "missing":
        return f"{loc}: required field is missing"
    value = error.get("input")
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{loc}: {error['msg']} (got {shown})"
