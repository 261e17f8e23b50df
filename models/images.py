"""Image bytes from outside: their declared size read from the header, then decoded.

``cv2.imdecode`` allocates what a file's header declares before it looks at the pixel
data: a 629-byte JPEG whose frame header says 30000x30000 costs 2.7 GB per copy. So
every image that arrives from a device, a request or a file is first read here, by a
pure header parser that touches a few hundred bytes, and refused when its width x height
is over the caller's pixel budget. Only then is it decoded.

The parser knows exactly the formats it accepts (JPEG, PNG, BMP, WebP and TIFF); any
other bytes are refused as an unknown format, never handed to OpenCV, whose decoders
(JPEG 2000, GIF, AVIF, HDR, PNM ...) would otherwise pick them up unchecked. Each
accepted format is recognised by the same leading signature OpenCV uses to choose its
decoder, and bytes that also carry an ISO-BMFF ``ftyp`` box (AVIF, HEIF) are refused, so
that no file can pass as one format here and be decoded as another there.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from models.errors import ImageRefusedError

ImageFormat = Literal["jpeg", "png", "bmp", "webp", "tiff"]

#: A default budget: a 24-megapixel camera's frame (6000x4000) fits, a bomb does not.
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000

# JPEG start-of-frame markers (baseline, extended, progressive, lossless, arithmetic);
# C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7,
                       0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers without a length field: TEM, RST0-7, SOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8})
_TIFF_WIDTH, _TIFF_HEIGHT = 256, 257
_TIFF_SHORT, _TIFF_LONG = 3, 4


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What an image file declares about itself, before any pixel is decoded."""

    format: ImageFormat
    width: int
    height: int

    @property
    def pixels(self) -> int:
        """Width times height."""
        return self.width * self.height


def read_image_header(data: bytes) -> ImageHeader:
    """Format and declared size of an image file's bytes, from its header alone.

    Raises:
        ImageRefusedError: ``unknown-format`` for anything but JPEG, PNG, BMP, WebP and
            TIFF; ``malformed-header`` when the header is truncated, inconsistent or
            declares an empty image.
    """
    view = data
    if view[4:8] == b"ftyp":
        raise ImageRefusedError("unknown-format", "an ISO-BMFF (AVIF/HEIF) file")
    if view[:3] == b"\xff\xd8\xff":
        header = _jpeg(view)
    elif view[:8] == b"\x89PNG\r\n\x1a\n":
        header = _png(view)
    elif view[:2] == b"BM":
        header = _bmp(view)
    elif view[:4] == b"RIFF" and view[8:12] == b"WEBP":
        header = _webp(view)
    elif view[:4] in (b"II*\x00", b"MM\x00*"):
        header = _tiff(view)
    else:
        raise ImageRefusedError(
            "unknown-format", "not a JPEG, PNG, BMP, WebP or TIFF file")
    if header.width <= 0 or header.height <= 0:
        raise ImageRefusedError(
            "malformed-header", f"{header.format} header declares {header.width}x"
            f"{header.height} pixels")
    return header


def check_image(data: bytes, *, max_pixels: int) -> ImageHeader:
    """The header of ``data``, refused when it declares more than ``max_pixels``.

    Raises:
        ImageRefusedError: As :func:`read_image_header`, or ``too-large``.
    """
    header = read_image_header(data)
    if header.pixels > max_pixels:
        raise ImageRefusedError(
            "too-large", f"{header.format} declares {header.width}x{header.height} = "
            f"{header.pixels} pixels, over the budget of {max_pixels}")
    return header


def decode_image(data: bytes, *, max_pixels: int) -> npt.NDArray[np.uint8]:
    """An image file's bytes as ``HxWx3`` RGB pixels, checked before they are decoded.

    Raises:
        ImageRefusedError: As :func:`check_image`, or ``undecodable`` when the header
            passed but the data does not decode (or decodes to another size).
    """
    header = check_image(data, max_pixels=max_pixels)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageRefusedError("undecodable", f"{header.format}: {exc}") from exc
    if image is None:
        raise ImageRefusedError("undecodable", f"{header.format} data does not decode")
    height, width = image.shape[:2]
    if width * height > max_pixels:  # a decoder that disagreed with the header
        raise ImageRefusedError(
            "too-large", f"decoded to {width}x{height}, over the budget of {max_pixels}")
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def _need(view: bytes, end: int, what: str) -> None:
    if len(view) < end:
        raise ImageRefusedError("malformed-header", f"{what} header is truncated")


def _jpeg(view: bytes) -> ImageHeader:
    """The first start-of-frame segment's size, walking the segments that precede it
    (a thumbnail inside an APP segment is skipped with its segment, as libjpeg does)."""
    position = 2
    while True:
        _need(view, position + 2, "JPEG")
        if view[position] != 0xFF:
            raise ImageRefusedError("malformed-header",
                                    f"JPEG: no marker at byte {position}")
        marker = view[position + 1]
        if marker == 0xFF:  # fill bytes may pad any marker
            position += 1
            continue
        position += 2
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):
            raise ImageRefusedError("malformed-header", "JPEG: image data before a frame")
        _need(view, position + 2, "JPEG")
        (length,) = struct.unpack_from(">H", view, position)
        if length < 2:
            raise ImageRefusedError("malformed-header", "JPEG: segment shorter than 2")
        if marker in _JPEG_SOF:
            _need(view, position + 7, "JPEG frame")
            height, width = struct.unpack_from(">HH", view, position + 3)
            return ImageHeader("jpeg", width, height)
        position += length


def _png(view: bytes) -> ImageHeader:
    _need(view, 24, "PNG")
    if view[12:16] != b"IHDR":
        raise ImageRefusedError("malformed-header", "PNG: the first chunk is not IHDR")
    width, height = struct.unpack_from(">II", view, 16)
    return ImageHeader("png", width, height)


def _bmp(view: bytes) -> ImageHeader:
    _need(view, 18, "BMP")
    (info_size,) = struct.unpack_from("<I", view, 14)
    if info_size == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes
        _need(view, 22, "BMP")
        width, height = struct.unpack_from("<HH", view, 18)
        return ImageHeader("bmp", width, height)
    if info_size < 40:
        raise ImageRefusedError("malformed-header", f"BMP: info header of {info_size} bytes")
    _need(view, 26, "BMP")
    width, height = struct.unpack_from("<ii", view, 18)
    return ImageHeader("bmp", width, abs(height))  # negative height: stored top-down


def _webp(view: bytes) -> ImageHeader:
    _need(view, 30, "WebP")
    chunk = view[12:16]
    if chunk == b"VP8 ":
        if view[23:26] != b"\x9d\x01\x2a":
            raise ImageRefusedError("malformed-header", "WebP: no VP8 start code")
        width, height = struct.unpack_from("<HH", view, 26)
        return ImageHeader("webp", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":
        if view[20] != 0x2F:
            raise ImageRefusedError("malformed-header", "WebP: no VP8L signature")
        (bits,) = struct.unpack_from("<I", view, 21)
        return ImageHeader("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        width = int.from_bytes(view[24:27], "little") + 1
        height = int.from_bytes(view[27:30], "little") + 1
        return ImageHeader("webp", width, height)
    raise ImageRefusedError("malformed-header", f"WebP: unknown first chunk {chunk!r}")


def _tiff(view: bytes) -> ImageHeader:
    """Width and height tags of the first image directory (the one OpenCV decodes)."""
    order = "<" if view[:2] == b"II" else ">"
    _need(view, 8, "TIFF")
    (directory,) = struct.unpack_from(order + "I", view, 4)
    _need(view, directory + 2, "TIFF directory")
    (count,) = struct.unpack_from(order + "H", view, directory)
    _need(view, directory + 2 + 12 * count, "TIFF directory")
    sizes: dict[int, int] = {}
    for index in range(count):
        entry = directory + 2 + 12 * index
        tag, kind, values = struct.unpack_from(order + "HHI", view, entry)
        if tag in (_TIFF_WIDTH, _TIFF_HEIGHT) and values == 1:
            if kind == _TIFF_SHORT:
                (sizes[tag],) = struct.unpack_from(order + "H", view, entry + 8)
            elif kind == _TIFF_LONG:
                (sizes[tag],) = struct.unpack_from(order + "I", view, entry + 8)
    if _TIFF_WIDTH not in sizes or _TIFF_HEIGHT not in sizes:
        raise ImageRefusedError("malformed-header", "TIFF: no image width and length tags")
    return ImageHeader("tiff", sizes[_TIFF_WIDTH], sizes[_TIFF_HEIGHT])
