"""EMQX's authorization written from the hub's broker rules (cloud_hub/emqx.py)."""

from __future__ import annotations

import re

import pytest

from cloud_hub.emqx import acl_file, device_group_rules
from cloud_hub.provisioning import device_role, hub_role
from sync import TopicLayout

pytestmark = pytest.mark.unit

LAYOUT = TopicLayout("site")


def _rules(text: str) -> dict[tuple[str, str], list[str]]:
    """(who, action) -> topic terms of each ``{allow, Who, Action, [...]}.`` line."""
    rules: dict[tuple[str, str], list[str]] = {}
    for who, action, terms in re.findall(
            r'^\{allow, (all|\{username, "[^"]+"\}), (publish|subscribe), \[(.*)\]\}\.$',
            text, re.MULTILINE):
        rules[(who, action)] = re.findall(r'\{eq, "[^"]+"\}|"[^"]+"', terms)
    return rules


def test_the_hub_may_do_what_its_mosquitto_role_allows_and_no_more() -> None:
    rules = _rules(acl_file(LAYOUT, share_group="judges", hub_username="hub-user"))
    hub = '{username, "hub-user"}'
    assert set(rules) == {(hub, "publish"), (hub, "subscribe"), ("all", "publish"),
                          ("all", "subscribe")}
    assert rules[(hub, "subscribe")] == [
        '{eq, "site/v1/+/events"}', '{eq, "site/v1/+/updates"}',
        '{eq, "site/v1/+/journal"}', '{eq, "site/v1/+/status"}',
        '{eq, "site/v1/+/telemetry"}']
    sends = [a.topic for a in hub_role(LAYOUT, "judges").acls if a.kind == "publishClientSend"]
    assert rules[(hub, "publish")] == [f'"{topic}"' for topic in sends]


def test_every_device_gets_its_own_topics_through_its_client_id() -> None:
    rules = _rules(acl_file(LAYOUT, share_group="hub", hub_username="hub"))
    role = device_role(LAYOUT, "cam-7")
    own_sends = [a.topic.replace("/cam-7/", "/${clientid}/") for a in role.acls
                 if a.kind == "publishClientSend"]
    assert rules[("all", "publish")] == [f'"{topic}"' for topic in own_sends]
    assert rules[("all", "subscribe")] == ['"site/v1/${clientid}/verdicts"']
    assert "groups" not in acl_file(LAYOUT, share_group="hub", hub_username="hub").split(
        "%% Every other client")[1]


def test_a_device_group_rule_is_its_group_announcements_alone() -> None:
    assert device_group_rules(LAYOUT, "cam-7", "yard") == {
        "username": "cam-7",
        "rules": [{"permission": "allow", "action": "subscribe",
                   "topic": "site/v1/groups/yard/models"}]}
