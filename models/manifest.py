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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


class InputSpec(_Strict):
    """The model's single input tensor.

    Image models use layout NHWC or NCHW with a colour order, a resize mode and a
    normalisation; feature models (anomaly windows) use layout NC with none of those.
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

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        if any(dim < 1 for dim in self.shape):
            raise ValueError(f"shape {list(self.shape)} must hold positive sizes")
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


class DetectorOutput(_Strict):
    """How to decode an SSD-style detector (BlazeFace): boxes, scores and keypoints."""

    kind: Literal["detector"]
    boxes_output: str
    scores_output: str
    anchors: SsdAnchors
    labels: tuple[str, ...] = Field(min_length=1)
    num_keypoints: int = Field(ge=0)
    score_threshold: float = Field(gt=0.0, lt=1.0)
    nms_iou: float = Field(gt=0.0, le=1.0)
    raw_score_clip: float = Field(default=80.0, gt=0.0)
    max_detections: int = Field(default=100, ge=1)


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


OutputSpec = Annotated[
    DetectorOutput | ClassifierOutput | AnomalyOutput | LandmarksOutput,
    Field(discriminator="kind"),
]


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
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


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
        field = ".".join(str(part) for part in first["loc"]) or None
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise ManifestError(path, problems, field=field) from exc


def _describe(error: Any) -> str:
    loc = ".".join(str(part) for part in error["loc"]) or "(manifest)"
    if error["type"] == "missing":
        return f"{loc}: required field is missing"
    value = error.get("input")
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{loc}: {error['msg']} (got {shown})"
