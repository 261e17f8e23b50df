"""``/v1/models``: the registry of model bundles."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from fastapi import APIRouter, Request, status

from cloud_hub.api.deps import (
    AUTH,
    ServiceDep,
    binary_body,
    documented,
    require,
    stream_to_file,
    unprocessable,
)
from cloud_hub.api.schemas import ModelPublic
from cloud_hub.settings import HubSettings
from models import (
    ModelBundle,
    ModelError,
    ModelStore,
    default_store_path,
    open_bundle,
    unpack_bundle_archive,
)

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=list[ModelPublic], dependencies=[require("viewer")],
            responses=AUTH)
def list_models(service: ServiceDep, name: str | None = None) -> list[dict[str, object]]:
    """Every uploaded version, newest first per name."""
    return service.store.list_models(name=name)


@router.post("", response_model=ModelPublic, status_code=status.HTTP_201_CREATED,
             dependencies=[require("admin")],
             openapi_extra=binary_body("application/zip"),
             responses={**AUTH, **documented(400, 413)})
async def upload_model(request: Request, service: ServiceDep) -> dict[str, object]:
    """Upload a bundle: a zip of ``manifest.json`` and its model file, nothing else.

    The body is streamed to disk, unpacked there within ``max_bundle_bytes`` and
    ``max_bundle_entries``, verified and stored, all off the event loop. Name, version
    and hash come from the verified manifest, never from the request.
    """
    settings = service.settings
    with tempfile.TemporaryDirectory(prefix="hub-upload-") as tmp:
        archive = Path(tmp) / "upload.zip"
        await stream_to_file(request, archive, settings.max_upload_bytes)
        try:
            stored = await asyncio.to_thread(_store_bundle, archive, Path(tmp) / "bundle",
                                             settings)
        except ModelError as exc:
            raise unprocessable(("body",), str(exc)) from exc
    manifest = stored.manifest
    return service.store.add_model(
        name=manifest.name, version=manifest.version, task=manifest.task,
        runtime=manifest.runtime, sha256=manifest.file.sha256,
        size_bytes=manifest.file.size_bytes, path=str(stored.root),
    )


def _store_bundle(archive: Path, folder: Path, settings: HubSettings) -> ModelBundle:
    """Unpack, verify and add an uploaded bundle to the model store (blocking I/O)."""
    unpack_bundle_archive(archive, folder, max_bytes=settings.max_bundle_bytes,
                          max_entries=settings.max_bundle_entries)
    bundle = open_bundle(folder)
    store = ModelStore(settings.model_store or default_store_path())
    return store.add(bundle.manifest, bundle.read_verified_model())
