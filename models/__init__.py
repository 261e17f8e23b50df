"""Model bundles, runtime backends, pre/post-processing and the model zoo.

The public API of the model layer; everything else in this package is private.
"""

from __future__ import annotations

from models.backends import (
    Backend,
    BackendDescription,
    BackendSpec,
    FakeBackend,
    LiteRTBackend,
    OnnxRuntimeBackend,
    Outputs,
    create_backend,
)
from models.bundle import (
    ModelBundle,
    open_bundle,
    sha256_hex,
    unpack_bundle_archive,
    write_bundle,
)
from models.errors import (
    BackendError,
    BackendLoadError,
    BackendUnavailableError,
    BundleError,
    ImageRefusal,
    ImageRefusedError,
    InferenceError,
    InputSpecError,
    IntegrityError,
    ManifestError,
    ModelError,
    ModelNotFoundError,
    ZooError,
    ZooFetchError,
)
from models.golden import Golden, golden_input, golden_outputs, smoke_test
from models.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageFormat,
    ImageHeader,
    check_image,
    decode_image,
    read_image_header,
)
from models.manifest import MANIFEST_FILENAME, InputSpec, Manifest, parse_manifest, semver_key
from models.model import Model, PreparedImage
from models.preprocess import ImagePreprocessor, Placement
from models.results import AnomalyScore, Box, Classification, Detection, Landmarks, iou
from models.store import ModelStore, StoreEntry, default_store_path
from models.zoo import ZOO, ModelZoo, PipWheelFetcher, WheelFetcher, WheelSource

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "MANIFEST_FILENAME",
    "ZOO",
    "AnomalyScore",
    "Backend",
    "BackendDescription",
    "BackendError",
    "BackendLoadError",
    "BackendSpec",
    "BackendUnavailableError",
    "Box",
    "BundleError",
    "Classification",
    "Detection",
    "FakeBackend",
    "Golden",
    "ImageFormat",
    "ImageHeader",
    "ImagePreprocessor",
    "ImageRefusal",
    "ImageRefusedError",
    "InferenceError",
    "InputSpec",
    "InputSpecError",
    "IntegrityError",
    "Landmarks",
    "LiteRTBackend",
    "Manifest",
    "ManifestError",
    "Model",
    "ModelBundle",
    "ModelError",
    "ModelNotFoundError",
    "ModelStore",
    "ModelZoo",
    "OnnxRuntimeBackend",
    "Outputs",
    "PipWheelFetcher",
    "Placement",
    "PreparedImage",
    "StoreEntry",
    "WheelFetcher",
    "WheelSource",
    "ZooError",
    "ZooFetchError",
    "check_image",
    "create_backend",
    "decode_image",
    "default_store_path",
    "golden_input",
    "golden_outputs",
    "iou",
    "open_bundle",
    "parse_manifest",
    "read_image_header",
    "semver_key",
    "sha256_hex",
    "smoke_test",
    "unpack_bundle_archive",
    "write_bundle",
]
