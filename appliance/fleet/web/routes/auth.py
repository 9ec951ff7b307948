"""Signing in and out: ``/login`` (rate-limited, audited) and ``/logout`` (revokes the session)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from appliance.fleet import auth
from appliance.fleet.web.deps import ConsoleDep, CurrentUser, client_address, csrf_checked
from appliance.fleet.web.templating import render

router = APIRouter()


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> HTMLResponse:
    return render(request, "login.html", None, error=None, username="")


@router.post("/login", dependencies=[Depends(csrf_checked)])
def login(request: Request, console: ConsoleDep, remote: Annotated[str, Depends(client_address)],
          username: Annotated[str, Form()] = "", password: Annotated[str, Form()] = "") -> Response:
    db = console.db
    username, password = username[:64], password[:1024]
    try:
        user = auth.authenticate(db, username, password, remote=remote, policy=console.policy)
    except auth.RateLimited as e:
        db.audit(username or "?", "login.rate_limited", remote)
        return render(request, "login.html", None, status_code=429, error=str(e), username=username)
    except auth.AuthError as e:
        db.audit(username or "?", "login.failed", remote)
        return render(request, "login.html", None, status_code=401, error=str(e), username=username)
    auth.start_session(request.session, db, user)
    db.audit(user.username, "login", remote)
    return RedirectResponse("/", status_code=303)


@router.post("/logout")
def logout(request: Request, console: ConsoleDep, user: CurrentUser,
           _csrf: Annotated[None, Depends(csrf_checked)]) -> Response:
    console.db.audit(user.username, "logout")
    auth.end_session(request.session, console.db)
    return RedirectResponse("/login", status_code=303)
