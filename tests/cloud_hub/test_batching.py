"""The micro-batcher: batch formation, the adaptive wait, failures, stopping."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client import CollectorRegistry, Histogram

from cloud_hub.batching import MicroBatcher, Pending
from models import (
    Detection,
    InferenceError,
    InputSpecError,
    ModelStore,
    Outputs,
    Placement,
    PreparedImage,
)

pytestmark = pytest.mark.integration

PLACED = Placement(4, 4, 1.0, 1.0, 0.0, 0.0, 4, 4)


class Runner:
    """Stands in for a :class:`models.Model`: records batch sizes, can hold a batch, and
    remembers in which thread each step ran."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self.fail_next = False
        self.threads: dict[str, set[str]] = {"prepare": set(), "infer": set(), "decode": set()}

    def prepare_image(self, image: object) -> PreparedImage:
        self.threads["prepare"].add(threading.current_thread().name)
        assert isinstance(image, np.ndarray)
        if image.dtype != np.uint8:
            raise InputSpecError(f"image must have dtype uint8, got {image.dtype}")
        return PreparedImage(image[0, 0, :1].astype(np.float32), PLACED)

    def infer_prepared(self, prepared: Sequence[PreparedImage]) -> list[Outputs]:
        self.threads["infer"].add(threading.current_thread().name)
        self.sizes.append(len(prepared))
        self.entered.set()
        assert self.hold.wait(10)
        if self.fail_next:
            self.fail_next = False
            raise InferenceError("onnxruntime:cpu", "the runtime failed")
        return [{"marker": p.row} for p in prepared]

    def decode_detections(self, prepared: PreparedImage, outputs: Outputs) -> list[Detection]:
        self.threads["decode"].add(threading.current_thread().name)
        # Each image's "detection" carries its marker pixel, so answers can be matched.
        return [Detection((0, 0, 1, 1), float(outputs["marker"][0]) / 255, "face", ())]


def _image(marker: int) -> npt.NDArray[np.uint8]:
    return np.full((4, 4, 3), marker, np.uint8)


@pytest.fixture
def runner() -> Runner:
    return Runner()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def _batcher(runner: Runner, registry: CollectorRegistry, *, max_size: int = 8,
             max_delay_s: float = 2.0) -> MicroBatcher:
    sizes = Histogram("size", "", ["model"], registry=registry, buckets=(1, 2, 4, 8, 16))
    waits = Histogram("wait", "", ["model"], registry=registry)
    return MicroBatcher("m", runner, max_size=max_size, max_delay_s=max_delay_s,
                        batch_sizes=sizes, batch_waits=waits)


@pytest.fixture
def batcher(runner: Runner, registry: CollectorRegistry) -> Iterator[MicroBatcher]:
    instance = _batcher(runner, registry)
    instance.start()
    yield instance
    runner.hold.set()
    instance.stop()


def test_a_lone_caller_waits_for_nobody(batcher: MicroBatcher, runner: Runner,
                                        registry: CollectorRegistry) -> None:
    # The delay is 2 s: had any request waited for company, these would take 10 s and
    # the wait histogram would say so.
    answers = [batcher.detect(_image(i)) for i in range(5)]
    answers += [batcher.submit(_image(i)).result(10) for i in range(5, 10)]  # via the thread
    assert [a[0].score for a in answers] == [i / 255 for i in range(10)]
    assert runner.sizes == [1] * 10
    assert (registry.get_sample_value("wait_sum", {"model": "m"}) or 0) < 1.0


def test_requests_queued_during_a_batch_form_the_next_one(
    batcher: MicroBatcher, runner: Runner
) -> None:
    runner.hold.clear()
    first = batcher.submit(_image(1))
    assert runner.entered.wait(10)  # the model is busy with the first request...
    behind = [batcher.submit(_image(10 + i)) for i in range(7)]  # ...while 7 queue up
    runner.hold.set()
    assert first.result(10)[0].score == 1 / 255
    assert [f.result(10)[0].score for f in behind] == [(10 + i) / 255 for i in range(7)]
    assert runner.sizes == [1, 7]


def test_after_a_full_batch_the_batcher_waits_for_the_callers_to_come_back(
    batcher: MicroBatcher, runner: Runner
) -> None:
    runner.hold.clear()
    batcher.submit(_image(0))
    assert runner.entered.wait(10)
    wave = [batcher.submit(_image(i)) for i in range(4)]
    runner.hold.set()
    for future in wave:
        future.result(10)
    # The previous batch held 4: one request alone is held back (up to the 2 s delay)
    # until the other three arrive, and all four run together.
    others: list[Pending] = []
    arrived = threading.Event()

    def come_back() -> None:
        others.extend(batcher.submit(_image(51 + i)) for i in range(3))
        arrived.set()

    lead = batcher.submit(_image(50))
    threading.Timer(0.2, come_back).start()
    assert lead.result(10)[0].score == 50 / 255
    assert arrived.is_set()
    assert [f.result(10)[0].score for f in others] == [(51 + i) / 255 for i in range(3)]
    assert runner.sizes == [1, 4, 4]


def test_batches_never_exceed_the_maximum(runner: Runner,
                                          registry: CollectorRegistry) -> None:
    instance = _batcher(runner, registry, max_size=3)
    runner.hold.clear()
    instance.start()
    try:
        futures = [instance.submit(_image(i)) for i in range(8)]
        assert runner.entered.wait(10)
        runner.hold.set()
        assert [f.result(10)[0].score for f in futures] == [i / 255 for i in range(8)]
    finally:
        instance.stop()
    assert max(runner.sizes) <= 3 and sum(runner.sizes) == 8


def test_a_failing_batch_fails_its_callers_and_the_batcher_goes_on(
    batcher: MicroBatcher, runner: Runner
) -> None:
    runner.fail_next = True
    with pytest.raises(InferenceError, match="the runtime failed"):
        batcher.detect(_image(3))
    assert batcher.detect(_image(4))[0].score == 4 / 255


def test_callers_prepare_and_decode_and_a_bad_image_fails_only_its_caller(
    batcher: MicroBatcher, runner: Runner
) -> None:
    with pytest.raises(InputSpecError, match="dtype uint8"):
        batcher.submit(np.zeros((4, 4, 3), np.float64))
    assert runner.sizes == []  # never queued, so no batch carried it
    here = threading.current_thread().name
    # Alone with an idle model, the caller runs its image itself: no thread switches.
    assert batcher.detect(_image(9))[0].score == 9 / 255
    assert runner.threads == {"prepare": {here}, "infer": {here}, "decode": {here}}
    # While the model is busy, requests go to the batcher thread, and only the runtime
    # call happens there.
    runner.hold.clear()
    runner.entered.clear()
    busy = batcher.submit(_image(1))
    assert runner.entered.wait(10)
    waiting = threading.Thread(target=lambda: batcher.detect(_image(2)), name="caller-2")
    waiting.start()
    runner.hold.set()
    waiting.join(10)
    busy.result(10)
    assert runner.threads == {"prepare": {here, "caller-2"}, "infer": {here, "batcher:m"},
                              "decode": {here, "caller-2"}}


def test_a_real_model_answers_through_the_batcher_as_it_does_alone(
    zoo_store: ModelStore, registry: CollectorRegistry
) -> None:
    import skimage.data

    from models import BackendSpec, Model, create_backend

    bundle = zoo_store.resolve("blazeface-full-onnx")
    backend = create_backend(bundle, BackendSpec("onnxruntime", "cpu"))
    backend.load()
    model = Model(bundle, backend)
    instance = _batcher(model, registry, max_delay_s=0.05)  # type: ignore[arg-type]
    instance.start()
    images = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()] * 3
    try:
        answers: dict[int, list[Detection]] = {}
        threads = [threading.Thread(target=lambda i=i: answers.__setitem__(
            i, instance.detect(images[i]))) for i in range(len(images))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        instance.stop()
    for i, image in enumerate(images):
        alone = model.detect(image)
        assert [d.label for d in answers[i]] == [d.label for d in alone]
        for a, b in zip(answers[i], alone, strict=True):
            np.testing.assert_allclose(a.box, b.box, atol=1e-3)
    assert len(answers[0]) >= 1 and answers[1] == []  # the astronaut's face; none in coffee
    model.close()


def test_stop_finishes_what_is_queued(runner: Runner, registry: CollectorRegistry) -> None:
    instance = _batcher(runner, registry, max_size=2)
    runner.hold.clear()
    instance.start()
    futures = [instance.submit(_image(i)) for i in range(5)]
    assert runner.entered.wait(10)
    stopper = threading.Thread(target=instance.stop)
    stopper.start()
    runner.hold.set()
    stopper.join(10)
    assert [f.result(0)[0].score for f in futures] == [i / 255 for i in range(5)]
