"""One hub replica whose judge costs a fixed time per event: ``python -m bench.replica``.

The scale-out benchmark (:mod:`bench.scaleout`) and its tests run hub replicas that
differ from ``cloud-hub serve`` in one part, given through the service's judge seam
(:class:`cloud_hub.EventJudge`): :class:`FixedCostJudge` instead of the models. Everything
else is the product: ``CLOUD_HUB_*`` settings, the MQTT ingest on the shared subscription,
the store, the web API and its ``/readyz``.

The judge holds one of ``slots`` judge slots for ``cost_ms`` per event and sleeps there,
releasing the CPU: a replica then judges at most ``slots / cost`` events a second, as a
replica with one model runtime of fixed speed would, while the two cores of a small
test machine stay free for what scale-out is about (the broker's split, the shared store).
With one slot, the number of events a replica handled is the number of judge slots it
spent, one after another: the count the tests compare, instead of a time.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Callable

from cloud_hub import EventJudge, HubService, Judgement, create_app, load_settings
from sync import EventMessage

FIXED_COST_MODEL = "fixed-cost"


class FixedCostJudge:
    """Judges any event in ``cost_s``, ``slots`` at a time; sensor windows by their edge
    score (negative: confirmed), every other event rejected.

    Args:
        cost_s: Seconds each event holds a slot.
        slots: Events judged at once.
        sleep: Waits (injected by unit tests).
    """

    def __init__(self, cost_s: float, *, slots: int = 1,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if cost_s < 0 or slots < 1:
            raise ValueError(f"cost_s must be >= 0 and slots >= 1, got {cost_s}, {slots}")
        self.cost_s = cost_s
        self._slots = threading.BoundedSemaphore(slots)
        self._sleep = sleep
        self._lock = threading.Lock()
        self.judged = 0

    @property
    def model_name(self) -> str:
        """``fixed-cost``."""
        return FIXED_COST_MODEL

    def judge(self, event: EventMessage) -> Judgement:
        """Hold a slot for the fixed cost, then decide."""
        with self._slots:
            self._sleep(self.cost_s)
        with self._lock:
            self.judged += 1
        confirmed = event.anomaly_score is not None and event.anomaly_score < 0
        return Judgement("confirmed" if confirmed else "rejected", (), FIXED_COST_MODEL,
                         "1", self.cost_s * 1e3)


def main(argv: list[str] | None = None) -> int:
    """Serve one replica until SIGTERM (settings from ``CLOUD_HUB_*``)."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.replica", description=__doc__)
    parser.add_argument("--cost-ms", type=float, default=50.0, help="judge cost per event")
    parser.add_argument("--slots", type=int, default=1, help="events judged at once")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    judge: EventJudge = FixedCostJudge(args.cost_ms / 1e3, slots=args.slots)
    app = create_app(HubService(settings, judge=judge))
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_level="warning",
                log_config=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
