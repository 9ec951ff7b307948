"""The read-only pages: the fleet, the alert feed, the audit log (and their live fragments), the broker-link
banner every page carries, ``/healthz``."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from appliance.fleet.web.deps import ConsoleDep, CurrentUser
from appliance.fleet.web.templating import render

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def fleet(request: Request, user: CurrentUser, console: ConsoleDep) -> HTMLResponse:
    db = console.db
    return render(request, "fleet.html", user, boxes=db.list_boxes(), counts=db.fleet_counts(),
                  alerts=db.recent_alerts(limit=20), last_event=db.last_live_event_id())


@router.get("/fragments/fleet", response_class=HTMLResponse)
def fleet_rows(request: Request, user: CurrentUser, console: ConsoleDep) -> HTMLResponse:
    return render(request, "_fleet_rows.html", user, boxes=console.db.list_boxes(), counts=console.db.fleet_counts())


@router.get("/fragments/broker-link", response_class=HTMLResponse)
def broker_link_banner(request: Request, user: CurrentUser) -> HTMLResponse:
    # empty while connected; the live feed's ``broker`` event re-fetches it when the connection changes
    return render(request, "_broker_link.html", user)


@router.get("/alerts", response_class=HTMLResponse)
def alerts_page(request: Request, user: CurrentUser, console: ConsoleDep) -> HTMLResponse:
    return render(request, "alerts.html", user, alerts=console.db.recent_alerts(limit=200),
                  last_event=console.db.last_live_event_id())


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, user: CurrentUser, console: ConsoleDep) -> HTMLResponse:
    return render(request, "audit.html", user, entries=console.db.audit_entries(limit=300))


@router.get("/healthz")
def healthz(console: ConsoleDep) -> Any:
    # Liveness for a load balancer or systemd: 503 when the MQTT ingest's thread is dead, because then
    # no alert reaches this console however well the web side answers.
    body: dict[str, Any] = {"ok": True}
    ingest = console.ingest
    if ingest is not None and hasattr(ingest, "health"):
        body["ingest"] = ingest.health()
        if not body["ingest"]["thread_alive"]:
            body["ok"] = False
            return JSONResponse(body, status_code=503)
    return body
