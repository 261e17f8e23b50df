"""Who may do what on the broker, and how the hub changes it while the broker runs.

The broker's authorization is Mosquitto's dynamic security plugin. Its rules are:

- **Nothing by default**: a client may not publish, receive or subscribe unless a role
  allows it (``defaultACLAccess``: publish and subscribe denied, receive denied).
- **A device** (client ``<id>``, roles ``device-<id>`` and ``group-<group>``) may publish
  only its own ``events``, ``status``, ``telemetry``, ``updates`` and ``journal`` (its
  decision journal), and subscribe only to its own ``verdicts`` and its group's model
  announcements, each by its literal topic: no wildcard, no ``$share/...``, nothing else.
  Its own role holds the rules that name it (six); the group's role, one for all the
  devices of a group, holds the group's announcements and the right to *receive*
  verdicts, which reach a device only through the one verdict subscription its own role
  allows (no client may subscribe to another's verdicts: the hub does not subscribe to
  verdicts at all). Its client id is pinned to its username, so it cannot connect under
  another device's id (or the hub's) and take that session over. Devices provisioned
  before the group roles (one role of nine rules, the group's among them) keep working
  as they are; ``--rotate`` gives one the present layout.
- **The hub** (role ``hub``) subscribes to the fleet's events, update reports and
  decision journals through its shared subscription, and to statuses and telemetry, each
  by its literal filter; it publishes verdicts and announcements. Role
  ``broker-control`` lets it send commands to the plugin's
  ``$CONTROL/dynamic-security/v1`` topic, which is how it provisions,
  rotates and revokes devices while the broker runs: no file rewrite, no restart. The
  plugin saves its own state, and a deleted or re-passworded client is disconnected at
  once. At start the hub adds to its own role any rule it lacks
  (:func:`hub_role_commands`), so a broker set up by an older hub learns new topics.

This module holds the rules as values (:class:`Role`, :class:`Acl`, :class:`Command`,
:func:`dynsec_document`), pure, and one adapter, :class:`BrokerControl`, that sends
commands over MQTT and waits for the plugin's answers.

Provisioning many devices at once (:func:`parse_device_list`, :func:`batch_add_plan`)
sends all their commands over one connection, many per message (bounded in bytes, under
any broker's packet limit), and never rewrites a file of ours: the plugin keeps its own
state. The broker decides who wins when two batches name the same device (its
``createClient`` succeeds once); only devices whose client the broker created are
registered, and a batch whose registration fails deletes the clients it created.
Mosquitto 2.0's plugin writes its whole state after *every* command, so the broker's
cost grows with the devices it holds (see the README's ``provision`` figures): what a
device leaves in that state is kept small (its client and a role of six rules; no text
name), since its size times the number of commands is the broker's work. One shared role
with ``%c`` in its topics would need a single command a device, but Mosquitto 2.0's
plugin matches ``%c`` and ``%u`` literally (measured on 2.0.11; substitution came with
2.1), so each device still needs a role of its own.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import itertools
import json
import logging
import os
import secrets
import ssl
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cloud_hub.errors import BrokerUnavailableError, ProvisioningError, SettingsError
from cloud_hub.mqtt import BrokerSettings
from sync import (
    BrokerAddress,
    EnrollmentBundle,
    TopicError,
    TopicLayout,
    UpdateTrust,
    check_name,
)

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
CONTROL_RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
HUB_ROLE = "hub"
CONTROL_ROLE = "broker-control"
OPEN_ROLE = "open-to-anonymous"
OPEN_GROUP = "anonymous"
DEVICE_ROLE_PREFIX = "device-"
GROUP_ROLE_PREFIX = "group-"
PBKDF2_ITERATIONS = 101  # what mosquitto_ctrl writes; the plugin reads it per client
CONTROL_TIMEOUT_S = 10.0
# One control message stays well under any broker's packet limit, and small enough that
# the plugin answers it (all its commands, in one response) well within the timeout even
# on a broker holding many devices, where each command costs a rewrite of its state.
CONTROL_MESSAGE_MAX_BYTES = 16 * 1024
CONTROL_WINDOW = 4  # control messages in flight at once
MAX_BATCH_DEVICES = 10_000
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
    """The role that holds one device's own rules."""
    return f"{DEVICE_ROLE_PREFIX}{device_id}"


def device_role(layout: TopicLayout, device_id: str) -> Role:
    """What one device may do on the topics that name it: publish its own, subscribe to
    its verdicts; each by its literal topic. Not one rule on ``{root}/{id}/#`` (two rules
    instead of six, 0.64 KB of plugin state instead of 1.16): that would let a stolen
    password keep any number of retained messages under the device's id, which the
    broker holds (and saves, with persistence) without bound (five literal topics hold
    at most five), and publish on its own
    verdicts topic, where a retained forged receipt outlives a rotation of its password
    and reaches the device's next session (both measured on Mosquitto 2.0.11)."""
    sends = (layout.events(device_id), layout.status(device_id),
             layout.telemetry(device_id), layout.updates(device_id),
             layout.journal(device_id))
    return Role(device_role_name(device_id), (
        *(Acl("publishClientSend", topic) for topic in sends),
        Acl("subscribeLiteral", layout.verdicts(device_id)),
    ))


def group_role_name(group: str) -> str:
    """The role every device of ``group`` holds."""
    return f"{GROUP_ROLE_PREFIX}{group}"


def group_role(layout: TopicLayout, group: str) -> Role:
    """What every device of ``group`` shares: its group's model announcements (subscribe
    and receive), and receiving verdicts. The latter is as narrow as a literal rule: a
    message reaches a client only through a subscription, and the one verdict
    subscription a device's rules allow is its own (:func:`device_role`); no client
    subscribes to a wildcard over verdicts (the hub publishes them)."""
    models = layout.models(group)
    return Role(group_role_name(group), (
        Acl("subscribeLiteral", models), Acl("publishClientReceive", models),
        Acl("publishClientReceive", layout.all_devices("verdicts")),
    ))


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


def hub_role_commands(layout: TopicLayout, share_group: str) -> tuple[Command, ...]:
    """Give the hub's role every rule of :func:`hub_role`, adding those a broker set up by
    an older hub lacks (its journal subscription, say); a rule already there is refused
    by the plugin, harmlessly."""
    role = hub_role(layout, share_group)
    return tuple(Command("addRoleACL", {"rolename": role.name, "acltype": acl.kind,
                                        "topic": acl.topic, "allow": acl.allow},
                         tolerate_error=True) for acl in role.acls)


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


def group_role_commands(layout: TopicLayout, groups: Iterable[str]) -> tuple[Command, ...]:
    """Create the roles of ``groups``; one the broker has already (made by an earlier or
    a concurrent call: the same rules) is refused, harmlessly."""
    return tuple(Command("createRole", group_role(layout, group).to_json(),
                         tolerate_error=True) for group in groups)


def _device_commands(layout: TopicLayout, credentials: DeviceCredentials,
                     group: str) -> tuple[Command, Command]:
    """A device's own role, and its client pinned to its own client id, holding that role
    and its group's (which must exist first)."""
    device_id = credentials.username
    role = device_role(layout, device_id)
    return (
        Command("createRole", role.to_json()),
        Command("createClient", {
            "username": device_id, "password": credentials.password, "clientid": device_id,
            "roles": [{"rolename": role.name}, {"rolename": group_role_name(group)}],
        }),
    )


def add_device_commands(layout: TopicLayout, credentials: DeviceCredentials,
                        group: str) -> tuple[Command, ...]:
    """Create a device's group role where it lacks, its role, and its client, pinned to
    its own client id."""
    return (*group_role_commands(layout, (group,)),
            *_device_commands(layout, credentials, group))


def revoke_device_commands(device_id: str) -> tuple[Command, ...]:
    """Delete a device's client (the plugin disconnects it) and its role (its group's
    role stays: the group's other devices hold it)."""
    return (Command("deleteClient", {"username": device_id}, tolerate_error=True),
            Command("deleteRole", {"rolename": device_role_name(device_id)},
                    tolerate_error=True))


def rotate_device_commands(layout: TopicLayout, credentials: DeviceCredentials,
                           group: str) -> tuple[Command, ...]:
    """Replace a device's password and rules: the old session is disconnected and the
    old password stops working at once. A device of the old layout (one role holding its
    group's rules too) gets the present one."""
    return (*revoke_device_commands(credentials.username),
            *add_device_commands(layout, credentials, group))


@dataclass(frozen=True, slots=True)
class EnrollmentMaterial:
    """What every device's enrollment bundle shares, read once and checked before any
    device is provisioned (so a bad setting never leaves a device without its bundle).

    Attributes:
        broker_url: The broker as devices reach it (``mqtts://host:port``).
        prefix: The fleet's topic prefix.
        ca_pem: The CA devices verify the broker with; ``None``: their system CAs.
        hub_url: The hub's public URL; its TUF repository is ``hub_url/tuf``.
        trusted_root: The TUF root to start from, or ``None`` without signed updates.

    Raises:
        ProvisioningError: A value does not fit a bundle (the message names it).
    """

    broker_url: str
    prefix: str
    ca_pem: str | None
    hub_url: str
    trusted_root: dict[str, object] | None

    def __post_init__(self) -> None:
        self.bundle(DeviceCredentials("check", "check"), "check")

    def bundle(self, credentials: DeviceCredentials, group: str) -> EnrollmentBundle:
        """The bundle of the device with ``credentials`` (its username is its id).

        Raises:
            ProvisioningError: The id or group does not fit a bundle.
        """
        try:
            return EnrollmentBundle(
                device_id=credentials.username, group=group, hub_url=self.hub_url,
                broker=BrokerAddress(url=self.broker_url, ca_pem=self.ca_pem,
                                     username=credentials.username,
                                     password=credentials.password, prefix=self.prefix),
                updates=None if self.trusted_root is None else UpdateTrust(
                    url=f"{self.hub_url}/tuf", trusted_root=self.trusted_root))
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise ProvisioningError(f"cannot write the enrollment bundle: {exc}") from exc


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


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One device of a bulk provisioning request: its id and group, both checked names."""

    device_id: str
    group: str = "default"


def parse_device_list(text: str, *, max_devices: int = MAX_BATCH_DEVICES) -> tuple[DeviceSpec, ...]:
    """The devices of a provisioning file: CSV (``id,group``, an optional header line,
    the group optional) or JSON lines (``{"id": ..., "group": ...}``), told apart by the
    first line. Blank lines and lines starting with ``#`` are skipped.

    Raises:
        ProvisioningError: A line is unreadable, an id or group is not a plain name, an
            id appears twice, or there are more than ``max_devices`` (names the line).
    """
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)]
    lines = [(number, line) for number, line in lines if line and not line.startswith("#")]
    as_json = bool(lines) and lines[0][1].startswith("{")
    specs: list[DeviceSpec] = []
    seen: set[str] = set()
    for number, line in lines:
        if not as_json and number == lines[0][0] and line.lower().replace(" ", "") in (
                "id", "id,group"):
            continue  # the header
        device_id, group = (_json_line(number, line) if as_json
                            else _csv_line(number, line))
        try:
            check_name(device_id)
            check_name(group, "group")
        except TopicError as exc:
            raise ProvisioningError(f"line {number}: {exc}") from exc
        if device_id in seen:
            raise ProvisioningError(f"line {number}: device {device_id!r} is listed twice")
        seen.add(device_id)
        specs.append(DeviceSpec(device_id, group))
        if len(specs) > max_devices:
            raise ProvisioningError(f"line {number}: more than {max_devices} devices in one "
                                    "batch; split the file")
    return tuple(specs)


def _json_line(number: int, line: str) -> tuple[str, str]:
    try:
        raw: Any = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise ProvisioningError(f"line {number}: not a JSON object: {exc}") from exc
    if not isinstance(raw, dict) or set(raw) - {"id", "group"}:
        raise ProvisioningError(f'line {number}: expected {{"id": ..., "group": ...}}, '
                                f"got {line[:80]!r}")
    device_id, group = raw.get("id"), raw.get("group", "default")
    if not isinstance(device_id, str) or not isinstance(group, str):
        raise ProvisioningError(f"line {number}: id and group must be strings")
    return device_id, group


def _csv_line(number: int, line: str) -> tuple[str, str]:
    fields = [field.strip() for field in line.split(",")]
    if len(fields) > 2:
        raise ProvisioningError(f"line {number}: expected 'id,group', got {line[:80]!r}")
    return fields[0], fields[1] if len(fields) == 2 and fields[1] else "default"


ProvisionStatus = Literal["created", "exists", "failed"]


@dataclass(frozen=True, slots=True)
class ProvisionOutcome:
    """What bulk provisioning did with one device.

    Attributes:
        status: ``created`` (registered, with ``credentials``), ``exists`` (registered
            before; untouched) or ``failed`` (the broker refused it: ``reason``).
    """

    device_id: str
    group: str
    status: ProvisionStatus
    credentials: DeviceCredentials | None = None
    reason: str = ""


def batch_add_commands(layout: TopicLayout, credentials: DeviceCredentials,
                       group: str) -> tuple[Command, Command]:
    """A device's role (a refusal tolerated: a role may be left from an earlier try or
    made by a concurrent batch) and its client, whose creation decides who owns it. Its
    group's role is made before (:func:`group_role_commands`)."""
    create_role, create_client = _device_commands(layout, credentials, group)
    return (Command(create_role.name, create_role.fields, tolerate_error=True), create_client)


def repair_role_commands(layout: TopicLayout, credentials: DeviceCredentials,
                         group: str) -> tuple[Command, ...]:
    """Make a client this batch created over a role it found already there (possibly of
    the old layout, or another prefix's) again: the client goes first, then the role
    (Mosquitto 2.0.11 crashes, now and then, when a role a client held is deleted under
    concurrent control traffic), then both are made anew with the same password. The
    fourth command, ``createClient``, decides whether the device is still this batch's."""
    return (*revoke_device_commands(credentials.username),
            *_device_commands(layout, credentials, group))


def command_messages(payloads: Sequence[dict[str, object]], *,
                     max_bytes: int = CONTROL_MESSAGE_MAX_BYTES) -> Iterator[tuple[bytes, int]]:
    """Control messages of many commands each, none over ``max_bytes`` (unless one
    command alone is larger), in order, each with the number of commands it holds."""
    batch: list[str] = []
    size = 0
    for payload in payloads:
        text = json.dumps(payload, separators=(",", ":"))
        if batch and size + len(text) + 16 > max_bytes:
            yield ('{"commands":[' + ",".join(batch) + "]}").encode(), len(batch)
            batch, size = [], 0
        batch.append(text)
        size += len(text) + 1
    if batch:
        yield ('{"commands":[' + ",".join(batch) + "]}").encode(), len(batch)


class BrokerControl:
    """Sends commands to the dynamic security plugin and waits for every answer.

    Each call opens its own short MQTT connection with the hub's broker settings (TLS
    included), as client ``<hub client id>-control-<random>``, so that it works the same
    from ``cloud-hub devices`` and from the running hub's API, and concurrent calls never
    take each other's session over.

    Args:
        broker: The hub's broker settings.
        timeout_s: How long to wait for the connection, and for any answer while
            commands are outstanding.
    """

    def __init__(self, broker: BrokerSettings, *, timeout_s: float = CONTROL_TIMEOUT_S) -> None:
        self.broker = broker
        self.timeout_s = timeout_s

    def run(self, commands: Sequence[Command]) -> None:
        """Send ``commands``; return when the plugin answered them all, all accepted.

        Raises:
            BrokerUnavailableError: The broker could not be reached or did not answer.
            SettingsError: The broker's TLS does not verify.
            ProvisioningError: The plugin refused a command (its error names why).
        """
        for command, error in zip(commands, self.execute(commands), strict=True):
            if error is None:
                continue
            if command.tolerate_error:
                log.debug("broker control: %s: %s (expected)", command.name, error)
                continue
            raise ProvisioningError(f"the broker refused {command.name}: {error}")

    def execute(self, commands: Sequence[Command]) -> tuple[str | None, ...]:
        """Send ``commands`` in order, many per message over one connection, and return
        the plugin's answer to each: ``None`` where it was done, else its error.

        Raises:
            BrokerUnavailableError: The broker could not be reached or did not answer.
            SettingsError: The broker's TLS does not verify.
        """
        tag = uuid.uuid4().hex
        keys = [f"{tag}:{index}" for index in range(len(commands))]
        answers: dict[str, str | None] = {}
        done = threading.Condition()
        subscribed = threading.Event()
        client = self.broker.client(f"{self.broker.client_id}-control-{tag[:12]}")

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
                    if (isinstance(response, dict)
                            and str(response.get("correlationData", "")).startswith(tag)):
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
            messages = list(command_messages(
                [c.to_json(k) for k, c in zip(keys, commands, strict=True)]))
            ends = list(itertools.accumulate(count for _, count in messages))
            sent = 0
            while True:
                with done:
                    answered = len(answers)
                if answered == len(keys):
                    break
                # A few messages in flight keep the broker busy between our round trips;
                # the timeout is on progress: no answer at all for timeout_s.
                in_flight = sent - bisect.bisect_right(ends, answered)
                while sent < len(messages) and in_flight < CONTROL_WINDOW:
                    client.publish(CONTROL_TOPIC, messages[sent][0], qos=1)
                    sent += 1
                    in_flight += 1
                with done:
                    if not done.wait_for(lambda: len(answers) > answered,  # noqa: B023 - waited on at once
                                         self.timeout_s):
                        raise BrokerUnavailableError(
                            "the broker's dynamic security plugin did not answer within "
                            f"{self.timeout_s:g} s")
        finally:
            client.disconnect()
            client.loop_stop()
        return tuple(answers[key] for key in keys)
