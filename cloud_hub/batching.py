"""Dynamic micro-batching: many callers, one model, batches formed within a few ms.

Callers in any thread :meth:`MicroBatcher.submit` an image and get a future. The
``batcher:<model>`` thread takes the first waiting request, waits at most
``max_delay_s`` for more (up to ``max_size``), runs them as one batch, and resolves every
future. Under light load a request waits for nothing but its own inference; under heavy
load each model call serves a full batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np
import numpy.typing as npt
from prometheus_client import Histogram

from models import Detection

log = logging.getLogger(__name__)

BatchRunner = Callable[[Sequence[npt.NDArray[np.uint8]]], list[list[Detection]]]


class MicroBatcher:
    """Batches detection requests for one model.

    Args:
        name: Model name, for the thread name and the metrics label.
        run: Runs one batch (``Model.detect_batch``).
        max_size: Largest batch.
        max_delay_s: Longest a request waits for others to join it.
        batch_sizes: Histogram of batch sizes (labelled by model).
        batch_waits: Histogram of how long the first request of each batch waited.
    """

    def __init__(self, name: str, run: BatchRunner, *, max_size: int, max_delay_s: float,
                 batch_sizes: Histogram, batch_waits: Histogram,
                 queue_size: int = 1024) -> None:
        self.name = name
        self._run = run
        self.max_size = max_size
        self.max_delay_s = max_delay_s
        self._sizes = batch_sizes.labels(name)
        self._waits = batch_waits.labels(name)
        self._requests: queue.Queue[
            tuple[npt.NDArray[np.uint8], Future[list[Detection]], float] | None
        ] = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None

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

    def submit(self, image: npt.NDArray[np.uint8]) -> Future[list[Detection]]:
        """Queue one RGB image; the future resolves to its detections."""
        future: Future[list[Detection]] = Future()
        self._requests.put((image, future, time.monotonic()), timeout=30)
        return future

    def detect(self, image: npt.NDArray[np.uint8], timeout_s: float = 30.0) -> list[Detection]:
        """Submit and wait."""
        return self.submit(image).result(timeout_s)

    def _loop(self) -> None:
        while True:
            first = self._requests.get()
            if first is None:
                return
            batch = [first]
            deadline = first[2] + self.max_delay_s
            stopping = False
            while len(batch) < self.max_size:
                remaining = deadline - time.monotonic()
                try:
                    item = (self._requests.get(timeout=remaining) if remaining > 0
                            else self._requests.get_nowait())
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._waits.observe(time.monotonic() - first[2])
            self._sizes.observe(len(batch))
            try:
                results = self._run([image for image, _, _ in batch])
            except Exception as exc:  # one bad batch must not kill the thread
                log.exception("batch of %d for %s failed", len(batch), self.name)
                for _, future, _ in batch:
                    future.set_exception(exc)
            else:
                for (_, future, _), result in zip(batch, results, strict=True):
                    future.set_result(result)
            if stopping:
                return
