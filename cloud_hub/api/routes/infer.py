"""``/v1/infer/{model}``: model as a service, through the same micro-batcher as ingest."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Request, status

from cloud_hub.api.deps import (
    AUTH,
    ServiceDep,
    binary_body,
    documented,
    read_bounded,
    require,
    unprocessable,
)
from cloud_hub.api.schemas import InferenceResult
from cloud_hub.errors import BadImageError, HubError
from cloud_hub.judge import decode_untrusted

router = APIRouter(prefix="/v1/infer", tags=["inference"])


@router.post("/{model}", response_model=InferenceResult, dependencies=[require("operator")],
             openapi_extra=binary_body("image/jpeg", "image/png"),
             responses={**AUTH, **documented(400, 404, 413)})
async def infer(model: str, request: Request, service: ServiceDep) -> dict[str, object]:
    """Detections on an uploaded image (JPEG or PNG body), boxes in its pixels."""
    body = await read_bounded(request, service.settings.max_upload_bytes)
    try:
        # Off the event loop: a large (but allowed) image takes a while to decode.
        image = await asyncio.to_thread(decode_untrusted, body,
                                        max_pixels=service.settings.max_image_pixels)
    except BadImageError as exc:
        service.metrics.images_refused.labels(exc.reason, "infer").inc()
        raise unprocessable(("body",), f"not an acceptable image: {exc}") from exc
    try:
        batcher = service.batcher(model)
    except HubError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    # Preparing and decoding happen in the calling thread: not in the event loop's.
    detections = await asyncio.to_thread(batcher.detect, image)
    loaded, selection = service.models[model]
    service.metrics.http_infer.labels(model).inc()
    return {
        "model": loaded.manifest.name, "version": loaded.manifest.version,
        "backend": selection.chosen, "width": image.shape[1], "height": image.shape[0],
        "detections": [
            {"box": list(d.box), "score": d.score, "label": d.label,
             "keypoints": [list(k) for k in d.keypoints]}
            for d in detections
        ],
    }
