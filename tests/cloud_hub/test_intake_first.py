"""Judging gives way to intake: the judge threads wait while intake is behind arrivals."""

from __future__ import annotations

import threading

import pytest

from cloud_hub.ingest import IntakeFirst
from cloud_hub.metrics import HubMetrics
from tests.support.waiting import wait_until

pytestmark = pytest.mark.unit


def test_judging_waits_while_intake_is_behind_and_goes_on_once_it_has_caught_up() -> None:
    metrics = HubMetrics()
    intake_first = IntakeFirst(metrics, behind_s=1.0)
    intake_first.behind(0.9)
    assert not intake_first.waiting()
    intake_first.behind(1.5)  # took up a message that arrived 1.5 s ago
    assert intake_first.waiting()
    went = threading.Event()

    def judge() -> None:
        intake_first.wait_turn()
        went.set()

    thread = threading.Thread(target=judge, name="judge-test", daemon=True)
    thread.start()
    assert wait_until(lambda: metrics.registry.get_sample_value(
        "hub_judging_yielded_total") == 1, timeout_s=10)
    intake_first.behind(0.8)  # better, but not half as far behind
    assert intake_first.waiting() and not went.is_set()
    intake_first.behind(0.5)
    assert went.wait(10) and not intake_first.waiting()
    thread.join(10)


def test_stopping_lets_every_waiting_judge_thread_go() -> None:
    intake_first = IntakeFirst(HubMetrics(), behind_s=1.0)
    intake_first.behind(5.0)
    intake_first.release()
    intake_first.wait_turn()  # returns at once
    assert not intake_first.waiting()
