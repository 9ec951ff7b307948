"""Who may do what: the console's checks as FastAPI dependencies.

Every route names its checks in its signature, in the order they run (FastAPI solves a route's dependencies
in the order they are declared, each sub-dependency first):

- :data:`CurrentUser`: a valid session, else :class:`~appliance.fleet.web.errors.LoginRequired` (a redirect
  to the login page, or a 401 for fragments and the event stream);
- :func:`require_role`: the user has a role, else a 403 and a ``denied`` audit row;
- :func:`csrf_checked`: the form's CSRF token matches the session's, else a 403 and a ``csrf_rejected`` row;
- :func:`same_site`: the browser did not send the request from another site's page (``Sec-Fetch-Site``).

A route with form fields has its body read (bounded by the middleware) before any dependency runs; the
rollout upload therefore declares no form fields, so its operator and same-site checks run before a byte
of its body is read, and calls :func:`check_csrf` itself once it has parsed the form.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Form, HTTPException, Request

from appliance.fleet import auth
from appliance.fleet.web.errors import LoginRequired
from appliance.fleet.web.state import Console
from appliance.protocol.ids import BOX_ID_RE

#: A config or model version a form may name.
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


async def get_console(request: Request) -> Console:
    """The :class:`~appliance.fleet.web.state.Console` of the app serving ``request`` (async: no thread hop)."""
    return request.app.state.console


ConsoleDep = Annotated[Console, Depends(get_console)]


def current_user(request: Request, console: ConsoleDep) -> auth.User:
    """The signed-in user; a request without a valid session has its session cleared and is refused."""
    user = auth.session_user(request.session, console.db, policy=console.policy)
    if user is None:
        request.session.clear()
        raise LoginRequired()
    return user


CurrentUser = Annotated[auth.User, Depends(current_user)]


def require_role(role: str, *, action: str) -> Callable[..., auth.User]:
    """A dependency: the signed-in user, if they have ``role``; else a ``denied`` audit row and a 403.

    Parameters
    ----------
    role : str
        ``"operator"`` (or any role :meth:`auth.User.can` knows).
    action : str
        What was attempted, for the audit row; ``{name}`` is filled from the path (``"config:{box_id}"``).
    """
    def role_checked(request: Request, user: CurrentUser, console: ConsoleDep) -> auth.User:
        if not user.can(role):
            console.db.audit(user.username, "denied", action.format(**request.path_params), {"role": user.role})
            raise HTTPException(status_code=403, detail=f"{role}s only")
        return user

    return role_checked


def check_csrf(request: Request, console: Console, token: str | None) -> None:
    """Refuse (403, audited) unless ``token`` is the session's CSRF token."""
    if not auth.csrf_ok(request.session, token):
        console.db.audit(request.session.get("uid") and str(request.session.get("uid")) or "anonymous",
                         "csrf_rejected", request.url.path)
        raise HTTPException(status_code=403, detail="missing or wrong CSRF token")


def csrf_checked(request: Request, console: ConsoleDep, csrf_token: Annotated[str, Form()] = "") -> None:
    """A dependency: the form's ``csrf_token`` field is the session's (:func:`check_csrf`)."""
    check_csrf(request, console, csrf_token)


def same_site(request: Request, user: CurrentUser, console: ConsoleDep) -> None:
    """A dependency: refuse (403, audited) a request a browser says comes from another site's page.

    ``Sec-Fetch-Site`` rather than ``Origin``: behind a TLS proxy the app sees neither the scheme nor,
    often, the host the browser used. A client that sends no such header (not a browser) passes; the CSRF
    token still has to match.
    """
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        console.db.audit(user.username, "csrf_rejected", request.url.path)
        raise HTTPException(status_code=403, detail="cross-site request refused")


def box_or_404(box_id: str, console: ConsoleDep) -> dict:
    """A dependency: the ``box_id`` path parameter's box row, or a 404."""
    box = console.db.get_box(box_id) if BOX_ID_RE.match(box_id) else None
    if box is None:
        raise HTTPException(status_code=404, detail="no such box")
    return box


Box = Annotated[dict, Depends(box_or_404)]


def _is_trusted_proxy(console: Console, host: str) -> bool:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(addr in net for net in console.trusted_proxies)


def client_address(request: Request, console: ConsoleDep) -> str:
    """The client's address: the TCP peer, or, when the peer is a configured trusted proxy, the
    nearest address in ``X-Forwarded-For`` that is not itself a trusted proxy."""
    peer = request.client.host if request.client else "unknown"
    if not _is_trusted_proxy(console, peer):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getlist("x-forwarded-for")).split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_trusted_proxy(console, hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage from the client side of the proxy: fall back to the proxy
    return peer
