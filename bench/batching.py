"""What dynamic micro-batching gains on the hub's heavy model, measured, not assumed.

The same 64 frames are judged by BlazeFace full-range (ONNX Runtime on this machine's best
provider) twice in one run: one model call per image from one thread (the baseline),
then by 8 concurrent callers through :class:`cloud_hub.batching.MicroBatcher`
(``max_size`` 8, ``max_delay`` 5 ms). The zoo's ONNX conversions have a fixed batch of
one (tflite2onnx keeps the batch in their Reshape nodes), so the backend loops inside a
batch; the figure shows what batching buys then: the batch sizes form, the per-image cost
does not fall much. On a GPU with a batch-N export the same code path amortises launches.

Last line: JSON with ``ratio`` (batched images/s over sequential images/s), the mean
batch size, and both rates.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram

from cloud_hub.batching import MicroBatcher
from edge_agent.footage import SampleFootage
from hardware import load_model, plan_backends, probe_hardware
from models import ModelStore, ModelZoo, default_store_path


def main(argv: list[str]) -> int:
    """Run both passes and print the JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench batching")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", type=Path, default=None)
    args = parser.parse_args(argv)
    bundle = ModelZoo(ModelStore(args.store or default_store_path())).ensure(
        "blazeface-full-onnx")
    model, selection = load_model(bundle, plan_backends(probe_hardware(), bundle.manifest))
    frames = [f.image for f in SampleFootage(static_frames=2).frames()][: args.images]
    registry = CollectorRegistry()
    sizes = Histogram("size", "", ["model"], registry=registry, buckets=(1, 2, 4, 8, 16))
    waits = Histogram("wait", "", ["model"], registry=registry)
    batcher = MicroBatcher(bundle.manifest.name, model.detect_batch, max_size=8,
                           max_delay_s=0.005, batch_sizes=sizes, batch_waits=waits)
    batcher.start()
    sequential, batched = [], []
    for _ in range(args.rounds):
        started = time.perf_counter()
        for frame in frames:
            model.detect(frame)
        sequential.append(len(frames) / (time.perf_counter() - started))

        def client(part: list[int]) -> None:
            for index in part:
                batcher.detect(frames[index])

        parts = [list(range(i, len(frames), args.clients)) for i in range(args.clients)]
        threads = [threading.Thread(target=client, args=(p,)) for p in parts]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        batched.append(len(frames) / (time.perf_counter() - started))
    batcher.stop()
    count = registry.get_sample_value("size_count", {"model": bundle.manifest.name}) or 1
    total = registry.get_sample_value("size_sum", {"model": bundle.manifest.name}) or 0
    seq, bat = statistics.median(sequential), statistics.median(batched)
    result = {
        "benchmark": "batching", "model": bundle.label, "backend": selection.chosen,
        "sequential_images_per_s": seq, "batched_images_per_s": bat, "ratio": bat / seq,
        "mean_batch_size": total / count, "clients": args.clients,
    }
    print(f"sequential {seq:.0f} images/s; micro-batched by {args.clients} callers {bat:.0f} "
          f"images/s (mean batch {total / count:.1f}); ratio {bat / seq:.2f}")
    print(json.dumps(result))
    return 0
