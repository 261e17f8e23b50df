"""Webhooks: the hub's verdicts and rollout changes, POSTed to a URL the operator names,
signed with HMAC-SHA256, retried with backoff from a bounded queue.

Signing (pure, :func:`sign` and :func:`verify`) follows Stripe's scheme: the header
``X-Hub-Signature: t=<unix seconds>,v1=<hex>`` carries the time of the attempt and
``HMAC-SHA256(secret, "<t>." + body)``. A receiver recomputes it over the raw body, compares
in constant time, and refuses a ``t`` too far from its clock (a replayed request). Every
attempt of one delivery carries the same ``X-Hub-Delivery`` id, so a receiver can drop a
delivery it already took (an attempt may succeed after its answer was lost).

Delivery is one thread, ``webhook-sender`` (:class:`WebhookSender`): whoever has news
calls :meth:`WebhookSender.submit`, which only puts it on a bounded queue and returns
(never blocking ingest); when the queue is full the delivery is dropped and counted. The
thread POSTs each delivery, retrying a connection failure, a timeout, a 5xx, a 408 or a
429 with jittered exponential backoff up to ``max_attempts``; another 4xx is permanent
(the receiver refuses it: retrying cannot help). The HTTP call is a seam
(:data:`Transport`) that tests replace.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import queue
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from prometheus_client import Counter, Gauge

from cloud_hub.settings import HubSettings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hub-Signature"
DELIVERY_HEADER = "X-Hub-Delivery"
EVENT_HEADER = "X-Hub-Event"
DEFAULT_TOLERANCE_S = 300.0

WebhookKind = Literal["verdict", "rollout"]
#: JSON values a webhook's data may hold.
JsonValue = str | int | float | bool | None | list["JsonValue"] | dict[str, "JsonValue"]


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Hub-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, now: float,
           tolerance_s: float = DEFAULT_TOLERANCE_S) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within ``tolerance_s`` of ``now``
    (what a receiver does; the hub's tests use it too)."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    stamps = fields.get("t", [])
    if len(stamps) != 1 or not stamps[0].isdigit():
        return False
    timestamp = int(stamps[0])
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, given) for given in fields.get("v1", []))


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook: its id (the same on every attempt), kind and JSON body."""

    kind: WebhookKind
    body: bytes
    id: str


def delivery(kind: WebhookKind, data: Mapping[str, JsonValue], *, at: float) -> Delivery:
    """A new delivery whose body is ``{"id", "type", "at", "data"}``."""
    delivery_id = uuid.uuid4().hex
    body = json.dumps({"id": delivery_id, "type": kind, "at": at, "data": dict(data)},
                      separators=(",", ":"), sort_keys=True).encode()
    return Delivery(kind, body, delivery_id)


@dataclass(frozen=True, slots=True)
class Response:
    """What one attempt got: an HTTP status, or ``None`` when no answer came."""

    status: int | None
    error: str = ""

    @property
    def delivered(self) -> bool:
        """A 2xx."""
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        """No answer, a 5xx, 408 (timeout) or 429 (too many requests)."""
        return self.status is None or self.status >= 500 or self.status in (408, 429)


#: ``(url, body, headers, timeout_s) -> Response``: one HTTP POST.
Transport = Callable[[str, bytes, Mapping[str, str], float], Response]


def urllib_transport(url: str, body: bytes, headers: Mapping[str, str],
                     timeout_s: float) -> Response:
    """POST with the standard library (no dependency for one request at a time)."""
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return Response(int(answer.status))
    except urllib.error.HTTPError as exc:
        return Response(exc.code, f"HTTP {exc.code}")
    except (urllib.error.URLError, OSError) as exc:
        return Response(None, str(getattr(exc, "reason", exc)))


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """Where and how to deliver.

    Attributes:
        kinds: Which deliveries to send (others are not queued).
        queue_max: Deliveries waiting at most; more are dropped and counted.
        max_attempts: Attempts per delivery, the first included.
        backoff_min_s / backoff_max_s: The delay before retry ``n`` is
            ``min(max, min * 2**n)`` scaled by a random 0.5-1.0.
    """

    url: str
    secret: str
    kinds: frozenset[str] = frozenset({"verdict", "rollout"})
    queue_max: int = 1000
    max_attempts: int = 6
    timeout_s: float = 10.0
    backoff_min_s: float = 1.0
    backoff_max_s: float = 300.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url {self.url!r}: expected http:// or https://")
        if len(self.secret) < 16:
            raise ValueError("webhook secret: at least 16 characters")
        if self.queue_max < 1 or self.max_attempts < 1:
            raise ValueError("webhook queue_max and max_attempts must be at least 1")

    @classmethod
    def from_settings(cls, settings: HubSettings) -> WebhookConfig | None:
        """The hub's webhook settings; ``None`` when no ``webhook_url`` is set."""
        if not settings.webhook_url or not settings.webhook_secret:
            return None
        return cls(settings.webhook_url, settings.webhook_secret,
                   kinds=frozenset(settings.webhook_events.split(",")),
                   queue_max=settings.webhook_queue_max,
                   max_attempts=settings.webhook_max_attempts,
                   timeout_s=settings.webhook_timeout_s,
                   backoff_min_s=settings.webhook_backoff_min_s,
                   backoff_max_s=settings.webhook_backoff_max_s)

    def delay_s(self, retry: int, rng: random.Random) -> float:
        """Seconds before retry number ``retry`` (0 for the first)."""
        return min(self.backoff_max_s, self.backoff_min_s * 2.0 ** min(retry, 32)) * (
            0.5 + 0.5 * rng.random())


@dataclass(frozen=True, slots=True)
class WebhookMetrics:
    """``hub_webhook_deliveries_total{result}``, retries, and the queue's length."""

    deliveries: Counter
    retries: Counter
    queued: Gauge


class WebhookSender:
    """The ``webhook-sender`` thread and its bounded queue.

    Args:
        transport: The HTTP POST (:func:`urllib_transport`; tests pass a fake).
        wait: Waits up to a number of seconds, returning early (``True``) when stopping;
            defaults to the stop event's own wait. Tests make backoff instant with it.
        rng: Jitter source.
        clock: The signing time.
    """

    def __init__(self, config: WebhookConfig, metrics: WebhookMetrics, *,
                 transport: Transport = urllib_transport, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.time,
                 wait: Callable[[float], bool] | None = None) -> None:
        self.config = config
        self._metrics = metrics
        self._transport = transport
        self._rng = rng or random.Random()
        self._clock = clock
        self._stopping = threading.Event()
        self._wait = wait or self._stopping.wait
        self._queue: queue.Queue[Delivery | None] = queue.Queue(config.queue_max)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the ``webhook-sender`` thread."""
        if self._thread is not None:
            raise RuntimeError("the webhook sender is started already")
        self._thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the attempt in flight; deliveries still queued are dropped."""
        self._stopping.set()
        # A full queue: the thread sees the stop event after its current delivery.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def submit(self, kind: WebhookKind, data: Mapping[str, JsonValue]) -> bool:
        """Queue a delivery; never blocks. ``False`` when its kind is not wanted or the
        queue is full (dropped, counted)."""
        if kind not in self.config.kinds:
            return False
        try:
            self._queue.put_nowait(delivery(kind, data, at=self._clock()))
        except queue.Full:
            self._metrics.deliveries.labels("dropped").inc()
            log.warning("webhook queue full (%d): a %s delivery dropped",
                        self.config.queue_max, kind)
            return False
        self._metrics.queued.set(self._queue.qsize())
        return True

    def _run(self) -> None:
        while not self._stopping.is_set():
            item = self._queue.get()
            self._metrics.queued.set(self._queue.qsize())
            if item is None:
                return
            self._deliver(item)

    def _deliver(self, item: Delivery) -> None:
        for attempt in range(self.config.max_attempts):
            headers = {SIGNATURE_HEADER: sign(self.config.secret, int(self._clock()), item.body),
                       DELIVERY_HEADER: item.id, EVENT_HEADER: item.kind}
            answer = self._transport(self.config.url, item.body, headers,
                                     self.config.timeout_s)
            if answer.delivered:
                self._metrics.deliveries.labels("delivered").inc()
                return
            last = attempt + 1 == self.config.max_attempts
            if not answer.retryable or last:
                self._metrics.deliveries.labels("failed").inc()
                log.warning("webhook %s (%s) not delivered after %d attempt(s): %s",
                            item.id, item.kind, attempt + 1,
                            answer.error or f"HTTP {answer.status}")
                return
            delay = self.config.delay_s(attempt, self._rng)
            self._metrics.retries.inc()
            log.warning("webhook %s (%s) attempt %d failed (%s); retrying in %.1f s",
                        item.id, item.kind, attempt + 1,
                        answer.error or f"HTTP {answer.status}", delay)
            if self._wait(delay):
                return


def verdict_data(event: Mapping[str, object]) -> dict[str, JsonValue]:
    """A ``verdict`` webhook's data, from a stored event that has its verdict."""
    detections = event.get("hub_detections")
    return {key: _json(event.get(key)) for key in (
        "device_id", "source", "reason", "outcome", "captured_at", "decided_at",
        "edge_model", "edge_version", "hub_model", "hub_version")} | {
        "event_id": _json(event.get("id")),
        "detections": _json(detections if isinstance(detections, list) else [])}


def _json(value: object) -> JsonValue:
    """``value`` as JSON data (it came from JSON or the database: anything else is text)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    return str(value)
