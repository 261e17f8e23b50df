"""Both real backends behind one interface: loading, batching, bad input, describe."""

from __future__ import annotations

import numpy as np
import pytest

from models import (
    BackendLoadError,
    BackendSpec,
    BackendUnavailableError,
    InferenceError,
    InputSpecError,
    LiteRTBackend,
    ModelBundle,
    OnnxRuntimeBackend,
    create_backend,
)
from models.backends import Backend, delegated_nodes

pytestmark = pytest.mark.integration


def _tensor(bundle: ModelBundle, batch: int = 1, seed: int = 0) -> np.ndarray:
    """A random tensor of the bundle's input: normalised floats, or uint8 pixels for the
    ONNX conversions, which normalise inside the graph."""
    spec = bundle.manifest.input
    shape = (batch, *spec.shape[1:])
    rng = np.random.default_rng(seed)
    if spec.dtype == "uint8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.uniform(-1, 1, shape).astype(np.float32)


@pytest.fixture(params=["litert:xnnpack", "litert:cpu", "onnxruntime:cpu"])
def loaded(request: pytest.FixtureRequest, short_tflite: ModelBundle,
           short_onnx: ModelBundle) -> Backend:
    engine, accelerator = request.param.split(":")
    bundle = short_tflite if engine == "litert" else short_onnx
    backend = create_backend(bundle, BackendSpec(engine, accelerator))
    backend.load()
    yield backend
    backend.close()


def test_constructor_does_no_io(short_tflite: ModelBundle) -> None:
    backend = LiteRTBackend(short_tflite, BackendSpec("litert", "xnnpack"))
    with pytest.raises(InferenceError, match="not loaded"):
        backend.infer(_tensor(short_tflite))


def test_outputs_are_named_and_shaped(loaded: Backend) -> None:
    outputs = loaded.infer(_tensor(loaded.bundle))
    assert set(outputs) == {"regressors", "classificators"}
    assert outputs["regressors"].shape == (1, 896, 16)
    assert outputs["classificators"].shape == (1, 896, 1)
    assert np.isfinite(outputs["regressors"]).all()


def test_batch_equals_rows_run_alone(loaded: Backend) -> None:
    batch = _tensor(loaded.bundle, batch=3, seed=1)
    together = loaded.infer(batch)["classificators"]
    alone = np.concatenate([loaded.infer(batch[i : i + 1])["classificators"] for i in range(3)])
    np.testing.assert_allclose(together, alone, atol=1e-4)
    # Back to batch one after a bigger batch.
    assert loaded.infer(batch[:1])["classificators"].shape == (1, 896, 1)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: t.astype(np.float64), "dtype float64 does not match the model's float32"),
        (lambda t: t[:, :64], r"shape \[1, 64, 128, 3\] does not match"),
        (lambda t: t[0], r"shape \[128, 128, 3\] does not match"),
        (lambda t: t[:0], "batch is empty"),
        (lambda t: t.tolist(), "must be a numpy array"),
    ],
)
def test_wrong_input_is_a_clear_error(short_tflite: ModelBundle, make: object,
                                      message: str) -> None:
    backend = LiteRTBackend(short_tflite, BackendSpec("litert", "xnnpack"))
    backend.load()
    with pytest.raises(InputSpecError, match=message):
        backend.infer(make(_tensor(short_tflite)))  # type: ignore[operator]


def test_pixel_model_refuses_a_normalised_or_nchw_tensor(short_onnx: ModelBundle,
                                                         short_tflite: ModelBundle) -> None:
    backend = OnnxRuntimeBackend(short_onnx, BackendSpec("onnxruntime", "cpu"))
    backend.load()
    with pytest.raises(InputSpecError, match="dtype float32 does not match the model's uint8"):
        backend.infer(_tensor(short_tflite))
    nchw = np.zeros((1, 3, 128, 128), np.uint8)
    with pytest.raises(InputSpecError, match=r"\[N, 128, 128, 3\] \(NHWC\)"):
        backend.infer(nchw)


def test_missing_provider_is_unavailable_not_silent_cpu(short_onnx: ModelBundle) -> None:
    backend = OnnxRuntimeBackend(short_onnx, BackendSpec("onnxruntime", "cuda"))
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider is not in"):
        backend.load()


def test_missing_delegate_library_is_unavailable(short_tflite: ModelBundle) -> None:
    spec = BackendSpec("litert", "edgetpu", options=(("library", "libedgetpu-absent.so.1"),))
    with pytest.raises(BackendUnavailableError, match="cannot load delegate"):
        LiteRTBackend(short_tflite, spec).load()


def test_wrong_engine_for_runtime(short_tflite: ModelBundle, short_onnx: ModelBundle) -> None:
    with pytest.raises(BackendUnavailableError, match="needs litert"):
        create_backend(short_tflite, BackendSpec("onnxruntime", "cpu"))
    with pytest.raises(BackendLoadError, match="is a tflite model"):
        OnnxRuntimeBackend(short_tflite, BackendSpec("onnxruntime", "cpu")).load()


def test_describe_tells_what_really_runs(loaded: Backend) -> None:
    description = loaded.describe()
    assert description.name == loaded.spec.name
    assert description.runtime_version
    if loaded.spec.engine == "onnxruntime":
        assert description.details["providers"] == "CPUExecutionProvider"
    else:
        assert description.details["package"] == "ai_edge_litert"


def test_xnnpack_is_proven_by_the_nodes_it_took(short_tflite: ModelBundle) -> None:
    xnnpack = LiteRTBackend(short_tflite, BackendSpec("litert", "xnnpack"))
    builtin = LiteRTBackend(short_tflite, BackendSpec("litert", "cpu"))
    xnnpack.load()
    builtin.load()
    assert int(xnnpack.describe().details["delegated_nodes"]) >= 1
    assert builtin.describe().details["delegated_nodes"] == "0"
    xnnpack.close()
    builtin.close()


class _Interpreter:
    """Stands in for a LiteRT interpreter: only its list of plan nodes."""

    def __init__(self, *names: str) -> None:
        self.names = names

    def _get_ops_details(self) -> list[dict[str, object]]:
        return [{"index": i, "op_name": name} for i, name in enumerate(self.names)]


def test_delegated_nodes_count_delegate_partitions() -> None:
    assert delegated_nodes(_Interpreter("CONV_2D", "RELU")) == 0
    assert delegated_nodes(_Interpreter("CONV_2D", "DELEGATE", "DELEGATE")) == 2
    assert delegated_nodes(object()) is None  # an old runtime that cannot tell
