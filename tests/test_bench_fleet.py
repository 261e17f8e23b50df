"""The fleet benchmarks' pure parts: escalations, overload figures, a return's reconnects
and figures."""

from __future__ import annotations

import os
import random
import time

import cv2
import numpy as np
import pytest

from bench.cpu import CpuMeter, process_cpu_s
from bench.fleet import (
    Bare,
    Sent,
    StepResult,
    cpu_per_event,
    escalation_template,
    make_event,
    overload_figures,
    with_comment,
)
from bench.fleet_return import outage_figures, reconnect_offsets
from edge_agent.backoff import Backoff
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


def test_each_escalation_has_images_of_its_own_with_the_same_pixels() -> None:
    """A camera never sends the same bytes twice: with one photograph's bytes in every
    event, the hub's content-addressed store kept one image for the whole run."""
    template, new_id = escalation_template(), EventIdFactory()
    first, second = (decode(make_event(template, new_id(), "cam-00042", 1764400000.25),
                            EventMessage) for _ in range(2))
    assert first.crop_jpeg and second.crop_jpeg and first.thumbnail_jpeg
    assert second.thumbnail_jpeg
    assert len({first.crop_jpeg, second.crop_jpeg, first.thumbnail_jpeg,
                second.thumbnail_jpeg}) == 4
    assert first.event_id.encode() in first.crop_jpeg  # the id, in a JPEG comment
    for one, other in ((first.crop_jpeg, second.crop_jpeg),
                       (first.thumbnail_jpeg, second.thumbnail_jpeg)):
        pixels = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
                  for b in (one, other)]
        assert pixels[0] is not None and pixels[0].size > 0
        assert np.array_equal(pixels[0], pixels[1])
    same = escalation_template(same_images=True)
    assert len({decode(make_event(same, new_id(), "cam-00042", 1764400000.25),
                       EventMessage).crop_jpeg for _ in range(2)}) == 1
    with pytest.raises(ValueError, match="not a JPEG"):
        with_comment(b"GIF89a", b"x")


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


def test_reconnects_after_a_long_outage_spread_over_the_longest_jittered_wait() -> None:
    offsets = reconnect_offsets(200, Backoff(0.5, 30.0), random.Random(7))
    assert offsets == reconnect_offsets(200, Backoff(0.5, 30.0), random.Random(7))
    assert all(0 <= t <= 30.0 for t in offsets)
    assert len({round(t, 3) for t in offsets}) > 190  # not in lockstep
    assert min(offsets) < 5 and max(offsets) > 20


def test_outage_figures_count_backlog_and_live_answers_and_duplicates() -> None:
    sent = {
        "b1": Sent(0, 0.0, [("busy/1", 3.0)]), "b2": Sent(1, 0.0, [("verdict/1", 5.0)]),
        "l1": Sent(0, 1.0, [("verdict/1", 1.5), ("verdict/1", 1.6)]),
        "l2": Sent(1, 1.0, [("busy/1", 2.0)]), "l3": Sent(1, 1.0, [("verdict/1", 20.0)]),
        "l4": Sent(0, 1.0, []),
    }
    figures = outage_figures(sent, {"b1", "b2"}, {"l1", "l2", "l3", "l4"},
                             stored=set(sent) - {"l4"}, timeout_s=10.0)
    assert (figures["backlog_answered"], figures["live_answered"]) == (2, 3)
    assert figures["live_on_time"] == 0.25 and figures["live_answered_in_time"] == 0.5
    assert figures["busy_share"] == pytest.approx(2 / 5, abs=1e-4)
    assert figures["backlog_busy_share"] == 0.5
    assert (figures["lost"], figures["unanswered"], figures["duplicates"]) == (1, 1, 1)


def test_a_process_cpu_time_counts_the_cpu_it_burned() -> None:
    before, started = process_cpu_s(os.getpid()), time.process_time()
    while time.process_time() - started < 0.2:  # CPU burned, however long that takes
        pass
    assert process_cpu_s(os.getpid()) - before >= 0.15  # clock ticks: 10 ms apart


def test_cpu_per_event_takes_the_saturation_step_and_the_mean_of_the_bare_runs() -> None:
    assert CpuMeter.per_event({"hub": 1.0, "broker": 2.0}, {"hub": 1.5, "broker": 2.01},
                              100) == {"hub": 5.0, "broker": 0.1}
    steps = [StepResult(80.0, 800, 0.1, 0.0, 1.0, 0.0, {"hub": 14.0, "broker": 0.3,
                                                        "devices": 1.0}),
             StepResult(160.0, 1600, 3.0, 0.3, 0.9, 150.0, {"hub": 12.0}),
             StepResult(120.0, 1200, 0.5, 0.0, 1.0, 0.0, {"hub": 15.0, "broker": 0.2,
                                                          "devices": 0.9})]
    figures = cpu_per_event([Bare(150.0, 11.0), Bare(130.0, 12.0)], steps, 120.0)
    assert figures == {"bare": 11.5, "hub": 15.0, "broker": 0.2, "devices": 0.9}
    assert cpu_per_event([], steps[:1], 80.0)["bare"] is None
