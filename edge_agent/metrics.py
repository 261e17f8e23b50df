"""The agent's Prometheus metrics, in a registry of its own (one per agent).

Names follow Prometheus's rules (``promtool check metrics`` is clean, a test runs it):
counters end in ``_total`` (prometheus_client adds it), units are base units in the name
(``_seconds``, ``_bytes``), and ``edge_build_info`` carries versions as labels. The
process's own CPU, memory and file descriptors (``process_*``) and the Python runtime
(``python_*``) are exported beside them.
"""

from __future__ import annotations

import platform
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from sync import release

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class AgentMetrics:
    """Every counter and gauge the agent exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter("edge_frames", "Frames read", ["source"], registry=r)
        self.gated = Counter("edge_frames_gated", "Frames skipped by the motion gate",
                             ["source"], registry=r)
        self.corrupt = Counter("edge_frames_corrupt", "Corrupt or empty frames skipped",
                               ["source"], registry=r)
        self.busy_drops = Counter("edge_frames_dropped_busy",
                                  "Live frames dropped while the pipeline was busy",
                                  ["source"], registry=r)
        self.inferences = Counter("edge_inferences", "Model calls", ["source"], registry=r)
        self.latency = Histogram("edge_inference_seconds", "Model call latency", ["source"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.backend = Gauge("edge_backend_info", "Backend serving each source's model",
                             ["source", "model", "version", "backend"], registry=r)
        self.decisions = Counter("edge_decisions", "Decisions by action and reason",
                                 ["source", "action", "reason"], registry=r)
        self.escalations = Counter("edge_escalations", "Escalations stored for the hub",
                                   ["source", "reason"], registry=r)
        self.verdicts = Counter("edge_verdicts", "Verdicts received",
                                ["outcome", "timing"], registry=r)
        self.unexplained_verdicts = Counter(
            "edge_unexplained_verdicts", "Verdicts on escalated motion no detection explained "
            "(their yield: confirmed / all)", ["source", "outcome"], registry=r)
        self.fallbacks = Counter("edge_local_fallbacks",
                                 "Escalations decided locally: no verdict by the deadline, "
                                 "undeliverable, or the hub answered busy", registry=r)
        self.busy = Counter("edge_hub_busy", "Escalations the hub stored but answered busy "
                            "(decided locally at once), by the hub's reason", ["reason"],
                            registry=r)
        self.dropped = Counter("edge_dropped", "Events or messages dropped, by reason",
                               ["reason"], registry=r)
        self.malformed = Counter("edge_malformed_messages",
                                 "Messages from the broker that were refused", ["kind"],
                                 registry=r)
        self.actions = Counter("edge_actions", "Local actions run", ["kind", "result"],
                               registry=r)
        self.outbox_events = Gauge("edge_outbox_events",
                                   "Escalations waiting for the hub's receipt", registry=r)
        self.outbox_unconfirmed = Gauge("edge_outbox_unconfirmed",
                                        "Escalations published without the hub's receipt yet",
                                        registry=r)
        self.outbox_degraded = Gauge("edge_outbox_degraded",
                                     "1 while the outbox cannot be written (new escalations "
                                     "are decided locally), by reason", ["reason"], registry=r)
        self.outbox_salvaged = Counter("edge_outbox_salvaged_events",
                                       "Events recovered from a damaged outbox file",
                                       registry=r)
        self.outbox_damaged = Counter("edge_outbox_damaged",
                                      "Damaged outbox files moved aside at start", registry=r)
        self.outbox_bytes = Gauge("edge_outbox_bytes", "Payload bytes in the outbox",
                                  registry=r)
        self.reconnects = Counter("edge_mqtt_reconnects",
                                  "Attempts to reach the broker again after a failed "
                                  "connection or a lost session", registry=r)
        self.connected = Gauge("edge_mqtt_connected", "1 while the broker session is up",
                               registry=r)
        self.source_healthy = Gauge("edge_source_healthy", "1 while a source delivers",
                                    ["source"], registry=r)
        self.input_brightness = Gauge(
            "edge_input_brightness", "Mean luma of a camera source's latest frame (0-255)",
            ["source"], registry=r)
        self.input_contrast = Gauge(
            "edge_input_contrast", "RMS contrast (luma standard deviation) of its latest frame",
            ["source"], registry=r)
        self.input_sharpness = Gauge(
            "edge_input_sharpness", "Laplacian variance over luma variance of its latest "
            "frame (blur lowers it, darkness does not)", ["source"], registry=r)
        self.input_frozen_frames = Gauge(
            "edge_input_frozen_frames", "Frames in a row identical to the one before",
            ["source"], registry=r)
        self.input_problem = Gauge(
            "edge_input_problem", "1 while a camera source's picture has this problem "
            "(dark, low-contrast, blurry, frozen)", ["source", "problem"], registry=r)
        self.build = Info("edge_build", "Versions of the agent and its runtimes", registry=r)
        self.build.info({"version": release(), "python": platform.python_version(),
                         "litert": _installed("ai-edge-litert"),
                         "onnxruntime": _installed("onnxruntime")})
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)


def _installed(distribution: str) -> str:
    """A distribution's version, or ``none`` when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "none"
