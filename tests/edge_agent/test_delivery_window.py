"""The delivery window: what to publish when, clocked by the test (no broker)."""

from __future__ import annotations

import pytest

from edge_agent.delivery import DeliveryWindow, WindowLimits

pytestmark = pytest.mark.unit


def _window(**limits: float) -> DeliveryWindow:
    values: dict[str, float] = {"max_inflight": 10, "max_unconfirmed": 20, "rate_per_s": 100.0,
                                "burst_s": 0.1, "receipt_timeout_s": 30.0,
                                "retry_first_s": 1.0, "retry_max_s": 8.0, **limits}
    return DeliveryWindow(WindowLimits(**values))  # type: ignore[arg-type]


def _publish(window: DeliveryWindow, seqs: tuple[int, ...], now: float) -> None:
    for seq in seqs:
        window.published(seq, f"e{seq}", 100, mid=1000 + seq, now=now)


def test_the_drain_is_paced_from_its_first_second() -> None:
    window = _window(rate_per_s=20.0, max_inflight=1000, max_unconfirmed=5000)
    window.backlog = True
    sent = 0
    now = 0.0
    while now < 1.0:
        plan = window.plan(now, connected=True)
        for _ in range(plan.backlog):
            sent += 1
            window.published(sent, f"e{sent}", 1, mid=sent, now=now)
        now += 0.01
    assert 18 <= sent <= 23  # 20/s, the bucket holds 2: never a burst of hundreds


def _drained(window: DeliveryWindow, start: float, end: float, sent: int) -> int:
    """Publish whatever the window allows every 10 ms from ``start`` to ``end``."""
    now = start
    while now < end:
        for _ in range(window.plan(now, connected=True).backlog):
            sent += 1
            window.published(sent, f"e{sent}", 1, mid=sent, now=now)
            window.puback(sent, ok=True, now=now)
            window.confirm([f"e{sent}"])
        now += 0.01
    return sent


def test_busy_answers_slow_the_drain_for_the_time_the_hub_asks_then_it_recovers() -> None:
    window = _window(rate_per_s=40.0, max_inflight=1000, max_unconfirmed=5000,
                     min_rate_per_s=5.0, recovery_s=1.0)
    window.backlog = True
    sent = _drained(window, 0.0, 1.0, 0)
    assert 38 <= sent <= 45
    window.busy(1.0, retry_after_s=2.0)
    assert window.rate_per_s == 20.0
    window.busy(1.0, retry_after_s=2.0)
    window.busy(1.0, retry_after_s=2.0)
    assert window.rate_per_s == 5.0  # halved per answer, never below the floor
    before = sent
    sent = _drained(window, 1.0, 3.0, sent)
    assert 8 <= sent - before <= 12  # 5/s for the two seconds the hub asked
    sent = _drained(window, 3.0, 6.5, sent)
    assert window.rate_per_s == 40.0  # doubled every second from 5/s: back in full after 3 s
    before = sent
    sent = _drained(window, 6.5, 7.5, sent)
    assert 38 <= sent - before <= 42


def test_live_events_go_before_the_backlog() -> None:
    window = _window()
    window.backlog = True
    window.stored([101, 102])
    plan = window.plan(1.0, connected=True)
    assert plan.live == (101, 102) and plan.backlog == 8


def test_a_failed_puback_keeps_the_event_and_backs_off() -> None:
    window = _window()
    window.stored([1])
    plan = window.plan(1.0, connected=True)
    _publish(window, plan.live, 1.0)
    assert window.puback(1001, ok=False, now=1.0) == 1
    assert window.plan(1.5, connected=True).retry == ()
    assert window.plan(2.0, connected=True).retry == (1,)  # after retry_first_s
    _publish(window, (1,), 2.0)
    window.puback(1001, ok=False, now=2.0)
    assert window.plan(3.5, connected=True).retry == ()
    assert window.plan(4.0, connected=True).retry == (1,)  # the backoff doubled


def test_no_receipt_in_time_means_publish_again_and_a_receipt_ends_it() -> None:
    window = _window()
    window.stored([1, 2])
    _publish(window, window.plan(0.0, connected=True).live, 0.0)
    window.puback(1001, ok=True, now=0.1)
    window.puback(1002, ok=True, now=0.1)
    assert window.confirm(["e2", "e-unknown"]) == ([(2, 100)], ["e-unknown"])
    assert window.plan(29.0, connected=True).retry == ()
    assert window.plan(31.0, connected=True).retry == (1,)
    _publish(window, (1,), 31.0)
    assert window.confirm(["e1"]) == ([(1, 100)], [])
    assert window.idle and window.unconfirmed == 0
    assert window.puback(1001, ok=True, now=31.5) is None  # a stale PUBACK changes nothing


def test_unconfirmed_events_are_bounded() -> None:
    window = _window(max_inflight=10, max_unconfirmed=12, rate_per_s=1e6)
    window.stored(list(range(1, 31)))
    first = window.plan(0.0, connected=True)
    assert len(first.live) == 10  # the in-flight bound
    _publish(window, first.live, 0.0)
    for seq in first.live:
        window.puback(1000 + seq, ok=True, now=0.0)
    second = window.plan(0.1, connected=True)
    assert len(second.live) == 2  # the unconfirmed bound: the hub has not answered
    assert window.plan(0.2, connected=False).empty


def test_the_backlog_skips_what_is_already_out() -> None:
    window = _window(rate_per_s=1e6)
    window.stored([5, 6])
    _publish(window, window.plan(0.0, connected=True).live, 0.0)
    window.backlog = True
    assert [seq for seq in (4, 5, 6, 7) if not window.skip_in_backlog(seq)] == [4, 7]
    window.backlog_read(asked=8, got=4)
    assert not window.backlog and window.cursor == 7


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_inflight"):
        WindowLimits(max_inflight=10, max_unconfirmed=5)
    with pytest.raises(ValueError, match="retry_first_s"):
        WindowLimits(retry_first_s=10.0, retry_max_s=1.0)
