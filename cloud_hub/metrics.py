"""The hub's Prometheus metrics, in a registry of its own (one per hub instance).

Names follow Prometheus's rules (``promtool check metrics`` is clean, a test runs it):
counters end in ``_total`` (prometheus_client adds it), units are base units in the
name, ``hub_build_info`` carries versions as labels, and the process's own ``process_*``
and ``python_*`` metrics are exported beside them.

Fleet state comes from two places: the store, read at each scrape (:class:`FleetCollector`:
devices online and offline by group, rollouts by status, devices by the step of their
latest update report), and each device's telemetry, kept as it arrives (its outbox
backlog, and when it last reported: :class:`DeviceBacklogs`).

The page stays bounded whatever the fleet's size: no series is labelled by device except
for the ``top`` devices with the largest backlogs (``CLOUD_HUB_METRICS_TOP_DEVICES``);
every device counts in the fleet's totals.
"""

from __future__ import annotations

import logging
import platform
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from cloud_hub.errors import HubError
from cloud_hub.store import FleetState
from cloud_hub.webhooks import WebhookMetrics
from sync import release

log = logging.getLogger(__name__)

SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)
WAIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class FleetCollector(Collector):
    """Fleet state read from the store at each scrape.

    Args:
        read: Returns the counts (:meth:`cloud_hub.store.Store.fleet_state`).
    """

    def __init__(self, read: Callable[[], FleetState]) -> None:
        self._read = read

    def describe(self) -> Iterable[Metric]:
        """The metric names, without reading the store (the registry asks at once)."""
        return self._families(FleetState((), (), ()))

    def collect(self) -> Iterable[Metric]:
        """The current counts; none when the store cannot be read (logged)."""
        try:
            state = self._read()
        except HubError as exc:
            log.warning("fleet metrics left out of this scrape: %s", exc)
            return []
        return self._families(state)

    @staticmethod
    def _families(state: FleetState) -> list[Metric]:
        devices = GaugeMetricFamily("hub_devices", "Devices by group and state",
                                    labels=["group", "state"])
        for group, online, count in state.devices:
            devices.add_metric([group, "online" if online else "offline"], count)
        rollouts = GaugeMetricFamily("hub_rollouts", "Rollouts by status", labels=["status"])
        for status, count in state.rollouts:
            rollouts.add_metric([status], count)
        steps = GaugeMetricFamily("hub_device_update_steps",
                                  "Devices by the step of their latest update report",
                                  labels=["step"])
        for step, count in state.update_steps:
            steps.add_metric([step], count)
        return [devices, rollouts, steps]


@dataclass(frozen=True, slots=True)
class DeviceBacklog:
    """What a device's latest telemetry said: when it was taken, and its outbox."""

    at: float
    events: float
    bytes: float


def top_backlogs(backlogs: Mapping[str, DeviceBacklog],
                 top: int) -> list[tuple[str, DeviceBacklog]]:
    """The ``top`` devices with the most events waiting (then the most bytes, then by id)."""
    ranked = sorted(backlogs.items(), key=lambda item: (-item[1].events, -item[1].bytes,
                                                        item[0]))
    return ranked[:top]


class DeviceBacklogs(Collector):
    """Each device's latest backlog, kept as its telemetry arrives; exported as fleet
    totals, and per device for the ``top`` largest only.

    Args:
        top: Devices exported with their own series (0: none).
    """

    def __init__(self, top: int) -> None:
        self.top = top
        self._lock = threading.Lock()  # telemetry arrives on ingest threads, scrapes on HTTP's
        self._backlogs: dict[str, DeviceBacklog] = {}

    def record(self, device_id: str, at: float, values: Mapping[str, float]) -> None:
        """Keep one device's latest telemetry (a value it does not send stays as it was)."""
        with self._lock:
            before = self._backlogs.get(device_id, DeviceBacklog(at, 0.0, 0.0))
            self._backlogs[device_id] = DeviceBacklog(
                at, values.get("outbox_events", before.events),
                values.get("outbox_bytes", before.bytes))

    def describe(self) -> Iterable[Metric]:
        """The metric names."""
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        """Fleet totals, and the top devices' own series."""
        with self._lock:
            backlogs = dict(self._backlogs)
        return self._families(backlogs)

    def _families(self, backlogs: Mapping[str, DeviceBacklog]) -> list[Metric]:
        reporting = GaugeMetricFamily("hub_fleet_reporting_devices",
                                      "Devices whose telemetry the hub has received")
        reporting.add_metric([], len(backlogs))
        events = GaugeMetricFamily("hub_fleet_outbox_events",
                                   "Escalations waiting in all devices' outboxes")
        events.add_metric([], sum(b.events for b in backlogs.values()))
        size = GaugeMetricFamily("hub_fleet_outbox_bytes", "Bytes in all devices' outboxes")
        size.add_metric([], sum(b.bytes for b in backlogs.values()))
        top_events = GaugeMetricFamily(
            "hub_device_outbox_events", "Escalations waiting in a device's outbox, for the "
            "devices with the largest backlogs", labels=["device"])
        top_bytes = GaugeMetricFamily(
            "hub_device_outbox_bytes", "Bytes in a device's outbox, for the devices with "
            "the largest backlogs", labels=["device"])
        top_time = GaugeMetricFamily(
            "hub_device_telemetry_timestamp_seconds", "When a device's latest telemetry "
            "was taken (its clock), for the devices with the largest backlogs",
            labels=["device"])
        for device_id, backlog in top_backlogs(backlogs, self.top):
            top_events.add_metric([device_id], backlog.events)
            top_bytes.add_metric([device_id], backlog.bytes)
            top_time.add_metric([device_id], backlog.at)
        return [reporting, events, size, top_events, top_bytes, top_time]


class HubMetrics:
    """Every metric the hub exports at ``/metrics``.

    Args:
        top_devices: Devices exported with series of their own (the largest backlogs).
    """

    def __init__(self, top_devices: int = 10) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.build = Info("hub_build", "Versions of the hub and its runtimes", registry=r)
        self.build.info({"version": release(), "python": platform.python_version(),
                         "onnxruntime": _installed("onnxruntime")})
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.backlogs = DeviceBacklogs(top_devices)
        r.register(self.backlogs)
        self.ingested = Counter("hub_events_ingested", "Escalations accepted", registry=r)
        self.event_formats = Counter(
            "hub_event_formats", "Escalations received, by wire format (frame: images as "
            "raw bytes; json: base64 inside JSON, from agents or outboxes before it)",
            ["format"], registry=r)
        self.journal_steps = Counter("hub_journal_steps", "Decision journal steps kept",
                                     registry=r)
        self.dropped = Counter("hub_messages_dropped", "Messages refused, by reason",
                               ["reason"], registry=r)
        self.dedup_hits = Counter("hub_dedup_hits", "Redelivered escalations answered again",
                                  registry=r)
        self.admission_depth = Gauge(
            "hub_admission_queue_depth",
            "Stored escalations waiting for judgement (scale the hub out on it)",
            registry=r)
        self.admitted = Counter("hub_events_admitted", "Escalations admitted for judgement",
                                registry=r)
        self.judging_yielded = Counter(
            "hub_judging_yielded", "Times a judge thread waited for intake to store the "
            "messages that had arrived (intake behind: storing comes first)", registry=r)
        self.shed = Counter("hub_events_shed",
                            "Escalations stored but answered busy, not judged, by reason",
                            ["reason"], registry=r)
        self.disconnects = Counter("hub_mqtt_disconnects",
                                   "Times the broker session was lost while running",
                                   registry=r)
        self.verdicts = Counter("hub_verdicts", "Verdicts sent", ["outcome"], registry=r)
        self.receipts = Counter("hub_receipts", "Receipts sent for stored, unjudged events",
                                registry=r)
        self.retries = Counter("hub_message_retries",
                               "Transient failures while handling a message, by reason "
                               "(the message stays unacknowledged until it is stored)",
                               ["reason"], registry=r)
        self.batch_size = Histogram("hub_batch_size", "Requests per model call", ["model"],
                                    buckets=SIZE_BUCKETS, registry=r)
        self.batch_limit = Gauge("hub_batch_max_size",
                                 "Largest batch, as configured or chosen by measurement",
                                 ["model"], registry=r)
        self.batch_wait = Histogram("hub_batch_wait_seconds",
                                    "How long a batch's first request waited", ["model"],
                                    buckets=WAIT_BUCKETS, registry=r)
        self.inference = Histogram("hub_inference_seconds", "Judging one escalation",
                                   buckets=SECONDS_BUCKETS, registry=r)
        self.verdict_latency = Histogram("hub_verdict_latency_seconds",
                                         "Edge capture to verdict sent",
                                         buckets=SECONDS_BUCKETS, registry=r)
        self.http_infer = Counter("hub_http_inferences", "Inferences served over HTTP",
                                  ["model"], registry=r)
        self.images_refused = Counter(
            "hub_images_refused", "Images refused, by reason, mostly before decoding them",
            ["reason", "path"], registry=r)
        self.connected = Gauge("hub_mqtt_connected", "1 while the broker session is up",
                               registry=r)
        self.tuf_expiry = Gauge("hub_tuf_metadata_expiry_timestamp_seconds",
                                "When each role's newest signed update metadata expires",
                                ["role"], registry=r)
        self.tuf_resigned = Counter("hub_tuf_metadata_resigned",
                                    "Update metadata re-signed before it expired", ["role"],
                                    registry=r)
        self.tuf_refresh_failures = Counter("hub_tuf_refresh_failures",
                                            "Checks of the update metadata that failed",
                                            registry=r)
        self.webhooks = WebhookMetrics(
            Counter("hub_webhook_deliveries", "Webhook deliveries by result (delivered, "
                    "failed after its attempts or refused, dropped from a full queue)",
                    ["result"], registry=r),
            Counter("hub_webhook_retries", "Webhook attempts that failed and were retried",
                    registry=r),
            Gauge("hub_webhook_queue_deliveries", "Webhook deliveries waiting to be sent",
                  registry=r))

    def watch_fleet(self, read: Callable[[], FleetState]) -> None:
        """Export the fleet state ``read`` returns at each scrape."""
        self.registry.register(FleetCollector(read))

    def record_telemetry(self, device_id: str, at: float, values: Mapping[str, float]) -> None:
        """Keep what one device's telemetry says about its backlog."""
        self.backlogs.record(device_id, at, values)


def _installed(distribution: str) -> str:
    """A distribution's version, or ``none`` when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "none"
