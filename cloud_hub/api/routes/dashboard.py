"""``/dashboard``: the operator's page, server-rendered, no build step.

It refreshes itself every few seconds. The first visit may carry ``?token=``; the token
then moves into an HttpOnly cookie and out of the address bar.
"""

from __future__ import annotations

import html
import time
from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from cloud_hub.api.deps import AUTH, TOKEN_COOKIE, ServiceDep, require
from cloud_hub.errors import HubError
from cloud_hub.service import HubService

router = APIRouter(tags=["dashboard"])

REFRESH_S = 5


@router.get("/dashboard/login", include_in_schema=False)
def login(token: str) -> Response:
    """Move a token from the address bar into a cookie."""
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
    return response


@router.get("/dashboard", response_class=HTMLResponse, dependencies=[require("viewer")],
            responses=AUTH)
def dashboard(request: Request, service: ServiceDep) -> str:
    """Fleet, numbers, and the latest escalations with thumbnails and verdicts."""
    now = time.time()
    store = service.store
    devices = store.list_devices()
    counts = store.event_counts(since=now - 3600)
    events = store.list_events(limit=30).items
    esc = html.escape
    online = sum(d["online"] for d in devices)
    outcomes = counts["by_outcome"]
    latency = counts["mean_verdict_latency_s"]
    rows = "".join(
        f"<tr class='device' data-device='{esc(d['id'])}'><td>{esc(d['id'])}</td>"
        f"<td>{esc(d['group'])}</td>"
        f"<td class='{'online' if d['online'] else 'offline'}'>"
        f"{'online' if d['online'] else 'offline'}</td>"
        f"<td>{_ago(now, d['last_seen'])}</td>"
        f"<td>{esc(', '.join(f'{k} {v}' for k, v in d['models'].items()) or '-')}</td>"
        f"<td>{esc(d['backend'] or '-')}</td>"
        f"<td>{counts['by_device'].get(d['id'], 0)}</td></tr>"
        for d in devices
    )
    cards = "".join(_event_card(e, now) for e in events)
    rollout_rows = "".join(
        f"<tr class='rollout' data-rollout='{esc(r['id'])}'><td>{esc(r['id'])}</td>"
        f"<td>{esc(r['model'])} {esc(r['version'])}</td><td>{esc(r['group'])}</td>"
        f"<td class='{esc(r['status'])}'>{esc(r['status'])}</td><td>{r['wave'] + 1} of "
        f"{len(r['waves'])}</td><td>{sum(v == 'committed' for v in r['results'].values())}"
        f" committed, {sum(v != 'committed' for v in r['results'].values())} failed</td>"
        f"<td>{esc(r['reason'])}</td></tr>"
        for r in store.list_rollouts()[:5]
    )
    signing = _signing_rows(service)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_S}">
<title>Cloud hub</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
h1 {{ font-size: 1.4rem; }} h2 {{ font-size: 1.1rem; margin-top: 1.5rem; }}
.numbers {{ display: flex; gap: 1rem; flex-wrap: wrap; }}
.number {{ border: 1px solid #ccc; border-radius: 6px; padding: .6rem 1rem; }}
.number b {{ display: block; font-size: 1.5rem; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .3rem .7rem;
  border-bottom: 1px solid #eee; text-align: left; }}
.online {{ color: #17803d; }} .offline {{ color: #b42318; }}
.events {{ display: flex; flex-wrap: wrap; gap: .8rem; }}
.event {{ border: 1px solid #ddd; border-radius: 6px; padding: .5rem; width: 220px; }}
.event img {{ width: 100%; border-radius: 4px; background: #eee; }}
.due {{ color: #b42318; font-weight: bold; }}
.confirmed {{ color: #17803d; }} .rejected {{ color: #b42318; }} .pending {{ color: #8a6d00; }}
</style></head><body>
<h1>Cloud hub</h1>
<div class="numbers">
<div class="number" id="devices-online"><b>{online} / {len(devices)}</b>devices online</div>
<div class="number" id="escalations-hour"><b>{sum(outcomes.values())}</b>
escalations, last hour</div>
<div class="number"><b>{outcomes.get('confirmed', 0)}</b>confirmed</div>
<div class="number"><b>{outcomes.get('rejected', 0)}</b>rejected</div>
<div class="number"><b>{outcomes.get('pending', 0)}</b>awaiting verdict</div>
<div class="number"><b>{f'{latency * 1000:.0f} ms' if latency is not None else '-'}</b>
mean capture-to-verdict</div>
</div>
<h2>Fleet</h2>
<table id="fleet"><tr><th>device</th><th>group</th><th>state</th><th>last seen</th>
<th>models</th><th>backend</th><th>escalations / h</th></tr>{rows}</table>
<h2>Rollouts</h2>
<table id="rollouts"><tr><th>rollout</th><th>model</th><th>group</th><th>status</th>
<th>wave</th><th>devices</th><th>note</th></tr>{rollout_rows}</table>
<h2>Signed updates</h2>
<table id="signing"><tr><th>metadata</th><th>version</th><th>expires</th><th>left</th>
<th>key</th></tr>{signing}</table>
<h2>Latest escalations</h2>
<div class="events" id="events">{cards or '<p>No escalations yet.</p>'}</div>
</body></html>"""


def _signing_rows(service: HubService) -> str:
    """Each role of the update repository: when it expires, and whether this hub can
    re-sign it. A role in red is due: with its key online the refresher is failing (see
    the log), with its key offline the operator must re-sign it."""
    if service.distribution is None or not service.distribution.repository.exists():
        return "<tr><td colspan='5'>no repository: run <code>cloud-hub keys init</code></td></tr>"
    repository = service.distribution.repository
    try:
        expiries = repository.expiries()
    except HubError as exc:
        return f"<tr><td colspan='5' class='due'>{html.escape(str(exc))}</td></tr>"
    now = repository.now()
    return "".join(
        f"<tr class='role' data-role='{e.role}'><td>{e.role}</td><td>{e.version}</td>"
        f"<td>{e.expires.isoformat()}</td>"
        f"<td class='{'due' if e.due(now) else 'fresh'}'>"
        f"{_left(e.expires - now)}</td>"
        f"<td>{'online' if e.key_online else 'offline'}</td></tr>"
        for e in expiries
    )


def _left(left: timedelta) -> str:
    if left.total_seconds() <= 0:
        return "expired"
    if left.days >= 2:
        return f"{left.days} days"
    return f"{left.total_seconds() / 3600:.1f} h"


def _event_card(event: dict[str, object], now: float) -> str:
    esc = html.escape
    outcome = str(event["outcome"] or "pending")
    image = (f"<img alt='thumbnail' src='/v1/events/{esc(str(event['id']))}/thumbnail.jpg'>"
             if event["has_thumbnail"] else "")
    detections = event["edge_detections"]
    best = max((float(d["score"]) for d in detections), default=None) if isinstance(
        detections, list) else None
    score = f" {best:.2f}" if best is not None else ""
    return (f"<div class='event' data-event='{esc(str(event['id']))}'>{image}"
            f"<div><b>{esc(str(event['device_id']))}</b> / {esc(str(event['source']))}</div>"
            f"<div>{esc(str(event['reason']))}{score} &rarr; "
            f"<span class='{esc(outcome)}'>{esc(outcome)}</span></div>"
            f"<div>{_ago(now, event['received_at'])}</div></div>")


def _ago(now: float, then: object) -> str:
    if not isinstance(then, float | int):
        return "never"
    seconds = max(0, now - float(then))
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
