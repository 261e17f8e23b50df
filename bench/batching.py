"""What the hub's serving layer costs, against the bare runtime, on its heavy model.

All in one run, on BlazeFace full-range (the hub's default detector, ONNX Runtime on the
provider the hardware plan picks, exported with a dynamic batch dimension), or on the
detector ``--model`` names (e.g. ``nudenet-320n``, a YOLOv8n export):

(a) **bare best throughput**: ``InferenceSession.run`` alone on prepared tensors, no
    serving code, the best images/s over batch sizes 1, 2, 4, 8, 16 and thread settings
    (1 and every core);
(b) **bare batch-1 latency**: the median ``run`` of one image, with the faster thread
    setting;
(c) **the hub under load**: 16 concurrent clients, each sending frames one after the
    other through the hub's own batcher (``HubService.batcher``, default settings: the
    batch size it measures and chooses at load, ``batch_max_delay_ms``) and its model
    path (the client thread prepares its 640x360 frame and decodes boxes with NMS, the
    batcher thread runs whole batches): throughput and p95 latency per request;
(d) **the hub with one client**: its p50 latency, the batcher's delay included.

The phases alternate over ``--rounds`` rounds and each figure is the median of its rounds,
so that a noisy neighbour on a shared machine slows both sides alike.

Last line: JSON with ``ratio`` (c / a; target >= 0.85), ``single_ratio`` (d / b; target
<= 1.3) and ``batch_gain`` (a / bare batch-1 throughput), and the figures behind them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry

from cloud_hub import HubService, HubSettings
from cloud_hub.batching import MicroBatcher
from edge_agent.footage import SampleFootage
from models import ModelBundle, default_store_path
from models.backends.onnxrt import PROVIDERS, import_onnxruntime

BATCH_SIZES = (1, 2, 4, 8, 16)


def _bare_sessions(bundle: ModelBundle, accelerator: str) -> dict[int, Any]:
    """One plain session per thread setting, on the providers the hub's backend uses."""
    ort = import_onnxruntime()
    available = set(ort.get_available_providers())
    providers = [p for p in PROVIDERS[accelerator] if p in available]
    content = bundle.read_verified_model()
    sessions = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        sessions[threads] = ort.InferenceSession(content, sess_options=options,
                                                 providers=providers)
    return sessions


def _bare_throughput(session: Any, tensors: npt.NDArray[np.generic], batch: int,
                     images: int) -> float:
    name = session.get_inputs()[0].name
    chunk = np.ascontiguousarray(np.resize(tensors, (batch, *tensors.shape[1:])))
    session.run(None, {name: chunk})  # warm this shape
    calls = max(2, images // batch)
    started = time.perf_counter()
    for _ in range(calls):
        session.run(None, {name: chunk})
    return calls * batch / (time.perf_counter() - started)


def _bare_latency_s(session: Any, tensors: npt.NDArray[np.generic], calls: int) -> float:
    name = session.get_inputs()[0].name
    one = np.ascontiguousarray(tensors[:1])
    session.run(None, {name: one})
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        session.run(None, {name: one})
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _hub_load(batcher: MicroBatcher, frames: list[npt.NDArray[np.uint8]], clients: int,
              per_client: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(offset: int) -> None:
        mine = []
        start.wait()
        for i in range(per_client):
            began = time.perf_counter()
            batcher.detect(frames[(offset + i) % len(frames)])
            mine.append(time.perf_counter() - began)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return clients * per_client / (time.perf_counter() - began), latencies


def _paired_single(batcher: MicroBatcher, session: Any, tensors: npt.NDArray[np.generic],
                   frames: list[npt.NDArray[np.uint8]], calls: int) -> tuple[float, float]:
    """Median latency of one hub request and of one bare batch-1 ``run``, taken in turn
    (alternating which goes first) so that both see the same moments of this machine."""
    name = session.get_inputs()[0].name
    one = np.ascontiguousarray(tensors[:1])
    batcher.detect(frames[0])
    session.run(None, {name: one})
    hub: list[float] = []
    bare: list[float] = []
    for i in range(calls):
        for side in ((0, 1) if i % 2 else (1, 0)):
            began = time.perf_counter()
            if side:
                batcher.detect(frames[i % len(frames)])
            else:
                session.run(None, {name: one})
            (hub if side else bare).append(time.perf_counter() - began)
    return statistics.median(hub), statistics.median(bare)


def main(argv: list[str]) -> int:
    """Run every phase and print the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench batching")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-client", type=int, default=4,
                        help="requests each client sends in one loaded segment")
    parser.add_argument("--images", type=int, default=64,
                        help="images per bare throughput segment")
    parser.add_argument("--sweep-rounds", type=int, default=2,
                        help="passes over the bare configurations to find the best")
    parser.add_argument("--pairs", type=int, default=8,
                        help="alternating bare / hub segments compared")
    parser.add_argument("--single-calls", type=int, default=96,
                        help="single-client requests, each paired with a bare run")
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--model", default=None,
                        help="the detector to serve, any stored or zoo detector bundle "
                        "(e.g. nudenet-320n); default: the hub's judge model")
    args = parser.parse_args(argv)

    scratch = tempfile.TemporaryDirectory(prefix="bench-batching-")
    chosen = {"detector_model": args.model} if args.model else {}
    settings = HubSettings(data_dir=Path(scratch.name),
                           model_store=args.store or default_store_path(), **chosen)
    service = HubService(settings, ingest=False)
    batcher = service.batcher(settings.detector_model)  # loads, measures, picks a size
    model, selection = service.models[settings.detector_model]
    bundle = model.bundle
    footage = SampleFootage(static_frames=2)
    frames = [frame.image for frame in footage.frames()][::2][:32]
    # The very rows the hub's path builds, stacked once for the bare runtime.
    tensors = np.stack([model.prepare_image(frame).row for frame in frames])
    sessions = _bare_sessions(bundle, selection.chosen.split(":", 1)[1])
    registry = service.metrics.registry
    try:
        # (a) and (b): every bare configuration, to find the best of each.
        sweep: dict[tuple[int, int], list[float]] = {}
        latency: dict[int, list[float]] = {}
        for _ in range(args.sweep_rounds):
            for threads, session in sessions.items():
                for batch in BATCH_SIZES:
                    sweep.setdefault((threads, batch), []).append(
                        _bare_throughput(session, tensors, batch, args.images))
                latency.setdefault(threads, []).append(_bare_latency_s(session, tensors, 24))
        rates = {key: statistics.median(values) for key, values in sweep.items()}
        best_threads, best_batch = max(rates, key=lambda key: rates[key])
        batch1 = max(rate for (_, batch), rate in rates.items() if batch == 1)
        latency_threads = min(latency, key=lambda t: statistics.median(latency[t]))

        # (c) against the best bare configuration, in alternating segments: each pair
        # sees the same moment of this shared machine.
        bare_rates, hub_rates, pair_ratios, hub_latencies = [], [], [], []
        before = _histogram(registry, bundle.manifest.name)
        for pair in range(args.pairs):
            for side in (("bare", "hub") if pair % 2 else ("hub", "bare")):
                if side == "bare":
                    bare_rates.append(_bare_throughput(sessions[best_threads], tensors,
                                                       best_batch, args.images))
                else:
                    rate, latencies = _hub_load(batcher, frames, args.clients, args.per_client)
                    hub_rates.append(rate)
                    hub_latencies.extend(latencies)
            pair_ratios.append(hub_rates[-1] / bare_rates[-1])
        after = _histogram(registry, bundle.manifest.name)

        # (d) one client, each request paired with a bare batch-1 run.
        hub_one, bare_one = _paired_single(batcher, sessions[latency_threads], tensors,
                                           frames, args.single_calls)
    finally:
        batcher.stop()
        model.close()
        scratch.cleanup()

    best = statistics.median(bare_rates)
    hub_rate = statistics.median(hub_rates)
    ratio = statistics.median(pair_ratios)
    p95 = float(np.percentile(hub_latencies, 95))
    mean_batch = (after[1] - before[1]) / (after[0] - before[0]) if after[0] > before[0] else 0.0
    result = {
        "benchmark": "batching", "model": bundle.label, "backend": selection.chosen,
        "ratio": ratio, "single_ratio": hub_one / bare_one, "batch_gain": rates[
            (best_threads, best_batch)] / batch1,
        "bare_best_images_per_s": best, "bare_best_batch": best_batch,
        "bare_best_threads": best_threads, "bare_batch1_images_per_s": batch1,
        "bare_batch1_latency_ms": bare_one * 1e3, "bare_batch1_threads": latency_threads,
        "hub_images_per_s": hub_rate, "hub_p95_ms": p95 * 1e3,
        "hub_single_p50_ms": hub_one * 1e3, "hub_mean_batch_under_load": mean_batch,
        "hub_batch_max_size": batcher.max_size, "batch_autotune": settings.batch_autotune,
        "batch_max_delay_ms": settings.batch_max_delay_ms, "clients": args.clients,
        "bare_images_per_s": {f"threads={t},batch={b}": rate
                              for (t, b), rate in sorted(rates.items())},
    }
    print(f"bare best {best:.0f} images/s (batch {best_batch}, {best_threads} threads); "
          f"bare batch-1 {batch1:.0f} images/s, {bare_one * 1e3:.2f} ms")
    print(f"hub, {args.clients} clients: {hub_rate:.0f} images/s (batches up to "
          f"{batcher.max_size}, mean {mean_batch:.1f}), p95 {p95 * 1e3:.1f} ms; "
          f"one client: p50 {hub_one * 1e3:.2f} ms")
    print(f"ratio {ratio:.3f} (target >= 0.85); single_ratio {hub_one / bare_one:.3f} "
          f"(target <= 1.3); batch_gain {result['batch_gain']:.2f}")
    print(json.dumps(result))
    return 0


def _histogram(registry: CollectorRegistry, model: str) -> tuple[float, float]:
    count = registry.get_sample_value("hub_batch_size_count", {"model": model}) or 0.0
    total = registry.get_sample_value("hub_batch_size_sum", {"model": model}) or 0.0
    return count, total
