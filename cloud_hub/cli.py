"""``cloud-hub``: the cloud hub's command line.

Settings come from ``CLOUD_HUB_*`` environment variables (see ``cloud_hub/settings.py``);
every error a user can cause is one line on stderr (a JSON log line with ``--log-format
json``) and exit status 1; usage errors exit with 2. Lists take ``--json``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cloud_hub.api.auth import hash_token, new_token
from cloud_hub.distribution import ModelDistribution, warnings_now
from cloud_hub.errors import HubError, SettingsError
from cloud_hub.mqtt import BrokerSettings
from cloud_hub.service import HubService
from cloud_hub.settings import HubSettings, load_settings
from cloud_hub.supervision import run_until_failure
from cloud_hub.system_service import CONFIG_DIR as HUB_CONFIG_DIR
from cloud_hub.system_service import CPU_QUOTA as HUB_CPU_QUOTA
from cloud_hub.system_service import MEMORY_MAX as HUB_MEMORY_MAX
from cloud_hub.system_service import SETTINGS_NAME, first_settings, hub_service
from hardware import plan_for_runtime, probe_hardware
from sync import (
    RolloutStateError,
    ServiceInstallError,
    add_log_options,
    configure_logging,
    give_to_service,
    install_service,
    progress,
    share_options,
    start_service,
    under,
    uninstall_service,
    version_line,
)
from sync.rollout import Rollout

log = logging.getLogger("cloud_hub")
Handler = Callable[[argparse.Namespace, HubSettings], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    usage_error = getattr(args, "usage_error", None)
    if usage_error is not None and (message := usage_error(args)):
        parser.error(message)  # exits with status 2
    configure_logging("cloud-hub", args)
    handler: Handler = args.handler
    try:
        return handler(args, load_settings(settings_file=args.settings))
    except HubError as exc:
        if args.log_format == "json":
            log.error("%s", exc)
        else:
            print(f"cloud-hub: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="cloud-hub", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=version_line("cloud-hub"))
    _add_common_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the web API, dashboard and MQTT ingest")
    serve.add_argument("--host", default=None, help="listen address (CLOUD_HUB_HTTP_HOST)")
    serve.add_argument("--port", type=int, default=None, help="port (CLOUD_HUB_HTTP_PORT)")
    serve.add_argument("--no-ingest", action="store_true", help="serve the API only")
    serve.set_defaults(handler=_serve)

    devices = commands.add_parser("devices", help="provision and list devices")
    device_commands = devices.add_subparsers(dest="devices_command", required=True)
    add = device_commands.add_parser(
        "add", help="register a device (or --from FILE, many), print their credentials")
    add.add_argument("device_id", nargs="?")
    add.add_argument("--group", default="default")
    add.add_argument("--from", dest="from_file", type=Path, default=None, metavar="FILE",
                     help="many devices at once: CSV lines 'id,group' or JSON lines "
                     "{\"id\": ..., \"group\": ...}; prints CSV 'id,group,status,password' "
                     "(or --json); devices that exist are left as they are")
    add.add_argument("--json", action="store_true", help="one JSON object on stdout")
    add.add_argument("--bundle", type=Path, default=None, metavar="FILE",
                     help="write the device's enrollment bundle here (readable by its owner "
                     "only): broker URL, CA, credentials, group, TUF root, hub URL; the "
                     "device runs `edge-agent enroll FILE`. With --from, a folder: one "
                     "ID.json for each device registered")
    add.add_argument("--rotate", action="store_true",
                     help="the device exists: issue new credentials (its old password stops "
                     "working and it is disconnected)")
    add.set_defaults(handler=_devices_add, usage_error=_devices_add_usage)
    revoke = device_commands.add_parser(
        "revoke", help="take a device's broker access away (disconnected at once)")
    revoke.add_argument("device_id")
    revoke.set_defaults(handler=_devices_revoke)
    listing = device_commands.add_parser("list", help="show the fleet")
    listing.add_argument("--json", action="store_true",
                         help="one JSON object on stdout: {\"devices\": [...]}")
    listing.set_defaults(handler=_devices_list)

    broker = commands.add_parser("broker", help="set up the MQTT broker (Mosquitto)")
    broker_commands = broker.add_subparsers(dest="broker_command", required=True)
    binit = broker_commands.add_parser(
        "init", help="write mosquitto.conf and the dynamic security plugin's first state")
    binit.add_argument("folder", type=Path, help="where to write them")
    binit.add_argument("--port", type=int, default=None, help="listener port "
                       "(default CLOUD_HUB_MQTT_PORT)")
    binit.add_argument("--bind", default=None, help="listen address (default: all)")
    binit.add_argument("--tls-ca", type=Path, default=None, help="CA file (TLS listener)")
    binit.add_argument("--tls-cert", type=Path, default=None, help="broker certificate")
    binit.add_argument("--tls-key", type=Path, default=None, help="its private key")
    binit.add_argument("--require-client-cert", action="store_true", help="mutual TLS")
    binit.add_argument("--persistence", type=Path, default=Path("/var/lib/mosquitto"),
                       help="where the broker keeps sessions")
    binit.set_defaults(handler=_broker_init)
    bacl = broker_commands.add_parser(
        "emqx-acl", help="print EMQX's acl.conf (the same rules as Mosquitto's), or with "
        "--device and --group that device's group rule for EMQX's built-in database")
    bacl.add_argument("--device", default=None, help="a device id")
    bacl.add_argument("--group", default=None, help="its group")
    bacl.set_defaults(handler=_broker_emqx_acl)

    install = commands.add_parser(
        "install-service", help="install the hub as a systemd service",
        description="Makes the cloud-hub system user (systemd-sysusers), its folders "
        "(/etc/cloud-hub, /var/lib/cloud-hub), the hardened unit running this "
        "installation's cloud-hub serve, and /etc/cloud-hub/hub.env: a copy of --settings, "
        "or (where none exists yet) production settings with a fresh secret key; then "
        "enables and starts the service.")
    install.add_argument("--root", type=Path, default=Path("/"),
                         help="lay the service out under this folder instead, every path "
                         "pointing into it, and run no systemctl (tests, trying it out)")
    install.add_argument("--no-start", action="store_true",
                         help="install, but do not enable or start the service")
    install.add_argument("--memory-max", default=HUB_MEMORY_MAX,
                         help="the unit's MemoryMax (default %(default)s)")
    install.add_argument("--cpu-quota", default=HUB_CPU_QUOTA,
                         help="the unit's CPUQuota (default %(default)s)")
    install.set_defaults(handler=_install_service)
    uninstall = commands.add_parser("uninstall-service",
                                    help="stop and remove the hub's systemd service")
    uninstall.add_argument("--root", type=Path, default=Path("/"),
                           help="the root it was laid out under (default /)")
    uninstall.add_argument("--purge", action="store_true",
                           help="also delete its settings and data (store, keys, TUF "
                           "repository): back them up first")
    uninstall.set_defaults(handler=_uninstall_service)

    tokens = commands.add_parser("tokens", help="issue API tokens")
    token_commands = tokens.add_subparsers(dest="tokens_command", required=True)
    create = token_commands.add_parser("create", help="issue a token and print it once")
    create.add_argument("name")
    create.add_argument("--role", choices=["viewer", "operator", "admin"], required=True)
    create.set_defaults(handler=_tokens_create)
    token_list = token_commands.add_parser("list", help="show every token's id, name and role")
    token_list.add_argument("--json", action="store_true",
                            help="one JSON object on stdout: {\"tokens\": [...]}")
    token_list.set_defaults(handler=_tokens_list)
    token_revoke = token_commands.add_parser(
        "revoke", help="revoke a token by id (refused from its next request on)")
    token_revoke.add_argument("token_id", type=int)
    token_revoke.set_defaults(handler=_tokens_revoke)

    keys = commands.add_parser("keys", help="manage the update signing keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    init = key_commands.add_parser("init", help="create keys and the TUF repository")
    init.add_argument("--root-keys", type=int, default=1, help="number of root keys")
    init.add_argument("--root-threshold", type=int, default=1, help="signatures root needs")
    init.set_defaults(handler=_keys_init)
    refresh = key_commands.add_parser(
        "refresh", help="re-sign update metadata that is due, before it expires (cron)")
    refresh.add_argument("--targets-key", type=Path, default=None, metavar="FILE",
                         help="the targets key, where it is kept offline")
    refresh.add_argument("--force", action="store_true",
                         help="re-sign every role whose key is at hand, due or not")
    refresh.set_defaults(handler=_keys_refresh)
    rotate = key_commands.add_parser(
        "rotate-root", help="new root keys and a new root (a year), signed by old and new")
    rotate.add_argument("--root-keys", type=int, default=1, help="number of new root keys")
    rotate.add_argument("--root-threshold", type=int, default=1, help="signatures root needs")
    rotate.set_defaults(handler=_keys_rotate_root)

    models = commands.add_parser("models", help="publish model versions")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    publish = model_commands.add_parser("publish", help="sign a bundle for devices")
    publish.add_argument("bundle", type=Path, help="bundle folder (manifest.json + model)")
    publish.add_argument("--hardware", action="append", default=None,
                         help="what it is built for (any, x86_64, aarch64, edgetpu ...)")
    publish.add_argument("--targets-key", type=Path, default=None, metavar="FILE",
                         help="the targets key, where it is kept offline")
    publish.set_defaults(handler=_models_publish)

    rollout = commands.add_parser("rollout", help="staged rollouts to device groups")
    rollout_commands = rollout.add_subparsers(dest="rollout_command", required=True)
    begin = rollout_commands.add_parser("start", help="canaries first, then the group")
    begin.add_argument("model")
    begin.add_argument("version")
    begin.add_argument("--group", required=True)
    begin.add_argument("--canary", type=float, default=10.0, help="percent of the group")
    begin.add_argument("--max-failure-share", type=float, default=0.2)
    begin.set_defaults(handler=_rollout_start)
    back = rollout_commands.add_parser("rollback", help="stop and ship the previous model")
    back.add_argument("rollout_id")
    back.add_argument("--targets-key", type=Path, default=None, metavar="FILE",
                      help="the targets key, where it is kept offline")
    back.set_defaults(handler=_rollout_rollback)
    for name, what in (("cancel", "stop a rollout where it is (no further device installs)"),
                       ("pause", "start no further wave until resumed"),
                       ("resume", "go on with a paused rollout")):
        command = rollout_commands.add_parser(name, help=what)
        command.add_argument("rollout_id")
        if name == "cancel":
            command.add_argument("--reason", default="cancelled by the operator")
        command.set_defaults(handler=_rollout_command, rollout_action=name)
    show = rollout_commands.add_parser("list", help="show rollouts and their warnings")
    show.add_argument("--json", action="store_true",
                      help="one JSON object on stdout: {\"rollouts\": [...]}")
    show.set_defaults(handler=_rollout_list)

    doctor = commands.add_parser("doctor", help="show the hub's hardware and ONNX backend plan")
    doctor.add_argument("--json", action="store_true", help="one JSON object on stdout")
    doctor.add_argument("--root", type=Path, default=Path("/"), help="filesystem root to probe")
    doctor.set_defaults(handler=_doctor)

    demo = commands.add_parser(
        "demo", help="run broker, hub and an edge agent over the sample footage on this machine"
    )
    demo.add_argument("--port", type=int, default=8080, help="HTTP port of the hub")
    demo.add_argument("--frames-loop", action="store_true", help="loop the sample footage")
    demo.set_defaults(handler=_demo)
    share_options(parser, lambda sub: _add_common_options(sub, suppress=True))
    return parser


def _add_common_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """Options every subcommand takes, before or after its name (see :mod:`sync`)."""
    add_log_options(parser, suppress=suppress)
    parser.add_argument("--settings", type=Path,
                        default=argparse.SUPPRESS if suppress else None,
                        help="a file of CLOUD_HUB_* lines (the environment still wins)")


def _serve(args: argparse.Namespace, settings: HubSettings) -> int:
    import uvicorn

    from cloud_hub.api import create_app

    service = HubService(settings, ingest=not args.no_ingest)
    app = create_app(service)
    # uvicorn's own logging set-up is skipped: its records reach the root handler, in the
    # format --log-format chose (and through its token redaction).
    server = uvicorn.Server(uvicorn.Config(
        app, host=args.host or settings.http_host, port=args.port or settings.http_port,
        log_level=args.log_level or ("info" if args.verbose else "warning"), log_config=None))
    status = run_until_failure(server, service.supervisor)
    if status:
        print(f"cloud-hub: {service.supervisor.failure}; exiting {status} to be restarted",
              file=sys.stderr)
    return status


def _name_broker(settings: HubSettings, doing: str) -> None:
    """Say on stderr which broker a command talks to (stdout stays for --json)."""
    broker = BrokerSettings.from_settings(settings).describe()
    print(f"cloud-hub: {doing} on the broker at {broker}", file=sys.stderr)


def _devices_add(args: argparse.Namespace, settings: HubSettings) -> int:
    from cloud_hub.mosquitto import write_private
    from sync import encode_enrollment

    if settings.broker_control == "mosquitto-dynsec":
        _name_broker(settings, "adding the device's client and rules")

    if args.from_file is not None:
        return _devices_add_many(args, settings)
    with _hub_store(settings) as service:
        material = service.enrollment_material() if args.bundle is not None else None
        device, credentials = service.provision_device(args.device_id, args.group,
                                                       rotate=args.rotate)
        if material is not None:
            write_private(args.bundle, encode_enrollment(
                material.bundle(credentials, device["group"])).decode())
    if args.json:
        print(json.dumps({"device": device, "username": credentials.username,
                          "password": credentials.password,
                          "bundle": str(args.bundle) if args.bundle else None}))
        return 0
    done = "credentials rotated" if args.rotate else "registered"
    print(f"device {device['id']} (group {device['group']}) {done}")
    if args.bundle is not None:
        print(f"  enrollment bundle: {args.bundle} (holds the password; on the device: "
              f"edge-agent enroll {args.bundle.name}, then delete it)")
        return 0
    print(f"  MQTT username and client id: {credentials.username}")
    print(f"  MQTT password: {credentials.password}   (shown once; put it in the "
          "device's EDGE_AGENT_MQTT_PASSWORD)")
    if settings.broker_control == "none":
        print("  CLOUD_HUB_BROKER_CONTROL=none: add the same credentials and rules to the "
              "broker yourself (docs/deployment.md)")
    return 0


def _devices_add_usage(args: argparse.Namespace) -> str | None:
    if args.from_file is None:
        return None if args.device_id else "devices add: give a DEVICE_ID or --from FILE"
    if args.device_id is not None or args.rotate:
        return "devices add --from FILE takes no DEVICE_ID and no --rotate"
    return None


def _devices_add_many(args: argparse.Namespace, settings: HubSettings) -> int:
    from cloud_hub.mosquitto import write_private
    from cloud_hub.provisioning import parse_device_list
    from sync import encode_enrollment

    try:
        text = args.from_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HubError(f"--from {args.from_file}: {exc}") from exc
    specs = parse_device_list(text)
    with _hub_store(settings) as service:
        material = service.enrollment_material() if args.bundle is not None else None
        with progress(f"registering {len(specs)} device(s)", total=len(specs)) as advance:
            outcomes = service.provision_devices(specs, advance=advance)
        if material is not None:  # --bundle is a folder: one per device registered now
            made = [o for o in outcomes if o.credentials is not None]
            with progress(f"writing {len(made)} enrollment bundle(s)",
                          total=len(made)) as advance:
                for outcome in made:
                    assert outcome.credentials is not None
                    write_private(args.bundle / f"{outcome.device_id}.json", encode_enrollment(
                        material.bundle(outcome.credentials, outcome.group)).decode())
                    advance(1)
    failed = sum(outcome.status == "failed" for outcome in outcomes)
    if args.json:
        print(json.dumps({"devices": [{
            "id": o.device_id, "group": o.group, "status": o.status,
            **({"username": o.credentials.username, "password": o.credentials.password}
               if o.credentials else {}),
            **({"reason": o.reason} if o.reason else {})} for o in outcomes]}))
    else:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["id", "group", "status", "password"])
        for o in outcomes:
            writer.writerow([o.device_id, o.group, o.status,
                             o.credentials.password if o.credentials else o.reason])
    created = sum(outcome.status == "created" for outcome in outcomes)
    print(f"{created} registered, {len(outcomes) - created - failed} existed, {failed} "
          "refused (passwords are shown once)", file=sys.stderr)
    return 1 if failed else 0


def _devices_revoke(args: argparse.Namespace, settings: HubSettings) -> int:
    if settings.broker_control == "mosquitto-dynsec":
        _name_broker(settings, "removing the device's client")
    with _hub_store(settings) as service:
        service.revoke_device(args.device_id)
    print(f"device {args.device_id} revoked: disconnected, and its password no longer works")
    return 0


def _broker_init(args: argparse.Namespace, settings: HubSettings) -> int:
    from cloud_hub.mosquitto import (
        PACKET_HEADROOM_BYTES,
        BrokerLimits,
        ListenerTls,
        config_text,
        find_dynsec_plugin,
        write_private,
    )
    from cloud_hub.provisioning import dynsec_document
    from sync import TopicLayout

    if not settings.mqtt_username or not settings.mqtt_password:
        raise SettingsError("CLOUD_HUB_MQTT_USERNAME and CLOUD_HUB_MQTT_PASSWORD: the hub's "
                            "broker credentials are needed to write its client")
    tls_files = (args.tls_ca, args.tls_cert, args.tls_key)
    if any(tls_files) and not all(tls_files):
        raise SettingsError("--tls-ca, --tls-cert and --tls-key go together")
    dynsec_file = args.folder / "dynamic-security.json"
    if dynsec_file.exists():
        raise HubError(f"{dynsec_file} exists; the broker's plugin owns it now (it holds "
                       "the provisioned devices): change it through cloud-hub devices")
    for path in tls_files:
        if path is not None and not path.is_file():
            raise SettingsError(f"{path}: no such file")
    # Absolute: the broker reads them from its own working directory (systemd's is /).
    tls = ListenerTls(args.tls_ca.resolve(), args.tls_cert.resolve(), args.tls_key.resolve(),
                      require_certificate=args.require_client_cert) if all(tls_files) else None
    write_private(dynsec_file, json.dumps(dynsec_document(
        TopicLayout(settings.mqtt_prefix), hub_username=settings.mqtt_username,
        hub_password=settings.mqtt_password, share_group=settings.share_group), indent=1))
    config = args.folder / "mosquitto.conf"
    config.write_text(config_text(
        port=args.port or settings.mqtt_port, bind=args.bind, dynsec_file=dynsec_file.resolve(),
        plugin=find_dynsec_plugin(), tls=tls, persistence_dir=args.persistence.resolve(),
        limits=BrokerLimits(max_packet_size_bytes=settings.max_message_bytes
                            + PACKET_HEADROOM_BYTES)))
    print(f"wrote {config} and {dynsec_file} (readable by its owner only: give it to the "
          "broker's user)")
    print(f"run: mosquitto -c {config}")
    return 0


def _broker_emqx_acl(args: argparse.Namespace, settings: HubSettings) -> int:
    from cloud_hub.emqx import acl_file, device_group_rules
    from sync import TopicLayout

    layout = TopicLayout(settings.mqtt_prefix)
    if (args.device is None) != (args.group is None):
        raise SettingsError("--device and --group go together")
    if args.device is not None:
        print(json.dumps([device_group_rules(layout, args.device, args.group)]))
    else:
        print(acl_file(layout, share_group=settings.share_group,
                       hub_username=settings.mqtt_username or "hub"), end="")
    return 0


def _install_service(args: argparse.Namespace, settings: HubSettings) -> int:
    from cloud_hub.mosquitto import write_private

    root: Path = args.root.resolve()
    try:
        service = hub_service(root=root, memory_max=args.memory_max,
                              cpu_quota=args.cpu_quota)
    except ValueError as exc:
        raise SettingsError(f"--memory-max: {exc}") from exc
    settings_file = under(root, HUB_CONFIG_DIR) / SETTINGS_NAME
    try:
        done = install_service(service, root, start=False)
        if args.settings is not None:
            write_private(settings_file, args.settings.read_text())
            done.append(f"settings {settings_file} (from {args.settings})")
        elif not settings_file.exists():
            write_private(settings_file, first_settings(root=root))
            done.append(f"settings {settings_file} (new: fill in the broker's lines)")
        settings_file.chmod(0o640)
        give_to_service(service, [settings_file], root, writable=False)
        if not args.no_start:
            done += start_service(service, root)
    except (ServiceInstallError, OSError) as exc:
        raise HubError(str(exc)) from exc
    for line in done:
        print(line)
    return 0


def _uninstall_service(args: argparse.Namespace, settings: HubSettings) -> int:
    root: Path = args.root.resolve()
    try:
        done = uninstall_service(hub_service(root=root), root, purge=args.purge)
    except ServiceInstallError as exc:
        raise HubError(str(exc)) from exc
    for line in done:
        print(line)
    return 0


def _devices_list(args: argparse.Namespace, settings: HubSettings) -> int:
    with _hub_store(settings) as service:
        devices = service.store.list_devices()
    if args.json:
        # A device's input health is a typed model: in JSON, as the API gives it.
        print(json.dumps({"devices": devices},
                         default=lambda value: value.model_dump(mode="json")))
        return 0
    for device in devices:
        state = "revoked" if device["revoked"] else (
            "online" if device["online"] else "offline")
        models = ", ".join(f"{k} {v}" for k, v in device["models"].items()) or "-"
        print(f"{device['id']:<24} {device['group']:<12} {state:<8} {models}")
    return 0


def _tokens_create(args: argparse.Namespace, settings: HubSettings) -> int:
    token = new_token()
    with _hub_store(settings) as service:
        service.store.add_token(name=args.name, role=args.role,
                                token_hash=hash_token(settings.secret_key, token))
    print(token)
    return 0


def _tokens_list(args: argparse.Namespace, settings: HubSettings) -> int:
    with _hub_store(settings) as service:
        listed = service.store.list_tokens()
    if args.json:
        print(json.dumps({"tokens": [dataclasses.asdict(t) for t in listed]}))
        return 0
    for token in listed:
        print(f"{token.id:>5}  {token.name:<24} {token.role}")
    return 0


def _tokens_revoke(args: argparse.Namespace, settings: HubSettings) -> int:
    with _hub_store(settings) as service:
        token = service.store.revoke_token(token_id=args.token_id)
    print(f"token {token.id} ({token.name}, {token.role}) revoked: refused from now on")
    return 0


def _keys_init(args: argparse.Namespace, settings: HubSettings) -> int:
    from cloud_hub.updates import ModelRepository

    repository = ModelRepository(settings.repository_dir, settings.signing_keys_dir)
    repository.init(root_keys=args.root_keys, root_threshold=args.root_threshold)
    keys = settings.signing_keys_dir
    print(f"TUF repository in {settings.repository_dir}")
    print(f"root keys in {keys / 'root'}: move them offline")
    if settings.targets_key_offline:
        print(f"targets key {keys / 'targets.pem'}: move it offline too "
              "(CLOUD_HUB_TARGETS_KEY_OFFLINE is set)")
    else:
        print(f"targets key {keys / 'targets.pem'} (online; set "
              "CLOUD_HUB_TARGETS_KEY_OFFLINE=true and move it away to keep it offline)")
    print(f"provision devices with {settings.repository_dir / 'metadata' / '1.root.json'}")
    return 0


def _keys_rotate_root(args: argparse.Namespace, settings: HubSettings) -> int:
    from cloud_hub.updates import ModelRepository

    repository = ModelRepository(settings.repository_dir, settings.signing_keys_dir)
    if not list((settings.signing_keys_dir / "root").glob("*.pem")):
        raise HubError(f"no root keys in {settings.signing_keys_dir / 'root'}: bring them "
                       "online there for the rotation")
    repository.rotate_root(new_root_keys=args.root_keys, new_threshold=args.root_threshold)
    root = repository.load("root").signed
    print(f"root version {root.version}, expires {root.expires.isoformat()}; new root keys "
          f"in {settings.signing_keys_dir / 'root'}: move them offline")
    return 0


def _keys_refresh(args: argparse.Namespace, settings: HubSettings) -> int:
    from cloud_hub.updates import ModelRepository

    repository = ModelRepository(settings.repository_dir, settings.signing_keys_dir,
                                 targets_key_online=not settings.targets_key_offline)
    if not repository.exists():
        raise HubError(f"no TUF repository in {settings.repository_dir}: run "
                       "`cloud-hub keys init` first")
    roles = repository.refresh(targets_key=args.targets_key, force=args.force)
    print(f"re-signed: {', '.join(roles) or 'nothing was due'}")
    now = repository.now()
    for entry in repository.expiries():
        left = entry.expires - now
        note = "" if entry.key_online or (args.targets_key and entry.role == "targets") else (
            "  (key offline)")
        print(f"{entry.role:<10} version {entry.version:<5} expires "
              f"{entry.expires.isoformat()}  ({left.days} days left){note}")
    return 0


@contextmanager
def _hub_store(settings: HubSettings) -> Iterator[HubService]:
    """A service with its store (and model distribution) open, for one command."""
    service = HubService(settings, ingest=False)
    service.open_store()
    try:
        yield service
    finally:
        service.store.close()


def _distribution(service: HubService) -> ModelDistribution:
    assert service.distribution is not None  # open_store() sets it
    return service.distribution


def _models_publish(args: argparse.Namespace, settings: HubSettings) -> int:
    from models import ModelError, open_bundle

    try:
        bundle = open_bundle(args.bundle)
    except ModelError as exc:
        raise HubError(str(exc)) from exc
    with _hub_store(settings) as service:
        path = _distribution(service).publish(bundle, hardware=args.hardware or ["any"],
                                              targets_key=args.targets_key)
    print(f"published {bundle.label} as {path}")
    return 0


def _rollout_start(args: argparse.Namespace, settings: HubSettings) -> int:
    _name_broker(settings, "announcing the rollout")
    with _hub_store(settings) as service:
        rollout = _distribution(service).start(
            model=args.model, version=args.version, group=args.group,
            canary_percent=args.canary, max_failure_share=args.max_failure_share)
        warnings = warnings_now(service.store, settings, rollout)
    print(f"rollout {rollout.id}: {rollout.model} {rollout.version} to {rollout.group}, "
          f"canaries {', '.join(rollout.waves[0]) if rollout.waves else '-'}")
    for warning in warnings:  # a rollout that cannot progress says so from the start
        print(f"  warning: {warning}")
    return 0


def _rollout_rollback(args: argparse.Namespace, settings: HubSettings) -> int:
    _name_broker(settings, "announcing the previous model")
    with _hub_store(settings) as service:
        again = _distribution(service).roll_back(args.rollout_id,
                                                 targets_key=args.targets_key)
    print(f"rolled back; {again.model} {again.version} (the previous model) goes to "
          f"{again.group} in rollout {again.id}")
    return 0


def _rollout_command(args: argparse.Namespace, settings: HubSettings) -> int:
    if args.rollout_action != "pause":
        # Cancelling narrows the group's announcement, resuming may start a wave.
        _name_broker(settings, f"announcing the {args.rollout_action}")
    with _hub_store(settings) as service:
        distribution = _distribution(service)
        try:
            if args.rollout_action == "cancel":
                rollout = distribution.cancel(args.rollout_id, args.reason)
            elif args.rollout_action == "pause":
                rollout = distribution.pause(args.rollout_id)
            else:
                rollout = distribution.resume(args.rollout_id)
        except RolloutStateError as exc:
            raise HubError(str(exc)) from exc
        warnings = warnings_now(service.store, settings, rollout)
    print(f"rollout {rollout.id}: {rollout.status}")
    for warning in warnings:
        print(f"  warning: {warning}")
    return 0


def _rollout_list(args: argparse.Namespace, settings: HubSettings) -> int:
    with _hub_store(settings) as service:
        rollouts = [Rollout.from_dict(r) for r in service.store.list_rollouts()]
        warned = [(r, warnings_now(service.store, settings, r)) for r in rollouts]
    if args.json:
        print(json.dumps({"rollouts": [{**r.to_dict(), "warnings": w} for r, w in warned]}))
        return 0
    for rollout, warnings in warned:
        total = sum(len(w) for w in rollout.waves)
        print(f"{rollout.id}  {rollout.model} {rollout.version} -> {rollout.group}: "
              f"{rollout.status}, wave {rollout.wave + 1}, {len(rollout.results)}/{total} "
              f"reported {rollout.reason}")
        for warning in warnings:
            print(f"  warning: {warning}")
    return 0


def _doctor(args: argparse.Namespace, settings: HubSettings) -> int:
    profile = probe_hardware(args.root)
    plan = plan_for_runtime(profile, "onnx", label="hub models (ONNX)")
    if args.json:
        print(json.dumps({"hardware": profile.to_dict(), "plan": plan.to_dict()}, indent=2))
        return 0
    gpus = ", ".join(profile.nvidia_gpus) or "none"
    print(f"{profile.architecture}, {profile.cpu_count} cores, NVIDIA GPUs: {gpus}")
    print("\n".join(plan.lines()))
    return 0


def _demo(args: argparse.Namespace, settings: HubSettings) -> int:
    from cloud_hub.demo import run_demo

    return run_demo(port=args.port, loop=args.frames_loop)


if __name__ == "__main__":
    sys.exit(main())
