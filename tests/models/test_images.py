"""Image bytes are checked from their header before they are decoded."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from models import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageRefusedError,
    check_image,
    decode_image,
    read_image_header,
)
from tests.bombs import jpeg_bomb

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(7)


def _encoded(suffix: str, width: int, height: int, *params: int) -> bytes:
    image = RNG.integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, data = cv2.imencode(suffix, image, list(params))
    assert ok, suffix
    return data.tobytes()


@pytest.mark.parametrize(("suffix", "name", "params"), [
    (".jpg", "jpeg", ()), (".jpg", "jpeg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
    (".png", "png", ()), (".bmp", "bmp", ()), (".webp", "webp", ()),
    (".webp", "webp", (cv2.IMWRITE_WEBP_QUALITY, 101)),  # lossless: VP8L
    (".tiff", "tiff", ()),
])
@pytest.mark.parametrize(("width", "height"), [(1, 1), (37, 19), (640, 480)])
def test_the_header_declares_what_opencv_decodes(suffix: str, name: str,
                                                 params: tuple[int, ...],
                                                 width: int, height: int) -> None:
    data = _encoded(suffix, width, height, *params)
    header = read_image_header(data)
    assert (header.format, header.width, header.height) == (name, width, height)
    assert decode_image(data, max_pixels=width * height).shape == (height, width, 3)


def test_a_jpeg_with_an_exif_thumbnail_reports_the_main_frame() -> None:
    thumbnail = _encoded(".jpg", 8, 8)
    main = _encoded(".jpg", 64, 48)
    exif = b"Exif\x00\x00" + thumbnail  # the thumbnail's own SOF sits inside APP1
    data = main[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + main[2:]
    assert read_image_header(data).width == 64


def test_a_bomb_is_refused_from_its_header_as_too_large() -> None:
    bomb = jpeg_bomb(30000, 30000)
    assert len(bomb) < 1000
    header = read_image_header(bomb)
    assert (header.width, header.height) == (30000, 30000)
    with pytest.raises(ImageRefusedError) as refused:
        decode_image(bomb, max_pixels=DEFAULT_MAX_IMAGE_PIXELS)
    assert refused.value.reason == "too-large" and "30000x30000" in str(refused.value)


def test_the_budget_is_inclusive() -> None:
    data = _encoded(".png", 100, 50)
    assert check_image(data, max_pixels=5000).pixels == 5000
    with pytest.raises(ImageRefusedError, match="too-large"):
        check_image(data, max_pixels=4999)


@pytest.mark.parametrize("suffix", [".ppm", ".hdr", ".ras", ".gif", ".avif"])
def test_formats_outside_the_checked_set_are_refused_although_opencv_decodes_them(
        suffix: str) -> None:
    data = _encoded(suffix, 16, 16)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    with pytest.raises(ImageRefusedError) as refused:
        decode_image(data, max_pixels=10**6)
    assert refused.value.reason == "unknown-format"


@pytest.mark.parametrize("data", [
    b"", b"GIF89a\x01\x00\x01\x00", b"not an image",
    b"\x00\x00\x00\x1cftypavif", b"\xff\xd8\xff\xe0ftypavif",
])
def test_unknown_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(ImageRefusedError) as refused:
        read_image_header(data)
    assert refused.value.reason == "unknown-format"


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".bmp", ".webp", ".tiff"])
def test_every_truncation_of_a_header_is_refused_or_reads_the_true_size(suffix: str) -> None:
    data = _encoded(suffix, 23, 11)
    outcomes = {_outcome(data[:end]) for end in range(len(data) + 1)}
    assert outcomes <= {"unknown-format", "malformed-header", (23, 11)}
    assert (23, 11) in outcomes


def _outcome(data: bytes) -> str | tuple[int, int]:
    try:
        header = read_image_header(data)
    except ImageRefusedError as exc:
        return exc.reason
    return header.width, header.height


def test_an_empty_frame_and_data_before_a_frame_are_malformed() -> None:
    data = bytearray(_encoded(".jpg", 16, 16))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">H", data, sof + 5, 0)  # DNL-style height 0
    with pytest.raises(ImageRefusedError, match="malformed-header"):
        read_image_header(bytes(data))
    with pytest.raises(ImageRefusedError, match="malformed-header"):
        read_image_header(b"\xff\xd8\xff\xda\x00\x08" + bytes(8))


def test_a_header_that_lies_small_does_not_decode_large() -> None:
    data = bytearray(_encoded(".jpg", 64, 64))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, 8, 8)
    with pytest.raises(ImageRefusedError) as refused:
        decode_image(bytes(data), max_pixels=63)
    assert refused.value.reason == "too-large"
    try:
        shape: object = decode_image(bytes(data), max_pixels=64).shape
    except ImageRefusedError as exc:
        shape = exc.reason
    assert shape in ((8, 8, 3), "undecodable")
