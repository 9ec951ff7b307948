"""How the console answers a refusal: a login redirect, a 400 that echoes nothing, an error page.

Fragments, the event stream and static files get a plain-text answer (a script or ``EventSource`` reads
them); pages get the error page. The security headers are added by the middleware either way.
"""
from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response

from appliance.fleet import auth
from appliance.fleet.web.templating import error_page

#: Paths answered in plain text, never with a page.
PLAIN_PREFIXES = ("/fragments/", "/events")


class LoginRequired(Exception):
    """Raised by :func:`appliance.fleet.web.deps.current_user` when the request has no valid session."""


async def login_required(request: Request, exc: LoginRequired) -> Response:
    if request.url.path.startswith(PLAIN_PREFIXES):
        return Response("login required", status_code=401)
    return RedirectResponse("/login", status_code=303)


async def bad_request(request: Request, exc: RequestValidationError) -> Response:
    # FastAPI's default 422 echoes the offending input back; say only which field was wrong.
    fields = ", ".join(str(e.get("loc", ["?"])[-1]) for e in exc.errors())[:200]
    return await http_error(request, HTTPException(status_code=400, detail=f"malformed request ({fields})"))


async def http_error(request: Request, exc: HTTPException) -> Response:
    if request.url.path.startswith((*PLAIN_PREFIXES, "/static/")):
        return Response(str(exc.detail), status_code=exc.status_code)
    console = request.app.state.console
    user = auth.session_user(request.session, console.db, policy=console.policy)
    return error_page(request, user, exc.status_code, str(exc.detail))


def install(app: FastAPI) -> None:
    """Register the console's exception handlers on ``app``."""
    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(RequestValidationError, bad_request)
    app.add_exception_handler(HTTPException, http_error)
