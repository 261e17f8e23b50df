"""Local actions on decisions and verdicts: an MQTT message, a command, a webhook.

They run in one background thread (``actions``) behind a bounded queue, so a slow
webhook never stalls inference. A full queue drops the action and counts it.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

from edge_agent.config import ActionConfig
from edge_agent.errors import PublishError
from edge_agent.metrics import AgentMetrics

log = logging.getLogger(__name__)

ActionKind = Literal["decision", "verdict", "fallback", "reconciled"]
QUEUE_SIZE = 256


@dataclass(frozen=True, slots=True)
class ActionEvent:
    """What happened, as local systems see it (also the JSON they receive)."""

    kind: ActionKind
    device_id: str
    source: str
    positive: bool
    at: float
    event_id: str | None = None
    outcome: str | None = None
    labels: tuple[str, ...] = ()
    score: float | None = None
    agrees: bool | None = None

    def to_json(self) -> str:
        """JSON text of this event."""
        return json.dumps(asdict(self))


class ActionRunner:
    """Runs the configured actions for each event, in the ``actions`` thread.

    Args:
        actions: The configured actions.
        publish: Publishes ``(topic, payload, timeout_s)`` with QoS 1 and returns once
            the broker acknowledged it; raises :class:`PublishError` when it refused
            (an MQTT 5 reason code such as 0x87 not authorized) or did not answer.
        metrics: Where results are counted (``edge_actions_total{kind,result}``).
    """

    def __init__(self, actions: tuple[ActionConfig, ...], *,
                 publish: Callable[[str, bytes, float], None],
                 metrics: AgentMetrics) -> None:
        self.actions = actions
        self._publish = publish
        self._metrics = metrics
        self._queue: queue.Queue[tuple[ActionConfig, ActionEvent] | None] = queue.Queue(
            QUEUE_SIZE
        )
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker thread."""
        if self.actions:
            self._thread = threading.Thread(target=self._run, name="actions", daemon=True)
            self._thread.start()

    def dispatch(self, event: ActionEvent) -> None:
        """Queue every action that wants ``event.kind``."""
        for action in self.actions:
            if event.kind not in action.on:
                continue
            try:
                self._queue.put_nowait((action, event))
            except queue.Full:
                self._metrics.dropped.labels("actions-queue-full").inc()
                log.warning("action queue full: dropped %s action for %s", action.kind,
                            event.event_id or event.source)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Finish queued actions (up to ``timeout_s``) and stop."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            action, event = job
            try:
                self._perform(action, event)
                self._metrics.actions.labels(action.kind, "ok").inc()
            except (OSError, subprocess.SubprocessError, urllib.error.URLError,
                    ValueError, PublishError) as exc:
                self._metrics.actions.labels(action.kind, "failed").inc()
                log.warning("%s action failed: %s", action.kind, exc)

    def _perform(self, action: ActionConfig, event: ActionEvent) -> None:
        body = event.to_json()
        if action.kind == "mqtt":
            assert action.topic is not None
            self._publish(action.topic, body.encode(), action.timeout_s)
        elif action.kind == "command":
            env = {**os.environ, "EDGE_EVENT": body, "EDGE_EVENT_KIND": event.kind,
                   "EDGE_EVENT_POSITIVE": "1" if event.positive else "0"}
            result = subprocess.run(list(action.command), env=env, timeout=action.timeout_s,
                                    capture_output=True, check=False)
            if result.returncode != 0:
                raise subprocess.SubprocessError(
                    f"{action.command[0]} exited {result.returncode}: "
                    f"{result.stderr.decode(errors='replace').strip()[:200]}"
                )
        else:
            assert action.url is not None
            request = urllib.request.Request(
                action.url, data=body.encode(), method="POST",
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=action.timeout_s) as response:
                response.read()
