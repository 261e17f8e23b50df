"""The dashboard's pure pieces: input health, filters, times, boxes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cloud_hub.api.pages import (
    MAX_TRACK_BOXES,
    EventFilter,
    EventView,
    event_figure,
    fleet_table,
    input_health,
    parse_utc_input,
    timeline,
)
from cloud_hub.api.routes.dashboard import _filters, _safe_next
from cloud_hub.store import DeviceHealth, EventTotals, JournalRecord, TrackKey
from sync import InputHealth, SightingPayload

pytestmark = pytest.mark.unit


def _row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": "e1", "device_id": "cam-1", "source": "door", "reason": "uncertain",
        "captured_at": 10.0, "received_at": 11.0, "outcome": None, "edge_model": "m",
        "edge_version": "1", "hub_model": None, "hub_version": None,
        "edge_detections": [{"box": [10, 20, 30, 40], "score": 0.5, "label": "face"}],
        "hub_detections": None, "decided_at": None, "inference_ms": None,
        "frame_size": (640, 480), "has_crop": False, "has_thumbnail": True}
    row.update(changes)
    return row


def test_input_health_groups_measures_by_source() -> None:
    markup = input_health((("outbox_events", 3.0), ("healthy.door", 1.0),
                           ("brightness.door", 0.25), ("healthy.yard", 0.0),
                           ("frames.yard", 12.0)))
    door, yard = markup.split("</div>")[:2]
    assert "data-source='door'" in door and "ok" in door and "brightness 0.25" in door
    assert "data-source='yard'" in yard and "failing" in yard and "frames 12" in yard
    assert "outbox" not in markup
    assert input_health((("outbox_events", 3.0),)) == "-"
    # The device's own verdict on a camera comes first; its numbers fill in what the
    # telemetry's values lack.
    dark = InputHealth(brightness=12.0, contrast=3.0, sharpness=0.5, frozen_frames=0,
                       problems=("dark", "low-contrast"))
    markup = input_health((("healthy.door", 1.0), ("brightness.door", 12.0)),
                          (("door", dark), ("yard", InputHealth(
                              brightness=120.0, contrast=50.0, sharpness=2.0,
                              frozen_frames=40, problems=("frozen",)))))
    door, yard = markup.split("</div>")[:2]
    assert "<span class='bad problem'>dark</span>" in door and ">ok<" not in door
    assert "brightness 12," in door and "contrast 3," in door
    assert "<span class='bad problem'>frozen</span>" in yard and "frozen_frames 40" in yard


def test_boxes_are_drawn_in_the_frames_coordinates() -> None:
    figure = event_figure(EventView.from_row(_row()))
    assert "viewBox='0 0 640 480'" in figure
    assert "<rect class='box edge' x='10.0' y='20.0' width='20.0' height='20.0'>" in figure
    # Without the frame's size, the page's script sizes the overlay to the image.
    assert "data-fit='image'" in event_figure(EventView.from_row(
        _row(frame_size=None)))
    assert "rect" not in event_figure(EventView.from_row(
        _row(has_thumbnail=False, has_crop=True)))
    # The tracked object's sightings from its journal, sampled on a long track.
    steps = [_record(frames=range(i * 100, i * 100 + 100)) for i in range(3)]
    figure = event_figure(EventView.from_row(_row()), steps)
    assert figure.count("class='box track'") == MAX_TRACK_BOXES
    assert "<title>track: frame 0 0.70</title>" in figure


def _record(frames: range) -> JournalRecord:
    return JournalRecord(
        id=1, track=TrackKey("cam-1", "door", 3, 0), step="update", at=1.0, received_at=1.0,
        last_frame=frames[-1], label="face", action="local", reason="uncertain",
        positive=True, sightings=tuple(SightingPayload(frame=f, box=(1, 2, 3, 4), score=0.7)
                                       for f in frames),
        event_id="e1", escalations=1, verdict=None, verdict_timing=None, fell_back=False,
        agrees=None)


def test_filters_round_trip_through_the_query() -> None:
    chosen = _filters("cam-1", "pending", "audit", "2026-11-29T21:30", "")
    assert chosen == EventFilter(device="cam-1", verdict="pending", reason="audit",
                                 since=parse_utc_input("2026-11-29T21:30"))
    assert chosen.since == datetime(2026, 11, 29, 21, 30, tzinfo=UTC).timestamp()
    assert chosen.query(cursor="abc") == (
        "device=cam-1&verdict=pending&reason=audit&since=2026-11-29T21%3A30&cursor=abc")
    for bad, message in ((("x", "maybe", None, None, None), "verdict must be"),
                         ((None, None, "why", None, None), "reason must be"),
                         ((None, None, None, "yesterday", None), "a time must look like")):
        with pytest.raises(ValueError, match=message):
            _filters(*bad)


def test_sign_in_goes_on_only_to_a_dashboard_page() -> None:
    assert _safe_next("/dashboard/events?device=a") == "/dashboard/events?device=a"
    for elsewhere in ("https://evil.example/", "//evil.example/dashboard", "/v1/devices"):
        assert _safe_next(elsewhere) == "/dashboard"


def test_a_revoked_device_shows_as_revoked() -> None:
    device = DeviceHealth(id="cam-9", group="lobby", online=False, last_seen=None,
                          agent_version="", models=(), backend="", telemetry=(),
                          telemetry_at=None, last_error=None, revoked=True)
    row = fleet_table([device], EventTotals((), (), None))
    assert "<td class='revoked'>revoked</td>" in row and "never" in row


def test_the_timeline_words_each_journal_step() -> None:
    event = EventView.from_row(_row())
    one = _record(frames=range(10, 11))
    markup = timeline(event, [one, _record(frames=range(11, 13))], truncated=True)
    assert "frame 10, 1 sighting," in markup and "frames 11-12, 2 sightings" in markup
    assert markup.count("this-event") == 2 and "more steps than are shown" in markup
    assert "No journal step names this event" in timeline(event, [], truncated=False)
