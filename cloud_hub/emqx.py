"""EMQX's authorization, written from the same rules as Mosquitto's.

The rules are :mod:`cloud_hub.provisioning`'s roles (:func:`~cloud_hub.provisioning.hub_role`,
:func:`~cloud_hub.provisioning.device_role`, :func:`~cloud_hub.provisioning.group_role`);
this module only translates them, pure:

- :func:`acl_file`: EMQX's ``acl.conf`` (the file authorizer): the hub's rules for its
  username, and every device's role, once, with ``${clientid}``
  standing for the device id (EMQX renders it per client; the ``cinfo`` authenticator
  pins a device's client id to its username, as the Mosquitto plugin does).
- :func:`device_group_rules`: its group's role (its group's model announcements), for
  EMQX's built-in database (``POST
  /api/v5/authorization/sources/built_in_database/rules/users``), added when the device
  is provisioned.

Translation: ``publishClientSend`` becomes ``publish``; ``subscribeLiteral`` becomes
``subscribe`` to exactly that filter (``{eq, ...}`` where it has a wildcard; a filter
without one matches only itself anyway), without its ``$share/<group>/`` part, since EMQX
authorizes a shared subscription against the topic alone (so on EMQX the share group is
not part of the rule); ``subscribePattern`` becomes a pattern. EMQX does not authorize
delivery, so ``publishClientReceive`` has no counterpart: what a client may subscribe to
already bounds what it receives. Nothing else is allowed (``authorization.no_match =
deny`` in ``emqx.conf``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Literal

from cloud_hub.provisioning import Acl, device_role, group_role, hub_role
from sync import TopicLayout

CLIENT_ID = "${clientid}"
# A stand-in that is a valid name: replaced by the placeholder once the role is built.
_ANY_DEVICE = "emqx-any-device"

EmqxAction = Literal["publish", "subscribe"]


def _unshared(topic: str) -> str:
    """``$share/<group>/<topic>`` without its share prefix."""
    if topic.startswith("$share/"):
        return topic.split("/", 2)[2]
    return topic


def _emqx_rule(acl: Acl) -> tuple[EmqxAction, str, bool] | None:
    """(action, topic, exact) for one Mosquitto rule, or ``None`` where EMQX has none."""
    if not acl.allow:
        raise ValueError(f"a deny rule ({acl.kind} {acl.topic}) has no translation here")
    if acl.kind == "publishClientSend":
        return "publish", acl.topic, False
    if acl.kind == "subscribeLiteral":
        topic = _unshared(acl.topic)
        return "subscribe", topic, "+" in topic or "#" in topic
    if acl.kind == "subscribePattern":
        return "subscribe", acl.topic, False
    return None  # delivery and unsubscribe: not authorized by EMQX


def _erlang_string(text: str) -> str:
    return json.dumps(text)  # the topics' characters need no escape beyond JSON's


def _file_rules(who: str, acls: Iterable[Acl]) -> list[str]:
    by_action: dict[EmqxAction, list[str]] = {"publish": [], "subscribe": []}
    for acl in acls:
        rule = _emqx_rule(acl)
        if rule is None:
            continue
        action, topic, exact = rule
        term = f"{{eq, {_erlang_string(topic)}}}" if exact else _erlang_string(topic)
        if term not in by_action[action]:
            by_action[action].append(term)
    return [f"{{allow, {who}, {action}, [{', '.join(terms)}]}}."
            for action, terms in by_action.items() if terms]


def acl_file(layout: TopicLayout, *, share_group: str, hub_username: str) -> str:
    """EMQX's ``acl.conf``: the hub's rules, then every device's own-topic rules.

    Args:
        layout: The topic layout (``CLOUD_HUB_MQTT_PREFIX``).
        share_group: The hub's share group (``CLOUD_HUB_SHARE_GROUP``).
        hub_username: The hub's broker username (``CLOUD_HUB_MQTT_USERNAME``).
    """
    own = [Acl(acl.kind, acl.topic.replace(f"/{_ANY_DEVICE}/", f"/{CLIENT_ID}/"), acl.allow)
           for acl in device_role(layout, _ANY_DEVICE).acls]
    lines = [
        "%% Written by `cloud-hub broker emqx-acl` from the hub's broker rules",
        "%% (cloud_hub/provisioning.py); regenerate it rather than editing it.",
        "%% Each device's group rule is in the built-in database (docs/deployment.md).",
        "%% authorization.no_match = deny: anything not allowed here is refused.",
        f"%% The hub (username {hub_username}, any of its replicas' client ids).",
        *_file_rules(f"{{username, {_erlang_string(hub_username)}}}",
                     hub_role(layout, share_group).acls),
        "%% Every other client: its own topics, ${clientid} being its device id.",
        *_file_rules("all", own),
    ]
    return "\n".join(lines) + "\n"


def device_group_rules(layout: TopicLayout, device_id: str, group: str) -> dict[str, object]:
    """One device's group rule, as EMQX's built-in database takes it (by username)."""
    rules = []
    for acl in group_role(layout, group).acls:
        rule = _emqx_rule(acl)
        if rule is not None:
            action, topic, _ = rule
            rules.append({"permission": "allow", "action": action, "topic": topic})
    return {"username": device_id, "rules": rules}
