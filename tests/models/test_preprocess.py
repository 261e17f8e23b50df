"""Pre-processing: letterbox geometry, normalisation, layouts, refusing bad images."""

from __future__ import annotations

import numpy as np
import pytest

from models import ImagePreprocessor, InputSpec, InputSpecError

pytestmark = pytest.mark.integration


def _spec(**changes: object) -> InputSpec:
    base: dict[str, object] = {
        "shape": (1, 128, 128, 3), "layout": "NHWC", "dtype": "float32",
        "color_order": "RGB", "resize": "letterbox",
        "normalization": {"mean": (127.5,) * 3, "std": (127.5,) * 3},
    }
    base.update(changes)
    return InputSpec.model_validate(base)


def test_letterbox_keeps_aspect_and_maps_back() -> None:
    image = np.full((100, 200, 3), 255, dtype=np.uint8)
    tensor, placement = ImagePreprocessor(_spec())(image)
    assert tensor.shape == (1, 128, 128, 3)
    assert placement.scale_x == pytest.approx(0.64) and placement.pad_y == 32
    # Padding is black (-1 after normalisation), the picture white (+1).
    assert tensor[0, 0, 0, 0] == pytest.approx(-1.0)
    assert tensor[0, 64, 64, 0] == pytest.approx(1.0)
    xs, ys = placement.to_source(np.array([0.0, 1.0]), np.array([0.25, 0.75]))
    np.testing.assert_allclose(xs, [0, 200], atol=1e-6)
    np.testing.assert_allclose(ys, [0, 100], atol=1e-6)


def test_nchw_bgr_layout() -> None:
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[..., 0] = 255  # pure red in RGB
    spec = _spec(shape=(1, 3, 32, 32), layout="NCHW", color_order="BGR")
    tensor, _ = ImagePreprocessor(spec)(image)
    assert tensor.shape == (1, 3, 32, 32)
    assert tensor[0, 2].mean() == pytest.approx(1.0)  # red is the last channel in BGR
    assert tensor[0, 0].mean() == pytest.approx(-1.0)


def test_grey_and_rgba_images_are_accepted() -> None:
    pre = ImagePreprocessor(_spec())
    assert pre(np.zeros((50, 50), dtype=np.uint8))[0].shape == (1, 128, 128, 3)
    assert pre(np.zeros((50, 50, 4), dtype=np.uint8))[0].shape == (1, 128, 128, 3)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((10, 10, 3), dtype=np.float32), "dtype uint8"),
        (np.zeros((0, 10, 3), dtype=np.uint8), "empty"),
        (np.zeros((10, 10, 5), dtype=np.uint8), "HxW, HxWx1"),
        (np.zeros((2, 10, 10, 3), dtype=np.uint8), "HxW, HxWx1"),
        ("astronaut.png", "numpy array"),
        (None, "numpy array"),
    ],
)
def test_bad_images_are_refused(image: object, message: str) -> None:
    with pytest.raises(InputSpecError, match=message):
        ImagePreprocessor(_spec())(image)
