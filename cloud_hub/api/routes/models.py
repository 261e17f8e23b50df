"""``/v1/models``: the registry of model bundles."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, status

from cloud_hub.api.deps import ServiceDep, read_bounded, require
from cloud_hub.api.schemas import ModelPublic
from models import ModelError, ModelStore, default_store_path, open_bundle

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=list[ModelPublic], dependencies=[require("viewer")])
def list_models(service: ServiceDep, name: str | None = None) -> list[dict[str, object]]:
    """Every uploaded version, newest first per name."""
    return service.store.list_models(name=name)


@router.post("", response_model=ModelPublic, status_code=status.HTTP_201_CREATED,
             dependencies=[require("admin")],
             openapi_extra={"requestBody": {"content": {"application/zip": {}}}})
async def upload_model(request: Request, service: ServiceDep) -> dict[str, object]:
    """Upload a bundle: a zip of ``manifest.json`` and its model file, nothing else.

    Name, version and hash come from the verified manifest, never from the request.
    """
    body = await read_bounded(request, service.settings.max_upload_bytes)
    with tempfile.TemporaryDirectory(prefix="hub-upload-") as tmp:
        folder = Path(tmp)
        try:
            with zipfile.ZipFile(io.BytesIO(body)) as archive:
                names = [n for n in archive.namelist() if not n.endswith("/")]
                # Only base names are used, so no entry can write outside the folder.
                bases = [Path(n).name for n in names]
                if len(set(bases)) != 2 or any(b.startswith(".") for b in bases):
                    raise HTTPException(422,
                                        "the zip must hold manifest.json and one model file")
                for name, base in zip(names, bases, strict=True):
                    (folder / base).write_bytes(archive.read(name))
        except zipfile.BadZipFile as exc:
            raise HTTPException(422,
                                f"not a zip archive: {exc}") from exc
        try:
            bundle = open_bundle(folder)
        except ModelError as exc:
            raise HTTPException(422, str(exc)) from exc
        store = ModelStore(service.settings.model_store or default_store_path())
        stored = store.add(bundle.manifest, bundle.read_verified_model())
    manifest = stored.manifest
    return service.store.add_model(
        name=manifest.name, version=manifest.version, task=manifest.task,
        runtime=manifest.runtime, sha256=manifest.file.sha256,
        size_bytes=manifest.file.size_bytes, path=str(stored.root),
    )
