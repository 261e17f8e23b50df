"""Reading image files: RGB uint8 arrays, their header checked before they are decoded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_agent.errors import ImageReadError
from models import ImageRefusedError, decode_image

_METADATA_BYTES = 1024 * 1024


def read_image(path: Path, *, max_pixels: int) -> npt.NDArray[np.uint8]:
    """Read an image file as an ``HxWx3`` RGB array.

    The file's header is read first: a format outside JPEG, PNG, BMP, WebP and TIFF, or
    a declared width x height over ``max_pixels``, is refused before any pixel buffer is
    allocated. A file larger than any image within the budget could be (4 bytes a pixel,
    plus 1 MiB for metadata) is refused before it is read.

    Raises:
        ImageReadError: The file is missing or unreadable (``reason`` ``unreadable``),
            or its image was refused (``reason`` as :class:`models.ImageRefusedError`).
    """
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a file")
    try:
        size = path.stat().st_size
        if size > max_pixels * 4 + _METADATA_BYTES:
            raise ImageReadError(f"{path}: {size} bytes is more than an image of at most "
                                 f"{max_pixels} pixels needs", reason="too-large")
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImageRefusedError as exc:
        raise ImageReadError(f"{path}: {exc}", reason=exc.reason) from exc
