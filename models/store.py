"""The local model store: ``<root>/<name>/<version>/`` holds one bundle each."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from models.bundle import ModelBundle, open_bundle, write_bundle
from models.errors import BundleError, ModelNotFoundError
from models.hints import missing_model_hint
from models.manifest import MODEL_NAME_PATTERN, Manifest, semver_key

STORE_ENV = "EDGE_AGENT_MODEL_STORE"


def default_store_path() -> Path:
    """``$EDGE_AGENT_MODEL_STORE``, else ``$XDG_DATA_HOME/edge-agent/models``.

    ``XDG_DATA_HOME`` defaults to ``~/.local/share``; the systemd unit points the store
    into its ``StateDirectory`` instead.
    """
    configured = os.environ.get(STORE_ENV)
    if configured:
        return Path(configured).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    return Path(data_home) / "edge-agent" / "models"


@dataclass(frozen=True, slots=True)
class StoreEntry:
    """One folder of the store: a usable bundle, or the reason it is not usable."""

    name: str
    version: str
    path: Path
    bundle: ModelBundle | None
    problem: str | None


class ModelStore:
    """Bundles kept on this device, by name and semantic version."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, name: str, version: str) -> Path:
        """Folder of bundle ``name`` at ``version``."""
        return self.root / name / version

    def add(self, manifest: Manifest, model_bytes: bytes) -> ModelBundle:
        """Write a bundle into the store atomically, replacing the same name and version."""
        return write_bundle(self.path_for(manifest.name, manifest.version), manifest, model_bytes)

    def entries(self) -> list[StoreEntry]:
        """Every bundle folder, verified; broken ones carry their problem instead."""
        found: list[StoreEntry] = []
        if not self.root.is_dir():
            return found
        for name_dir in sorted(p for p in self.root.iterdir() if _visible_dir(p)):
            versions = [p for p in name_dir.iterdir() if _visible_dir(p)]
            for version_dir in sorted(versions, key=lambda p: _version_order(p.name)):
                try:
                    bundle: ModelBundle | None = open_bundle(version_dir)
                    problem = None
                except BundleError as exc:
                    bundle, problem = None, str(exc)
                found.append(
                    StoreEntry(name_dir.name, version_dir.name, version_dir, bundle, problem)
                )
        return found

    def quantized_copies(self, name: str) -> list[Manifest]:
        """Manifests of the usable quantized bundles made from model ``name`` (their
        ``quantization.source`` names it), for the hardware plan to choose among."""
        return [
            entry.bundle.manifest for entry in self.entries()
            if entry.bundle is not None and entry.bundle.manifest.quantization is not None
            and entry.bundle.manifest.quantization.source_name == name
        ]

    def resolve(self, reference: str) -> ModelBundle:
        """Open a bundle by path, ``name`` (newest version) or ``name@version``.

        Raises:
            ModelNotFoundError: No such bundle; the message lists what the store has.
            BundleError: The bundle exists but is broken or tampered with.
        """
        try:
            path = Path(reference).expanduser()
        except RuntimeError:  # ``~name`` of no such user: not a path, then
            path = Path(reference)
        if path.is_dir():
            return open_bundle(path)
        if "/" in reference or reference.endswith((".json", ".tflite", ".onnx")):
            raise ModelNotFoundError(reference, f"no bundle folder at {reference}")
        name, _, version = reference.partition("@")
        if not re.fullmatch(MODEL_NAME_PATTERN, name):
            # Never a folder lookup: ``..`` would list what lies above the store.
            raise ModelNotFoundError(reference, f"{name!r} is not a model name")
        folder = self.root / name
        versions = [p.name for p in folder.iterdir() if _visible_dir(p)] if folder.is_dir() else []
        if not versions:
            # Imported here: the zoo is built on the store.
            from models.zoo import ZOO

            known = sorted({e.name for e in self.entries()})
            held = f"the store has: {', '.join(known)}" if known else "the store is empty"
            raise ModelNotFoundError(
                reference,
                f"no model named {name!r} in {self.root} ({held}); "
                + missing_model_hint(name, stored=known, zoo=ZOO),
            )
        if version:
            if version not in versions:
                raise ModelNotFoundError(
                    reference, f"{name} has no version {version} (it has {', '.join(versions)})"
                )
            return open_bundle(folder / version)
        return open_bundle(folder / max(versions, key=_version_order))


def _visible_dir(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".")


def _version_order(text: str) -> tuple[int, tuple[object, ...]]:
    try:
        return (1, semver_key(text))
    except ValueError:
        return (0, (text,))
