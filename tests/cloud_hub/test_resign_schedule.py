"""When the hub re-signs its update metadata: a pure decision on expiry dates and keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cloud_hub.updates import EXPIRY, ROLES, RoleExpiry, roles_to_resign

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def _expiries(left: dict[str, timedelta], *, targets_online: bool = True) -> list[RoleExpiry]:
    return [RoleExpiry(role, 1, NOW + left.get(role, EXPIRY[role]),
                       role in ("snapshot", "timestamp") or (role == "targets"
                                                             and targets_online))
            for role in ROLES]


@pytest.mark.parametrize(("left", "targets_key", "expected"), [
    ({}, True, ()),
    ({"timestamp": timedelta(hours=12, seconds=1)}, True, ()),
    ({"timestamp": timedelta(hours=11)}, True, ("timestamp",)),
    ({"timestamp": -timedelta(days=3)}, True, ("timestamp",)),
    ({"snapshot": timedelta(days=3)}, True, ("snapshot", "timestamp")),
    ({"targets": timedelta(days=44)}, True, ("targets", "snapshot", "timestamp")),
    # With the targets key offline, the hub keeps what it can sign alive.
    ({"targets": timedelta(days=44)}, False, ()),
    ({"targets": -timedelta(days=1), "timestamp": timedelta(0)}, False, ("timestamp",)),
    # Root is re-signed only with the offline root keys (a rotation).
    ({"root": timedelta(days=1)}, True, ()),
])
def test_a_role_is_resigned_once_half_its_lifetime_is_gone(
    left: dict[str, timedelta], targets_key: bool, expected: tuple[str, ...],
) -> None:
    assert roles_to_resign(_expiries(left), NOW, targets_key=targets_key) == expected


def test_force_resigns_every_role_whose_key_is_at_hand() -> None:
    assert roles_to_resign(_expiries({}), NOW, targets_key=True, force=True) == (
        "targets", "snapshot", "timestamp")
    assert roles_to_resign(_expiries({}), NOW, targets_key=False, force=True) == (
        "snapshot", "timestamp")
