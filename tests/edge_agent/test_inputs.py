"""Input health on real photographs (scikit-image's): darkened, blurred, frozen."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from skimage import data

from edge_agent.inputs import (
    FROZEN_AFTER_FRAMES,
    InputMonitor,
    grey_copy,
    is_repeat,
    measure,
    problems_of,
)
from sync import TelemetryMessage, decode, encode

pytestmark = pytest.mark.unit

Image = npt.NDArray[np.uint8]
PHOTOS = ("astronaut", "coffee", "camera", "chelsea")


def _photo(name: str) -> Image:
    image = getattr(data, name)()
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(cv2.resize(image, (640, 360), interpolation=cv2.INTER_AREA))


def _noisy(image: Image, seed: int) -> Image:
    noise = np.random.default_rng(seed).normal(0, 2, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", PHOTOS)
def test_a_photograph_in_daylight_has_no_problems(name: str) -> None:
    measures = measure(grey_copy(_photo(name)))
    assert problems_of(measures, 0) == ()


@pytest.mark.parametrize("name", PHOTOS)
def test_a_darkened_photograph_is_dark_and_still_sharp(name: str) -> None:
    photo = _photo(name)
    dark = (photo * 0.15).astype(np.uint8)
    measures, bright = measure(grey_copy(dark)), measure(grey_copy(photo))
    assert "dark" in problems_of(measures, 0)
    assert "blurry" not in problems_of(measures, 0)  # darkness is not blur
    assert measures.brightness < bright.brightness * 0.2
    assert measures.contrast < bright.contrast * 0.2


@pytest.mark.parametrize("name", PHOTOS)
def test_a_blurred_photograph_is_blurry_and_not_dark(name: str) -> None:
    blurred = cv2.GaussianBlur(_photo(name), (0, 0), 4)
    measures = measure(grey_copy(blurred))
    assert problems_of(measures, 0) == ("blurry",)
    assert measures.sharpness < measure(grey_copy(_photo(name))).sharpness / 10


def test_a_washed_out_picture_is_low_contrast() -> None:
    photo = _photo("coffee").astype(np.float32)
    washed = (photo * 0.1 + 150).astype(np.uint8)  # fog: bright, no contrast
    assert "low-contrast" in problems_of(measure(grey_copy(washed)), 0)


def test_a_live_camera_of_a_still_scene_is_not_frozen_a_stuck_one_is() -> None:
    photo = _photo("astronaut")
    live = InputMonitor()
    for seed in range(FROZEN_AFTER_FRAMES + 5):  # nothing moves, the sensor still breathes
        health = live.observe(_noisy(photo, seed))
    assert health.frozen_frames == 0
    assert health.problems == ()
    stuck = InputMonitor()
    frame = _noisy(photo, 0)
    runs = [stuck.observe(frame.copy()) for _ in range(FROZEN_AFTER_FRAMES + 1)]
    assert runs[-2].problems == ()
    assert runs[-1].frozen_frames == FROZEN_AFTER_FRAMES
    assert runs[-1].problems == ("frozen",)
    assert stuck.observe(_noisy(photo, 1)).frozen_frames == 0  # it came back
    assert not is_repeat(None, grey_copy(frame))


def test_input_health_travels_in_telemetry() -> None:
    monitor = InputMonitor()
    monitor.observe((_photo("camera") * 0.15).astype(np.uint8))
    assert monitor.latest is not None
    message = TelemetryMessage(device_id="cam-1", at=1.0, values={"frames.door": 3.0},
                               inputs={"door": monitor.latest})
    received = decode(encode(message), TelemetryMessage)
    assert "dark" in received.inputs["door"].problems
    assert received.inputs["door"] == monitor.latest
    # A device that reports no input health still speaks telemetry/1.
    assert decode(encode(TelemetryMessage(device_id="cam-1", at=1.0, values={})),
                  TelemetryMessage).inputs == {}
