"""The edge agent service, composed: sources -> motion gate -> model -> policy -> outbox/uplink.

:class:`EdgeAgent` is the composition root: it builds the parts, wires the queues between
them, starts the workers and supervises them. Every thread the agent starts, by name:

``MainThread``
    Runs :meth:`EdgeAgent.run`: supervision, systemd notifications and watchdog, the
    status file, telemetry and gauges. Owns nothing the workers write.
``source:<name>`` (one per configured source)
    Reads its camera, file, folder or sample footage and puts frames on the bounded
    work queue. Owns its source and its health counters.
``pipeline``
    Takes a work item, first applies every verdict that has arrived (so no decision
    ignores one), then runs the gate, the model, the object tracker and the policy (one
    decision per tracked object), escalates, and runs the local fallback when a verdict
    is late. For a source that replays footage (``await_verdicts``) it then waits for
    that frame's verdicts before taking the next item. Owns the serving models (an
    update's swap is done between two items), the policy, the gates, the trackers and
    their track books, the pending verdicts, and the decision journal
    (:mod:`edge_agent.journal`): its file, and its messages, handed to the uplink to
    publish.
``uplink``
    Owns the outbox and the delivery window (:mod:`edge_agent.delivery.uplink`): commits,
    publishes, the hub's receipts and verdicts.
``paho-mqtt-client-<device id>``
    paho-mqtt's network loop for the uplink's connection; its callbacks only enqueue.
``home-assistant`` (when ``[home_assistant]`` is enabled)
    Publishes Home Assistant's MQTT discovery and the device's states on a local broker
    (:mod:`edge_agent.home_assistant`); the pipeline and the supervisor only enqueue.
    Its paho client's loop is ``paho-mqtt-client-<node>-ha``.
``actions`` (when actions are configured)
    Runs local actions (MQTT message, command, webhook) from its bounded queue.
``updater`` (when signed updates are on)
    Follows model announcements, verifies, stages and installs updates.
``sensor:<name>`` (one per sensor source)
    paho-mqtt's network loop for a sensor source's subscription.
``metrics-http`` (when ``metrics.port`` is set)
    Serves Prometheus metrics.

Any of these that dies with an exception ends the process at once with
:data:`EXIT_WORKER_CRASHED`, so that systemd restarts it; nothing acknowledged is lost,
since the outbox holds every escalation until the hub confirms it.

Shutdown (SIGTERM): sources stop, the pipeline finishes the item in hand, the uplink
commits everything it was given, and the agent announces itself offline.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edge_agent.actions import ActionEvent, ActionKind, ActionRunner
from edge_agent.config import AgentConfig, SourceConfig
from edge_agent.delivery import ConnectionState, Outbox, OutboxItem, PendingRecord, Uplink
from edge_agent.errors import ConfigError, EdgeAgentError, ListenError
from edge_agent.escalation import frame_event, window_event
from edge_agent.fallback import Pending, PendingVerdicts
from edge_agent.footage import SampleFootage
from edge_agent.home_assistant import HomeAssistantBridge
from edge_agent.inputs import PROBLEMS, InputMonitor
from edge_agent.journal import DecisionJournal, JournalFile
from edge_agent.metrics import AgentMetrics
from edge_agent.motion import MotionGate, Region
from edge_agent.mqtt import check_broker
from edge_agent.notify import SystemdNotifier
from edge_agent.policy import Decision, EscalationPolicy, FrameDecision
from edge_agent.sensors import ReadingWindow, SensorSource
from edge_agent.sources import FolderSource, FrameItem, SampleSource, Source, VideoSource
from edge_agent.tracking import ObjectTracker
from edge_agent.tracks import MAX_REMEMBERED_EVENTS, TrackBook
from edge_agent.updates import (
    ModelHealth,
    ModelInstaller,
    UpdateClient,
    Updater,
    device_fit,
    read_trusted_root,
)
from hardware import (
    HardwareError,
    HardwareProfile,
    Selection,
    load_model,
    plan_backends,
    probe_hardware,
)
from models import (
    AnomalyScore,
    Detection,
    Model,
    ModelBundle,
    ModelError,
    ModelStore,
    default_store_path,
)
from models.features import FEATURE_SETS
from sync import (
    BusyMessage,
    EventIdFactory,
    EventMessage,
    InputHealth,
    MessageError,
    ModelAnnouncement,
    StatusMessage,
    TelemetryMessage,
    TopicLayout,
    TrackEventMessage,
    UpdateReport,
    VerdictMessage,
    decode,
    encode,
    encode_event,
)
from sync.install import Step

log = logging.getLogger(__name__)

_Result = TypeVar("_Result")

VERSION = "0.1.0"
MAX_VERDICT_BYTES = 64 * 1024
EXIT_WORKER_CRASHED = 70  # EX_SOFTWARE: a worker thread died; systemd restarts the agent
STATUS_FILE = "status.json"
ModelLoader = Callable[[SourceConfig], tuple[Model, Selection]]
WorkItem = FrameItem | ReadingWindow


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """An escalation the hub will never get (dropped before delivery, e.g. a full disk)."""

    event_id: str
    reason: str


Intake = VerdictMessage | BusyMessage | Undeliverable


@dataclass(slots=True)
class _Counters:
    escalations: int = 0
    verdicts: int = 0
    fallbacks: int = 0
    inference_errors: int = 0
    malformed_verdicts: int = 0
    last_verdict: dict[str, Any] = field(default_factory=dict)


def store_model_loader(config: AgentConfig,
                       installer: ModelInstaller | None = None) -> ModelLoader:
    """Load each source's model on the best backend this machine has: the installed slot
    when signed updates are on (seeded from the store the first time), else the store."""
    store = ModelStore(config.model_store or default_store_path())
    profile = probe_hardware()

    def load(source: SourceConfig) -> tuple[Model, Selection]:
        bundle = store.resolve(source.model)
        if installer is not None:
            name = bundle.manifest.name
            if installer.active_version(name) is None:
                installer.seed(bundle)
            installer.resume(name)
            bundle = installer.active_bundle(name)
        return load_model(bundle, plan_backends(profile, bundle.manifest), only=source.backend)

    return load


class EdgeAgent:
    """One agent process.

    Args:
        config: The validated configuration.
        model_loader: Loads a source's model; tests pass one with fake backends.
        notifier: systemd notifications; from the environment by default.
        rng: Randomness for audit samples and backoff jitter.
    """

    def __init__(
        self, config: AgentConfig, *, model_loader: ModelLoader | None = None,
        notifier: SystemdNotifier | None = None, rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.layout = TopicLayout(config.mqtt.prefix)
        self.metrics = AgentMetrics()
        self._profile: HardwareProfile | None = None
        self.installer: ModelInstaller | None = None
        if config.updates.enabled:
            self.installer = ModelInstaller(config.state_dir, self._load_bundle)
        self._model_loader = model_loader or store_model_loader(config, self.installer)
        self.updater: Updater | None = None
        self._health: dict[str, ModelHealth] = {}
        self._notifier = notifier or SystemdNotifier.from_environment()
        self._rng = rng or random.Random()
        self._ids = EventIdFactory()
        self._policy = EscalationPolicy(config.policy, self._rng)
        self._pending = PendingVerdicts(config.fallback.verdict_timeout_s)
        self._work: queue.Queue[WorkItem] = queue.Queue(maxsize=2 * len(config.sources) + 2)
        self._intake: queue.Queue[Intake] = queue.Queue(maxsize=10_000)
        self._crash: tuple[str, BaseException] | None = None
        self._crashed = threading.Event()
        self.outbox = Outbox(config.outbox_path, config.outbox)
        self._source_stop = threading.Event()
        self._pipeline_stop = threading.Event()
        self._heartbeat = time.monotonic()
        self._busy_since: float | None = None
        self._counters = _Counters()
        self.models: dict[str, tuple[Model, Selection]] = {}
        self.sources: dict[str, Source | SensorSource] = {}
        self._gates: dict[str, MotionGate] = {}
        self._trackers: dict[str, ObjectTracker] = {}
        self._books: dict[str, TrackBook] = {}
        self._awaiting_sources = frozenset(c.name for c in config.sources if c.await_verdicts)
        # Each camera source's picture (written by the pipeline, one immutable value per
        # source, read by telemetry and the status file).
        self._inputs: dict[str, InputMonitor] = {}
        self.input_health: dict[str, InputHealth] = {}
        # Escalated motion: event id -> source and region.
        self._unexplained: dict[str, tuple[str, Region]] = {}
        self._journal = DecisionJournal(config.device.id)
        self._journal_file = JournalFile(config.journal_path,
                                         max_bytes=config.journal.max_bytes,
                                         backups=config.journal.backups)
        self.uplink: Uplink | None = None
        self._actions: ActionRunner | None = None
        self._home: HomeAssistantBridge | None = None
        self._started_at = time.time()
        self._corrupt_reported: dict[str, int] = {}
        self._reconnects_reported = 0
        self._processed: dict[str, int] = {}
        self._next_telemetry = 0.0

    # -- lifecycle -------------------------------------------------------------------

    def run(self, stop: threading.Event, *, exit_when_done: bool = False) -> int:
        """Run until ``stop`` is set (or, with ``exit_when_done``, the inputs end).

        Returns:
            0 after a clean stop; 1 if the uplink failed.

        Raises:
            EdgeAgentError: A model or source could not be set up.
        """
        previous_hook = threading.excepthook
        threading.excepthook = self._on_thread_crash
        try:
            return self._run(stop, exit_when_done)
        finally:
            threading.excepthook = previous_hook

    def _run(self, stop: threading.Event, exit_when_done: bool) -> int:
        self._load_models()
        self._build_sources()
        self._start_metrics_server()
        self.outbox.open()
        if self.config.journal.enabled:
            self._journal_file.open()
        if self.outbox.salvage is not None:
            self.metrics.outbox_damaged.inc()
            self.metrics.outbox_salvaged.inc(self.outbox.salvage.recovered)
        self._restore_pending()
        # The updater exists before the uplink subscribes to the group's retained
        # announcement: the broker hands it over once, at the subscription, and paho may
        # deliver it before ``uplink.start()`` has even returned; an announcement offered
        # while there was no updater was dropped, and a device that was offline at the
        # rollout never installed it.
        self._build_updater()
        subscriptions: tuple[str, ...] = ()
        if self.installer is not None:
            subscriptions = (self.layout.models(self.config.device.group),)
        self.uplink = Uplink(
            device_id=self.config.device.id, config=self.config.mqtt, outbox=self.outbox,
            layout=self.layout, status=self._status_message, on_verdict=self._take_verdict,
            on_busy=self._put_intake, on_malformed=self._malformed_verdict,
            on_message=self._on_message,
            subscriptions=subscriptions, on_drop=self._undeliverable, rng=self._rng,
        )
        self.uplink.start()
        if self.updater is not None:  # its reports go out through the uplink
            self.updater.start()
        self._actions = ActionRunner(self.config.actions, publish=self._publish_local,
                                     metrics=self.metrics)
        self._actions.start()
        if self.config.home_assistant.enabled:
            self._home = HomeAssistantBridge(self.config.home_assistant,
                                             self.config.device.id, VERSION)
            self._home.start()
        threads = [
            threading.Thread(target=self._pump, args=(source,), name=f"source:{name}",
                             daemon=True)
            for name, source in self.sources.items() if not isinstance(source, SensorSource)
        ] + [
            threading.Thread(target=self._pump, args=(source,), name=f"sensor:{name}",
                             daemon=True)
            for name, source in self.sources.items() if isinstance(source, SensorSource)
        ]
        for thread in threads:
            thread.start()
        pipeline = threading.Thread(target=self._pipeline, name="pipeline", daemon=True)
        pipeline.start()
        self._notifier.ready(self._summary())
        exit_code = 0
        try:
            exit_code = self._supervise(stop, exit_when_done, threads)
        finally:
            self._notifier.stopping()
            self._source_stop.set()
            for thread in threads:
                thread.join(5)
            self._pipeline_stop.set()
            pipeline.join(30)
            self._actions.stop()
            if self._home is not None:
                self._home.stop()
            self._journal_file.close()
            self.uplink.stop()
            self._write_status(running=False)
            if self.updater is not None:
                self.updater.stop()
            for model in {id(m): m for m, _ in self.models.values()}.values():
                model.close()
            self._notifier.close()
        return exit_code

    def _supervise(self, stop: threading.Event, exit_when_done: bool,
                   threads: list[threading.Thread]) -> int:
        interval = self._notifier.watchdog_interval_s or 1.0
        interval = min(interval, 1.0)
        while not stop.is_set():
            if self._crashed.wait(interval) or self._crash is not None:
                assert self._crash is not None
                name, exc = self._crash
                log.critical("worker thread %s died: %r; exiting with %d so that the service"
                             " restarts", name, exc, EXIT_WORKER_CRASHED)
                return EXIT_WORKER_CRASHED
            stuck_for = self._stuck_for()
            if stuck_for is None:
                self._notifier.watchdog()
                self._notifier.status(self._summary())
            else:
                self._notifier.status(f"pipeline stuck for {stuck_for:.0f} s")
                log.error("pipeline stuck for %.0f s; withholding the watchdog", stuck_for)
            self._refresh_gauges()
            if self._home is not None:
                self._home.counts(escalations=self._counters.escalations,
                                  backlog=self.uplink.counters().outbox_depth
                                  if self.uplink is not None else 0)
            self._write_status(running=True)
            self._send_telemetry()
            if exit_when_done and self._done(threads):
                log.info("all inputs finished and every escalation delivered; exiting")
                return 0
        return 0

    def _stuck_for(self) -> float | None:
        busy_since = self._busy_since
        now = time.monotonic()
        quiet = now - self._heartbeat
        stalled = now - busy_since if busy_since is not None else quiet
        if max(quiet, stalled) > self.config.watchdog.stuck_after_s:
            return max(quiet, stalled)
        return None

    def _done(self, threads: list[threading.Thread]) -> bool:
        assert self.uplink is not None
        counters = self.uplink.counters()
        return (
            not any(t.is_alive() for t in threads)
            and self._work.empty() and self._busy_since is None
            and len(self._pending) == 0
            and counters.outbox_depth == 0 and counters.inflight == 0
        )

    # -- set-up ----------------------------------------------------------------------

    def _load_bundle(self, bundle: ModelBundle) -> Model:
        """Load an installed or staged bundle on this machine's best backend."""
        if self._profile is None:
            self._profile = probe_hardware()
        model, _ = load_model(bundle, plan_backends(self._profile, bundle.manifest))
        return model

    def _load_models(self) -> None:
        loaded: dict[tuple[str, str | None], tuple[Model, Selection]] = {}
        for source in self.config.sources:
            key = (source.model, source.backend)
            try:
                # Sources that name the same model share one instance: updates swap it once.
                model, selection = loaded.get(key) or self._model_loader(source)
            except (ModelError, HardwareError, EdgeAgentError) as exc:
                raise EdgeAgentError(f"source {source.name}: {exc}") from exc
            loaded[key] = (model, selection)
            task = model.manifest.task
            wants = "anomaly" if source.kind == "sensor" else "detector"
            if task != wants:
                raise ConfigError(
                    f"source {source.name}: model {model.bundle.label} is a {task} model; "
                    f"a {source.kind} source needs a {wants} model", key="sources.model",
                )
            feature_set = model.manifest.input.feature_set
            if wants == "anomaly" and feature_set not in FEATURE_SETS:
                raise ConfigError(
                    f"source {source.name}: model needs feature set {feature_set!r}, "
                    f"this agent has {', '.join(FEATURE_SETS)}", key="sources.model",
                )
            self.models[source.name] = (model, selection)
            manifest = model.manifest
            self.metrics.backend.labels(source.name, manifest.name, manifest.version,
                                        selection.chosen).set(1)
            for skipped in selection.skipped:
                log.warning("source %s: skipped backend %s: %s", source.name, skipped.name,
                            skipped.reason)
            log.info("source %s: %s on %s", source.name, model.bundle.label, selection.chosen)

    def _build_sources(self) -> None:
        mqtt = self.config.mqtt
        for cfg in self.config.sources:
            source: Source | SensorSource
            if cfg.kind == "video":
                assert cfg.url is not None
                source = VideoSource(cfg.name, cfg.url, max_fps=cfg.max_fps, loop=cfg.loop,
                                     max_pixels=cfg.max_pixels)
            elif cfg.kind == "folder":
                assert cfg.url is not None
                source = FolderSource(cfg.name, Path(cfg.url), max_fps=cfg.max_fps,
                                      max_pixels=cfg.max_pixels)
            elif cfg.kind == "sample":
                source = SampleSource(cfg.name, SampleFootage(), max_fps=cfg.max_fps,
                                      loop=cfg.loop)
            else:
                assert cfg.topic is not None
                broker = cfg.broker or mqtt
                check_broker(broker)  # a wrong CA or host name stops the agent here
                source = SensorSource(cfg.name, broker=broker, topic=cfg.topic,
                                      client_id=f"{self.config.device.id}-{cfg.name}",
                                      window=cfg.window)
            self.sources[cfg.name] = source
            self._gates[cfg.name] = MotionGate(cfg.motion)
            self._trackers[cfg.name] = ObjectTracker(self.config.tracking)
            self._books[cfg.name] = TrackBook(cfg.name)
            if cfg.kind != "sensor":
                self._inputs[cfg.name] = InputMonitor()

    def _start_metrics_server(self) -> None:
        if self.config.metrics.port:
            from prometheus_client import start_http_server

            try:
                _, thread = start_http_server(self.config.metrics.port,
                                              self.config.metrics.host,
                                              registry=self.metrics.registry)
            except OSError as exc:
                raise ListenError(
                    f"metrics.port = {self.config.metrics.port}: cannot listen on "
                    f"{self.config.metrics.host}:{self.config.metrics.port}: "
                    f"{exc.strerror or exc}", key="metrics.port") from exc
            thread.name = "metrics-http"
            log.info("metrics on http://%s:%d/metrics", self.config.metrics.host,
                     self.config.metrics.port)

    def _build_updater(self) -> None:
        """The updater, its thread not yet started, with the health windows of installs the
        agent was stopped in queued first; announcements offered meanwhile queue behind."""
        updates = self.config.updates
        if self.installer is None or not updates.url or updates.trusted_root is None:
            return
        client = UpdateClient(self.config.state_dir / "tuf", updates.url,
                              trusted_root=read_trusted_root(updates.trusted_root))
        self.updater = Updater(
            device_id=self.config.device.id, config=updates, installer=self.installer,
            client=client, fit=device_fit(self._profile or probe_hardware()),
            swap=self._swap_model, health=self.model_health, report=self._send_report,
        )
        for name in {m.manifest.name for m, _ in self.models.values()}:
            record = self.installer.record(name)
            if record is not None and record.step == Step.ACTIVE:
                self.updater.resume(record)

    def model_health(self, name: str) -> ModelHealth:
        """The serving model's counters (``name`` is the model's name)."""
        return self._health.setdefault(name, ModelHealth())

    def _swap_model(self, name: str, model: Model) -> Model | None:
        """Make ``model`` serve every source whose model is ``name``; between two frames,
        because the pipeline reads ``self.models`` once per frame."""
        previous = None
        for source, (current, selection) in list(self.models.items()):
            if current.manifest.name == name:
                previous = current
                self.models[source] = (model, selection)
        self._health[name] = ModelHealth(warmup=self.config.updates.health_warmup_inferences)
        if self.uplink is not None:
            self.uplink.publish_status("online")
        return previous

    def _send_report(self, report: UpdateReport) -> None:
        if self.uplink is not None:
            self.uplink.publish_side(self.layout.updates(self.config.device.id),
                                     encode(report), qos=1)

    # -- source threads --------------------------------------------------------------

    def _pump(self, source: Source | SensorSource) -> None:
        for item in source.frames(self._source_stop):
            if source.live:
                try:
                    self._work.put_nowait(item)
                except queue.Full:
                    self.metrics.busy_drops.labels(source.name).inc()
                continue
            while not self._source_stop.is_set():
                try:
                    self._work.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue

    # -- the pipeline thread ---------------------------------------------------------

    def _pipeline(self) -> None:
        while not self._pipeline_stop.is_set():
            self._heartbeat = time.monotonic()
            try:
                item = self._work.get(timeout=0.1)
            except queue.Empty:
                item = None
            # Every verdict that arrived before this item was taken is applied before it is
            # decided: a tracked object is not escalated again while its verdict waits here.
            self._handle_intake()
            if item is not None:
                self._busy_since = time.monotonic()
                try:
                    self._process(item)
                finally:
                    self._busy_since = None
                if item.source in self._awaiting_sources:
                    self._await_verdicts(item.source)
            self._apply_fallbacks()

    def _await_verdicts(self, source: str) -> None:
        """Replay (``await_verdicts``): apply verdicts as they arrive until none of
        ``source``'s escalations waits any more, each either judged or fallen back."""
        while self._pending.waiting_for(source) and not self._pipeline_stop.is_set():
            self._heartbeat = time.monotonic()
            self._handle_intake(wait_s=0.1)
            self._apply_fallbacks()

    def _process(self, item: WorkItem) -> None:
        name = item.source
        model, _ = self.models[name]
        self._processed[name] = self._processed.get(name, 0) + 1
        if isinstance(item, ReadingWindow):
            self._process_window(item, model)
            return
        self.metrics.frames.labels(name).inc()
        self._observe_input(name, item)
        gate = self._gates[name].check(item.image)
        if not gate.infer:
            self.metrics.gated.labels(name).inc()
            return
        def detect(serving: Model) -> list[Detection]:
            return serving.detect(item.image)

        outcome = self._infer(name, model, detect, f"frame {item.index}")
        if outcome is None:
            return
        detections, elapsed, health = outcome
        book = self._books[name]
        height, width = item.image.shape[:2]
        observation = book.observe(
            item.index, self._trackers[name].update(detections, (width, height)))
        now = time.monotonic()
        frame = self._policy.decide_tracks(name, observation, now)
        counted = self._count_frame(name, health, elapsed, frame)
        if self._home is not None:
            self._home.presence(name, any(d.positive for d in frame.decisions))
        self._record(*self._journal.frame(observation, frame, time.time()))
        for decision in frame.escalations:  # one escalation per object, each its own crop
            assert decision.track is not None
            assert decision.evidence is not None
            event = frame_event(
                event_id=self._ids(), device_id=self.config.device.id, source=name,
                captured_at=item.captured_at, reason=decision.reason,  # type: ignore[arg-type]
                priority=decision.priority, manifest=model.manifest,
                detections=decision.detections, image=item.image,
                crop_max_bytes=self.config.policy.crop_max_bytes,
                thumbnail_width=self.config.policy.thumbnail_width,
                verdict_timeout_s=self.config.fallback.verdict_timeout_s,
            )
            self._escalate(event, decision)
            book.escalated(decision.track, event.event_id, decision.evidence, now)
            self._record(self._journal.escalated(decision.track, event.event_id, time.time()))
        motion = self._policy.decide_motion(name, gate.regions, detections, now,
                                            (width, height))
        if motion is not None and motion.action == "escalate":
            # Motion the edge model cannot explain: the hub judges the moving region.
            event = frame_event(
                event_id=self._ids(), device_id=self.config.device.id, source=name,
                captured_at=item.captured_at, reason="unexplained",
                priority=motion.priority, manifest=model.manifest, detections=(),
                image=item.image, crop_max_bytes=self.config.policy.crop_max_bytes,
                thumbnail_width=self.config.policy.thumbnail_width, region=motion.region,
                verdict_timeout_s=self.config.fallback.verdict_timeout_s,
            )
            self._escalate(event, motion)
            assert motion.region is not None
            self._unexplained[event.event_id] = (name, motion.region)
            while len(self._unexplained) > MAX_REMEMBERED_EVENTS:
                del self._unexplained[next(iter(self._unexplained))]
        decided_here = tuple(d for d in frame.decisions if d.action == "local" and d.positive)
        if decided_here or (motion is not None and motion.action == "local" and motion.positive):
            self._act("decision", name, tuple(det for d in decided_here for det in d.detections))
        if counted:  # after the decision's work, so that the shadow delays nothing
            health.run_shadow(detect, model)

    def _observe_input(self, name: str, item: FrameItem) -> None:
        """Measure the source's picture (brightness, contrast, sharpness, frozen)."""
        health = self._inputs[name].observe(item.image)
        self.input_health[name] = health
        self.metrics.input_brightness.labels(name).set(health.brightness)
        self.metrics.input_contrast.labels(name).set(health.contrast)
        self.metrics.input_sharpness.labels(name).set(health.sharpness)
        self.metrics.input_frozen_frames.labels(name).set(health.frozen_frames)
        for problem in PROBLEMS:
            self.metrics.input_problem.labels(name, problem).set(
                1 if problem in health.problems else 0)

    def _process_window(self, item: ReadingWindow, model: Model) -> None:
        name = item.source
        self.metrics.frames.labels(name).inc()
        feature_set = model.manifest.input.feature_set
        assert feature_set is not None
        features = FEATURE_SETS[feature_set](item.values)

        def score(serving: Model) -> AnomalyScore:
            [result] = serving.score(features)
            return result

        outcome = self._infer(name, model, score, "anomaly window")
        if outcome is None:
            return
        anomaly, elapsed, health = outcome
        decision = self._policy.decide_anomaly(name, anomaly, time.monotonic())
        counted = self._count_decision(name, health, elapsed, decision)
        if decision.action == "escalate":
            self._escalate(window_event(
                event_id=self._ids(), device_id=self.config.device.id, source=name,
                captured_at=item.captured_at, priority=decision.priority,
                manifest=model.manifest, values=item.values, score=anomaly.score,
                verdict_timeout_s=self.config.fallback.verdict_timeout_s,
            ), decision)
        if counted:
            health.run_shadow(score, model)

    def _infer(self, source: str, model: Model, run: Callable[[Model], _Result],
               what: str) -> tuple[_Result, float, ModelHealth] | None:
        """Run ``model`` on one input of ``source``, timed and counted; ``None`` if it
        failed (logged, counted, and recorded against the model's health)."""
        health = self.model_health(model.manifest.name)
        started = time.perf_counter()
        try:
            result = run(model)
        except ModelError as exc:
            health.record(None)
            self._counters.inference_errors += 1
            self.metrics.dropped.labels("inference-error").inc()
            log.error("source %s %s: inference failed: %s", source, what, exc)
            return None
        elapsed = time.perf_counter() - started
        self.metrics.latency.labels(source).observe(elapsed)
        self.metrics.inferences.labels(source).inc()
        return result, elapsed, health

    def _count_decision(self, source: str, health: ModelHealth, elapsed: float,
                        decision: Decision) -> bool:
        """Count a decision; whether the health window counted the inference."""
        self.metrics.decisions.labels(source, decision.action, decision.reason).inc()
        return health.record(elapsed, escalated=decision.action == "escalate")

    def _count_frame(self, source: str, health: ModelHealth, elapsed: float,
                     frame: FrameDecision) -> bool:
        """Count a frame's decisions (one per tracked object); whether the health window
        counted the inference."""
        for decision in frame.decisions:
            self.metrics.decisions.labels(source, decision.action, decision.reason).inc()
        if not frame.decisions:
            self.metrics.decisions.labels(source, "drop", "nothing").inc()
        return health.record(elapsed, escalated=bool(frame.escalations))

    def _escalate(self, event: EventMessage, decision: Decision) -> None:
        assert self.uplink is not None
        now = time.monotonic()
        boxes = tuple(d.box for d in decision.detections)
        pending = self._pending.add(event.event_id, event.source, decision.positive, now, boxes)
        record = PendingRecord(event.event_id, event.source, decision.positive, boxes,
                               pending.deadline, self.outbox.clock.boot_id)
        item = OutboxItem(event.event_id, self.layout.events(self.config.device.id),
                          encode_event(event), event.priority, time.time(), pending=record,
                          created_mono=now)
        while True:  # back-pressure: wait for the uplink rather than lose the event
            try:
                self.uplink.submit(item, timeout_s=0.5)
                break
            except queue.Full:
                self._heartbeat = time.monotonic()
                log.warning("uplink queue full; waiting to hand over %s", event.event_id)
        self._counters.escalations += 1
        self.metrics.escalations.labels(event.source, event.reason).inc()
        if self._home is not None and event.crop_jpeg is not None:
            self._home.crop(event.crop_jpeg)

    # -- verdicts and the local fallback ----------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        """Called in paho's thread for model announcements: hand them to the updater."""
        if self.updater is None or topic != self.layout.models(self.config.device.group):
            return
        if not payload:
            return  # a cleared retained announcement
        try:
            announcement = decode(payload, ModelAnnouncement, max_bytes=MAX_VERDICT_BYTES)
        except MessageError as exc:
            self.metrics.malformed.labels("announcement").inc()
            log.warning("dropped a bad model announcement: %s", exc)
            return
        self.updater.offer(announcement)

    def _take_verdict(self, verdict: VerdictMessage) -> None:
        """Called in the uplink thread: queue a verdict for the pipeline thread."""
        self._put_intake(verdict)

    def _undeliverable(self, event_id: str, reason: str) -> None:
        """Called in the uplink thread: an escalation was dropped before the hub got it."""
        self.metrics.dropped.labels(reason).inc()
        self._put_intake(Undeliverable(event_id, reason))

    def _put_intake(self, item: Intake) -> None:
        try:
            self._intake.put_nowait(item)
        except queue.Full:
            self.metrics.dropped.labels("verdict-queue-full").inc()

    def _malformed_verdict(self, topic: str, reason: str) -> None:
        self.metrics.malformed.labels("verdict").inc()
        self._counters.malformed_verdicts += 1

    def _handle_intake(self, *, wait_s: float = 0.0) -> None:
        """Apply every verdict (or undeliverable escalation) queued, waiting up to
        ``wait_s`` for the first."""
        while True:
            try:
                item = self._intake.get(timeout=wait_s) if wait_s else self._intake.get_nowait()
            except queue.Empty:
                return
            wait_s = 0.0
            if isinstance(item, Undeliverable):
                entry = self._pending.give_up(item.event_id)
                if entry is not None:
                    self._fall_back(entry, f"undeliverable ({item.reason})")
                continue
            if isinstance(item, BusyMessage):
                # The hub stored it but will not judge it in time: decide now, not at
                # the timeout.
                self.metrics.busy.labels(item.reason).inc()
                entry = self._pending.give_up(item.event_id)
                if entry is not None:
                    self._fall_back(entry, f"hub busy ({item.reason})")
                continue
            self._apply_verdict(item)

    def _restore_pending(self) -> None:
        """Wait again for verdicts of escalations made before a restart: the outbox kept
        them. One from an earlier boot has lost its monotonic deadline: it is due now."""
        now = time.monotonic()
        boot = self.outbox.clock.boot_id
        restored = 0
        for record in self.outbox.pending():
            deadline = record.deadline_mono if record.boot_id == boot else now
            self._pending.restore(
                Pending(record.event_id, record.source, record.positive,
                        deadline - self._pending.timeout_s, deadline, record.boxes),
                fell_back=record.fell_back)
            restored += 1
        if restored:
            log.info("waiting again for %d verdict(s) from before the restart", restored)

    def _apply_verdict(self, verdict: VerdictMessage) -> None:
        confirmed = verdict.outcome == "confirmed"
        resolution = self._pending.resolve(verdict.event_id, confirmed)
        motion = self._unexplained.pop(verdict.event_id, None)
        if motion is not None:
            self.metrics.unexplained_verdicts.labels(motion[0], verdict.outcome).inc()
            self._policy.remember_motion(motion[0], motion[1], confirmed, time.monotonic())
        self.metrics.verdicts.labels(verdict.outcome, resolution.kind).inc()
        self._counters.verdicts += 1
        self._counters.last_verdict = {
            "event_id": verdict.event_id, "outcome": verdict.outcome,
            "timing": resolution.kind, "at": time.time(),
        }
        pending = resolution.pending
        if pending is None:
            return
        assert self.uplink is not None
        self.uplink.pending_resolved(verdict.event_id)
        # The track that asked takes this verdict for its later frames.
        book = self._books.get(pending.source)
        state = book.verdict(verdict.event_id, confirmed, time.monotonic()) if book else None
        if state is not None:
            self._record(self._journal.verdict(
                state, verdict.event_id, confirmed=confirmed, late=resolution.kind == "late",
                agrees=resolution.agrees, at=time.time()))
        labels = tuple(sorted({d.label for d in verdict.detections}))
        score = max((d.score for d in verdict.detections), default=None)
        if resolution.kind == "on-time":
            self._dispatch(ActionEvent("verdict", self.config.device.id, pending.source,
                                       confirmed, time.time(), verdict.event_id,
                                       verdict.outcome, labels, score))
        else:
            log.info("late verdict for %s: %s, %s the local fallback", verdict.event_id,
                     verdict.outcome, "agreeing with" if resolution.agrees else "overruling")
            self._dispatch(ActionEvent("reconciled", self.config.device.id, pending.source,
                                       confirmed, time.time(), verdict.event_id,
                                       verdict.outcome, labels, score, resolution.agrees))

    def _apply_fallbacks(self) -> None:
        for entry in self._pending.expire(time.monotonic()):
            self._fall_back(entry, f"no verdict in {self.config.fallback.verdict_timeout_s:.0f} s")

    def _fall_back(self, entry: Pending, why: str) -> None:
        book = self._books.get(entry.source)
        state = book.fell_back(entry.event_id) if book is not None else None
        if state is not None:
            self._record(self._journal.fell_back(state, time.time()))
        self._counters.fallbacks += 1
        self.metrics.fallbacks.inc()
        if self.uplink is not None:
            self.uplink.pending_fell_back(entry.event_id)
        act = self.config.fallback.action == "act"
        log.info("%s for %s: %s locally", why, entry.event_id, "acting" if act else "holding")
        if act:
            self._dispatch(ActionEvent("fallback", self.config.device.id, entry.source,
                                       entry.positive, time.time(), entry.event_id))

    def _record(self, *messages: TrackEventMessage) -> None:
        """Write journal messages to the journal's file and publish them (QoS 0)."""
        if not self.config.journal.enabled:
            return
        topic = self.layout.journal(self.config.device.id)
        for message in messages:
            payload = encode(message)
            self._journal_file.write(payload)
            if self.config.journal.publish and self.uplink is not None:
                self.uplink.publish_side(topic, payload)

    def _act(self, kind: ActionKind, source: str, detections: tuple[Detection, ...]) -> None:
        labels = tuple(sorted({d.label for d in detections}))
        score = max((d.score for d in detections), default=None)
        self._dispatch(ActionEvent(kind, self.config.device.id, source, True,
                                   time.time(), None, None, labels, score))

    def _dispatch(self, event: ActionEvent) -> None:
        if self._actions is not None:
            self._actions.dispatch(event)

    def _publish_local(self, topic: str, payload: bytes, timeout_s: float) -> None:
        if self.uplink is not None:
            self.uplink.publish_confirmed(topic, payload, timeout_s)

    # -- status ----------------------------------------------------------------------

    def _on_thread_crash(self, args: threading.ExceptHookArgs) -> None:
        """threading.excepthook while the agent runs: any worker that dies ends the agent."""
        name = args.thread.name if args.thread is not None else "?"
        exc = args.exc_value if args.exc_value is not None else args.exc_type()
        log.critical("thread %s died", name, exc_info=exc)
        if self._crash is None:
            self._crash = (name, exc)
        self._crashed.set()

    def _status_message(self, state: ConnectionState) -> StatusMessage:
        return StatusMessage(
            device_id=self.config.device.id, state=state,
            at=time.time(), agent_version=VERSION,
            models={m.manifest.name: m.manifest.version for m, _ in self.models.values()},
            backend=", ".join(sorted({s.chosen for _, s in self.models.values()})),
            updates_enabled=self.config.updates.enabled,
        )

    def _send_telemetry(self) -> None:
        interval = self.config.mqtt.telemetry_interval_s
        now = time.monotonic()
        if not interval or now < self._next_telemetry or self.uplink is None:
            return
        self._next_telemetry = now + interval
        snapshot = self.snapshot()
        values = {
            "escalations": snapshot["escalations"], "verdicts": snapshot["verdicts"],
            "fallbacks": snapshot["fallbacks"], "outbox_events": snapshot["outbox"]["events"],
            "outbox_bytes": snapshot["outbox"]["bytes"], "reconnects": snapshot["reconnects"],
            "dropped": snapshot["dropped"], "uptime_s": time.time() - self._started_at,
            "outbox_degraded": 0.0 if snapshot["outbox"]["degraded"] is None else 1.0,
            "outbox_salvaged": float(self.outbox.salvage.recovered
                                     if self.outbox.salvage is not None else 0),
        }
        for name, source in snapshot["sources"].items():
            values[f"frames.{name}"] = source["frames"]
            values[f"healthy.{name}"] = 1.0 if source["healthy"] else 0.0
        inputs = dict(self.input_health)  # one copy: the pipeline may add a source's first
        for name, picture in inputs.items():  # as numbers too, for dashboards
            values[f"brightness.{name}"] = picture.brightness
            values[f"contrast.{name}"] = picture.contrast
            values[f"sharpness.{name}"] = picture.sharpness
            values[f"frozen_frames.{name}"] = picture.frozen_frames
        message = TelemetryMessage(device_id=self.config.device.id, at=time.time(),
                                   values={k: float(v) for k, v in values.items()},
                                   inputs=inputs)
        self.uplink.publish_side(self.layout.telemetry(self.config.device.id), encode(message))

    def _summary(self) -> str:
        connected = self.uplink is not None and self.uplink.connected
        depth = self.uplink.outbox.count if self.uplink is not None else 0
        return (f"{len(self.sources)} source(s); broker {'up' if connected else 'down'}; "
                f"outbox {depth}; escalations {self._counters.escalations}")

    def _refresh_gauges(self) -> None:
        assert self.uplink is not None
        counters = self.uplink.counters()
        self.metrics.outbox_events.set(counters.outbox_depth)
        self.metrics.outbox_unconfirmed.set(counters.unconfirmed)
        for reason in ("disk-full", "outbox-error"):
            self.metrics.outbox_degraded.labels(reason).set(
                1 if counters.degraded == reason else 0)
        self.metrics.outbox_bytes.set(counters.outbox_bytes)
        self.metrics.reconnects.inc(counters.reconnects - self._reconnects_reported)
        self._reconnects_reported = counters.reconnects
        self.metrics.connected.set(1 if counters.connected else 0)
        for name, source in self.sources.items():
            self.metrics.source_healthy.labels(name).set(1 if source.health.healthy else 0)
            with source.health.lock:
                corrupt = source.health.corrupt
            new = corrupt - self._corrupt_reported.get(name, 0)
            if new > 0:
                self.metrics.corrupt.labels(name).inc(new)
                self._corrupt_reported[name] = corrupt

    def snapshot(self, *, running: bool = True) -> dict[str, Any]:
        """Everything ``edge-agent status`` shows."""
        uplink = self.uplink.counters() if self.uplink is not None else None
        sources = {}
        for name, source in self.sources.items():
            model, selection = self.models[name]
            health = source.health
            sources[name] = {
                "model": model.bundle.label, "backend": selection.chosen,
                "healthy": health.healthy, "frames": health.frames,
                "processed": self._processed.get(name, 0),
                "corrupt": health.corrupt, "refused": dict(health.refused),
                "reopens": health.reopens,
                "finished": health.finished, "last_error": health.last_error,
            }
            picture = self.input_health.get(name)
            if picture is not None:
                sources[name]["input"] = picture.model_dump(mode="json")
        return {
            "device_id": self.config.device.id, "running": running, "pid": os.getpid(),
            "version": VERSION, "started_at": self._started_at, "updated_at": time.time(),
            "connected": bool(uplink and uplink.connected),
            "outbox": {"events": uplink.outbox_depth if uplink else 0,
                       "bytes": uplink.outbox_bytes if uplink else 0,
                       "inflight": uplink.inflight if uplink else 0,
                       "unconfirmed": uplink.unconfirmed if uplink else 0,
                       "degraded": uplink.degraded if uplink else None,
                       "salvage": self._salvage_summary()},
            "threads": sorted(thread.name for thread in threading.enumerate()),
            "published": uplink.published if uplink else 0,
            "reconnects": uplink.reconnects if uplink else 0,
            "dropped": uplink.dropped if uplink else 0,
            "escalations": self._counters.escalations,
            "malformed_verdicts": self._counters.malformed_verdicts,
            "verdicts": self._counters.verdicts,
            "fallbacks": self._counters.fallbacks,
            "pending_verdicts": len(self._pending),
            "last_verdict": self._counters.last_verdict or None,
            "sources": sources,
        }

    def _salvage_summary(self) -> dict[str, Any] | None:
        report = self.outbox.salvage
        if report is None:
            return None
        return {"moved_to": str(report.moved_to), "reason": report.reason,
                "recovered": report.recovered, "unreadable": report.unreadable}

    def _write_status(self, *, running: bool) -> None:
        path = self.config.state_dir / STATUS_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(self.snapshot(running=running), indent=2))
            temporary.replace(path)
        except OSError as exc:
            log.warning("cannot write %s: %s", path, exc)
