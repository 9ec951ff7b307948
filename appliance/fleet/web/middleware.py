"""The console's HTTP middleware: session cookies, security headers on every answer, bounded bodies.

:func:`install` adds them in the one order that works: the session first (every handler and dependency
sees ``request.session``), then the security headers (so even a 500 carries them), and innermost
:class:`BodyLimit` (so a body too large raises inside the app and becomes an error page like any other).
"""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.sessions import SessionMiddleware

from appliance.fleet.web.settings import ConsoleSettings

logger = logging.getLogger(__name__)

#: Largest request body for everything but a rollout upload, bytes (the config editor sends <= 200k chars).
MAX_FORM_BYTES = 1024 * 1024

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
#: Set on every answer, errors included (unless a route set its own).
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                    "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}


class RequestTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body larger than {limit} bytes")


class BodyLimit:
    """ASGI middleware: refuse a request body over a size limit, reading at most one chunk past it.

    Nothing is read here: the app reads the body when (and if) it needs it, after its own checks. Then a
    declared ``Content-Length`` over the limit, or a body (chunked) that grows past it, raises
    :class:`RequestTooLarge`, which the app turns into a 413 page like any other error. ``limits`` maps
    an exact path to its own limit (the rollout upload); every other path gets ``default``.
    """

    def __init__(self, app: Any, *, default: int, limits: dict[str, int]) -> None:
        self.app, self.default, self.limits = app, default, dict(limits)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope.get("path", ""), self.default)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_large = declared is not None and (not declared.isdigit() or len(declared) > 18 or int(declared) > limit)
        seen = 0

        async def bounded_receive() -> dict:
            nonlocal seen
            if too_large:
                raise RequestTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise RequestTooLarge(limit)
            return message

        await self.app(scope, bounded_receive, send)


async def security_headers(request: Request, call_next: Any) -> Response:
    """Add :data:`SECURITY_HEADERS` to the answer; an unhandled error becomes a plain 500 that has them too."""
    try:
        response = await call_next(request)
    except Exception:  # noqa: BLE001 - answered here so that even a 500 carries the headers below
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        response = Response("internal error", status_code=500, media_type="text/plain")
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def install(app: FastAPI, settings: ConsoleSettings, *, upload_paths: tuple[str, ...]) -> None:
    """Add the console's middleware to ``app`` (see the module docstring for the order).

    Parameters
    ----------
    app : FastAPI
    settings : ConsoleSettings
        ``max_request_bytes`` bounds the ``upload_paths``; the session cookie's key, lifetime and flags.
    upload_paths : tuple of str
        Exact paths whose bodies may be up to ``settings.max_request_bytes``; every other body
        :data:`MAX_FORM_BYTES`.
    """
    # Middleware added later wraps what was added before: add innermost first.
    app.add_middleware(BodyLimit, default=MAX_FORM_BYTES, limits={p: settings.max_request_bytes for p in upload_paths})
    app.add_middleware(BaseHTTPMiddleware, dispatch=security_headers)
    app.add_middleware(SessionMiddleware, secret_key=settings.resolved_secret_key(), session_cookie="bedtime_session",
                       max_age=int(settings.session_max_age_s), same_site="strict", https_only=settings.https_only)
