"""``/dashboard``: the operator's pages, server-rendered, no build step.

A visitor without a valid token is sent to ``/dashboard/login``, a form that moves the
token into an HttpOnly, SameSite=Strict cookie (``Secure`` behind HTTPS). The pages:

- ``/dashboard``: headline numbers, fleet health, the latest escalations and rollouts;
- ``/dashboard/events``: events filtered by device, verdict, reason and capture time,
  paged by the store's keyset cursor; ``/dashboard/events/{id}``: one event's image with
  its boxes drawn and its decision timeline (the journal of its track);
- ``/dashboard/rollouts``: each rollout's warnings and every device's state.

Each page holds named fragments (see :mod:`cloud_hub.api.pages`); ``/dashboard/stream``
is a server-sent event stream that polls the store every :data:`POLL_S` seconds and sends
the fragments whose markup changed. It polls the database rather than listening to this
process's ingest so that events judged by any replica show. A stream ends after
:data:`STREAM_LIFETIME_S` and the browser reconnects (``retry``): uvicorn, shutting
down, waits for open responses, so it waits at most that long for a stream, and a revoked
token stops being served.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from cloud_hub.api import pages
from cloud_hub.api.deps import (
    TOKEN_COOKIE,
    DeviceIdQuery,
    Principal,
    ServiceDep,
    find_principal,
    get_principal,
    read_bounded,
)
from cloud_hub.api.pages import EventFilter, EventView, RolloutView
from cloud_hub.distribution import warnings_now
from cloud_hub.errors import BadCursorError, HubError, NotFoundError
from cloud_hub.journal import MAX_TIMELINE_STEPS
from cloud_hub.service import HubService
from cloud_hub.store import DeviceState
from sync import TopicError, check_name
from sync.errors import SyncError
from sync.rollout import Rollout

router = APIRouter(tags=["dashboard"], include_in_schema=False)

POLL_S = 1.0
STREAM_LIFETIME_S = 15.0
RETRY_MS = 1000
LATEST_EVENTS = 24
OVERVIEW_ROLLOUTS = 5
ROLLOUTS_SHOWN = 20
EVENTS_PER_PAGE = 25
#: Devices in the overview's fleet table (offline first); the devices page has them all.
OVERVIEW_DEVICES = 50
DEVICES_PER_PAGE = 100
LOGIN_BODY_BYTES = 4096
TOTALS_WINDOW_S = 3600.0
_EPOCH = datetime.fromtimestamp(0, UTC)


class SignInRequired(Exception):  # noqa: N818 - a redirect, not an error
    """Raised by :func:`page_principal`; the app answers with the login page's address."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def page_principal(request: Request, service: ServiceDep) -> Principal:
    """The signed-in caller of a page (a token in the cookie or a Bearer header).

    Raises:
        SignInRequired: No valid token: the visitor is sent to the login form.
    """
    try:
        return get_principal(request, service)
    except HTTPException as exc:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(path) from exc


PagePrincipal = Annotated[Principal, Depends(page_principal)]


def sign_in_redirect(_request: Request, exc: Exception) -> Response:
    """The exception handler for :class:`SignInRequired` (installed by the app)."""
    assert isinstance(exc, SignInRequired)
    query = f"?{urlencode({'next': exc.next_path})}" if exc.next_path != "/dashboard" else ""
    return RedirectResponse(f"/dashboard/login{query}", status_code=status.HTTP_303_SEE_OTHER)


# -- signing in --------------------------------------------------------------------------

@router.get("/dashboard/login", response_class=HTMLResponse)
def login_form(request: Request, service: ServiceDep, next: str = "/dashboard",
               token: str | None = None) -> Response:
    """The sign-in form. ``?token=`` (the address ``cloud-hub demo`` prints) signs in
    at once; the token then leaves the address bar for the cookie."""
    if token is not None:
        return _sign_in(request, service, token, next)
    return HTMLResponse(pages.login_page(message=None, next_path=_safe_next(next)))


@router.post("/dashboard/login", response_class=HTMLResponse)
async def login(request: Request, service: ServiceDep) -> Response:
    """Check the form's token; keep it in a cookie and go on, or show the form again."""
    form = parse_qs((await read_bounded(request, LOGIN_BODY_BYTES)).decode(errors="replace"))
    token = form.get("token", [""])[0].strip()
    next_path = form.get("next", ["/dashboard"])[0]
    return await run_in_threadpool(_sign_in, request, service, token, next_path)


def _sign_in(request: Request, service: ServiceDep, token: str, next_path: str) -> Response:
    next_path = _safe_next(next_path)
    if not token or find_principal(service, token) is None:
        return HTMLResponse(pages.login_page(message="That token is not valid here.",
                                             next_path=next_path),
                            status_code=status.HTTP_401_UNAUTHORIZED)
    response = RedirectResponse(next_path, status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
    return response


@router.post("/dashboard/logout")
def logout() -> Response:
    """Forget the cookie."""
    response = RedirectResponse("/dashboard/login", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(TOKEN_COOKIE, path="/")
    return response


def _safe_next(path: str) -> str:
    """Only a dashboard page of this site (never another host) after signing in."""
    return path if path.startswith("/dashboard") and not path.startswith("//") else "/dashboard"


# -- pages -------------------------------------------------------------------------------

@router.get("/dashboard", response_class=HTMLResponse)
def overview(principal: PagePrincipal, service: ServiceDep) -> str:
    """Numbers, fleet health, the latest escalations and rollouts, signed updates."""
    parts = _overview(service)
    signing = _signing(service)
    body = (pages.fragment("numbers", parts["numbers"], attrs=" class='numbers'")
            + "<h2>Fleet</h2>" + pages.fragment("fleet", parts["fleet"])
            + "<h2>Latest escalations <small><a href='/dashboard/events'>all events"
              "</a></small></h2>"
            + pages.fragment("latest", parts["latest"], attrs=" class='events'")
            + "<h2>Rollouts <small><a href='/dashboard/rollouts'>all rollouts</a></small>"
              "</h2>" + pages.fragment("rollouts", parts["rollouts"])
            + "<h2>Signed updates</h2><table id='signing'><tr><th>metadata</th>"
              "<th>version</th><th>expires</th><th>left</th><th>key</th></tr>"
            + signing + "</table>")
    return pages.layout("Cloud hub", body, active="overview", principal=principal.name,
                        stream="/dashboard/stream?view=overview")


@router.get("/dashboard/devices", response_class=HTMLResponse)
def devices_page(principal: PagePrincipal, service: ServiceDep,
                 state: Annotated[DeviceState | None, Query()] = None,
                 after: DeviceIdQuery = None) -> Response:
    """Every device by id, a page at a time, filtered by state; the first page updates
    live."""
    stream = None if after else "/dashboard/stream?" + urlencode(
        {"view": "devices", **({"state": state} if state else {})})
    body = pages.fragment("device-list", _device_page(service, state, after))
    return HTMLResponse(pages.layout("Devices", body, active="devices",
                                     principal=principal.name, stream=stream))


@router.get("/dashboard/events", response_class=HTMLResponse)
def events_page(principal: PagePrincipal, service: ServiceDep, device: str | None = None,
                verdict: str | None = None, reason: str | None = None, since: str | None = None,
                until: str | None = None, cursor: str | None = None) -> Response:
    """Events, newest first, filtered and paged; the first page updates live."""
    try:
        filters = _filters(device, verdict, reason, since, until)
        items, next_cursor = _event_page(service, filters, cursor)
    except (ValueError, BadCursorError) as exc:
        return HTMLResponse(pages.layout(
            "Events", f"<p class='error'>{pages.esc(str(exc))}</p>"
            "<p><a href='/dashboard/events'>all events</a></p>", active="events",
            principal=principal.name), status_code=status.HTTP_400_BAD_REQUEST)
    devices = [d["id"] for d in service.store.list_devices()]
    stream = None if cursor else f"/dashboard/stream?view=events&{filters.query()}"
    body = (pages.event_filters(filters, devices) + pages.events_table(items)
            + pages.pager(filters, next_cursor=next_cursor, paged=cursor is not None))
    return HTMLResponse(pages.layout("Events", body, active="events",
                                     principal=principal.name, stream=stream))


@router.get("/dashboard/events/{event_id}", response_class=HTMLResponse)
def event_page(event_id: str, principal: PagePrincipal, service: ServiceDep) -> Response:
    """One event: its image with boxes drawn, its facts, its decision timeline."""
    try:
        event = EventView.from_row(service.store.get_event(event_id=event_id))
    except NotFoundError:
        return HTMLResponse(pages.layout("No such event", "<p>No such event (retention may "
                                         "have deleted it).</p>", active="events",
                                         principal=principal.name), status_code=404)
    fragments = _event_fragments(service, event.id)
    body = (pages.fragment("event-detail", fragments["event-detail"])
            + "<h2>Decision timeline</h2>"
            + pages.fragment("timeline", fragments["timeline"], tag="ol",
                             attrs=" class='timeline'"))
    return HTMLResponse(pages.layout(
        f"Event {event.id}", body, active="events", principal=principal.name,
        stream=f"/dashboard/stream?view=event&{urlencode({'event_id': event.id})}"))


@router.get("/dashboard/rollouts", response_class=HTMLResponse)
def rollouts_page(principal: PagePrincipal, service: ServiceDep) -> str:
    """Every rollout (the newest first), its warnings and each device's state."""
    body = pages.fragment("rollout-list", pages.rollout_list(_rollouts(service,
                                                                       ROLLOUTS_SHOWN)))
    return pages.layout("Rollouts", body, active="rollouts", principal=principal.name,
                        stream="/dashboard/stream?view=rollouts")


# -- live updates ------------------------------------------------------------------------

@router.get("/dashboard/stream")
async def stream(request: Request, principal: PagePrincipal, service: ServiceDep,
                 view: Annotated[str, Query(
                     pattern="^(overview|devices|events|event|rollouts)$")],
                 state: Annotated[DeviceState | None, Query()] = None,
                 device: str | None = None, verdict: str | None = None,
                 reason: str | None = None, since: str | None = None,
                 until: str | None = None, event_id: str | None = None) -> StreamingResponse:
    """Server-sent events: ``fragments`` (a JSON object, element id to markup) whenever
    the page's fragments change."""
    del principal
    render: Callable[[], dict[str, str]]
    if view == "overview":
        render = lambda: _overview(service)  # noqa: E731 - one line per view
    elif view == "devices":
        render = lambda: {"device-list": _device_page(service, state, None)}  # noqa: E731
    elif view == "rollouts":
        render = lambda: {"rollout-list": pages.rollout_list(  # noqa: E731
            _rollouts(service, ROLLOUTS_SHOWN))}
    elif view == "event":
        if event_id is None:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "event_id is required")
        render = lambda: _event_fragments(service, event_id)  # noqa: E731
    else:
        try:
            filters = _filters(device, verdict, reason, since, until)
        except ValueError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
        render = lambda: {"event-rows": pages.event_rows(  # noqa: E731
            _event_page(service, filters, None)[0])}
    return StreamingResponse(_changes(request, render), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _changes(request: Request, render: Callable[[], dict[str, str]]
                   ) -> AsyncIterator[str]:
    """The stream's body: the fragments that changed since the last poll, until the
    stream's lifetime is up or the browser leaves."""
    yield f"retry: {RETRY_MS}\n\n"
    sent: dict[str, str] = {}
    ends = time.monotonic() + STREAM_LIFETIME_S
    while time.monotonic() < ends and not await request.is_disconnected():
        current = await run_in_threadpool(render)
        changed = {key: markup for key, markup in current.items() if sent.get(key) != markup}
        if changed:
            sent.update(changed)
            yield f"event: fragments\ndata: {json.dumps(changed)}\n\n"
        else:
            yield ": nothing new\n\n"
        await asyncio.sleep(POLL_S)


# -- reading the store -------------------------------------------------------------------

def _overview(service: HubService) -> dict[str, str]:
    store = service.store
    fleet = store.fleet_counts()
    devices = store.fleet_health(limit=OVERVIEW_DEVICES, offline_first=True)
    totals = store.event_totals(since=time.time() - TOTALS_WINDOW_S)
    latest = [EventView.from_row(e) for e in store.list_events(limit=LATEST_EVENTS).items]
    return {"numbers": pages.numbers(fleet, totals),
            "fleet": (pages.fleet_table(devices, totals)
                      + pages.fleet_caption(len(devices), fleet)),
            "latest": pages.latest_events(latest),
            "rollouts": pages.rollout_summary(_rollouts(service, OVERVIEW_ROLLOUTS))}


def _device_page(service: HubService, state: DeviceState | None, after: str | None) -> str:
    """One page of the devices page: its state links, its devices and its pager."""
    store = service.store
    fleet = store.fleet_counts()
    devices = store.fleet_health(limit=DEVICES_PER_PAGE + 1, after=after, state=state)
    more = len(devices) > DEVICES_PER_PAGE
    devices = devices[:DEVICES_PER_PAGE]
    totals = store.event_totals(since=time.time() - TOTALS_WINDOW_S)
    empty = " ".join(["No", *([state] if state else []), "devices",
                      *(["after", after] if after else [])]) + "."
    if state is None and after is None:
        empty = "No devices yet: cloud-hub devices add ID"
    return (pages.device_filters(state, fleet)
            + pages.fleet_table(devices, totals, empty=empty)
            + pages.device_pager(state, next_after=devices[-1].id if more else None,
                                 paged=after is not None))


def _event_fragments(service: HubService, event_id: str) -> dict[str, str]:
    """An event's detail and its decision timeline (the journal of its track, the same
    steps as ``GET /v1/events/{event_id}/timeline``)."""
    try:
        event = EventView.from_row(service.store.get_event(event_id=event_id))
    except NotFoundError:
        return {"event-detail": "<p>This event was deleted.</p>", "timeline": ""}
    steps, truncated = service.store.journal_of_event(
        event_id=event.id, device_id=event.device_id, limit=MAX_TIMELINE_STEPS)
    return {"event-detail": pages.event_detail(event, steps),
            "timeline": pages.timeline(event, steps, truncated=truncated)}


def _filters(device: str | None, verdict: str | None, reason: str | None,
             since: str | None, until: str | None) -> EventFilter:
    """The events page's query, checked.

    Raises:
        ValueError: A verdict, reason or time that is not one.
    """
    if device:
        try:
            check_name(device)
        except TopicError as exc:
            raise ValueError(str(exc)) from exc
    if verdict and verdict not in pages.VERDICTS:
        raise ValueError(f"verdict must be one of {', '.join(pages.VERDICTS)}, not {verdict!r}")
    if reason and reason not in pages.REASONS:
        raise ValueError(f"reason must be one of {', '.join(pages.REASONS)}, not {reason!r}")
    try:
        start, end = pages.parse_utc_input(since), pages.parse_utc_input(until)
    except ValueError as exc:
        raise ValueError(f"a time must look like 2026-11-29T21:30: {exc}") from exc
    return EventFilter(device=device or None, verdict=verdict or None, reason=reason or None,
                       since=start, until=end)


def _event_page(service: HubService, filters: EventFilter,
                cursor: str | None) -> tuple[list[EventView], str | None]:
    page = service.store.list_events(device_id=filters.device, outcome=filters.verdict,
                                     reason=filters.reason, since=filters.since,
                                     until=filters.until, limit=EVENTS_PER_PAGE, cursor=cursor)
    return [EventView.from_row(e) for e in page.items], page.next_cursor


def _rollouts(service: HubService, limit: int) -> list[RolloutView]:
    views = []
    for raw in service.store.list_rollouts()[:limit]:
        try:
            rollout = Rollout.from_dict(raw)
        except SyncError:
            continue  # the store refuses to write one; an older hub's shape is skipped
        steps = tuple(service.store.rollout_steps(rollout_id=rollout.id))
        warnings = tuple(warnings_now(service.store, service.settings, rollout))
        views.append(RolloutView(rollout, steps, warnings))
    return views


def _signing(service: HubService) -> str:
    if service.distribution is None or not service.distribution.repository.exists():
        return pages.signing_table("no repository: run cloud-hub keys init", _EPOCH)
    repository = service.distribution.repository
    try:
        return pages.signing_table(repository.expiries(), repository.now())
    except HubError as exc:
        return pages.signing_table(str(exc), repository.now())


