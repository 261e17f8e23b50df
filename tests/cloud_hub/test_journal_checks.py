"""What the hub accepts of a device's decision journal, and how fast (pure checks)."""

from __future__ import annotations

from typing import Any

import pytest

from cloud_hub.journal import DeviceRate, check_step, never_escalated
from sync import EventIdFactory, SightingPayload, TrackEventMessage

pytestmark = pytest.mark.unit


def _step(**fields: Any) -> TrackEventMessage:
    values: dict[str, Any] = {
        "device_id": "cam-1", "step": "update", "source": "door", "track_id": 1, "at": 5.0,
        "first_frame": 10, "last_frame": 12, "label": "face", "action": "local",
        "reason": "confident", "positive": True,
        "sightings": (SightingPayload(frame=11, box=(1, 2, 3, 4), score=0.9),)}
    values.update(fields)
    return TrackEventMessage(**values)


def test_a_coherent_step_passes() -> None:
    assert check_step(_step()) is None
    assert check_step(_step(event_id=EventIdFactory()(), escalations=2,
                            verdict="rejected", verdict_timing="late")) is None


@pytest.mark.parametrize(("fields", "problem"), [
    ({"first_frame": 13}, "first_frame 13 is after last_frame 12"),
    ({"sightings": (SightingPayload(frame=99, box=(1, 2, 3, 4), score=0.9),)},
     "sighting frame 99 lies outside"),
    ({"event_id": "../../etc"}, "not a lower-case UUIDv7"),
    ({"step": "new", "escalations": 1}, "a new step cannot carry"),
    ({"verdict_timing": "late"}, "verdict_timing without a verdict"),
])
def test_an_incoherent_step_is_refused_naming_why(fields: dict[str, Any], problem: str) -> None:
    found = check_step(_step(**fields))
    assert found is not None and problem in found


def test_only_an_unescalated_end_forgets_its_track() -> None:
    assert never_escalated(_step(step="end"))
    assert not never_escalated(_step(step="end", escalations=1,
                                     event_id=EventIdFactory()()))
    assert not never_escalated(_step())


def test_each_device_has_its_own_rate() -> None:
    rate = DeviceRate(per_minute=60.0, burst=3)
    assert [rate.allow("cam-1", 100.0) for _ in range(4)] == [True, True, True, False]
    assert rate.allow("cam-2", 100.0)  # another device's budget is its own
    assert not rate.allow("cam-1", 100.5)
    assert rate.allow("cam-1", 101.0)  # one a second comes back
    assert not rate.allow("cam-1", 50.0)  # a clock that went back gives nothing
