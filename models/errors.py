"""Errors raised by the model layer.

Hierarchy::

    ModelError                      anything the model layer refuses
    ├── BundleError                 a bundle on disk cannot be used
    │   ├── ManifestError           manifest missing, unparsable or with a bad field
    │   └── IntegrityError          model file size or sha256 differs from the manifest
    ├── InputSpecError              an input tensor or image does not fit the model
    ├── ImageRefusedError           image bytes refused before (or while) decoding them
    ├── BackendError                a runtime failed
    │   ├── BackendUnavailableError the runtime or accelerator is not installed here
    │   ├── BackendLoadError        the runtime could not load the model
    │   └── InferenceError          the runtime failed while running the model
    ├── ModelNotFoundError          no model of that name in the store
    ├── ModelImportError            a model file cannot become a bundle (unreadable, or
    │                               something it does not say was not given)
    ├── QuantizationError           quantizing a model failed
    └── ZooError                    fetching or converting a zoo model failed
        └── ZooFetchError           the package index could not be reached or refused

Third-party exceptions (LiteRT, ONNX Runtime, pip, tflite2onnx) are converted to these
once, at the seam that calls them, with ``raise ... from exc``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

#: Why image bytes were refused: a wire vocabulary, counted by reason on both sides.
ImageRefusal = Literal["unknown-format", "malformed-header", "too-large", "undecodable"]


class ModelError(Exception):
    """Base of every error the model layer raises."""


class BundleError(ModelError):
    """A model bundle on disk cannot be used."""


class ManifestError(BundleError):
    """A manifest is missing, unparsable, or has a missing or wrong field.

    Attributes:
        path: The manifest file.
        field: Dotted path of the offending field, or ``None`` when the whole file is bad.
    """

    def __init__(self, path: Path, message: str, *, field: str | None = None) -> None:
        self.path = path
        self.field = field
        where = f" field {field!r}" if field else ""
        super().__init__(f"{path}:{where} {message}")


class IntegrityError(BundleError):
    """A model file does not match the size or sha256 its manifest declares.

    Attributes:
        path: The model file.
        expected: What the manifest declares (hex digest or byte count).
        actual: What the file on disk has.
    """

    def __init__(self, path: Path, *, what: str, expected: str, actual: str) -> None:
        self.path = path
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{path}: {what} mismatch: manifest says {expected}, file has {actual}; "
            "the model file is corrupt or has been tampered with"
        )


class InputSpecError(ModelError, ValueError):
    """An input tensor or image does not fit the model's declared input."""


class ImageRefusedError(ModelError, ValueError):
    """Image bytes were refused: checked before decoding, never allocated.

    Attributes:
        reason: Why, as a short word to count by.
    """

    def __init__(self, reason: ImageRefusal, detail: str) -> None:
        self.reason: ImageRefusal = reason
        super().__init__(f"image refused ({reason}): {detail}")


class BackendError(ModelError):
    """A runtime backend failed.

    Attributes:
        backend: Name of the backend that failed, such as ``onnxruntime:cuda``.
    """

    def __init__(self, backend: str, message: str) -> None:
        self.backend = backend
        super().__init__(f"{backend}: {message}")


class BackendUnavailableError(BackendError):
    """The runtime, delegate or execution provider is not installed on this machine."""


class BackendLoadError(BackendError):
    """The runtime could not load the model on the requested accelerator."""


class InferenceError(BackendError):
    """The runtime failed while running the model."""


class ModelNotFoundError(ModelError):
    """No model with this name or path exists.

    Attributes:
        name: The name or path that was asked for.
    """

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(message)


class ModelImportError(ModelError):
    """A model file cannot be turned into a bundle.

    Attributes:
        path: The file being imported.
        missing: The command-line option that would supply what the file does not say,
            or ``None`` when the file itself is unusable.
    """

    def __init__(self, path: str, message: str, *, missing: str | None = None) -> None:
        self.path = path
        self.missing = missing
        hint = f" (pass {missing})" if missing else ""
        super().__init__(f"{path}: {message}{hint}")


class QuantizationError(ModelError):
    """Quantizing a model failed (unsupported model, calibration or runtime failure)."""


class ZooError(ModelError):
    """Fetching or converting a zoo model failed."""


class ZooFetchError(ZooError):
    """The package index could not be reached, or it refused the download."""
