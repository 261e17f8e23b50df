"""The broker's rules as values: what a device's and the hub's roles allow, which names
are the hub's, and the plugin's password format."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from pathlib import Path

import pytest

from cloud_hub.errors import ProvisioningError
from cloud_hub.mosquitto import BrokerLimits, config_text, free_port
from cloud_hub.provisioning import (
    Acl,
    DeviceCredentials,
    DeviceSpec,
    add_device_commands,
    batch_add_commands,
    check_device_id,
    command_messages,
    device_role,
    dynsec_document,
    group_role,
    group_role_commands,
    hub_role,
    parse_device_list,
    password_entry,
    repair_role_commands,
    revoke_device_commands,
    rotate_device_commands,
)
from sync import TopicLayout

pytestmark = pytest.mark.unit

LAYOUT = TopicLayout("fleet")


def test_a_device_role_names_only_its_own_topics_literally() -> None:
    role = device_role(LAYOUT, "cam-1")
    assert role.name == "device-cam-1"
    assert set(role.acls) == {
        Acl("publishClientSend", "fleet/v1/cam-1/events"),
        Acl("publishClientSend", "fleet/v1/cam-1/status"),
        Acl("publishClientSend", "fleet/v1/cam-1/telemetry"),
        Acl("publishClientSend", "fleet/v1/cam-1/updates"),
        Acl("publishClientSend", "fleet/v1/cam-1/journal"),  # its decision journal
        Acl("subscribeLiteral", "fleet/v1/cam-1/verdicts"),
    }
    assert all("+" not in a.topic and "#" not in a.topic and a.allow for a in role.acls)


def test_a_group_role_subscribes_to_its_announcements_only_and_receives_verdicts() -> None:
    """Receiving verdicts is shared because subscribing to them is not: the only verdict
    subscription any device's rules allow is its own, by literal topic."""
    role = group_role(LAYOUT, "lobby")
    assert role.name == "group-lobby"
    assert set(role.acls) == {
        Acl("subscribeLiteral", "fleet/v1/groups/lobby/models"),
        Acl("publishClientReceive", "fleet/v1/groups/lobby/models"),
        Acl("publishClientReceive", "fleet/v1/+/verdicts"),
    }
    every_subscription = [a for r in (role, device_role(LAYOUT, "cam-1"),
                                      hub_role(LAYOUT, "hub"))
                          for a in r.acls if a.kind.startswith("subscribe")]
    assert [a.topic for a in every_subscription if a.topic.endswith("/verdicts")] == [
        "fleet/v1/cam-1/verdicts"]


def test_the_hub_subscribes_by_its_own_share_group_only() -> None:
    subscriptions = {a.topic for a in hub_role(LAYOUT, "hub").acls
                     if a.kind.startswith("subscribe")}
    assert subscriptions == {"$share/hub/fleet/v1/+/events", "$share/hub/fleet/v1/+/updates",
                             "$share/hub/fleet/v1/+/journal",
                             "fleet/v1/+/status", "fleet/v1/+/telemetry"}
    assert all(a.kind == "subscribeLiteral" for a in hub_role(LAYOUT, "hub").acls
               if a.kind.startswith("subscribe"))


@pytest.mark.parametrize("name", ["hub", "ingest", "hub-replica-2", "groups", "hub-"])
def test_the_hubs_names_are_reserved(name: str) -> None:
    with pytest.raises(ProvisioningError, match="reserved"):
        check_device_id(name, hub_username="ingest", hub_client_ids=("hub-a",))


@pytest.mark.parametrize("name", ["a/b", "+", "#", "", "..", "x" * 65])
def test_ids_that_could_match_other_topics_are_refused(name: str) -> None:
    with pytest.raises(ProvisioningError):
        check_device_id(name, hub_username="hub")


def test_ordinary_ids_pass() -> None:
    assert check_device_id("hubcam-1", hub_username="hub") == "hubcam-1"


def test_password_entry_is_what_the_plugin_checks() -> None:
    salt = b"0123456789ab"
    entry = password_entry("secret", salt=salt)
    digest = hashlib.pbkdf2_hmac("sha512", b"secret", salt, 101, 64)
    assert entry == {"password": base64.b64encode(digest).decode(),
                     "salt": base64.b64encode(salt).decode(), "iterations": 101}


def test_commands_pin_the_client_id_and_rotation_replaces_everything() -> None:
    credentials = DeviceCredentials("cam-1", "pw")
    create = add_device_commands(LAYOUT, credentials, "lobby")
    assert [c.name for c in create] == ["createRole", "createRole", "createClient"]
    assert [c.fields["rolename"] for c in create[:2]] == ["group-lobby", "device-cam-1"]
    assert create[2].fields["clientid"] == "cam-1"
    assert create[2].fields["roles"] == [{"rolename": "device-cam-1"},
                                         {"rolename": "group-lobby"}]
    assert "textname" not in create[2].fields  # what the plugin rewrites each command
    rotate = rotate_device_commands(LAYOUT, credentials, "lobby")
    assert [c.name for c in rotate] == ["deleteClient", "deleteRole", "createRole",
                                        "createRole", "createClient"]
    assert rotate[1].fields == {"rolename": "device-cam-1"}  # never the group's
    assert [c.tolerate_error for c in revoke_device_commands("cam-1")] == [True, True]
    # The group's role may exist (its other devices); the device's own may not.
    assert [c.tolerate_error for c in create] == [True, False, False]


def test_a_batch_makes_each_group_role_once_and_tolerates_it_existing() -> None:
    commands = group_role_commands(LAYOUT, ["lobby", "yard"])
    assert [(c.name, c.fields["rolename"], c.tolerate_error) for c in commands] == [
        ("createRole", "group-lobby", True), ("createRole", "group-yard", True)]
    role, client = batch_add_commands(LAYOUT, DeviceCredentials("cam-1", "pw"), "yard")
    assert (role.name, role.fields["rolename"], role.tolerate_error) == (
        "createRole", "device-cam-1", True)
    assert client.fields["roles"] == [{"rolename": "device-cam-1"},
                                      {"rolename": "group-yard"}]
    assert not client.tolerate_error  # its creation decides who owns the device


def test_the_initial_state_denies_by_default_and_opens_only_when_asked() -> None:
    closed = dynsec_document(LAYOUT, hub_username="hub", hub_password="pw", share_group="hub")
    assert closed["defaultACLAccess"] == {"publishClientSend": False,
                                          "publishClientReceive": False,
                                          "subscribe": False, "unsubscribe": True}
    assert "anonymousGroup" not in closed
    opened = dynsec_document(LAYOUT, hub_username="hub", hub_password="pw",
                             share_group="hub", open_to_anonymous=True)
    assert opened["anonymousGroup"] == "anonymous"


def test_every_config_sets_the_plugin_and_the_limits() -> None:
    text = config_text(port=1883, bind=None, dynsec_file=Path("/etc/ds.json"),
                       plugin=Path("/usr/lib/p.so"), limits=BrokerLimits())
    assert "plugin /usr/lib/p.so\nplugin_opt_config_file /etc/ds.json" in text
    assert "allow_anonymous false" in text
    assert f"max_packet_size {512 * 1024 + 64 * 1024}" in text
    assert "max_queued_messages 1000" in text and "max_queued_bytes 67108864" in text
    with pytest.raises(ValueError, match="max_packet_size_bytes"):
        BrokerLimits(max_packet_size_bytes=0)


def test_a_device_list_reads_as_csv_or_json_lines() -> None:
    csv_text = "id,group\ncam-1,lobby\n\n# a comment\ncam-2\n"
    assert parse_device_list(csv_text) == (DeviceSpec("cam-1", "lobby"),
                                           DeviceSpec("cam-2", "default"))
    json_text = '{"id": "cam-1", "group": "lobby"}\n{"id": "cam-2"}\n'
    assert parse_device_list(json_text) == parse_device_list(csv_text)


@pytest.mark.parametrize(("text", "named"), [
    ("cam-1\ncam-1\n", "line 2"), ("cam-1,lobby,extra\n", "line 1"),
    ("cam/1,lobby\n", "line 1"), ("cam-1,+\n", "line 1"),
    ('{"id": "cam-1"}\n{"id": 3}\n', "line 2"), ('{"id": "a", "role": "hub"}\n', "line 1"),
    ("{not json\n", "line 1"),
])
def test_a_bad_device_list_names_its_line(text: str, named: str) -> None:
    with pytest.raises(ProvisioningError, match=named):
        parse_device_list(text)


def test_a_device_list_is_bounded() -> None:
    with pytest.raises(ProvisioningError, match="more than 3"):
        parse_device_list("a\nb\nc\nd\n", max_devices=3)


def test_commands_go_many_to_a_message_each_under_the_limit() -> None:
    commands = [c.to_json(f"t:{i}") for i in range(200) for c in batch_add_commands(
        LAYOUT, DeviceCredentials(f"cam-{i}", "pw"), "lobby")]
    messages = list(command_messages(commands, max_bytes=16 * 1024))
    assert len(messages) > 1
    assert all(len(payload) <= 16 * 1024 for payload, _ in messages)
    assert sum(count for _, count in messages) == 400
    sent = [c for payload, _ in messages for c in json.loads(payload)["commands"]]
    assert sent == commands  # in order, none lost


def test_a_repair_deletes_the_client_before_its_role_and_makes_both_anew() -> None:
    """Mosquitto 2.0.11 crashed when a role a client held was deleted under concurrent
    control traffic: the client goes first."""
    commands = repair_role_commands(LAYOUT, DeviceCredentials("cam-1", "pw"), "lobby")
    assert [c.name for c in commands] == ["deleteClient", "deleteRole", "createRole",
                                          "createClient"]
    assert commands[3].fields["password"] == "pw" and not commands[3].tolerate_error


def test_a_free_port_for_a_broker_is_never_one_a_client_could_be_given() -> None:
    """A broker's port chosen from the ephemeral range was once taken, between the test's
    choice and the broker's (re)start, by a client's source port ("Address already in
    use"): ports come from below the range, where the kernel never puts a client."""
    ephemeral_start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(1024 <= port < ephemeral_start for port in ports)
    assert len(ports) > 1  # chosen at random: parallel runs seldom pick the same one
    for port in ports:  # and free: a listener can take each
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
