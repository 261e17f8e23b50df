"""``/healthz``, ``/readyz``, ``/metrics`` and ``/v1/tokens``."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cloud_hub.api.auth import hash_token, new_token
from cloud_hub.api.deps import AUTH, ServiceDep, documented, get_principal, require
from cloud_hub.api.schemas import TokenCreate, TokenIssued, TokenPublic
from cloud_hub.errors import NotFoundError

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready; the body says why"}})
def readyz(service: ServiceDep, response: Response) -> dict[str, object]:
    """Ready to serve: models loaded, database answering, broker connected (if ingesting)."""
    problems = []
    if service.supervisor.failure is not None:
        problems.append(f"failed: {service.supervisor.failure}")
    elif not service.ready:
        problems.append("starting")
    try:
        service.store.list_models(name="-")
    except Exception as exc:  # any database failure means not ready
        problems.append(f"database: {exc}")
    if service.ingest is not None and not service.ingest.connected.is_set():
        problems.append("broker: not connected")
    if problems:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"ready": not problems, "problems": problems}


def metrics_access(request: Request, service: ServiceDep) -> None:
    """Admit any API token, or anyone when ``public_metrics`` is set: the metrics name
    device ids.

    Raises:
        HTTPException: 401 without a valid token.
    """
    if not service.settings.public_metrics:
        get_principal(request, service)


@router.get("/metrics", response_class=Response, dependencies=[Depends(metrics_access)],
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **documented(401)})
def metrics(service: ServiceDep) -> Response:
    """Prometheus exposition (a bearer token of any role, unless made public)."""
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.post("/v1/tokens", response_model=TokenIssued, status_code=status.HTTP_201_CREATED,
             dependencies=[require("admin")], tags=["auth"], responses=AUTH)
def issue_token(body: TokenCreate, service: ServiceDep) -> TokenIssued:
    """Issue an API token (shown once; only its keyed hash is stored)."""
    token = new_token()
    token_id = service.store.add_token(
        name=body.name, role=body.role, token_hash=hash_token(service.settings.secret_key, token))
    return TokenIssued(id=token_id, name=body.name, role=body.role, token=token)


@router.get("/v1/tokens", response_model=list[TokenPublic], dependencies=[require("admin")],
            tags=["auth"], responses=AUTH)
def list_tokens(service: ServiceDep) -> list[TokenPublic]:
    """Every API token's id, name and role (never the token)."""
    return [TokenPublic(**asdict(t)) for t in service.store.list_tokens()]


@router.delete("/v1/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT,
               dependencies=[require("admin")], tags=["auth"],
               responses={**AUTH, **documented(404)})
def revoke_token(token_id: int, service: ServiceDep) -> None:
    """Revoke a token: the next request that carries it is refused (401), the dashboard's
    cookie included. Revoking the token that makes this request is allowed."""
    try:
        service.store.revoke_token(token_id=token_id)
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
