"""Who may do what on the broker, and how the hub changes it while the broker runs.

The broker's authorization is Mosquitto's dynamic security plugin. Its rules are:

- **Nothing by default**: a client may not publish, receive or subscribe unless a role
  allows it (``defaultACLAccess``: publish and subscribe denied, receive denied).
- **A device** (client ``<id>``, role ``device-<id>``) may publish only its own
  ``events``, ``status``, ``telemetry``, ``updates`` and ``journal`` (its decision
  journal), and subscribe only to its own
  ``verdicts`` and its group's model announcements, each by its literal topic: no
  wildcard, no ``$share/...``, nothing else. Its client id is pinned to its username, so
  it cannot connect under another device's id (or the hub's) and take that session over.
- **The hub** (role ``hub``) subscribes to the fleet's events, update reports and
  decision journals through its shared subscription, and to statuses and telemetry, each
  by its literal filter; it publishes verdicts and announcements. Role
  ``broker-control`` lets it send commands to the plugin's
  ``$CONTROL/dynamic-security/v1`` topic, which is how it provisions,
  rotates and revokes devices while the broker runs: no file rewrite, no restart. The
  plugin saves its own state, and a deleted or re-passworded client is disconnected at
  once.

This module holds the rules as values (:class:`Role`, :class:`Acl`, :class:`Command`,
:func:`dynsec_document`), pure, and one adapter, :class:`BrokerControl`, that sends
commands over MQTT and waits for the plugin's answers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import ssl
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cloud_hub.errors import BrokerUnavailableError, ProvisioningError, SettingsError
from cloud_hub.mqtt import BrokerSettings
from sync import TopicError, TopicLayout, check_name

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
CONTROL_RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
HUB_ROLE = "hub"
CONTROL_ROLE = "broker-control"
OPEN_ROLE = "open-to-anonymous"
OPEN_GROUP = "anonymous"
PBKDF2_ITERATIONS = 101  # what mosquitto_ctrl writes; the plugin reads it per client
CONTROL_TIMEOUT_S = 10.0
DEFAULT_ACL_ACCESS: Mapping[str, bool] = {
    "publishClientSend": False, "publishClientReceive": False,
    "subscribe": False, "unsubscribe": True,
}

AclKind = Literal["publishClientSend", "publishClientReceive", "subscribeLiteral",
                  "subscribePattern", "unsubscribeLiteral", "unsubscribePattern"]


@dataclass(frozen=True, slots=True)
class Acl:
    """One rule of a role: ``kind`` on ``topic`` is allowed (or denied)."""

    kind: AclKind
    topic: str
    allow: bool = True

    def to_json(self) -> dict[str, object]:
        """The plugin's JSON form."""
        return {"acltype": self.kind, "topic": self.topic, "allow": self.allow}


@dataclass(frozen=True, slots=True)
class Role:
    """A named set of rules."""

    name: str
    acls: tuple[Acl, ...]

    def to_json(self) -> dict[str, object]:
        """The plugin's JSON form."""
        return {"rolename": self.name, "acls": [acl.to_json() for acl in self.acls]}


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    """MQTT credentials of one device; the password is shown once and not stored."""

    username: str
    password: str

    @property
    def fingerprint(self) -> str:
        """sha256 of the password, kept by the hub to recognise a rotation."""
        return hashlib.sha256(self.password.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Command:
    """One dynamic-security command.

    Attributes:
        name: The plugin's command (``createClient``, ``deleteRole`` ...).
        fields: Its arguments.
        tolerate_error: Whether a refusal is expected and harmless (deleting what may
            not exist, so that a rotation also repairs a broker that lost a device).
    """

    name: str
    fields: Mapping[str, object] = field(default_factory=dict)
    tolerate_error: bool = False

    def to_json(self, correlation: str) -> dict[str, object]:
        """The plugin's JSON form, tagged so that its answer can be found."""
        return {"command": self.name, **self.fields, "correlationData": correlation}


def device_role_name(device_id: str) -> str:
    """The role that holds one device's rules."""
    return f"device-{device_id}"


def device_role(layout: TopicLayout, device_id: str, group: str) -> Role:
    """What one device may do: its own topics out, its verdicts and group's models in."""
    sends = (layout.events(device_id), layout.status(device_id),
             layout.telemetry(device_id), layout.updates(device_id),
             layout.journal(device_id))
    receives = (layout.verdicts(device_id), layout.models(group))
    acls = [Acl("publishClientSend", topic) for topic in sends]
    for topic in receives:
        acls += [Acl("subscribeLiteral", topic), Acl("publishClientReceive", topic)]
    return Role(device_role_name(device_id), tuple(acls))


def hub_role(layout: TopicLayout, share_group: str) -> Role:
    """What the hub may do. Subscriptions are literal filters, so that the rule for the
    shared subscription names the hub's own share group and nothing broader."""
    subscriptions = (layout.shared(share_group, "events"),
                     layout.shared(share_group, "updates"),
                     layout.shared(share_group, "journal"),
                     layout.all_devices("status"), layout.all_devices("telemetry"))
    receives = tuple(layout.all_devices(kind)
                     for kind in ("events", "updates", "journal", "status", "telemetry"))
    sends = (layout.all_devices("verdicts"), f"{layout.root}/groups/+/models")
    return Role(HUB_ROLE, (
        *(Acl("subscribeLiteral", topic) for topic in subscriptions),
        *(Acl("publishClientReceive", topic) for topic in receives),
        *(Acl("publishClientSend", topic) for topic in sends),
    ))


def control_role() -> Role:
    """Commands to the dynamic security plugin and its answers."""
    topic = "$CONTROL/dynamic-security/#"
    return Role(CONTROL_ROLE, (Acl("publishClientSend", topic),
                               Acl("publishClientReceive", topic),
                               Acl("subscribePattern", topic)))


def open_role() -> Role:
    """Everything, for anonymous clients of a test or benchmark broker only."""
    acls: list[Acl] = []
    for topic in ("#", "$share/#"):
        acls += [Acl("publishClientSend", topic), Acl("publishClientReceive", topic),
                 Acl("subscribePattern", topic)]
    return Role(OPEN_ROLE, tuple(acls))


def is_reserved(device_id: str, *, hub_username: str, hub_client_ids: Sequence[str] = ()) -> bool:
    """Whether ``device_id`` is one of the hub's own names: its username, a client id it
    uses, ``hub`` or anything starting with ``hub-`` (the hub's default client ids), or
    ``groups`` (the announcements' branch of the topic tree)."""
    return (device_id in {hub_username, "hub", "groups", *hub_client_ids}
            or device_id.startswith("hub-"))


def check_device_id(device_id: str, *, hub_username: str,
                    hub_client_ids: Sequence[str] = ()) -> str:
    """Return ``device_id`` if a device may have it.

    Raises:
        ProvisioningError: It could match other topics, or it is one of the hub's names.
    """
    try:
        check_name(device_id)
    except TopicError as exc:
        raise ProvisioningError(str(exc)) from exc
    if is_reserved(device_id, hub_username=hub_username, hub_client_ids=hub_client_ids):
        raise ProvisioningError(
            f"device id {device_id!r} is reserved for the hub (its username "
            f"{hub_username!r}, 'hub', 'hub-*' and 'groups' are never devices)")
    return device_id


def new_credentials(device_id: str) -> DeviceCredentials:
    """Fresh random credentials for ``device_id`` (its username is its id)."""
    return DeviceCredentials(device_id, secrets.token_urlsafe(24))


def add_device_commands(layout: TopicLayout, credentials: DeviceCredentials,
                        group: str) -> tuple[Command, ...]:
    """Create a device's role and its client, pinned to its own client id."""
    device_id = credentials.username
    role = device_role(layout, device_id, group)
    return (
        Command("createRole", {"rolename": role.name, "acls": [a.to_json() for a in role.acls]}),
        Command("createClient", {
            "username": device_id, "password": credentials.password, "clientid": device_id,
            "textname": f"device {device_id} (group {group})",
            "roles": [{"rolename": role.name}],
        }),
    )


def revoke_device_commands(device_id: str) -> tuple[Command, ...]:
    """Delete a device's client (the plugin disconnects it) and its role."""
    return (Command("deleteClient", {"username": device_id}, tolerate_error=True),
            Command("deleteRole", {"rolename": device_role_name(device_id)},
                    tolerate_error=True))


def rotate_device_commands(layout: TopicLayout, credentials: DeviceCredentials,
                           group: str) -> tuple[Command, ...]:
    """Replace a device's password and rules: the old session is disconnected and the
    old password stops working at once."""
    return (*revoke_device_commands(credentials.username),
            *add_device_commands(layout, credentials, group))


def password_entry(password: str, *, salt: bytes | None = None) -> dict[str, object]:
    """A client's password as the plugin stores it (PBKDF2-SHA512, 64 bytes)."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS, 64)
    return {"password": base64.b64encode(digest).decode(),
            "salt": base64.b64encode(salt).decode(), "iterations": PBKDF2_ITERATIONS}


def dynsec_document(layout: TopicLayout, *, hub_username: str, hub_password: str,
                    share_group: str, open_to_anonymous: bool = False) -> dict[str, object]:
    """The plugin's initial state (``dynamic-security.json``): the hub's client with its
    roles, no device, nothing allowed by default.

    Args:
        open_to_anonymous: Let clients without a username do anything (test and
            benchmark brokers that stand in for a plain local broker; never production).
    """
    roles = [hub_role(layout, share_group), control_role()]
    document: dict[str, object] = {
        "clients": [{
            "username": hub_username, "textname": "the cloud hub",
            **password_entry(hub_password),
            "roles": [{"rolename": HUB_ROLE}, {"rolename": CONTROL_ROLE}],
        }],
        "groups": [],
        "roles": [role.to_json() for role in roles],
        "defaultACLAccess": dict(DEFAULT_ACL_ACCESS),
    }
    if open_to_anonymous:
        document["roles"] = [*(role.to_json() for role in roles), open_role().to_json()]
        document["groups"] = [{"groupname": OPEN_GROUP, "roles": [{"rolename": OPEN_ROLE}]}]
        document["anonymousGroup"] = OPEN_GROUP
    return document


class BrokerControl:
    """Sends commands to the dynamic security plugin and waits for every answer.

    Each call opens its own short MQTT connection with the hub's broker settings (TLS
    included), as client ``<hub client id>-control``, so that it works the same from
    ``cloud-hub devices`` and from the running hub's API.

    Args:
        broker: The hub's broker settings.
        timeout_s: How long to wait for the connection and the answers.
    """

    def __init__(self, broker: BrokerSettings, *, timeout_s: float = CONTROL_TIMEOUT_S) -> None:
        self.broker = broker
        self.timeout_s = timeout_s

    def run(self, commands: Sequence[Command]) -> None:
        """Send ``commands`` in one message; return when the plugin answered them all.

        Raises:
            BrokerUnavailableError: The broker could not be reached or did not answer.
            SettingsError: The broker's TLS does not verify.
            ProvisioningError: The plugin refused a command (its error names why).
        """
        tag = uuid.uuid4().hex
        wanted = {f"{tag}:{index}": command for index, command in enumerate(commands)}
        answers: dict[str, str | None] = {}
        done = threading.Condition()
        subscribed = threading.Event()
        client = self.broker.client(f"{self.broker.client_id}-control")

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
            if not reason.is_failure:
                client.subscribe(CONTROL_RESPONSE_TOPIC, qos=1)

        def on_subscribe(client: Any, userdata: Any, mid: int, reasons: Any,
                         properties: Any) -> None:
            subscribed.set()

        def on_message(client: Any, userdata: Any, message: Any) -> None:
            try:
                responses = json.loads(message.payload)["responses"]
            except (ValueError, KeyError, TypeError):
                return
            with done:
                for response in responses:
                    if isinstance(response, dict) and response.get("correlationData") in wanted:
                        answers[response["correlationData"]] = response.get("error")
                done.notify_all()

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        try:
            client.connect(self.broker.host, self.broker.port, keepalive=30)
        except ssl.SSLError as exc:
            raise SettingsError(f"CLOUD_HUB_MQTT_TLS: TLS with the broker at "
                                f"{self.broker.host}:{self.broker.port} failed: {exc}") from exc
        except OSError as exc:
            raise BrokerUnavailableError(
                f"cannot reach the broker at {self.broker.host}:{self.broker.port} to "
                f"change its clients: {exc}") from exc
        client.loop_start()
        try:
            if not subscribed.wait(self.timeout_s):
                raise BrokerUnavailableError(
                    f"the broker at {self.broker.host}:{self.broker.port} did not let "
                    f"{self.broker.username!r} subscribe to {CONTROL_RESPONSE_TOPIC} "
                    "(is the dynamic security plugin loaded, and the hub's client given "
                    "the broker-control role?)")
            payload = json.dumps({"commands": [c.to_json(k) for k, c in wanted.items()]})
            client.publish(CONTROL_TOPIC, payload, qos=1)
            with done:
                if not done.wait_for(lambda: len(answers) == len(wanted), self.timeout_s):
                    raise BrokerUnavailableError(
                        "the broker's dynamic security plugin did not answer within "
                        f"{self.timeout_s:g} s")
        finally:
            client.disconnect()
            client.loop_stop()
        for key, command in wanted.items():
            error = answers[key]
            if error is None:
                continue
            if command.tolerate_error:
                log.debug("broker control: %s: %s (expected)", command.name, error)
                continue
            raise ProvisioningError(f"the broker refused {command.name}: {error}")
