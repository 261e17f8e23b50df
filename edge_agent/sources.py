"""Inputs: video (file, camera index, RTSP/HTTP URL), a folder of images, sample footage.

Each source is a generator run by its own thread. It never raises for bad data: a
corrupt or empty frame is counted and skipped; a stream that is lost, or a file that
vanished, is reopened with backoff while the source reports itself unhealthy.

Images are hostile until checked: a folder's image file is decoded only after its
header's width x height passed the source's pixel budget (``models.decode_image``), and
a stream whose declared frame size is over that budget is refused once it is opened.
Each refusal is counted by reason in the source's health.
"""

from __future__ import annotations

import abc
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge_agent.backoff import Backoff
from edge_agent.errors import ImageReadError
from edge_agent.footage import SampleFootage, TruthObject
from edge_agent.images import read_image
from models import DEFAULT_MAX_IMAGE_PIXELS

log = logging.getLogger(__name__)

REOPEN_BACKOFF = Backoff(0.5, 30.0)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True, slots=True)
class FrameItem:
    """One frame from a source, RGB."""

    source: str
    index: int
    captured_at: float
    image: npt.NDArray[np.uint8]
    truth: tuple[TruthObject, ...] = ()


@dataclass(slots=True)
class SourceHealth:
    """What a source has been through; written by its thread, read by anyone."""

    healthy: bool = True
    frames: int = 0
    corrupt: int = 0
    reopens: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    finished: bool = False
    last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def problem(self, message: str) -> None:
        """Record that the source is unhealthy and why."""
        with self.lock:
            if self.healthy or message != self.last_error:
                log.warning("%s", message)
            self.healthy, self.last_error = False, message


def valid_frame(frame: Any) -> npt.NDArray[np.uint8] | None:
    """The frame as an RGB array, or ``None`` if it is empty or malformed."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.size == 0:
        return None
    if frame.ndim == 3 and frame.shape[2] == 3:
        return np.asarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), dtype=np.uint8)
    if frame.ndim == 2:
        return np.asarray(cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB), dtype=np.uint8)
    return None


class Source(abc.ABC):
    """A named input producing frames until stopped or exhausted."""

    #: Live sources (cameras, streams) drop frames when the pipeline is busy; recorded
    #: ones (files, folders, sample footage) wait instead.
    live = False

    def __init__(self, name: str, *, max_fps: float | None = None) -> None:
        self.name = name
        self.max_fps = max_fps
        self.health = SourceHealth()
        self._index = 0

    @abc.abstractmethod
    def frames(self, stop: threading.Event) -> Iterator[FrameItem]:
        """Yield frames until ``stop`` is set or the input ends."""

    def _item(self, image: npt.NDArray[np.uint8],
              truth: tuple[TruthObject, ...] = ()) -> FrameItem:
        self._index += 1
        with self.health.lock:
            self.health.frames += 1
            self.health.healthy = True
        return FrameItem(self.name, self._index, time.time(), image, truth)

    def _corrupt(self, what: str, *, refused: str | None = None) -> None:
        """Count a skipped frame; ``refused`` names why an image was refused unread."""
        with self.health.lock:
            self.health.corrupt += 1
            count = self.health.corrupt
            if refused is not None:
                self.health.refused[refused] = self.health.refused.get(refused, 0) + 1
        if count <= 5 or count % 100 == 0:
            log.warning("%s: skipped a corrupt frame (%s); %d so far", self.name, what, count)


class _Pacer:
    """Sleeps so that frames come no faster than ``max_fps``."""

    def __init__(self, max_fps: float | None) -> None:
        self.interval = 1.0 / max_fps if max_fps else 0.0
        self.next_at = time.monotonic()

    def wait(self, stop: threading.Event) -> None:
        if self.interval:
            self.next_at = max(self.next_at + self.interval, time.monotonic())
            stop.wait(max(0.0, self.next_at - time.monotonic()))


class VideoSource(Source):
    """OpenCV capture of a file, a camera index (``"0"``) or a stream URL.

    Args:
        loop: Start a file again at its end (sample footage on a demo box).
        open_capture: Builds the capture; injected by tests.
    """

    def __init__(
        self, name: str, url: str, *, max_fps: float | None = None, loop: bool = False,
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, backoff: Backoff = REOPEN_BACKOFF,
        open_capture: Callable[[str | int], Any] | None = None,
    ) -> None:
        super().__init__(name, max_fps=max_fps)
        self.url = url
        self.max_pixels = max_pixels
        self.loop = loop
        self.backoff = backoff
        self._open_capture = open_capture or cv2.VideoCapture
        self.is_file = "://" not in url and not url.isdigit()
        self.live = not self.is_file

    def frames(self, stop: threading.Event) -> Iterator[FrameItem]:
        """Read frames; reopen on loss; skip corrupt frames."""
        rng = random.Random()
        attempt = 0
        pacer = _Pacer(self.max_fps)
        while not stop.is_set():
            capture = self._open()
            if capture is None:
                stop.wait(self.backoff.delay(attempt, rng))
                attempt += 1
                continue
            attempt = 0
            failures = 0
            try:
                while not stop.is_set():
                    ok, frame = capture.read()
                    if not ok:
                        if self.is_file and self._at_end(capture):
                            break
                        failures += 1
                        self._corrupt("read failed")
                        if failures >= 10:
                            self.health.problem(f"{self.name}: stream {self.url} lost")
                            break
                        continue
                    image = valid_frame(frame)
                    if image is None:
                        self._corrupt("empty or malformed frame")
                        continue
                    failures = 0
                    pacer.wait(stop)
                    yield self._item(image)
            finally:
                capture.release()
            if self.is_file and not self.loop and failures < 10:
                with self.health.lock:
                    self.health.finished = True
                return
            with self.health.lock:
                self.health.reopens += 1

    def _open(self) -> Any:
        if self.is_file and not Path(self.url).is_file():
            self.health.problem(f"{self.name}: video file {self.url} does not exist")
            return None
        target: str | int = int(self.url) if self.url.isdigit() else self.url
        capture = self._open_capture(target)
        if not capture.isOpened():
            capture.release()
            self.health.problem(f"{self.name}: cannot open {self.url}")
            return None
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width * height > self.max_pixels:
            capture.release()
            with self.health.lock:
                self.health.refused["too-large"] = self.health.refused.get("too-large", 0) + 1
            self.health.problem(f"{self.name}: {self.url} declares {width}x{height} frames, "
                                f"over the budget of {self.max_pixels} pixels")
            return None
        return capture

    @staticmethod
    def _at_end(capture: Any) -> bool:
        total = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        position = capture.get(cv2.CAP_PROP_POS_FRAMES)
        return bool(total <= 0 or position >= total - 1)


class FolderSource(Source):
    """Every image file that appears in a folder, in name order; each is read once."""

    def __init__(self, name: str, folder: Path, *, poll_s: float = 0.5,
                 max_fps: float | None = None,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        super().__init__(name, max_fps=max_fps)
        self.folder = folder
        self.max_pixels = max_pixels
        self.poll_s = poll_s
        self._seen: set[str] = set()

    def frames(self, stop: threading.Event) -> Iterator[FrameItem]:
        """Poll the folder and yield new images."""
        pacer = _Pacer(self.max_fps)
        while not stop.is_set():
            if not self.folder.is_dir():
                self.health.problem(f"{self.name}: folder {self.folder} does not exist")
                stop.wait(self.poll_s)
                continue
            fresh = sorted(
                p for p in self.folder.iterdir()
                if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in self._seen
            )
            for path in fresh:
                if stop.is_set():
                    return
                self._seen.add(path.name)
                try:
                    image = read_image(path, max_pixels=self.max_pixels)
                except ImageReadError as exc:
                    self._corrupt(str(exc), refused=exc.reason)
                    continue
                pacer.wait(stop)
                yield self._item(image)
            stop.wait(self.poll_s)


class SampleSource(Source):
    """The generated sample footage, with its ground truth."""

    def __init__(self, name: str, footage: SampleFootage, *, max_fps: float | None = None,
                 loop: bool = False) -> None:
        super().__init__(name, max_fps=max_fps)
        self.footage = footage
        self.loop = loop

    def frames(self, stop: threading.Event) -> Iterator[FrameItem]:
        """Yield the footage (again and again if looping)."""
        pacer = _Pacer(self.max_fps)
        while not stop.is_set():
            for frame in self.footage.frames():
                if stop.is_set():
                    return
                pacer.wait(stop)
                yield self._item(frame.image, frame.truth)
            if not self.loop:
                with self.health.lock:
                    self.health.finished = True
                return
