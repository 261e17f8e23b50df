"""Reading image files for the CLI: RGB uint8 arrays, clear errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from edge_agent.errors import ImageReadError


def read_image(path: Path) -> npt.NDArray[np.uint8]:
    """Read an image file as an ``HxWx3`` RGB array.

    Raises:
        ImageReadError: The file is missing, unreadable or not a decodable image.
    """
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a file")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read: {exc.strerror}") from exc
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageReadError(f"{path}: not a decodable image (PNG, JPEG, BMP, ...)")
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), dtype=np.uint8)
