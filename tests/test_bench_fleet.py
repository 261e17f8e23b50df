"""The fleet benchmark's pure parts: its escalations and its overload figures."""

from __future__ import annotations

import pytest

from bench.fleet import Sent, escalation_template, make_event, overload_figures
from sync import EventIdFactory, EventMessage, decode, is_framed_event

pytestmark = pytest.mark.unit


def test_each_escalation_is_a_valid_event_with_its_own_ids_and_time() -> None:
    template = escalation_template()
    event_id = EventIdFactory()()
    event = decode(make_event(template, event_id, "cam-00042", 1764400000.25), EventMessage)
    assert is_framed_event(make_event(template, event_id, "cam-00042", 1764400000.25))
    assert (event.event_id, event.device_id, event.captured_at) == (
        event_id, "cam-00042", 1764400000.25)
    assert event.crop_jpeg and event.thumbnail_jpeg and event.verdict_timeout_s == 10.0


def test_overload_figures_separate_the_flooding_device_from_the_others() -> None:
    records = [
        Sent(0, 0.0, [("busy/1", 0.01)]), Sent(0, 0.0, [("verdict/1", 2.0)]),
        Sent(1, 0.0, [("verdict/1", 0.5)]), Sent(1, 0.0, [("verdict/1", 0.7)]),
        Sent(2, 0.0, [("busy/1", 0.1)]), Sent(2, 0.0, []),
    ]
    figures = overload_figures(records)
    assert figures["shed_share"] == pytest.approx(2 / 6, abs=1e-4)
    assert figures["flood_shed_share"] == 0.5 and figures["others_shed_share"] == 0.25
    assert figures["worst_other_device_p50_s"] == 0.6  # device 1's median
    assert figures["answered_within_timeout"] == pytest.approx(5 / 6, abs=1e-4)
