"""``/v1/events``: escalations, their verdicts and their images."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Response, status

from cloud_hub.api.deps import (
    AUTH,
    DeviceIdQuery,
    ServiceDep,
    documented,
    require,
    unprocessable,
)
from cloud_hub.api.schemas import (
    EventPage,
    EventPublic,
    EventTimeline,
    JournalStepPublic,
    TrackPublic,
)
from cloud_hub.errors import BadCursorError, ImageStoreUnavailableError, NotFoundError
from cloud_hub.journal import MAX_TIMELINE_STEPS
from sync import EscalationReason

router = APIRouter(prefix="/v1/events", tags=["events"], dependencies=[require("viewer")],
                   responses=AUTH)


def _public(event: dict[str, object]) -> dict[str, object]:
    decided, captured = event.get("decided_at"), event.get("captured_at")
    if isinstance(decided, float) and isinstance(captured, float):
        event["verdict_latency_s"] = decided - captured
    return event


@router.get("", response_model=EventPage)
def list_events(
    service: ServiceDep,
    device_id: DeviceIdQuery = None,
    outcome: Literal["confirmed", "rejected", "pending"] | None = None,
    reason: EscalationReason | None = None,
    since: Annotated[float | None, Query(description="captured at or after (Unix s)")] = None,
    until: Annotated[float | None, Query(description="captured before (Unix s)")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> dict[str, object]:
    """Newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    try:
        page = service.store.list_events(device_id=device_id, outcome=outcome, reason=reason,
                                         since=since,
                                         until=until, limit=limit, cursor=cursor)
    except BadCursorError as exc:
        raise unprocessable(("query", "cursor"), str(exc)) from exc
    return {"items": [_public(e) for e in page.items], "next_cursor": page.next_cursor}


@router.get("/{event_id}", response_model=EventPublic, responses=documented(404))
def get_event(event_id: str, service: ServiceDep) -> dict[str, object]:
    """One event and its verdict."""
    try:
        return _public(service.store.get_event(event_id=event_id))
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc


@router.get("/{event_id}/timeline", response_model=EventTimeline, responses=documented(404))
def get_timeline(event_id: str, service: ServiceDep) -> EventTimeline:
    """An event and its tracked object's lifecycle, for drawing its timeline.

    ``event`` is what ``GET /v1/events/{event_id}`` returns: the escalation (``reason``,
    ``edge_detections`` with their boxes in frame pixels, ``frame_size``-scaled
    ``thumbnail``) and the hub's verdict (``outcome``, ``hub_detections``). ``track``
    names the object (device, source, track id, first frame) and ``steps`` are its
    decision journal's steps in the device's order (``at``, then arrival): ``new``,
    ``update`` for each change of decision, escalation, verdict, fallback or
    reconciliation, ``end``. Each step carries the frames seen since the previous one
    (``sightings``: frame, box, score), so that the steps together hold every box of the
    track. At most 1000 steps (``truncated`` then says so). Without any journal step
    naming the event (a sensor window, escalated motion, a device whose journal is off)
    ``track`` is null and ``steps`` empty.
    """
    try:
        event = _public(service.store.get_event(event_id=event_id))
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    records, truncated = service.store.journal_of_event(
        event_id=event_id, device_id=str(event["device_id"]), limit=MAX_TIMELINE_STEPS)
    track = None
    if records:
        key = records[0].track
        track = TrackPublic(device_id=key.device_id, source=key.source,
                            track_id=key.track_id, first_frame=key.first_frame)
    steps = [JournalStepPublic.model_validate(record) for record in records]
    return EventTimeline(event=EventPublic.model_validate(event), track=track, steps=steps,
                         truncated=truncated)


@router.get("/{event_id}/{kind}.jpg", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}, **documented(404, 503)})
def get_image(event_id: str, kind: Literal["crop", "thumbnail"],
              service: ServiceDep) -> Response:
    """The escalated crop or the frame thumbnail (404 once retention pruned it), from the
    hub's image store (or, for an event stored before images left the database, its row)."""
    try:
        data = service.store.event_image(event_id=event_id, kind=kind)
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except ImageStoreUnavailableError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    if data is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"event {event_id} has no {kind}")
    return Response(data, media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=86400"})
