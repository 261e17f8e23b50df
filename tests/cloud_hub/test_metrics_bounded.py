"""``/metrics`` stays the same size for any fleet: per-device series only for the devices
with the largest backlogs, every device in the fleet's totals."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from cloud_hub.metrics import DeviceBacklog, HubMetrics, top_backlogs

pytestmark = pytest.mark.unit


def _page(metrics: HubMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def _device_lines(page: str) -> list[str]:
    return [line for line in page.splitlines() if 'device="' in line]


def test_a_thousand_devices_give_the_top_few_series_and_every_one_a_share_of_the_totals(
) -> None:
    metrics = HubMetrics(top_devices=5)
    for index in range(1000):
        metrics.record_telemetry(f"cam-{index:04d}", 100.0 + index,
                                 {"outbox_events": float(index % 50), "outbox_bytes": 10.0})
        metrics.ingested.inc()
    page = _page(metrics)
    lines = _device_lines(page)
    assert len(lines) == 15  # backlog events, bytes and telemetry time for 5 devices
    # The five largest backlogs are 49 events (devices 49, 99, ..., 999): the first five
    # by id among them.
    for device in ("cam-0049", "cam-0099", "cam-0149", "cam-0199", "cam-0249"):
        assert f'hub_device_outbox_events{{device="{device}"}} 49.0' in page
    assert "hub_fleet_reporting_devices 1000.0" in page
    assert f"hub_fleet_outbox_events {sum(i % 50 for i in range(1000))}.0" in page
    assert "hub_fleet_outbox_bytes 10000.0" in page
    assert "hub_events_ingested_total 1000.0" in page


def test_the_page_does_not_grow_with_the_fleet() -> None:
    small, large = HubMetrics(top_devices=10), HubMetrics(top_devices=10)
    for metrics, fleet in ((small, 20), (large, 5000)):
        for index in range(fleet):
            metrics.record_telemetry(f"d-{index:05d}", 1.0, {"outbox_events": 1.0})
    assert len(_device_lines(_page(small))) == len(_device_lines(_page(large))) == 30


def test_no_device_series_when_turned_off_and_a_missing_value_is_kept() -> None:
    metrics = HubMetrics(top_devices=0)
    metrics.record_telemetry("cam", 1.0, {"outbox_events": 3.0, "outbox_bytes": 7.0})
    metrics.record_telemetry("cam", 2.0, {"outbox_events": 1.0})
    page = _page(metrics)
    assert _device_lines(page) == []
    assert "hub_fleet_outbox_bytes 7.0" in page and "hub_fleet_outbox_events 1.0" in page


def test_ties_are_broken_by_bytes_then_id() -> None:
    backlogs = {"b": DeviceBacklog(0, 2, 5), "a": DeviceBacklog(0, 2, 5),
                "c": DeviceBacklog(0, 2, 9), "d": DeviceBacklog(0, 1, 99)}
    assert [name for name, _ in top_backlogs(backlogs, 3)] == ["c", "a", "b"]
