"""The dashboard's HTML: pure functions from typed values to markup, no I/O.

Every page is a layout around *fragments*: named blocks (``id`` attributes) that the
page's server-sent event stream replaces when what they show changes (see
``routes/dashboard.py``). A fragment holds no clock-relative text (``12 s ago``): times are
``<time data-at=...>`` elements that the page's script words, so an unchanged fragment
renders byte for byte the same and the stream sends nothing for it.

Boxes are drawn as an SVG overlay whose ``viewBox`` is the source frame's size, so that
detections (in source-frame pixels) land where they belong on a downscaled thumbnail.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, get_args
from urllib.parse import urlencode

from cloud_hub.store import (
    DeviceHealth,
    DeviceState,
    DeviceStep,
    EventTotals,
    FleetCounts,
    JournalRecord,
)
from cloud_hub.updates import RoleExpiry
from sync import EscalationReason, InputHealth
from sync.rollout import Rollout

esc = html.escape


@dataclass(frozen=True, slots=True)
class Box:
    """One detection to draw: corners in source-frame pixels."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    label: str

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Box:
        """From a stored detection (``box``, ``score``, ``label``)."""
        x1, y1, x2, y2 = (float(v) for v in raw["box"])
        return cls(x1, y1, x2, y2, float(raw["score"]), str(raw.get("label", "")))


@dataclass(frozen=True, slots=True)
class EventView:
    """An event as the dashboard shows it (the store's row, typed)."""

    id: str
    device_id: str
    source: str
    reason: str
    captured_at: float
    received_at: float
    outcome: str | None
    edge_model: str
    edge_version: str
    hub_model: str | None
    hub_version: str | None
    edge_boxes: tuple[Box, ...]
    hub_boxes: tuple[Box, ...]
    decided_at: float | None
    inference_ms: float | None
    frame_size: tuple[int, int] | None
    has_crop: bool
    has_thumbnail: bool

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EventView:
        """From a row of :meth:`cloud_hub.store.Store.list_events`."""
        return cls(
            id=row["id"], device_id=row["device_id"], source=row["source"],
            reason=row["reason"], captured_at=row["captured_at"],
            received_at=row["received_at"], outcome=row["outcome"],
            edge_model=row["edge_model"], edge_version=row["edge_version"],
            hub_model=row["hub_model"], hub_version=row["hub_version"],
            edge_boxes=tuple(Box.parse(d) for d in row["edge_detections"] or ()),
            hub_boxes=tuple(Box.parse(d) for d in row["hub_detections"] or ()),
            decided_at=row["decided_at"], inference_ms=row["inference_ms"],
            frame_size=row["frame_size"],
            has_crop=row["has_crop"], has_thumbnail=row["has_thumbnail"])

    @property
    def verdict(self) -> str:
        """``confirmed``, ``rejected`` or ``pending``."""
        return self.outcome or "pending"

    @property
    def best_score(self) -> float | None:
        """The edge's highest score, if it saw anything."""
        return max((b.score for b in self.edge_boxes), default=None)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """The events page's filters (each ``None`` when not set)."""

    device: str | None = None
    verdict: str | None = None
    reason: str | None = None
    since: float | None = None
    until: float | None = None

    def query(self, **more: str) -> str:
        """The filters as a URL query string, with ``more`` parameters."""
        params = {"device": self.device, "verdict": self.verdict, "reason": self.reason,
                  "since": _utc_input(self.since), "until": _utc_input(self.until), **more}
        return urlencode({k: v for k, v in params.items() if v})


@dataclass(frozen=True, slots=True)
class RolloutView:
    """A rollout, each device's latest install step for it, and the hub's warnings."""

    rollout: Rollout
    steps: tuple[DeviceStep, ...]
    warnings: tuple[str, ...]


def when(at: float | None) -> str:
    """A ``<time>`` the page's script words relative to now (``12 s ago``)."""
    if at is None:
        return "<span class='never'>never</span>"
    iso = datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
    return f"<time data-at='{at:.3f}' datetime='{iso}' title='{iso}'>{iso}</time>"


def _utc_input(at: float | None) -> str:
    """``at`` as a ``datetime-local`` input's value, in UTC."""
    if at is None:
        return ""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M")


def parse_utc_input(text: str | None) -> float | None:
    """A ``datetime-local`` value (read as UTC) as Unix seconds; ``None`` when empty.

    Raises:
        ValueError: Not a date and time.
    """
    if not text:
        return None
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# -- the page ------------------------------------------------------------------------

_NAV = (("overview", "/dashboard", "Overview"), ("devices", "/dashboard/devices", "Devices"),
        ("events", "/dashboard/events", "Events"),
        ("rollouts", "/dashboard/rollouts", "Rollouts"), ("docs", "/docs", "API (Swagger)"),
        ("redoc", "/redoc", "API (ReDoc)"))


def layout(title: str, body: str, *, active: str, principal: str | None,
           stream: str | None = None) -> str:
    """A whole dashboard page.

    Args:
        active: The navigation entry to mark.
        principal: The signed-in token's name (``None`` on the login page: no navigation).
        stream: The server-sent event stream that updates this page's fragments.
    """
    nav = ""
    if principal is not None:
        links = "".join(f"<a href='{href}'{' class=active' if key == active else ''}>"
                        f"{label}</a>" for key, href, label in _NAV)
        nav = (f"<nav>{links}<span class='who'>{esc(principal)} "
               f"<span id='live' title='live updates'>&#9679;</span></span>"
               "<form method='post' action='/dashboard/logout'>"
               "<button type='submit'>Log out</button></form></nav>")
    stream_attr = f" data-stream='{esc(stream)}'" if stream else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} - Cloud hub</title>
<style>{_CSS}</style></head><body{stream_attr}>
{nav}<main><h1>{esc(title)}</h1>
{body}
</main><script>{_SCRIPT}</script></body></html>"""


def login_page(*, message: str | None, next_path: str) -> str:
    """The sign-in form: an API token (``cloud-hub tokens add``) goes into a cookie."""
    error = f"<p class='error' role='alert'>{esc(message)}</p>" if message else ""
    body = f"""{error}<form method="post" action="/dashboard/login" class="login">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required
 autofocus>
<input type="hidden" name="next" value="{esc(next_path)}">
<button type="submit">Sign in</button>
<p class="hint">A token of any role (viewer and up): <code>cloud-hub tokens create NAME
--role viewer</code>. It is kept in an HttpOnly cookie for this site.</p>
</form>"""
    return layout("Sign in", body, active="", principal=None)


def fragment(name: str, inner: str, tag: str = "div", attrs: str = "") -> str:
    """A block the stream may replace (its ``id`` is ``name``)."""
    return f"<{tag} id='{name}' data-fragment{attrs}>{inner}</{tag}>"


# -- overview ------------------------------------------------------------------------

def numbers(fleet: FleetCounts, totals: EventTotals) -> str:
    """The headline numbers: devices online and the last hour's escalations."""
    outcomes = dict(totals.by_outcome)
    latency = totals.mean_verdict_latency_s
    backlog = fleet.outbox_events
    cards = (
        ("devices-online", f"{fleet.online} / {fleet.devices}", "devices online"),
        ("escalations-hour", str(sum(outcomes.values())), "escalations, last hour"),
        ("confirmed", str(outcomes.get("confirmed", 0)), "confirmed"),
        ("rejected", str(outcomes.get("rejected", 0)), "rejected"),
        ("pending", str(outcomes.get("pending", 0)), "awaiting verdict"),
        ("latency", f"{latency * 1000:.0f} ms" if latency is not None else "-",
         "mean capture-to-verdict"),
        ("backlog", f"{backlog:.0f}", "events waiting in outboxes"),
    )
    return "".join(f"<div class='number' id='{key}'><b>{esc(value)}</b>{label}</div>"
                   for key, value, label in cards)


def fleet_table(devices: Sequence[DeviceHealth], totals: EventTotals, *,
                empty: str = "No devices yet: cloud-hub devices add ID") -> str:
    """Each device: online state, input health, backlog, versions, last error."""
    per_device = dict(totals.by_device)
    rows = "".join(_device_row(d, per_device.get(d.id, 0)) for d in devices)
    return ("<table><thead><tr><th>device</th><th>group</th><th>state</th><th>last seen</th>"
            "<th>inputs</th><th>backlog</th><th>agent</th><th>models</th><th>backend</th>"
            "<th>escalations / h</th><th>last error</th></tr></thead>"
            f"<tbody>{rows or _empty(11, empty)}"
            "</tbody></table>")


#: The device states the devices page filters by, as its links name them.
DEVICE_STATES: tuple[DeviceState, ...] = ("online", "offline", "revoked")


def fleet_caption(shown: int, fleet: FleetCounts) -> str:
    """Under the overview's fleet table: how many of the fleet it shows, and where the
    rest are."""
    if shown >= fleet.devices:
        return ""
    return (f"<p class='hint' id='fleet-shown'>{shown} of {fleet.devices} devices, offline "
            f"first ({fleet.offline} offline). <a href='/dashboard/devices'>All devices"
            "</a></p>")


def device_filters(chosen: DeviceState | None, fleet: FleetCounts) -> str:
    """Links to the devices page by state, with how many each holds."""
    links = []
    for state in (None, *DEVICE_STATES):
        label = f"{state or 'all'} ({fleet.of_state(state)})"
        href = "/dashboard/devices" + (f"?{urlencode({'state': state})}" if state else "")
        current = " aria-current='page'" if state == chosen else ""
        links.append(f"<a href='{href}'{current}>{label}</a>")
    return f"<p class='filters' id='device-states'>{' &middot; '.join(links)}</p>"


def device_pager(state: DeviceState | None, *, next_after: str | None, paged: bool) -> str:
    """Links to the first page of devices and to the next one."""
    query: dict[str, str] = {"state": state} if state else {}
    links = []
    if paged:
        first = f"?{urlencode(query)}" if query else ""
        links.append(f"<a id='first' href='/dashboard/devices{first}'>&larr; first</a>")
    if next_after is not None:
        links.append(f"<a id='next' href='/dashboard/devices?"
                     f"{urlencode({**query, 'after': next_after})}'>next &rarr;</a>")
    return f"<p class='pager'>{' '.join(links)}</p>"


def _device_row(device: DeviceHealth, escalations: int) -> str:
    telemetry = dict(device.telemetry)
    state = "revoked" if device.revoked else "online" if device.online else "offline"
    backlog = "-"
    if "outbox_events" in telemetry:
        backlog = (f"<span class='backlog'>{telemetry['outbox_events']:.0f}</span> events, "
                   f"{_bytes(telemetry.get('outbox_bytes', 0.0))}")
    models = ", ".join(f"{name} {version}" for name, version in device.models) or "-"
    error = "-"
    if device.last_error is not None:
        failure = device.last_error
        error = (f"<span class='error'>{esc(failure.model)} {esc(failure.version)} "
                 f"{esc(failure.step)}</span>: {esc(failure.reason) or 'no reason given'} "
                 f"({when(failure.at)})")
    link = f"/dashboard/events?{urlencode({'device': device.id})}"
    return (f"<tr class='device' data-device='{esc(device.id)}'>"
            f"<td><a href='{link}'>{esc(device.id)}</a></td><td>{esc(device.group)}</td>"
            f"<td class='{state}'>{state}</td><td>{when(device.last_seen)}</td>"
            f"<td class='inputs'>{input_health(device.telemetry, device.inputs)}</td>"
            f"<td>{backlog}</td><td class='agent'>{esc(device.agent_version) or '-'}</td>"
            f"<td class='models'>{esc(models)}</td><td>{esc(device.backend) or '-'}</td>"
            f"<td>{escalations}</td><td class='last-error'>{error}</td></tr>")


def input_health(telemetry: Iterable[tuple[str, float]],
                 inputs: Iterable[tuple[str, InputHealth]] = ()) -> str:
    """Each camera source's health: the problems the device names (dark, low contrast,
    blurry, frozen) first, then ``healthy`` as ok or failing and every other measure of
    the telemetry's ``name.source`` values (frames, brightness, contrast ...) as a number."""
    sources: dict[str, dict[str, float]] = {}
    for key, value in telemetry:
        measure, dot, source = key.partition(".")
        if dot and source:
            sources.setdefault(source, {})[measure] = value
    typed = dict(inputs)
    for source, health in typed.items():
        measures = sources.setdefault(source, {})
        for measure, value in (("brightness", health.brightness),
                               ("contrast", health.contrast),
                               ("sharpness", health.sharpness),
                               ("frozen_frames", float(health.frozen_frames))):
            measures.setdefault(measure, value)
    if not sources:
        return "-"
    parts = []
    for source, measures in sorted(sources.items()):
        healthy = measures.pop("healthy", None)
        problems = typed[source].problems if source in typed else ()
        if problems:
            state = "".join(f" <span class='bad problem'>{esc(p)}</span>" for p in problems)
        elif healthy is not None:
            state = (" <span class='ok'>ok</span>" if healthy
                     else " <span class='bad'>failing</span>")
        else:
            state = ""
        details = ", ".join(f"{esc(k)} {_number(v)}" for k, v in sorted(measures.items()))
        parts.append(f"<div class='input' data-source='{esc(source)}'><b>{esc(source)}</b>"
                     f"{state}{f' <small>{details}</small>' if details else ''}</div>")
    return "".join(parts)


def latest_events(events: Sequence[EventView]) -> str:
    """Cards of the latest escalations, with thumbnails and verdicts."""
    if not events:
        return "<p>No escalations yet.</p>"
    return "".join(_event_card(e) for e in events)


def _event_card(event: EventView) -> str:
    image = (f"<img alt='thumbnail' loading='lazy' src='/v1/events/{esc(event.id)}/"
             "thumbnail.jpg'>" if event.has_thumbnail else "")
    score = f" {event.best_score:.2f}" if event.best_score is not None else ""
    return (f"<a class='event' data-event='{esc(event.id)}' "
            f"href='/dashboard/events/{esc(event.id)}'>{image}"
            f"<div><b>{esc(event.device_id)}</b> / {esc(event.source)}</div>"
            f"<div>{esc(event.reason)}{score} &rarr; "
            f"<span class='{esc(event.verdict)}'>{esc(event.verdict)}</span></div>"
            f"<div>{when(event.received_at)}</div></a>")


def rollout_summary(rollouts: Sequence[RolloutView]) -> str:
    """The latest rollouts, one line each."""
    rows = "".join(
        f"<tr class='rollout' data-rollout='{esc(v.rollout.id)}'>"
        f"<td><a href='/dashboard/rollouts#{esc(v.rollout.id)}'>{esc(v.rollout.id)}</a></td>"
        f"<td>{esc(v.rollout.model)} {esc(v.rollout.version)}</td>"
        f"<td>{esc(v.rollout.group)}</td>"
        f"<td class='{esc(v.rollout.status)}'>{esc(v.rollout.status)}</td>"
        f"<td>{_progress(v.rollout)}</td><td>{_warnings(v.warnings)}</td></tr>"
        for v in rollouts)
    return ("<table><thead><tr><th>rollout</th><th>model</th><th>group</th><th>status</th>"
            "<th>devices</th><th>warnings</th></tr></thead>"
            f"<tbody>{rows or _empty(6, 'No rollouts yet.')}</tbody></table>")


def signing_table(expiries: Sequence[RoleExpiry] | str, now: datetime) -> str:
    """The update repository's roles: when each expires, and whether its key is online.
    A role in red is due: with its key online the refresher is failing (see the log),
    with its key offline the operator must re-sign it. A string is why there is none."""
    if isinstance(expiries, str):
        return _empty(5, expiries)
    return "".join(
        f"<tr class='role' data-role='{e.role}'><td>{e.role}</td><td>{e.version}</td>"
        f"<td>{e.expires.isoformat()}</td>"
        f"<td class='{'due' if e.due(now) else 'fresh'}'>{_left(e.expires - now)}</td>"
        f"<td>{'online' if e.key_online else 'offline'}</td></tr>"
        for e in expiries)


# -- events --------------------------------------------------------------------------

REASONS: tuple[str, ...] = get_args(EscalationReason)
VERDICTS = ("confirmed", "rejected", "pending")


def event_filters(chosen: EventFilter, device_ids: Sequence[str]) -> str:
    """The filter form of the events page (GET: a filtered view is a link)."""

    def options(values: Iterable[str], selected: str | None) -> str:
        return "<option value=''>any</option>" + "".join(
            f"<option{' selected' if v == selected else ''}>{esc(v)}</option>" for v in values)

    return f"""<form method="get" action="/dashboard/events" class="filters" id="filters">
<label>device <select name="device">{options(device_ids, chosen.device)}</select></label>
<label>verdict <select name="verdict">{options(VERDICTS, chosen.verdict)}</select></label>
<label>reason <select name="reason">{options(REASONS, chosen.reason)}</select></label>
<label>captured from (UTC) <input type="datetime-local" name="since"
 value="{_utc_input(chosen.since)}"></label>
<label>until (UTC) <input type="datetime-local" name="until"
 value="{_utc_input(chosen.until)}"></label>
<button type="submit">Filter</button> <a href="/dashboard/events">clear</a></form>"""


def event_rows(events: Sequence[EventView]) -> str:
    """The events table's body."""
    if not events:
        return _empty(8, "No events match.")
    return "".join(
        f"<tr class='event-row' data-event='{esc(e.id)}'>"
        f"<td>{_thumbnail(e)}</td>"
        f"<td><a href='/dashboard/events/{esc(e.id)}'>{when(e.captured_at)}</a></td>"
        f"<td>{esc(e.device_id)}</td><td>{esc(e.source)}</td><td>{esc(e.reason)}</td>"
        f"<td>{f'{e.best_score:.2f}' if e.best_score is not None else '-'}</td>"
        f"<td class='{esc(e.verdict)}'>{esc(e.verdict)}</td>"
        f"<td>{len(e.hub_boxes)}</td></tr>"
        for e in events)


def _thumbnail(event: EventView) -> str:
    if not event.has_thumbnail:
        return ""
    return (f"<img class='thumb' alt='' loading='lazy' "
            f"src='/v1/events/{esc(event.id)}/thumbnail.jpg'>")


def events_table(events: Sequence[EventView]) -> str:
    """The events table, its body a fragment."""
    head = ("<thead><tr><th></th><th>captured</th><th>device</th><th>source</th>"
            "<th>reason</th><th>edge score</th><th>verdict</th><th>hub boxes</th></tr></thead>")
    return f"<table id='events-table'>{head}" + fragment(
        "event-rows", event_rows(events), tag="tbody") + "</table>"


def pager(chosen: EventFilter, *, next_cursor: str | None, paged: bool) -> str:
    """Links to the newest page and to the next (older) one."""
    links = []
    if paged:
        links.append(f"<a id='newest' href='/dashboard/events?{chosen.query()}'>"
                     "&larr; newest</a>")
    if next_cursor is not None:
        links.append(f"<a id='older' href='/dashboard/events?"
                     f"{chosen.query(cursor=next_cursor)}'>older &rarr;</a>")
    return f"<p class='pager'>{' '.join(links)}</p>"


# -- one event -----------------------------------------------------------------------

#: The most boxes of the event's track drawn on its frame (a long track's are sampled).
MAX_TRACK_BOXES = 120


def event_detail(event: EventView, steps: Sequence[JournalRecord] = ()) -> str:
    """An event's image with its boxes drawn (the edge's, the hub's, and where its
    tracked object was seen, from the journal ``steps``), and its facts."""
    return f"<div class='detail'>{event_figure(event, steps)}{_facts(event)}</div>"


def event_figure(event: EventView, steps: Sequence[JournalRecord] = ()) -> str:
    """The thumbnail (the whole frame) with every box drawn over it; the crop alone when
    there is no thumbnail (its place in the frame is not kept, so no boxes)."""
    if event.has_thumbnail:
        src = f"/v1/events/{esc(event.id)}/thumbnail.jpg"
    elif event.has_crop:
        return (f"<figure class='frame'><img alt='crop' src='/v1/events/{esc(event.id)}/"
                "crop.jpg'><figcaption>crop</figcaption></figure>")
    else:
        return "<p>No image is kept for this event (retention prunes images first).</p>"
    sightings = [s for step in steps for s in step.sightings]
    if len(sightings) > MAX_TRACK_BOXES:
        stride = len(sightings) / MAX_TRACK_BOXES
        sightings = [sightings[int(i * stride)] for i in range(MAX_TRACK_BOXES)]
    # The track's path first, under the event's own boxes.
    boxes = "".join(_rect(Box(*s.box, score=s.score, label=f"frame {s.frame}"), "track")
                    for s in sightings)
    boxes += "".join(_rect(b, "edge") for b in event.edge_boxes) + "".join(
        _rect(b, "hub") for b in event.hub_boxes)
    # Without the frame's size (older events), the script sizes the overlay to the image.
    view = (f" viewBox='0 0 {event.frame_size[0]} {event.frame_size[1]}'"
            if event.frame_size else " data-fit='image'")
    track_key = " <span class='key track'>track</span>" if sightings else ""
    return (f"<figure class='frame'><img id='frame-image' alt='frame' src='{src}'>"
            f"<svg class='boxes' preserveAspectRatio='none'{view}>{boxes}</svg>"
            "<figcaption><span class='key edge'>edge</span> "
            f"<span class='key hub'>hub</span>{track_key}</figcaption></figure>")


def _rect(box: Box, kind: str) -> str:
    return (f"<rect class='box {kind}' x='{box.x1:.1f}' y='{box.y1:.1f}' "
            f"width='{max(0.0, box.x2 - box.x1):.1f}' height='{max(0.0, box.y2 - box.y1):.1f}'>"
            f"<title>{kind}: {esc(box.label)} {box.score:.2f}</title></rect>")


def _facts(event: EventView) -> str:
    hub = (f"{esc(event.hub_model or '')} {esc(event.hub_version or '')}"
           if event.hub_model else "-")
    latency = (f"{(event.decided_at - event.captured_at) * 1000:.0f} ms"
               if event.decided_at is not None else "-")
    rows = (
        ("device", f"<a href='/dashboard/events?{urlencode({'device': event.device_id})}'>"
                   f"{esc(event.device_id)}</a> / {esc(event.source)}"),
        ("reason", esc(event.reason)),
        ("verdict", f"<span id='verdict' class='{esc(event.verdict)}'>"
                    f"{esc(event.verdict)}</span>"),
        ("captured", when(event.captured_at)), ("received", when(event.received_at)),
        ("decided", when(event.decided_at)), ("capture to verdict", latency),
        ("edge model", f"{esc(event.edge_model)} {esc(event.edge_version)}"),
        ("edge boxes", _box_list(event.edge_boxes)),
        ("hub model", hub), ("hub boxes", _box_list(event.hub_boxes)),
    )
    return "<table class='facts'>" + "".join(
        f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _box_list(boxes: Sequence[Box]) -> str:
    return "<br>".join(f"{esc(b.label)} {b.score:.2f} [{b.x1:.0f}, {b.y1:.0f}, {b.x2:.0f}, "
                       f"{b.y2:.0f}]" for b in boxes) or "-"


def timeline(event: EventView, steps: Sequence[JournalRecord], *, truncated: bool) -> str:
    """The decision timeline: each journal step of the event's track, in the device's
    order, with the edge's decision, the escalation and the verdict as they happened."""
    if not steps:
        return ("<li class='empty'>No journal step names this event (a sensor window, "
                "escalated motion, or a device whose journal is off).</li>")
    items = "".join(_journal_step(step, event.id) for step in steps)
    more = "<li class='empty'>... more steps than are shown.</li>" if truncated else ""
    return items + more


def _journal_step(step: JournalRecord, event_id: str) -> str:
    facts = [f"{esc(step.action)} ({esc(step.reason)})",
             "positive" if step.positive else "negative"]
    if step.escalations:
        facts.append(f"escalated {step.escalations}x")
    if step.verdict is not None:
        timing = f", {step.verdict_timing}" if step.verdict_timing else ""
        facts.append(f"verdict <span class='{step.verdict}'>{step.verdict}</span>{timing}")
    if step.fell_back:
        facts.append("decided locally (the verdict was late)")
    if step.agrees is not None:
        facts.append("the late verdict agreed" if step.agrees else
                     "<span class='bad'>the late verdict disagreed</span>")
    frames = ""
    if step.sightings:
        first, last = step.sightings[0], step.sightings[-1]
        best = max(s.score for s in step.sightings)
        span = (f"frame {first.frame}" if first.frame == last.frame
                else f"frames {first.frame}-{last.frame}")
        count = len(step.sightings)
        frames = (f"<small>{span}, {count} sighting{'s' if count > 1 else ''}, "
                  f"best {best:.2f}</small>")
    this = " this-event" if step.event_id == event_id else ""
    return (f"<li class='step {step.step}{this}' data-step='{step.step}'>{when(step.at)} "
            f"<span class='step-name'>{step.step}</span> {esc(step.label)} "
            f"#{step.track.track_id}: {', '.join(facts)} {frames}</li>")


# -- rollouts ------------------------------------------------------------------------

def rollout_list(rollouts: Sequence[RolloutView]) -> str:
    """Every rollout with its warnings and each device's state."""
    if not rollouts:
        return "<p>No rollouts yet: <code>cloud-hub rollout start</code>.</p>"
    return "".join(_rollout_block(v) for v in rollouts)


def _rollout_block(view: RolloutView) -> str:
    rollout = view.rollout
    steps = {s.device_id: s for s in view.steps}
    targeted = set(rollout.targeted)
    rows = []
    for number, wave in enumerate(rollout.waves, start=1):
        for device in wave:
            step = steps.get(device)
            outcome = rollout.outcome(device)
            state = outcome or (step.step if step else
                                "waiting" if device in targeted else "not yet targeted")
            rows.append(
                f"<tr class='rollout-device' data-device='{esc(device)}'><td>{esc(device)}</td>"
                f"<td>{number}{' (canary)' if number == 1 and len(rollout.waves) > 1 else ''}"
                f"</td><td class='step {esc(state.replace(' ', '-'))}'>{esc(state)}</td>"
                f"<td>{esc(step.reason) if step and step.reason else ''}</td>"
                f"<td>{when(step.at) if step else '-'}</td></tr>")
    note = f"<p class='note'>{esc(rollout.reason)}</p>" if rollout.reason else ""
    return (f"<section class='rollout' id='{esc(rollout.id)}' data-rollout='{esc(rollout.id)}'>"
            f"<h2>{esc(rollout.id)}: {esc(rollout.model)} {esc(rollout.version)} to "
            f"{esc(rollout.group)} <span class='{esc(rollout.status)}'>{esc(rollout.status)}"
            f"</span></h2><p>wave {rollout.wave + 1} of {len(rollout.waves)}; "
            f"{_progress(rollout)}</p>{note}{_warnings(view.warnings, block=True)}"
            "<table><thead><tr><th>device</th><th>wave</th><th>state</th><th>reason</th>"
            f"<th>reported</th></tr></thead><tbody>"
            f"{''.join(rows) or _empty(5, 'The group had no devices.')}</tbody></table>"
            "</section>")


def _progress(rollout: Rollout) -> str:
    outcomes = [s for _, s in rollout.results]
    committed = sum(s == "committed" for s in outcomes)
    return f"{committed} committed, {len(outcomes) - committed} failed"


def _warnings(warnings: Sequence[str], *, block: bool = False) -> str:
    if not warnings:
        return "" if block else "-"
    items = "".join(f"<li>{esc(w)}</li>" for w in warnings)
    return f"<ul class='warnings'>{items}</ul>"


# -- small pieces ----------------------------------------------------------------------

def _empty(columns: int, text: str) -> str:
    return f"<tr><td colspan='{columns}' class='empty'>{esc(text)}</td></tr>"


def _number(value: float) -> str:
    return f"{value:.0f}" if value == int(value) else f"{value:.2f}"


def _bytes(size: float) -> str:
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _left(left: timedelta) -> str:
    if left.total_seconds() <= 0:
        return "expired"
    if left.days >= 2:
        return f"{left.days} days"
    return f"{left.total_seconds() / 3600:.1f} h"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 0; color: #222; }
main { margin: 1rem 1.5rem; }
nav { display: flex; gap: 1rem; align-items: center; padding: .6rem 1.5rem;
  background: #1f2937; color: #fff; }
nav a { color: #d1d5db; text-decoration: none; } nav a.active { color: #fff; font-weight: bold; }
nav .who { margin-left: auto; } nav form { margin: 0; }
#live { color: #6b7280; } body.live #live { color: #22c55e; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.5rem; }
.numbers { display: flex; gap: 1rem; flex-wrap: wrap; }
.number { border: 1px solid #ccc; border-radius: 6px; padding: .6rem 1rem; }
.number b { display: block; font-size: 1.5rem; }
table { border-collapse: collapse; } td, th { padding: .3rem .7rem;
  border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
.online, .ok, .committed, .confirmed { color: #17803d; }
.offline, .revoked, .bad, .error, .due, .rejected, .halted, .rolled-back,
.refused { color: #b42318; }
.pending, .paused, .waiting { color: #8a6d00; }
.events { display: flex; flex-wrap: wrap; gap: .8rem; align-items: flex-start; }
.event { border: 1px solid #ddd; border-radius: 6px; padding: .5rem; width: 220px;
  color: inherit; text-decoration: none; }
.event img { width: 100%; border-radius: 4px; background: #eee; }
img.thumb { width: 96px; border-radius: 3px; }
.filters { display: flex; gap: .8rem; flex-wrap: wrap; align-items: end; margin-bottom: 1rem; }
.filters label { display: flex; flex-direction: column; font-size: .85rem; }
.detail { display: flex; gap: 1.5rem; flex-wrap: wrap; align-items: flex-start; }
figure.frame { position: relative; margin: 0; width: 512px; max-width: 100%; }
figure.frame img { display: block; width: 100%; }
figure.frame svg.boxes { position: absolute; left: 0; top: 0; width: 100%; height: 100%;
  pointer-events: none; }
rect.box { fill: none; stroke-width: 3; vector-effect: non-scaling-stroke; }
rect.box.edge { stroke: #ff00ff; } rect.box.hub { stroke: #00e0ff; }
rect.box.track { stroke: #facc15; stroke-width: 1; stroke-opacity: .8; }
.key.edge { color: #c000c0; } .key.hub { color: #0090b0; } .key.track { color: #a16207; }
.timeline li { margin: .3rem 0; } .timeline .step-name { font-weight: bold; }
.timeline .this-event { background: #fdf4ff; }
.warnings { color: #b42318; margin: .3rem 0; padding-left: 1.2rem; }
.login { display: flex; flex-direction: column; gap: .5rem; max-width: 24rem; }
.login input { padding: .4rem; font-size: 1rem; }
.hint { color: #555; font-size: .85rem; } .empty { color: #666; }
"""

_SCRIPT = """
(() => {
  // Relative times ("12 s ago") are worded here, so that the server's fragments stay
  // byte for byte the same while nothing changes.
  function ago(seconds) {
    if (seconds < 60) return Math.round(seconds) + " s ago";
    if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
    if (seconds < 172800) return (seconds / 3600).toFixed(1) + " h ago";
    return Math.round(seconds / 86400) + " days ago";
  }
  function wordTimes(root) {
    const now = Date.now() / 1000;
    for (const t of root.querySelectorAll("time[data-at]")) {
      t.textContent = ago(Math.max(0, now - parseFloat(t.dataset.at)));
    }
  }
  function fitOverlays(root) {
    for (const svg of root.querySelectorAll("svg.boxes[data-fit=image]")) {
      const img = svg.parentElement.querySelector("img");
      const fit = () => svg.setAttribute("viewBox",
        "0 0 " + img.naturalWidth + " " + img.naturalHeight);
      if (img.complete) fit(); else img.addEventListener("load", fit);
    }
  }
  wordTimes(document);
  fitOverlays(document);
  setInterval(() => wordTimes(document), 1000);
  // Live updates: the stream sends the fragments whose content changed.
  const stream = document.body.dataset.stream;
  if (stream && window.EventSource) {
    const source = new EventSource(stream);
    source.addEventListener("open", () => document.body.classList.add("live"));
    source.addEventListener("error", () => document.body.classList.remove("live"));
    source.addEventListener("fragments", (message) => {
      const fragments = JSON.parse(message.data);
      for (const [id, markup] of Object.entries(fragments)) {
        const element = document.getElementById(id);
        if (element) { element.innerHTML = markup; wordTimes(element); fitOverlays(element); }
      }
      document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
    });
  }
})();
"""
