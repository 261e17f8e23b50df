"""Folder and stream sources check an image's declared size before decoding it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.sources import FolderSource, FrameItem, Source, VideoSource
from tests.bombs import jpeg_bomb

pytestmark = pytest.mark.integration


def _run_until(source: Source, done: Callable[[list[FrameItem]], bool]) -> list[FrameItem]:
    """Run ``source`` in its own thread until ``done(frames)`` holds, the source ends,
    or 30 s pass (the condition is re-checked on each frame and every 50 ms)."""
    frames: list[FrameItem] = []
    stop = threading.Event()
    arrived = threading.Condition()

    def consume() -> None:
        for item in source.frames(stop):
            with arrived:
                frames.append(item)
                arrived.notify_all()
        with arrived:
            arrived.notify_all()

    def poke() -> None:  # refusals yield nothing: look again now and then
        while not stop.wait(0.05):
            with arrived:
                arrived.notify_all()

    thread = threading.Thread(target=consume, name="test-source", daemon=True)
    thread.start()
    threading.Thread(target=poke, name="test-poke", daemon=True).start()
    with arrived:
        arrived.wait_for(lambda: done(frames) or not thread.is_alive(), timeout=30)
    stop.set()
    thread.join(30)
    return frames


def test_a_folder_skips_a_bomb_and_an_unknown_format_counting_why(tmp_path: Path) -> None:
    (tmp_path / "a-bomb.jpg").write_bytes(jpeg_bomb(30000, 30000))
    (tmp_path / "b-notes.png").write_text("not an image")
    ok, good = cv2.imencode(".png", np.zeros((48, 64, 3), np.uint8))
    assert ok
    (tmp_path / "z-good.png").write_bytes(good.tobytes())
    # A small header in front of more bytes than any image within the budget needs.
    (tmp_path / "c-huge.png").write_bytes(good.tobytes() + bytes(6 * 1024 * 1024))
    source = FolderSource("inbox", tmp_path, poll_s=0.05, max_pixels=1_000_000)
    frames = _run_until(source, lambda got: len(got) >= 1)
    # Files are read in name order: both refusals were counted before the good frame came.
    assert [f.image.shape for f in frames] == [(48, 64, 3)]
    assert source.health.refused == {"too-large": 2, "unknown-format": 1}
    assert source.health.corrupt == 3


def test_a_stream_declaring_frames_over_the_budget_is_refused(tmp_path: Path) -> None:
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), 5, (64, 48))
    for _ in range(3):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    refused = VideoSource("cam", str(video), max_pixels=64 * 48 - 1)
    frames = _run_until(refused, lambda _: bool(refused.health.refused))
    assert frames == [] and refused.health.refused == {"too-large": 1}
    assert "declares 64x48 frames" in refused.health.last_error
    allowed = VideoSource("cam", str(video), max_pixels=64 * 48)
    assert len(_run_until(allowed, lambda got: len(got) >= 3)) == 3
