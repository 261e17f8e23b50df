"""Sample footage: deterministic, real photographs, truthful boxes."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent import SampleDataError, SampleFootage

pytestmark = pytest.mark.unit


def test_footage_is_deterministic_with_truth() -> None:
    first = list(SampleFootage(width=320, height=180, static_frames=4).frames())
    second = list(SampleFootage(width=320, height=180, static_frames=4).frames())
    assert len(first) == len(SampleFootage(width=320, height=180, static_frames=4))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, second, strict=True))
    assert first[0].image.shape == (180, 320, 3) and first[0].truth == ()
    kinds = {obj.kind for frame in first for obj in frame.truth}
    assert kinds == {"face", "cat"}
    for frame in first:
        for obj in frame.truth:
            x1, y1, x2, y2 = obj.box
            assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 180
            assert 0 < obj.visible <= 1


def test_static_stretches_differ_only_by_noise_and_light() -> None:
    frames = list(SampleFootage(width=320, height=180, static_frames=4).frames())
    a, b = frames[0].image.astype(int), frames[1].image.astype(int)
    assert 0 < np.abs(a - b).mean() < 5


def test_too_small_is_refused() -> None:
    with pytest.raises(SampleDataError, match="at least 160x120"):
        SampleFootage(width=100, height=100)
