"""The hub's Prometheus metrics, in a registry of its own (one per hub instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)
WAIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class HubMetrics:
    """Every metric the hub exports at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ingested = Counter("hub_events_ingested", "Escalations accepted", ["device"],
                                registry=r)
        self.dropped = Counter("hub_messages_dropped", "Messages refused, by reason",
                               ["reason"], registry=r)
        self.dedup_hits = Counter("hub_dedup_hits", "Redelivered escalations answered again",
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
