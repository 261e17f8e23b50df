"""Webhooks (issue 12): HMAC-SHA256 signatures a receiver can check, retries with backoff
for what may pass later and none for what cannot, a bounded queue. Pure and with a fake
transport: no network."""

from __future__ import annotations

import json
import queue
import random
import threading
from collections.abc import Mapping

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from cloud_hub.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    Response,
    WebhookConfig,
    WebhookMetrics,
    WebhookSender,
    sign,
    verdict_data,
    verify,
)

pytestmark = pytest.mark.unit

SECRET = "s3cret-shared-with-the-receiver"
URL = "http://receiver.invalid/hook"


def _metrics() -> WebhookMetrics:
    registry = CollectorRegistry()
    return WebhookMetrics(Counter("d", "d", ["result"], registry=registry),
                          Counter("r", "r", registry=registry), Gauge("q", "q", registry=registry))


def test_a_signature_verifies_only_for_its_body_secret_and_time() -> None:
    body = b'{"type":"verdict"}'
    header = sign(SECRET, 1_700_000_000, body)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert verify(SECRET, header, body, now=1_700_000_100)
    assert not verify(SECRET, header, body + b" ", now=1_700_000_100)
    assert not verify("another-secret-entirely", header, body, now=1_700_000_100)
    assert not verify(SECRET, header, body, now=1_700_000_000 + 301)  # a replay, later
    assert not verify(SECRET, "v1=" + header.split("v1=")[1], body, now=1_700_000_000)
    # Several v1 values (a receiver rotating secrets): one that matches is enough.
    assert verify(SECRET, f"{header},v1={'0' * 64}", body, now=1_700_000_000)


class _Receiver:
    """A fake transport answering from a script, keeping every attempt."""

    def __init__(self, *answers: Response) -> None:
        self.answers = list(answers)
        self.attempts: list[tuple[bytes, dict[str, str]]] = []
        self.done = threading.Event()

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str],
                 timeout_s: float) -> Response:
        self.attempts.append((body, dict(headers)))
        answer = self.answers.pop(0)
        if not self.answers:
            self.done.set()
        return answer


def _send(receiver: _Receiver, **config: object) -> tuple[WebhookSender, WebhookMetrics]:
    metrics = _metrics()
    sender = WebhookSender(WebhookConfig(URL, SECRET, **config),  # type: ignore[arg-type]
                           metrics, transport=receiver, rng=random.Random(1),
                           clock=lambda: 1_700_000_000.0, wait=lambda _s: False)
    sender.start()
    assert sender.submit("verdict", {"event_id": "e1", "outcome": "confirmed"})
    assert receiver.done.wait(30)
    sender.stop()
    return sender, metrics


def test_a_failed_attempt_is_retried_with_the_same_delivery_id_and_a_valid_signature() -> None:
    receiver = _Receiver(Response(None, "connection refused"), Response(503),
                         Response(204))
    _, metrics = _send(receiver)
    assert len(receiver.attempts) == 3
    ids = {headers[DELIVERY_HEADER] for _, headers in receiver.attempts}
    assert len(ids) == 1
    for body, headers in receiver.attempts:
        assert verify(SECRET, headers[SIGNATURE_HEADER], body, now=1_700_000_000)
        sent = json.loads(body)
        assert sent["type"] == "verdict" and sent["id"] in ids
        assert sent["data"] == {"event_id": "e1", "outcome": "confirmed"}
    assert metrics.deliveries.labels("delivered")._value.get() == 1
    assert metrics.retries._value.get() == 2


def test_a_refusal_is_not_retried_and_attempts_are_bounded() -> None:
    refused = _Receiver(Response(400))
    _, metrics = _send(refused)
    assert len(refused.attempts) == 1
    assert metrics.deliveries.labels("failed")._value.get() == 1
    down = _Receiver(*[Response(500)] * 3)
    _, metrics = _send(down, max_attempts=3)
    assert len(down.attempts) == 3 and metrics.retries._value.get() == 2
    assert metrics.deliveries.labels("failed")._value.get() == 1
    limited = _Receiver(Response(429), Response(200))
    _send(limited)
    assert len(limited.attempts) == 2


def test_backoff_grows_with_jitter_up_to_its_cap() -> None:
    config = WebhookConfig(URL, SECRET, backoff_min_s=1, backoff_max_s=10)
    rng = random.Random(7)
    delays = [config.delay_s(n, rng) for n in range(8)]
    assert 0.5 <= delays[0] <= 1 and 1 <= delays[1] <= 2 and 2 <= delays[2] <= 4
    assert all(5 <= d <= 10 for d in delays[4:])


def test_a_full_queue_drops_and_counts_and_never_blocks() -> None:
    metrics = _metrics()
    blocked = threading.Event()
    release: queue.Queue[None] = queue.Queue()

    def stuck(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> Response:
        blocked.set()
        release.get(timeout=30)
        return Response(200)

    sender = WebhookSender(WebhookConfig(URL, SECRET, queue_max=2), metrics, transport=stuck)
    sender.start()
    assert sender.submit("rollout", {"n": 0})
    assert blocked.wait(30)  # the thread holds the first; two fit in the queue
    assert sender.submit("rollout", {"n": 1}) and sender.submit("rollout", {"n": 2})
    assert not sender.submit("rollout", {"n": 3})
    assert metrics.deliveries.labels("dropped")._value.get() == 1
    for _ in range(3):
        release.put(None)
    sender.stop()


def test_unwanted_kinds_are_not_queued_and_config_is_checked() -> None:
    sender = WebhookSender(WebhookConfig(URL, SECRET, kinds=frozenset({"rollout"})), _metrics())
    assert not sender.submit("verdict", {})
    with pytest.raises(ValueError, match="http"):
        WebhookConfig("ftp://x", SECRET)
    with pytest.raises(ValueError, match="16 characters"):
        WebhookConfig(URL, "short")


def test_verdict_data_from_a_stored_event() -> None:
    data = verdict_data({"id": "e1", "device_id": "cam-1", "source": "door",
                         "reason": "uncertain", "outcome": "confirmed", "captured_at": 1.0,
                         "decided_at": 2.0, "edge_model": "m", "edge_version": "1",
                         "hub_model": "h", "hub_version": "2", "crop": b"\xff",
                         "hub_detections": [{"box": [1, 2, 3, 4], "score": 0.9}]})
    assert data["event_id"] == "e1" and data["outcome"] == "confirmed"
    assert data["detections"] == [{"box": [1, 2, 3, 4], "score": 0.9}]
    assert "crop" not in data
    json.dumps(data)
