"""Dynamic micro-batching: many callers, one model, batches formed within a few ms.

Callers in any thread call :meth:`MicroBatcher.detect`. The caller's own thread checks,
resizes and normalises its image, queues it, and afterwards decodes its boxes; the one
``batcher:<model>`` thread only stacks rows and keeps the runtime busy, so preparing the
next batch overlaps with running this one, and a bad image fails its caller alone.

The batcher takes the first waiting request and everything already queued behind it (up
to ``max_size``). It then waits, at most ``max_delay_s`` after the first request arrived,
only for as many requests as the previous batch held: callers served together tend to
come back together, while a lone caller has nobody to wait for. So a single client pays
no batching delay, and under load each model call serves a full batch.

A caller that finds nothing queued and the model idle runs its image itself, at once:
handing it to the batcher thread and back would only add two thread switches.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Protocol

from prometheus_client import Histogram

from models import Detection, Outputs, PreparedImage

log = logging.getLogger(__name__)


class BatchableDetector(Protocol):
    """The three steps of a batched detection (:class:`models.Model` has them)."""

    def prepare_image(self, image: object) -> PreparedImage:
        """Check, resize and normalise one image."""

    def infer_prepared(self, prepared: Sequence[PreparedImage]) -> list[Outputs]:
        """One runtime call for a batch; raw outputs per image."""

    def decode_detections(self, prepared: PreparedImage, outputs: Outputs) -> list[Detection]:
        """One image's detections from its raw outputs."""


_Request = tuple[PreparedImage, "Future[Outputs]", float]


class Pending:
    """A queued detection; :meth:`result` waits for it and decodes it in the caller."""

    def __init__(self, model: BatchableDetector, prepared: PreparedImage,
                 future: Future[Outputs]) -> None:
        self._model = model
        self._prepared = prepared
        self.future = future

    def result(self, timeout_s: float | None = 30.0) -> list[Detection]:
        """The detections, once the batch holding this image has run.

        Raises:
            ModelError: The batch failed in the runtime.
            TimeoutError: It did not run within ``timeout_s``.
        """
        return self._model.decode_detections(self._prepared, self.future.result(timeout_s))


class MicroBatcher:
    """Batches detection requests for one model.

    Args:
        name: Model name, for the thread name and the metrics label.
        model: The detector (a :class:`models.Model`).
        max_size: Largest batch.
        max_delay_s: Longest a request waits for others to join it.
        batch_sizes: Histogram of batch sizes (labelled by model).
        batch_waits: Histogram of how long the first request of each batch waited.
    """

    def __init__(self, name: str, model: BatchableDetector, *, max_size: int,
                 max_delay_s: float, batch_sizes: Histogram, batch_waits: Histogram,
                 queue_size: int = 1024) -> None:
        self.name = name
        self.model = model
        self.max_size = max_size
        self.max_delay_s = max_delay_s
        self._sizes = batch_sizes.labels(name)
        self._waits = batch_waits.labels(name)
        self._requests: queue.Queue[_Request | None] = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None
        # Held while the model runs, by the batcher thread or by a caller going direct.
        self._running = threading.Lock()

    def start(self) -> None:
        """Start the batching thread."""
        self._thread = threading.Thread(target=self._loop, name=f"batcher:{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish queued requests and stop."""
        if self._thread is not None:
            self._requests.put(None)
            self._thread.join(30)
            self._thread = None

    def submit(self, image: object) -> Pending:
        """Prepare one RGB image here and queue it for the batcher thread.

        Raises:
            InputSpecError: The image is unusable (nothing is queued).
        """
        return self._enqueue(self.model.prepare_image(image))

    def detect(self, image: object, timeout_s: float = 30.0) -> list[Detection]:
        """Detections in one image: run here if the model is idle and nobody is queued,
        else batched (all but the runtime call happens in this thread either way).

        Raises:
            InputSpecError: The image is unusable.
            ModelError: The runtime failed.
            TimeoutError: The batch did not run within ``timeout_s``.
        """
        prepared = self.model.prepare_image(image)
        if self._thread is not None and self._requests.empty() and (
                self._running.acquire(blocking=False)):
            try:
                self._sizes.observe(1)
                self._waits.observe(0.0)
                [outputs] = self.model.infer_prepared([prepared])
            finally:
                self._running.release()
            return self.model.decode_detections(prepared, outputs)
        return self._enqueue(prepared).result(timeout_s)

    def _enqueue(self, prepared: PreparedImage) -> Pending:
        future: Future[Outputs] = Future()
        self._requests.put((prepared, future, time.monotonic()), timeout=30)
        return Pending(self.model, prepared, future)

    def _loop(self) -> None:
        expected = 1  # how many requests the previous batch held
        while True:
            first = self._requests.get()
            if first is None:
                return
            batch = [first]
            stopping = False
            deadline = first[2] + self.max_delay_s
            while len(batch) < self.max_size:
                # What is queued joins at once; beyond it, wait only for the expected.
                waiting = len(batch) < expected and deadline > time.monotonic()
                try:
                    item = (self._requests.get(timeout=deadline - time.monotonic())
                            if waiting else self._requests.get_nowait())
                except (queue.Empty, ValueError):  # ValueError: the deadline just passed
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            expected = len(batch)
            self._waits.observe(time.monotonic() - first[2])
            self._sizes.observe(len(batch))
            try:
                with self._running:
                    results = self.model.infer_prepared([p for p, _, _ in batch])
            except Exception as exc:  # one bad batch must not kill the thread
                log.exception("batch of %d for %s failed", len(batch), self.name)
                for _, future, _ in batch:
                    future.set_exception(exc)
            else:
                for (_, future, _), result in zip(batch, results, strict=True):
                    future.set_result(result)
            if stopping:
                return


def measure_batch_sizes(model: BatchableDetector, example: PreparedImage,
                        sizes: Sequence[int], *, min_seconds: float = 0.1,
                        passes: int = 2) -> dict[int, float]:
    """Images per second of ``model`` at each batch size, on copies of ``example``.

    Each size gets a warm-up call (runtimes allocate per shape), then calls until
    ``min_seconds`` have passed (at least two); the sizes are visited ``passes`` times in
    turn and the best pass counts, so that a noisy moment does not decide.
    """
    rates: dict[int, float] = {}
    for _ in range(passes):
        for size in sizes:
            batch = [example] * size
            model.infer_prepared(batch)
            calls, started = 0, time.perf_counter()
            while calls < 2 or time.perf_counter() - started < min_seconds:
                model.infer_prepared(batch)
                calls += 1
            rate = calls * size / (time.perf_counter() - started)
            rates[size] = max(rates.get(size, 0.0), rate)
    return rates


def choose_batch_size(rates: dict[int, float], tolerance: float = 0.05) -> int:
    """The smallest batch size within ``tolerance`` of the best throughput: as fast, and
    a smaller batch answers sooner. On a CPU the best is often small (bigger batches
    spill the caches); on a GPU it is large."""
    best = max(rates.values())
    return min(size for size, rate in rates.items() if rate >= best * (1 - tolerance))


def candidate_batch_sizes(max_size: int) -> list[int]:
    """Powers of two up to ``max_size``, and ``max_size`` itself."""
    sizes = [1 << k for k in range(max_size.bit_length()) if 1 << k <= max_size]
    return sorted({*sizes, max_size})
