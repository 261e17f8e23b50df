"""Sensor readings: a generator of realistic readings, windowing, and the anomaly model.

The readings follow a daily cycle with noise and slow drift, like a temperature or
current sensor. :func:`inject` adds the faults the anomaly model must catch: a spike, a
stuck sensor and a step. :func:`train_anomaly_bundle` fits a scikit-learn
IsolationForest on windows of normal readings, converts it to ONNX with skl2onnx, and
returns a real bundle manifest and model file.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edge_agent.backoff import Backoff, Reconnects
from edge_agent.config import MqttConfig
from edge_agent.errors import ConfigError, SampleDataError
from edge_agent.mqtt import check_broker, new_client
from edge_agent.sources import Source
from models import ANOMALY_MODEL, Manifest, sha256_hex
from models.features import WINDOW_STATS_V1, window_stats_v1

log = logging.getLogger(__name__)

Fault = Literal["spike", "stuck", "step"]
DEFAULT_WINDOW = 32


@dataclass(frozen=True, slots=True)
class ReadingWindow:
    """A window of consecutive readings from one sensor source."""

    source: str
    index: int
    captured_at: float
    values: npt.NDArray[np.float64]


def sample_readings(count: int, *, seed: int = 0, period: int = 1440,
                    start: int = 0) -> npt.NDArray[np.float64]:
    """``count`` normal readings, one a minute: a daily cycle, drift and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(start, start + count, dtype=np.float64)
    daily = 4.0 * np.sin(2 * np.pi * t / period) + 1.0 * np.sin(4 * np.pi * t / period + 1)
    drift = 0.3 * np.sin(2 * np.pi * t / (period * 11))
    return 20.0 + daily + drift + rng.normal(0.0, 0.15, count)


def inject(values: npt.NDArray[np.float64], fault: Fault, at: int,
           length: int = 16) -> npt.NDArray[np.float64]:
    """A copy of ``values`` with one fault starting at index ``at``."""
    faulty = values.copy()
    if fault == "spike":
        faulty[at] += 6.0
    elif fault == "stuck":
        faulty[at : at + length] = faulty[at]
    elif fault == "step":
        faulty[at:] += 3.0
    return faulty


def windows_of(values: npt.NDArray[np.float64], window: int = DEFAULT_WINDOW,
               hop: int | None = None) -> npt.NDArray[np.float64]:
    """Sliding windows (rows) over ``values`` every ``hop`` readings."""
    hop = hop or window // 2
    starts = range(0, len(values) - window + 1, hop)
    return np.stack([values[s : s + window] for s in starts])


def train_anomaly_bundle(
    *, name: str = ANOMALY_MODEL, version: str = "1.0.0", window: int = DEFAULT_WINDOW,
    days: int = 7, seed: int = 0,
) -> tuple[Manifest, bytes]:
    """Train the IsolationForest on normal readings and export it to ONNX.

    Raises:
        SampleDataError: scikit-learn or skl2onnx is not installed.
    """
    try:
        from skl2onnx import to_onnx
        from sklearn.ensemble import IsolationForest
    except ImportError as exc:
        raise SampleDataError(
            "training needs scikit-learn and skl2onnx: pip install 'edge-cloud-runtime[train]'"
        ) from exc
    readings = sample_readings(days * 1440, seed=seed)
    features = window_stats_v1(windows_of(readings, window, hop=window // 4))
    forest = IsolationForest(n_estimators=100, contamination=0.005, random_state=seed)
    forest.fit(features)
    onnx_model = to_onnx(forest, features[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    model_bytes = onnx_model.SerializeToString()
    outputs = [o.name for o in onnx_model.graph.output]
    score_output = next(o for o in outputs if "score" in o)
    manifest = Manifest.model_validate({
        "schema_version": 1, "name": name, "version": version, "task": "anomaly",
        "runtime": "onnx",
        "file": {"path": "model.onnx", "sha256": sha256_hex(model_bytes),
                 "size_bytes": len(model_bytes)},
        "input": {"name": onnx_model.graph.input[0].name, "shape": [1, features.shape[1]],
                  "layout": "NC", "dtype": "float32", "feature_set": WINDOW_STATS_V1},
        "output": {"kind": "anomaly", "output": score_output, "threshold": 0.0,
                   "higher_is_anomalous": False},
        "description": f"IsolationForest on {window}-reading windows ({WINDOW_STATS_V1})",
        "source": f"trained on {days} days of generated readings, seed {seed}",
    })
    return manifest, model_bytes


class SensorSource(Source):
    """Readings from a local MQTT topic, cut into overlapping windows.

    It connects with its own broker settings (credentials and TLS as the uplink's, from
    the same kind of frozen :class:`MqttConfig`); a broker whose TLS does not verify
    makes the source unhealthy and raises :class:`ConfigError` when it starts.

    A message is a JSON number or an object with a numeric ``value``. Anything else is
    counted as corrupt and skipped. Windows queue up in the source (up to 64) rather than
    being dropped when the pipeline is busy: each one is cheap to score.
    """

    def __init__(self, name: str, *, broker: MqttConfig, client_id: str, topic: str,
                 window: int = DEFAULT_WINDOW) -> None:
        super().__init__(name)
        self.broker, self.client_id, self.topic = broker, client_id, topic
        self.window = window
        self._readings: deque[float] = deque(maxlen=window)
        self._ready: deque[ReadingWindow] = deque(maxlen=64)
        self._arrived = threading.Condition()
        self._since_window = 0
        self._windows = 0
        self._reconnects = Reconnects(
            f"sensor source {name}: {broker.host}:{broker.port}",
            Backoff(broker.reconnect_min_s, broker.reconnect_max_s), random.Random(), log)

    @property
    def reconnects(self) -> int:
        """Failed connection attempts to the broker so far."""
        return self._reconnects.total

    def windows(self, stop: threading.Event) -> Iterator[ReadingWindow]:
        """Yield windows every ``window // 2`` readings until stopped."""
        try:
            check_broker(self.broker)
            client = new_client(self.broker, self.client_id)
        except ConfigError as exc:
            self.health.problem(f"{self.name}: {exc}")
            raise
        retries = self._reconnects
        connected = threading.Event()

        def on_disconnect(client: Any, userdata: Any, flags: Any, reason: Any,
                          properties: Any) -> None:
            was_connected = connected.is_set()
            connected.clear()
            if not stop.is_set():
                retries.disconnected(client, reason, was_connected=was_connected)

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
            if reason.is_failure:
                self.health.problem(f"{self.name}: the broker refused the connection: {reason}")
                retries.refused(client, reason)
                return
            connected.set()
            retries.connected(client)
            client.subscribe(self.topic, qos=0)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_connect_fail = lambda c, u: retries.connect_failed(c)
        client.on_message = lambda c, u, message: self.feed(bytes(message.payload))
        retries.apply(client)
        client.connect_async(self.broker.host, self.broker.port)
        client.loop_start()
        try:
            while not stop.is_set():
                with self._arrived:
                    self._arrived.wait_for(lambda: bool(self._ready) or stop.is_set(), 0.5)
                    ready = list(self._ready)
                    self._ready.clear()
                yield from ready
        finally:
            client.disconnect()
            client.loop_stop()

    def frames(self, stop: threading.Event) -> Iterator[ReadingWindow]:  # type: ignore[override]
        """Sensor sources yield windows, not frames."""
        return self.windows(stop)

    def feed(self, payload: bytes) -> None:
        """Take one raw message (called from paho's thread, or directly by tests)."""
        try:
            raw = json.loads(payload)
            value = float(raw["value"] if isinstance(raw, dict) else raw)
            if not np.isfinite(value):
                raise ValueError("not finite")
        except (ValueError, TypeError, KeyError, json.JSONDecodeError):
            self._corrupt(f"not a reading: {payload[:40]!r}")
            return
        with self._arrived:
            self._readings.append(value)
            self.health.frames += 1
            self._since_window += 1
            if len(self._readings) == self.window and self._since_window >= self.window // 2:
                self._since_window = 0
                self._windows += 1
                self._ready.append(ReadingWindow(self.name, self._windows, time.time(),
                                                 np.array(self._readings)))
                self._arrived.notify_all()
