"""Hostile inputs for tests: decompression bombs that are a few hundred bytes on the wire."""

from __future__ import annotations

import io
import struct
import zipfile

import cv2
import numpy as np


def jpeg_bomb(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose frame header claims ``width`` x ``height`` pixels.

    ``cv2.imdecode`` allocates the claimed size before it finds the data short.
    """
    ok, encoded = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    assert ok
    data = bytearray(encoded.tobytes())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def zip_bomb(*, expanded_bytes: int, entries: int = 2) -> bytes:
    """A deflated zip whose ``entries`` files of zeros add up to ``expanded_bytes``."""
    buffer = io.BytesIO()
    chunk = bytes(1024 * 1024)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for index in range(entries):
            name = "manifest.json" if index == 0 else f"model-{index}.onnx"
            left = expanded_bytes // entries
            with archive.open(name, "w", force_zip64=True) as entry:
                while left > 0:
                    entry.write(chunk[:left])
                    left -= len(chunk)
    return buffer.getvalue()
