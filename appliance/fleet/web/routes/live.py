"""The live feed: ``/events``, a Server-Sent Events stream of the database's change feed.

Events are ``alert`` (with the alert's text, which ``static/live.js`` puts in with ``textContent``), ``box``,
``config``, ``rollout`` and ``report`` (the page re-fetches an escaped fragment), and ``logout`` when the
session that opened the stream has ended. The stream resumes after ``Last-Event-ID`` (or ``?after=``).

``broker`` (no event id: it is this instance's own state, not a database row) comes first and then whenever this
console instance's connection to the MQTT broker comes or goes: the page re-fetches its banner, so staff looking
at a dashboard learn within a second or two that alerts are not reaching it.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse

from appliance.fleet import auth
from appliance.fleet.web.deps import ConsoleDep, CurrentUser
from appliance.fleet.web.state import Console
from appliance.fleet.web.templating import iso

router = APIRouter()

#: Last-Event-ID / ``after``: a live_events row id (a 64-bit integer), plain ASCII digits only.
EVENT_ID_RE = re.compile(r"[0-9]{1,18}")
#: A stream re-checks its session this often, seconds (a stream outlives the request that opened it).
SESSION_RECHECK_S = 30.0
#: An idle stream sends a comment this often, seconds, so that proxies do not close it.
KEEPALIVE_S = 15.0


@router.get("/events")
async def events(request: Request, user: CurrentUser, console: ConsoleDep, after: str = "0") -> StreamingResponse:
    last_header = request.headers.get("last-event-id")
    raw = after if last_header is None else last_header
    # str.isdigit() accepts "²" and int() then fails (a 500); and a number past 64 bits breaks the query.
    if not EVENT_ID_RE.fullmatch(raw):
        raise HTTPException(status_code=400, detail="Last-Event-ID / after: a non-negative event number")
    return StreamingResponse(_stream(request, console, int(raw)), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _stream(request: Request, console: Console, last: int) -> AsyncIterator[str]:
    db, app = console.db, request.app
    poll_s = float(console.settings.extra.get("sse_poll_s", 1.0))
    yield "retry: 2000\n\n"
    idle = 0.0
    checked = time.monotonic()
    link_shown: tuple | None = None
    while not app.state.closing:
        link = console.broker_link()
        if link is not None and (link.connected, link.problem) != link_shown:
            link_shown = (link.connected, link.problem)
            yield f"event: broker\ndata: {json.dumps({'connected': link.connected, 'problem': link.problem})}\n\n"
        if time.monotonic() - checked > SESSION_RECHECK_S:
            # Re-check the session, so logging out (or the session expiring) also ends the live feed.
            checked = time.monotonic()
            if await anyio.to_thread.run_sync(
                    lambda: auth.session_user(request.session, db, policy=console.policy)) is None:
                yield "event: logout\ndata: {}\n\n"
                break
        wake = console.notifier.current()
        rows = await anyio.to_thread.run_sync(db.live_events_after, last)
        for row in rows:
            last = row["id"]
            data: dict[str, Any] = {"kind": row["kind"], "box_id": row["box_id"], "ref_id": row["ref_id"]}
            if row["kind"] == "alert" and row["ref_id"]:
                a = await anyio.to_thread.run_sync(db.get_alert, row["ref_id"])
                if a:
                    data.update(title=a["title"], message=a["message"], severity=a["severity"],
                                received=iso(a["received_at"]), sent=(a["payload"] or {}).get("time_utc"))
            yield f"id: {row['id']}\nevent: {row['kind']}\ndata: {json.dumps(data)}\n\n"
        if rows:
            idle = 0.0
            continue
        if await request.is_disconnected():
            break
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=poll_s)
        idle += poll_s
        if idle >= KEEPALIVE_S:  # keep proxies from closing an idle stream
            idle = 0.0
            yield ": keep-alive\n\n"
