"""Warnings on a rollout that cannot progress (issue 12: a rollout to a group whose
devices have updates off stayed "running" forever with no warning). Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from cloud_hub.distribution import DeviceReadiness, device_readiness, rollout_warnings
from sync.rollout import Rollout, on_report, pause, start

pytestmark = pytest.mark.unit

NOW = 1_000_000.0
HOUR = 3600.0
DEVICES = [f"cam-{i}" for i in range(4)]


def _ready(device: str, **changes: Any) -> DeviceReadiness:
    return replace(DeviceReadiness(device, True, NOW - 5, True), **changes)


def _rollout(canary_percent: float = 50) -> Rollout:
    return start(rollout_id="r1", model="m", version="1.1.0", group="lobby", devices=DEVICES,
                 canary_percent=canary_percent)


def _warn(rollout: Rollout, group: Sequence[DeviceReadiness]) -> list[str]:
    return rollout_warnings(rollout, group, now=NOW, offline_after_s=HOUR)


def test_a_healthy_group_has_no_warnings() -> None:
    assert _warn(_rollout(), [_ready(d) for d in DEVICES]) == []
    # Offline for a little while, or updates not reported by an older agent: no warning.
    group = [_ready("cam-0", online=False, last_seen=NOW - 60),
             _ready("cam-1", updates_enabled=None), *[_ready(d) for d in DEVICES[2:]]]
    assert _warn(_rollout(), group) == []


def test_updates_off_in_the_group_is_a_warning_naming_the_devices() -> None:
    group = [_ready(d, updates_enabled=d != "cam-2") for d in DEVICES]
    [warning] = _warn(_rollout(), group)
    assert "updates are turned off on 1 device(s) (cam-2)" in warning
    assert "updates.enabled" in warning


def test_devices_offline_for_long_or_never_seen_are_a_warning() -> None:
    group = [_ready("cam-0", online=False, last_seen=NOW - 2 * HOUR),
             _ready("cam-1", online=False, last_seen=None),
             *[_ready(d) for d in DEVICES[2:]]]
    [warning] = _warn(pause(_rollout()), group)
    assert warning.startswith("2 device(s) (cam-0, cam-1) offline for over 1 h")


def test_an_empty_group_is_a_warning() -> None:
    [warning] = _warn(_rollout(), [])
    assert warning == "group lobby has no devices: nothing can install m 1.1.0"


def test_devices_that_reported_or_final_rollouts_raise_no_warning() -> None:
    rollout = _rollout(canary_percent=100)
    off = [_ready(d, updates_enabled=False) for d in DEVICES]
    assert len(_warn(rollout, off)) == 1
    for device in DEVICES:
        rollout = on_report(rollout, device, "committed")
    assert rollout.status == "completed" and _warn(rollout, off) == []


def test_a_device_removed_from_the_group_is_a_warning() -> None:
    [warning] = _warn(_rollout(), [_ready(d) for d in DEVICES[1:]])
    assert "1 device(s) (cam-0) left group lobby" in warning


def test_readiness_from_a_stored_device() -> None:
    assert device_readiness({"id": "cam-0", "online": 1, "last_seen": 5,
                             "updates_enabled": None}) == DeviceReadiness("cam-0", True, 5.0,
                                                                          None)
