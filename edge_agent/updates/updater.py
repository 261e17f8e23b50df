"""The ``updater`` thread: acts on the hub's model announcements.

For an announcement that names this device (or its whole group) and a model one of its
sources runs, it refreshes the TUF metadata, picks the signed version, downloads and
verifies it, stages it in its own slot, runs the smoke test, swaps it in between two
frames, watches the health window, and commits or rolls back. Each step is reported to
the hub on the device's ``updates`` topic, with the reason when one fails. The running
model is never touched until the new one has passed its smoke test.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.config import UpdatesConfig
from edge_agent.errors import EdgeAgentError, InstallError, UpdateRefusedError
from edge_agent.updates.client import DeviceFit, UpdateClient
from edge_agent.updates.installer import ModelInstaller
from hardware import HardwareProfile
from models import Model, ModelBundle, ModelError
from sync import ModelAnnouncement, UpdateReport
from sync.install import HealthLimits, HealthStats, InstallRecord, Step

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ModelHealth:
    """Rolling counters of one serving model, fed by the pipeline thread.

    The first ``warmup`` inferences after a swap are not counted: caches, thread pools and
    delegates settle then, and the install itself still competes for the CPU.

    During a health window the previous model can run as a *shadow*: after each counted
    inference the pipeline runs the new model and the previous one again on the same
    input, back to back, and keeps the two latencies as a pair (timed by ``clock``). Both
    are then measured under the same load, which a comparison with the previous model's
    earlier window is not (a busy device would fail good updates), and in the same
    setting: the serving call's own time is not used, since it runs amid the frame's
    other work (a source thread decoding the next frame, the GIL) and would make an
    identical model look slower. Which of the two runs first alternates from pair to pair,
    so that a warm cache or a preemption favours neither. Latency is judged on these pairs
    only (:func:`sync.install.compare_latency`).
    """

    warmup: int = 0
    inferences: int = 0
    errors: int = 0
    escalations: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=500))
    latency_pairs: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=500))
    clock: Callable[[], float] = time.perf_counter
    _last_latency: float | None = None
    _shadow: Model | None = None
    _shadow_lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, latency_s: float | None, *, escalated: bool = False) -> bool:
        """One inference: its latency, or ``None`` if it failed. Returns whether it was
        counted (it was not during the warm-up)."""
        self._last_latency = None
        if self.warmup > 0:
            self.warmup -= 1
            return False
        self._last_latency = latency_s
        self.inferences += 1
        if latency_s is None:
            self.errors += 1
        else:
            self.latencies.append(latency_s)
        self.escalations += escalated
        return True

    def start_shadow(self, previous: Model) -> None:
        """Run ``previous`` beside the serving model from now on (updater thread)."""
        with self._shadow_lock:
            self._shadow = previous

    def end_shadow(self) -> None:
        """Stop the shadow; waits for a shadow inference under way, so that the caller may
        close or re-serve the previous model as soon as this returns (updater thread)."""
        with self._shadow_lock:
            self._shadow = None

    def run_shadow(self, infer: Callable[[Model], object], serving: Model) -> None:
        """If the inference just recorded was counted and succeeded and a shadow runs,
        time ``infer`` on ``serving`` and on the shadow, back to back on the same input,
        and keep the pair (pipeline thread). A failure of either here pairs nothing: the
        previous model's is not the new one's fault, and the new one's own serving call,
        which is what its error rate counts, has already succeeded."""
        counted, self._last_latency = self._last_latency is not None, None
        with self._shadow_lock:
            if self._shadow is None or not counted:
                return
            order = ((serving, self._shadow) if len(self.latency_pairs) % 2 == 0
                     else (self._shadow, serving))
            timed: dict[int, float] = {}
            for model in order:
                started = self.clock()
                try:
                    infer(model)
                except ModelError as exc:
                    which = "new" if model is serving else "previous"
                    log.warning("the %s model failed in a paired latency run: %s", which, exc)
                    return
                timed[id(model)] = self.clock() - started
            self.latency_pairs.append((timed[id(serving)], timed[id(self._shadow)]))

    def stats(self) -> HealthStats:
        """A snapshot for the health judgement."""
        median = float(np.median(list(self.latencies))) if self.latencies else 0.0
        return HealthStats(self.inferences, self.errors, median, self.escalations,
                           tuple(self.latency_pairs))


def device_fit(profile: HardwareProfile) -> DeviceFit:
    """What this device can run, in the tags publishers use."""
    runtimes = set()
    if profile.runtimes.tflite_package:
        runtimes.add("tflite")
    if profile.runtimes.onnx_providers:
        runtimes.add("onnx")
    hardware = {profile.architecture}
    if profile.has_cuda_gpu:
        hardware.add("cuda")
    if profile.has_coral:
        hardware.add("edgetpu")
    if profile.is_jetson:
        hardware.add("jetson")
    return DeviceFit(frozenset(runtimes), frozenset(hardware))


class Updater:
    """Runs installs one at a time in its own thread.

    Args:
        device_id: This device.
        config: The ``[updates]`` section.
        installer: Slots and install records.
        fit: What this device can run.
        swap: Makes a loaded model serve the sources that use its name (returns the
            model it replaced); called between two frames.
        health: The serving model's counters, by model name (reset on swap).
        report: Publishes an :class:`UpdateReport` to the hub.
        installed: The serving version of a model name.
    """

    def __init__(self, *, device_id: str, config: UpdatesConfig, installer: ModelInstaller,
                 client: UpdateClient, fit: DeviceFit,
                 swap: Callable[[str, Model], Model | None],
                 health: Callable[[str], ModelHealth],
                 report: Callable[[UpdateReport], None]) -> None:
        self.device_id = device_id
        self.config = config
        self.installer = installer
        self.client = client
        self.fit = fit
        self._swap = swap
        self._health = health
        self._report = report
        self._limits = HealthLimits(min_inferences=config.health_inferences,
                                    max_latency_ratio=config.max_latency_ratio,
                                    max_escalation_ratio=config.max_escalation_ratio)
        self._queue: queue.Queue[ModelAnnouncement | InstallRecord | None] = queue.Queue(16)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the ``updater`` thread."""
        self._thread = threading.Thread(target=self._run, name="updater", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current step."""
        self._stop.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(30)

    def offer(self, announcement: ModelAnnouncement) -> None:
        """Consider an announcement (called from the MQTT thread)."""
        if announcement.devices is not None and self.device_id not in announcement.devices:
            return
        try:
            self._queue.put_nowait(announcement)
        except queue.Full:
            log.warning("update queue full; dropped the announcement of %s %s",
                        announcement.model, announcement.version)

    def resume(self, record: InstallRecord) -> None:
        """Finish the health window of an install the agent was stopped in (the new model
        serves since the restart); without the old model's figures, absolute limits judge."""
        self._queue.put(record)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._stop.is_set():
                return
            try:
                if isinstance(job, InstallRecord):
                    self._finish(job)
                else:
                    self.install(job)
            except Exception:  # the updater must outlive any one update
                log.exception("update of %s failed", job.model)

    def _finish(self, record: InstallRecord) -> None:
        record = self._watch(record, None)
        if record.step == Step.ROLLED_BACK:
            previous = self.installer.active_bundle(record.model)
            replaced = self._swap(record.model, self._load(previous))
            if replaced is not None:
                replaced.close()
        self._report(UpdateReport(
            device_id=self.device_id, model=record.model, version=record.candidate,
            previous=record.previous, step=record.step, reason=record.reason,
            at=time.time()))

    def install(self, announcement: ModelAnnouncement) -> InstallRecord | None:
        """The whole install of one announced version; returns the final record."""
        name, version = announcement.model, announcement.version
        installed = self.installer.active_version(name)
        if installed == version:
            return None
        last = self.installer.record(name)
        if last is not None and last.candidate == version and last.finished:
            return None  # already tried: a retained announcement seen again
        try:
            self.client.refresh()
            offer = self.client.choose(name, version, installed=installed, fit=self.fit)
        except UpdateRefusedError as exc:
            record = self.installer.refuse(self.installer.begin(name, version), str(exc))
            self._tell(announcement, record)
            return record
        if offer is None:
            return None
        # The highest build for this device up to the announced version (another
        # hardware's build may carry the announced number).
        record = self.installer.begin(name, offer.version)
        self._tell(announcement, record)
        try:
            archive = self.client.download(offer)
        except UpdateRefusedError as exc:
            record = self.installer.refuse(record, str(exc))
            self._tell(announcement, record)
            return record
        try:
            record = self.installer.stage(record, archive)
        except InstallError:
            record = self.installer.record(name) or record
            self._tell(announcement, record)
            return record
        self._tell(announcement, record)
        record, model = self.installer.smoke(record, offer.golden)
        self._tell(announcement, record)
        if model is None:
            return record
        baseline = self._health(name).stats()
        previous_model = self._swap(name, model)
        window = self._health(name)
        if previous_model is not None and self.config.health_side_by_side:
            window.start_shadow(previous_model)
        record = self.installer.swap(record)
        self._tell(announcement, record)
        try:
            record = self._watch(record, baseline)
        finally:
            window.end_shadow()
        if record.step == Step.ROLLED_BACK:
            restored = self._restore(name, previous_model)
            self._swap(name, restored)
            model.close()
        elif previous_model is not None:
            previous_model.close()
        self._tell(announcement, record)
        return record

    def _load(self, bundle: ModelBundle) -> Model:
        return self.installer.loader(bundle)

    def _watch(self, record: InstallRecord, baseline: HealthStats | None) -> InstallRecord:
        deadline = time.monotonic() + self.config.health_max_wait_s
        while not self._stop.is_set():
            stats = self._health(record.model).stats()
            # A quiet camera may not fill the window in time: then what it saw decides.
            concluded = self.installer.conclude(record, stats, baseline, limits=self._limits,
                                                window_closed=time.monotonic() > deadline)
            if concluded.finished:
                return concluded
            self._stop.wait(0.2)
        return record

    def _restore(self, name: str, previous: Model | None) -> Model:
        if previous is not None:
            return previous
        raise EdgeAgentError(f"no previous {name} to restore")

    def _tell(self, announcement: ModelAnnouncement, record: InstallRecord) -> None:
        self._report(UpdateReport(
            device_id=self.device_id, rollout_id=announcement.rollout_id, model=record.model,
            version=record.candidate, previous=record.previous, step=record.step,
            reason=record.reason, at=time.time()))
        log.info("update %s %s: %s %s", record.model, record.candidate, record.step.value,
                 record.reason)


def read_trusted_root(path: Path) -> bytes:
    """The provisioned root metadata.

    Raises:
        EdgeAgentError: It cannot be read.
    """
    try:
        return path.read_bytes()
    except OSError as exc:
        raise EdgeAgentError(f"{path}: cannot read the trusted root: {exc.strerror}") from exc
