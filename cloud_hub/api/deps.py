"""Dependencies shared by the routes: the service, the caller's role, bounded bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError

from cloud_hub.api.auth import ROLE_RANK, Role, hash_token
from cloud_hub.api.schemas import ErrorPublic
from cloud_hub.service import HubService
from sync import NAME_PATTERN

TOKEN_COOKIE = "hub_token"

#: A device id in a path or a filter: checked before it reaches the store, so that what
#: no device can be named (a NUL byte, which PostgreSQL's text refuses; a newline) is a
#: 422, not a store error.
DeviceIdPath = Annotated[str, PathParam(pattern=NAME_PATTERN, description="a device id")]
DeviceIdQuery = Annotated[str | None, Query(pattern=NAME_PATTERN, description="a device id")]
GroupQuery = Annotated[str | None, Query(pattern=NAME_PATTERN, description="a group name")]

_MEANING = {
    400: "the request body is empty",
    401: "no valid API token",
    403: "the token's role is too low for this",
    404: "no such record",
    409: "refused in the hub's present state",
    413: "the request body is larger than the hub accepts",
    503: "the hub is starting",
}


def documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the refusals a route can answer with (``ErrorPublic``
    bodies; 422s keep FastAPI's validation-error shape, see :func:`unprocessable`)."""
    return {code: {"model": ErrorPublic, "description": _MEANING[code]} for code in codes}


AUTH = documented(401, 403)


def unprocessable(location: tuple[str, ...], message: str) -> RequestValidationError:
    """A 422 in the same shape as FastAPI's own (``detail`` a list of errors naming
    their location), for input that is well-formed but not acceptable."""
    return RequestValidationError([{"type": "value_error", "loc": location, "msg": message,
                                    "input": None}])


def get_service(request: Request) -> HubService:
    """The hub service the app was built with."""
    service: HubService = request.app.state.service
    return service


ServiceDep = Annotated[HubService, Depends(get_service)]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling."""

    name: str
    role: str


def get_principal(request: Request, service: ServiceDep) -> Principal:
    """The caller, from ``Authorization: Bearer`` or the dashboard's cookie.

    Raises:
        HTTPException: 401 without a valid token.
    """
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    token = token or request.cookies.get(TOKEN_COOKIE)
    if not token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "an API token is required",
                            headers={"WWW-Authenticate": "Bearer"})
    found = find_principal(service, token)
    if found is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown API token",
                            headers={"WWW-Authenticate": "Bearer"})
    return found


def find_principal(service: HubService, token: str) -> Principal | None:
    """Whose ``token`` this is, or ``None`` for a token the hub never issued."""
    found = service.store.token_role(token_hash=hash_token(service.settings.secret_key, token))
    return Principal(*found) if found is not None else None


def require(role: Role) -> Any:
    """A dependency that admits callers of ``role`` or higher."""

    def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if ROLE_RANK[principal.role] < ROLE_RANK[role]:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"this needs the {role} role; {principal.name} is a "
                                f"{principal.role}")
        return principal

    return Depends(check)


def binary_body(*media_types: str) -> dict[str, Any]:
    """OpenAPI for a required raw body of one of ``media_types`` (read by the route)."""
    schema = {"type": "string", "format": "binary"}
    return {"requestBody": {"required": True, "content": {
        media_type: {"schema": schema} for media_type in media_types}}}


async def read_bounded(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes before reading it all.

    Raises:
        HTTPException: 413 when too large, 400 when empty.
    """
    chunks: list[bytes] = []
    async for chunk in _bounded_chunks(request, limit):
        chunks.append(chunk)
    return b"".join(chunks)


async def stream_to_file(request: Request, path: Path, limit: int) -> None:
    """Write the request body to ``path`` as it arrives, never holding it all in memory.

    Raises:
        HTTPException: 413 when over ``limit`` bytes, 400 when empty.
    """
    with path.open("wb") as target:
        async for chunk in _bounded_chunks(request, limit):
            target.write(chunk)


async def _bounded_chunks(request: Request, limit: int) -> AsyncIterator[bytes]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413,
                            f"body of {declared} bytes exceeds the limit of {limit} bytes")
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413,
                                f"body exceeds the limit of {limit} bytes")
        yield chunk
    if not size:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the request body is empty")
