"""The console's Jinja2 templates (autoescaped) and :func:`render`, which every page goes through."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from appliance.fleet import auth
from appliance.fleet.db import as_utc, utcnow

if TYPE_CHECKING:
    from appliance.fleet.ingest import LinkState

HERE = Path(__file__).parent


def ago(value: dt.datetime | None) -> str:
    """How long ago ``value`` was, coarsely ("5 min ago"); "never" for None."""
    value = as_utc(value)
    if value is None:
        return "never"
    s = (utcnow() - value).total_seconds()
    if s < 60:
        return f"{max(0, int(s))} s ago"
    if s < 3600:
        return f"{int(s // 60)} min ago"
    if s < 86400:
        return f"{int(s // 3600)} h ago"
    return f"{int(s // 86400)} d ago"


def iso(value: dt.datetime | None) -> str:
    """``value`` as "YYYY-MM-DD HH:MM:SS UTC"; "" for None."""
    value = as_utc(value)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def _templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=str(HERE / "templates"))
    t.env.filters["ago"] = ago
    t.env.filters["iso"] = iso
    t.env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)
    return t


templates = _templates()


def broker_link(request: Request) -> LinkState | None:
    """The console's connection to the broker (:meth:`Console.broker_link`), for the banner every page carries."""
    console = getattr(request.app.state, "console", None)
    return console.broker_link() if console is not None else None


def render(request: Request, name: str, user: auth.User | None, *, status_code: int = 200, **ctx: Any) -> HTMLResponse:
    """Template ``name`` with ``ctx``, plus the signed-in ``user``, the session's CSRF token, the nav entry and the
    broker link (a page says when alerts cannot reach the console)."""
    ctx.update(user=user, csrf=auth.csrf_token(request.session), nav=name.split(".")[0], broker=broker_link(request))
    return templates.TemplateResponse(request, name, ctx, status_code=status_code)


def error_page(request: Request, user: auth.User | None, status_code: int, detail: str) -> HTMLResponse:
    """The error page (it has no nav entry)."""
    return templates.TemplateResponse(request, "error.html", {
        "user": user, "csrf": auth.csrf_token(request.session), "nav": "", "broker": broker_link(request),
        "status": status_code, "detail": detail}, status_code=status_code)
