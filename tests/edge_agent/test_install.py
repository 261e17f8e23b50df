"""Staged install on the device: smoke test, health window, rollback, and kill -9 at
every step, with the real models and a real signed repository."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloud_hub.updates import ModelRepository, golden_outputs_on_cpu
from edge_agent.updates import DeviceFit, ModelInstaller, ModelOffer, UpdateClient
from models import ModelBundle, ModelStore
from models.manifest import Normalization
from sync.install import HealthStats, Step
from tests.cloud_hub.test_updates import Server
from tests.edge_agent.install_driver import load

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parent.parent.parent
FIT = DeviceFit(runtimes=frozenset({"tflite"}), hardware=frozenset({"x86_64"}))
HEALTHY = HealthStats(inferences=200, errors=0, median_latency_s=0.002, escalations=10)


def _as_version(bundle: ModelBundle, version: str, folder: Path,
                **manifest_changes: object) -> ModelBundle:
    store = ModelStore(folder)
    return store.add(bundle.manifest.model_copy(update={"version": version,
                                                         **manifest_changes}),
                     bundle.read_verified_model())


def _download(tmp_path: Path, bundle: ModelBundle, **publish: object) -> tuple[Path, ModelOffer]:
    repository = ModelRepository(tmp_path / "repo", tmp_path / "keys")
    repository.init()
    repository.publish(bundle, **publish)  # type: ignore[arg-type]
    server = Server(tmp_path / "repo")
    try:
        client = UpdateClient(tmp_path / "device-tuf", server.url,
                              trusted_root=repository.trusted_root())
        client.refresh()
        offer = client.choose(bundle.manifest.name, bundle.manifest.version,
                              installed="1.0.0", fit=FIT)
        assert offer is not None
        return client.download(offer), offer
    finally:
        server.close()


@pytest.fixture
def installer(tmp_path: Path, zoo_store: ModelStore) -> ModelInstaller:
    device = ModelInstaller(tmp_path / "state", load)
    device.seed(zoo_store.resolve("blazeface-short"))
    return device


def test_good_update_is_committed_and_the_old_slot_freed(
    installer: ModelInstaller, zoo_store: ModelStore, tmp_path: Path
) -> None:
    new = _as_version(zoo_store.resolve("blazeface-short"), "1.1.0", tmp_path / "pub")
    archive, offer = _download(tmp_path, new)
    record = installer.begin("blazeface-short", "1.1.0")
    record = installer.stage(record, archive)
    record, model = installer.smoke(record, offer.golden)
    assert record.step == Step.SMOKE_PASSED and model is not None
    record = installer.swap(record)
    assert installer.active_version("blazeface-short") == "1.1.0"
    undecided = HealthStats(inferences=10, errors=0, median_latency_s=0.002, escalations=1)
    assert installer.conclude(record, undecided, HEALTHY) == record  # keep watching
    record = installer.conclude(record, HEALTHY, HEALTHY)
    assert record.step == Step.COMMITTED
    assert not installer.slot("blazeface-short", "1.0.0").exists()
    assert installer.active_bundle("blazeface-short").manifest.version == "1.1.0"


def test_verified_update_failing_its_smoke_test_is_rolled_back(
    installer: ModelInstaller, zoo_store: ModelStore, tmp_path: Path
) -> None:
    original = zoo_store.resolve("blazeface-short")
    # A release with the wrong normalisation: it verifies (it is what was signed), but
    # on the device it does not reproduce the outputs the publisher measured.
    wrong = Normalization(mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0))
    broken = _as_version(original, "1.2.0", tmp_path / "pub", input=original.manifest.input
                         .model_copy(update={"normalization": wrong}))
    archive, offer = _download(tmp_path, broken, golden=golden_outputs_on_cpu(original))
    record = installer.begin("blazeface-short", "1.2.0")
    record = installer.stage(record, archive)
    record, model = installer.smoke(record, offer.golden)
    assert model is None and record.step == Step.ROLLED_BACK
    assert "smoke test failed: output" in record.reason
    assert installer.active_version("blazeface-short") == "1.0.0"
    assert not installer.slot("blazeface-short", "1.2.0").exists()
    load(installer.active_bundle("blazeface-short")).close()  # the old model still serves


def test_update_degrading_in_the_health_window_is_rolled_back(
    installer: ModelInstaller, zoo_store: ModelStore, tmp_path: Path
) -> None:
    new = _as_version(zoo_store.resolve("blazeface-short"), "1.3.0", tmp_path / "pub")
    archive, offer = _download(tmp_path, new)
    record = installer.begin("blazeface-short", "1.3.0")
    record, _ = installer.smoke(installer.stage(record, archive), offer.golden)
    record = installer.swap(record)
    escalating = HealthStats(inferences=200, errors=0, median_latency_s=0.002, escalations=90)
    record = installer.conclude(record, escalating, HEALTHY)
    assert record.step == Step.ROLLED_BACK and "escalation rate 45.0%" in record.reason
    assert installer.active_version("blazeface-short") == "1.0.0"
    assert [step for step, _ in record.history] == [
        "idle", "verified", "staged", "smoke-passed", "active", "rolled-back"]


@pytest.mark.parametrize("crash_at", ["idle", "verified", "staged", "smoke-passed", "active",
                                      "committed"])
def test_kill_9_at_every_step_leaves_a_loadable_model(
    crash_at: str, installer: ModelInstaller, zoo_store: ModelStore, tmp_path: Path
) -> None:
    new = _as_version(zoo_store.resolve("blazeface-short"), "1.1.0", tmp_path / "pub")
    archive, offer = _download(tmp_path, new)
    golden = tmp_path / "golden.json"
    golden.write_text(json.dumps(offer.golden))
    driver = subprocess.run(
        [sys.executable, "-m", "tests.edge_agent.install_driver", str(tmp_path / "state"),
         str(archive), str(golden), crash_at], cwd=ROOT, capture_output=True, timeout=120,
        check=False,
    )
    assert driver.returncode == -9, driver.stderr.decode()[-1000:]
    action = installer.resume("blazeface-short")
    # Whatever the step, a complete, verified model serves right after the restart...
    load(installer.active_bundle("blazeface-short")).close()
    record = installer.record("blazeface-short")
    assert record is not None
    # ...and the install can be finished from where it stopped.
    if action in ("verify", "stage", "smoke-test", "swap"):
        assert installer.active_version("blazeface-short") == "1.0.0"
        record = installer.begin("blazeface-short", "1.1.0")
        record, _ = installer.smoke(installer.stage(record, archive), offer.golden)
        record = installer.swap(record)
        action = "watch"
    if action == "watch":
        assert installer.active_version("blazeface-short") == "1.1.0"
        record = installer.conclude(installer.record("blazeface-short"), HEALTHY, HEALTHY)
    assert record.step == Step.COMMITTED
    assert installer.active_bundle("blazeface-short").manifest.version == "1.1.0"


@pytest.mark.parametrize(("errors", "final"), [(0, Step.COMMITTED), (10, Step.ROLLED_BACK)])
def test_agent_restarted_in_the_health_window_finishes_it(
    errors: int, final: Step, installer: ModelInstaller, zoo_store: ModelStore,
    tmp_path: Path,
) -> None:
    from edge_agent.config import UpdatesConfig
    from edge_agent.updates import ModelHealth, Updater
    from models import Model
    from sync import UpdateReport

    new = _as_version(zoo_store.resolve("blazeface-short"), "1.1.0", tmp_path / "pub")
    archive, offer = _download(tmp_path, new)
    record = installer.begin("blazeface-short", "1.1.0")
    record, model = installer.smoke(installer.stage(record, archive), offer.golden)
    assert model is not None
    installer.swap(record)  # ... and here the agent was stopped
    health = ModelHealth(inferences=100, errors=errors)
    health.latencies.extend([0.002] * 100)
    swapped: list[Model] = []
    reports: list[UpdateReport] = []

    def swap(name: str, replacement: Model) -> Model | None:
        swapped.append(replacement)
        return model

    updater = Updater(
        device_id="cam-1", config=UpdatesConfig(health_inferences=50), installer=installer,
        client=None, fit=FIT, swap=swap, health=lambda name: health,  # type: ignore[arg-type]
        report=reports.append,
    )
    updater.start()
    try:
        updater.resume(installer.record("blazeface-short"))  # type: ignore[arg-type]
        deadline = time.monotonic() + 30
        while not reports:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        updater.stop()
    assert reports[-1].step == final.value
    record = installer.record("blazeface-short")
    assert record is not None and record.step == final
    if final == Step.ROLLED_BACK:
        assert installer.active_version("blazeface-short") == "1.0.0"
        assert swapped and swapped[0].manifest.version == "1.0.0"
    else:
        assert installer.active_version("blazeface-short") == "1.1.0" and not swapped


def test_health_window_times_the_previous_model_beside_the_new_one(
    zoo_store: ModelStore,
) -> None:
    import threading

    import skimage.data

    from edge_agent.updates import ModelHealth
    from models import Model, ModelError

    image = skimage.data.astronaut()
    new, previous = (load(zoo_store.resolve(name)) for name in ("blazeface-full",
                                                                 "blazeface-short"))
    health = ModelHealth(warmup=2)
    shadowed: list[Model] = []

    def detect(model: Model) -> object:
        shadowed.append(model)
        return model.detect(image)

    health.run_shadow(detect, new)  # no shadow yet: nothing runs
    health.start_shadow(previous)
    for _ in range(6):
        started = time.perf_counter()
        new.detect(image)
        if health.record(time.perf_counter() - started):  # not during the warm-up
            health.run_shadow(detect, new)
    stats = health.stats()
    assert stats.inferences == 4 and len(stats.latency_pairs_s) == 4
    assert shadowed == [new, previous, previous, new] * 2  # both again, in turns

    def failing(model: Model) -> object:
        if model is previous:
            raise ModelError("the previous model broke")
        return model.detect(image)

    health.record(0.001)
    health.run_shadow(failing, new)  # the previous model's failure is not the new one's
    assert health.stats().errors == 0 and len(health.latency_pairs) == 4

    # Ending the shadow waits for the shadow inference under way, so the updater can
    # close the previous model right after.
    entered, release, ended = threading.Event(), threading.Event(), threading.Event()

    def slow(model: Model) -> object:
        if model is previous:
            entered.set()
            release.wait(10)
        return model.detect(image)

    health.record(0.001)
    worker = threading.Thread(target=health.run_shadow, args=(slow, new))
    worker.start()
    assert entered.wait(10)
    ender = threading.Thread(target=lambda: (health.end_shadow(), ended.set()))
    ender.start()
    assert not ended.wait(0.3)
    release.set()
    worker.join(10)
    ender.join(10)
    assert ended.is_set() and len(health.latency_pairs) == 5
    health.run_shadow(detect, new)
    assert len(shadowed) == 8  # ended: nothing runs any more
    new.close()
    previous.close()
