"""``bench cascade`` on any clip: the truth format, hostile files refused, and a written
clip read back frame for frame with its truth and segments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cascade import load_truth, video_frames, write_clip
from edge_agent.footage import SampleFootage

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("document", [
    b"not json",
    json.dumps({"fps": 10, "width": 64, "height": 64, "frames": [], "extra": 1}).encode(),
    json.dumps({"fps": 0, "width": 64, "height": 64, "frames": []}).encode(),
    json.dumps({"fps": 10, "width": 64, "height": 64,
                "frames": [{"frame": -1, "objects": []}]}).encode(),
    json.dumps({"fps": 10, "width": 64, "height": 64,
                "frames": [{"frame": 0, "objects": [{"label": "face", "box": [1, 2]}]}]}
               ).encode(),
    b'{"fps": NaN, "width": 64, "height": 64, "frames": []}',
])
def test_a_bad_truth_file_is_refused_naming_it(tmp_path: Path, document: bytes) -> None:
    path = tmp_path / "truth.json"
    path.write_bytes(document)
    with pytest.raises(SystemExit, match="--truth"):
        load_truth(path)


def test_a_written_clip_reads_back_with_its_truth_and_segments(tmp_path: Path) -> None:
    footage = SampleFootage(width=320, height=180, static_frames=2, hard=True,
                            background="coffee")
    write_clip(footage, tmp_path / "clip")
    truth = load_truth(tmp_path / "clip.json")
    assert (truth.width, truth.height) == (320, 180)
    expected = list(footage.frames())
    frames = list(video_frames(tmp_path / "clip.avi", truth))
    assert len(frames) == len(expected) == len(footage)
    assert [f.has_face for f in frames] == [f.has_face for f in expected]
    assert [f.segment for f in frames] == [f.segment for f in expected]
    assert {"two-faces", "low-light", "small-blurred", "occlusion", "shake"} <= {
        f.segment for f in frames}
    two = [f for f in truth.frames if f.segment == "two-faces"
           and sum(o.label == "face" for o in f.objects) == 2]
    assert two
