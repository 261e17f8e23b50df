"""A fleet returning from an outage (``python -m bench fleet-return``), small: every
backlog and live event stored once and answered. Counts only, never times."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fleet_return import ReturnPlan, run_return

pytestmark = pytest.mark.e2e


def test_twenty_devices_drain_their_backlogs_and_live_events_are_all_answered(
        tmp_path: Path) -> None:
    report = run_return(ReturnPlan(devices=20, backlog=10, live_eps=5.0, min_live_s=3.0,
                                   max_s=120.0, reconnect_max_s=2.0), tmp_path)
    assert report["backlog_events"] == 200 and report["backlog_answered"] == 200
    assert report["live_events"] + report["live_held_offline"] > 0
    assert report["live_answered"] == report["live_events"]
    assert report["live_held_answered"] == report["live_held_offline"]
    assert report["lost"] == 0 and report["unanswered"] == 0
    assert report["clear_s"] is not None
    assert report["hub_disconnects"] == 0
