"""One box: its page (last nights' hypnograms, alerts, config pushes), its rollout group, its pushes fragment."""
from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from appliance.fleet import auth
from appliance.fleet.web.charts import hypnogram_svg
from appliance.fleet.web.deps import Box, ConsoleDep, CurrentUser, csrf_checked, require_role
from appliance.fleet.web.templating import render

router = APIRouter()

GROUP_RE = re.compile(r"^[a-z0-9_-]{0,32}$")


@router.get("/boxes/{box_id}", response_class=HTMLResponse)
def box_page(request: Request, box_id: str, user: CurrentUser, box: Box, console: ConsoleDep) -> HTMLResponse:
    db = console.db
    nights = []
    for r in db.reports_for_box(box_id, limit=7):
        rep = r["payload"] if isinstance(r["payload"], dict) else {}
        nights.append({"night": r["night"], "report": rep, "svg": hypnogram_svg(rep.get("hypnogram"))})
    return render(request, "box.html", user, box=box, nights=nights, alerts=db.recent_alerts(limit=20, box_id=box_id),
                  pushes=db.config_pushes_for_box(box_id), last_event=db.last_live_event_id())


@router.post("/boxes/{box_id}/group")
def set_group(box_id: str, user: Annotated[auth.User, Depends(require_role("operator", action="group:{box_id}"))],
              _csrf: Annotated[None, Depends(csrf_checked)], box: Box, console: ConsoleDep,
              group_name: Annotated[str, Form()] = "") -> Response:
    group_name = group_name.strip()
    if not GROUP_RE.match(group_name):
        raise HTTPException(status_code=400, detail="group: up to 32 of a-z 0-9 _ - (e.g. canary)")
    console.db.upsert_box(box_id, group_name=group_name, live_event=True)
    console.db.audit(user.username, "box.group", box_id, {"group": group_name})
    console.notifier.notify()
    return RedirectResponse(f"/boxes/{box_id}", status_code=303)


@router.get("/fragments/boxes/{box_id}/pushes", response_class=HTMLResponse)
def box_pushes(request: Request, box_id: str, user: CurrentUser, box: Box, console: ConsoleDep) -> HTMLResponse:
    return render(request, "_pushes.html", user, box=box, pushes=console.db.config_pushes_for_box(box_id))
