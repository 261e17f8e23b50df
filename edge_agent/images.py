"""Reading image files: RGB uint8 arrays, their header checked before they are decoded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_agent.errors import ImageReadError
from models import ImageRefusedError, decode_image


def read_image(path: Path, *, max_pixels: int) -> npt.NDArray[np.uint8]:
    """Read an image file as an ``HxWx3`` RGB array.

    The file's header is read first: a format outside JPEG, PNG, BMP, WebP and TIFF, or
    a declared width x height over ``max_pixels``, is refused before any pixel buffer is
    allocated.

    Raises:
        ImageReadError: The file is missing or unreadable (``reason`` ``unreadable``),
            or its image was refused (``reason`` as :class:`models.ImageRefusedError`).
    """
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImageRefusedError as exc:
        raise ImageReadError(f"{path}: {exc}", reason=exc.reason) from exc
