"""The clinic console: a FastAPI app with server-rendered Jinja2 pages and a Server-Sent Events feed.

Pages (all behind a login, except ``/login``):

=========================  ==========================================================================
``/``                      the fleet: online/offline, last seen, versions, signal quality, last night,
                           and the live alert feed
``/alerts``                the alert feed on its own
``/boxes/<id>``            one box: last nights' hypnograms and reports, telemetry, alerts, config pushes
``/boxes/<id>/config``     config editor (validated with the box's own ``validate_config``; operator)
``/rollouts``              signed model/config rollouts: start one (operator), follow them
``/audit``                 the console's audit log
``/events``                SSE stream: ``alert``, ``box``, ``config``, ``rollout``, ``report`` events
=========================  ==========================================================================

Security: Argon2id passwords, signed session cookies with server-side expiry and revocation, a CSRF
token in every form, a login rate limit, roles (:mod:`appliance.fleet.auth`); Jinja2 autoescaping for
every value; and a strict Content-Security-Policy (no inline script), so even a value that slipped past
escaping could not run.

Pages re-render fragments (``/fragments/...``) when the event stream says something changed; the alert
feed builds its rows from the event's JSON with ``textContent``. The stream reads the database's change
feed, so it works the same when several console instances share one database.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.sessions import SessionMiddleware

from appliance.fleet import auth
from appliance.fleet.db import FleetDB, as_utc, utcnow
from appliance.fleet.rollout import CommandChannel, RolloutRunner, create_rollout
from appliance.protocol.ids import BOX_ID_RE
from appliance.protocol.signing import SignatureError, load_private_key, parse_manifest, sign_bytes
from appliance.fleet.web.bridge import IngestBridge
from appliance.fleet.web.charts import hypnogram_svg
from appliance.fleet.web.settings import ConsoleSettings
from appliance.updates import MAX_MANIFEST_CHARS, MAX_PAYLOAD_BYTES

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
GROUP_RE = re.compile(r"^[a-z0-9_-]{0,32}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
MAX_UPLOAD_BYTES = MAX_PAYLOAD_BYTES  # what a box accepts; a larger upload could only be refused by every box
CONFIG_PUSH_LIFETIME_S = 86400
"""A config pushed from the editor is signed for one box and one day (it is sent at once)."""
#: Largest request body for everything but a rollout upload, bytes (the config editor sends <= 200k chars).
MAX_FORM_BYTES = 1024 * 1024
#: Last-Event-ID / ``after``: a live_events row id (a 64-bit integer), plain ASCII digits only.
EVENT_ID_RE = re.compile(r"[0-9]{1,18}")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


class LoginRequired(Exception):
    """Raised by :func:`_user` when the request has no valid session."""


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


class Notifier:
    """Wakes every open event stream of this process at once (thread-safe ``notify``).

    Streams also poll the database on their own, so a change ingested by another console instance
    shows up within ``poll_s``; this only makes a local change show up immediately.
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    def _fire(self) -> None:
        ev, self._event = self._event, asyncio.Event()
        if ev is not None:
            ev.set()

    def notify(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._fire)


class NotifyingBridge(IngestBridge):
    """The ingest bridge that also wakes this instance's event streams."""

    def __init__(self, db: FleetDB, notifier: Notifier) -> None:
        super().__init__(db)
        self.notifier = notifier

    def on_status(self, box_id: str, payload: dict) -> None:
        super().on_status(box_id, payload)
        self.notifier.notify()

    def on_alert(self, box_id: str, payload: dict) -> int:
        alert_id = super().on_alert(box_id, payload)
        self.notifier.notify()
        return alert_id

    def on_report(self, box_id: str, payload: dict) -> None:
        super().on_report(box_id, payload)
        self.notifier.notify()

    def on_config_reply(self, push_id: int, reply: dict | None) -> None:
        super().on_config_reply(push_id, reply)
        self.notifier.notify()


class _NotifyingDB:
    """Wraps the db for the rollout runner so each of its writes wakes the streams."""

    def __init__(self, db: FleetDB, notifier: Notifier) -> None:
        self._db, self._n = db, notifier

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._db, name)
        if name in ("set_rollout_state", "set_target_state"):
            def wrapped(*a: Any, **k: Any) -> Any:
                out = attr(*a, **k)
                self._n.notify()
                return out
            return wrapped
        return attr


def _ago(value: dt.datetime | None) -> str:
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


def _iso(value: dt.datetime | None) -> str:
    value = as_utc(value)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def create_app(settings: ConsoleSettings, *, db: FleetDB | None = None, ingest: Any = None,
               channel: CommandChannel | None = None) -> FastAPI:
    """Build the console.

    Parameters
    ----------
    settings : ConsoleSettings
    db : FleetDB, optional
        An open database (default: open ``settings.database_url`` and migrate it).
    ingest : object, optional
        A started-or-startable :class:`~appliance.fleet.ingest.FleetIngest` (or anything with ``start``/``stop``
        whose callbacks the console may set). Default: one built from ``settings.mqtt_*`` when
        ``settings.mqtt_host`` is set, else none.
    channel : CommandChannel, optional
        How commands reach boxes (default: the ingest, which implements ``request``).
    """
    db = db or FleetDB(settings.database_url)
    policy = auth.LoginPolicy(max_failures=settings.login_max_failures, window_s=settings.login_window_s,
                              session_max_age_s=settings.session_max_age_s)
    notifier = Notifier()
    bridge = NotifyingBridge(db, notifier)
    if ingest is None and settings.mqtt_host:
        from appliance.fleet.web.mqtt_ingest import build_ingest

        ingest = build_ingest(settings, bridge)
    elif ingest is not None:
        from appliance.fleet.web.mqtt_ingest import attach_bridge

        attach_bridge(ingest, bridge)
    if channel is None and ingest is not None and hasattr(ingest, "request"):
        channel = ingest
    workers = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="console-worker")
    signing_key = load_private_key(settings.signing_key_file) if settings.signing_key_file else None
    public_pem = Path(settings.public_key_file).read_bytes() if settings.public_key_file else None

    housekeeping_stop = threading.Event()
    trusted_proxies = [ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies]

    def housekeeping() -> None:
        """Flush coalesced telemetry every second; every 10 min drop change-feed rows older than a day and
        login attempts older than ``settings.login_attempts_keep_s``."""
        last_prune = float("-inf")
        while not housekeeping_stop.wait(bridge.telemetry_flush_s):
            try:
                bridge.flush()
                if time.monotonic() - last_prune > 600:
                    last_prune = time.monotonic()
                    db.prune_live_events(utcnow() - dt.timedelta(days=1))
                    keep_s = max(settings.login_attempts_keep_s, settings.login_window_s)
                    db.prune_login_attempts(utcnow() - dt.timedelta(seconds=keep_s))
            except Exception:  # noqa: BLE001 - a database hiccup must not end housekeeping
                logger.exception("console housekeeping failed")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        notifier.bind(asyncio.get_running_loop())
        app.state.closing = False
        housekeeping_stop.clear()
        keeper = threading.Thread(target=housekeeping, name="console-housekeeping", daemon=True)
        keeper.start()
        if ingest is not None and hasattr(ingest, "start"):
            await anyio.to_thread.run_sync(ingest.start)
        try:
            yield
        finally:
            app.state.closing = True
            notifier.notify()
            if ingest is not None and hasattr(ingest, "stop"):
                await anyio.to_thread.run_sync(ingest.stop)
            housekeeping_stop.set()
            await anyio.to_thread.run_sync(keeper.join, 5)
            bridge.flush()
            workers.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="bedtime clinic console", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.db, app.state.settings, app.state.bridge = db, settings, bridge
    app.state.ingest, app.state.channel, app.state.notifier, app.state.workers = ingest, channel, notifier, workers
    app.state.closing = False

    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["ago"] = _ago
    templates.env.filters["iso"] = _iso
    templates.env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    # Innermost (middleware added later wraps it): a body too large becomes an error page below.
    app.add_middleware(BodyLimit, default=MAX_FORM_BYTES, limits={"/rollouts": settings.max_request_bytes})

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001 - answered here so that even a 500 carries the headers below
            logger.exception("unhandled error on %s %s", request.method, request.url.path)
            response = Response("internal error", status_code=500, media_type="text/plain")
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    # Added last so it runs first: every handler sees request.session.
    app.add_middleware(SessionMiddleware, secret_key=settings.resolved_secret_key(), session_cookie="bedtime_session",
                       max_age=int(settings.session_max_age_s), same_site="strict", https_only=settings.https_only)

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired):
        if request.url.path.startswith(("/fragments/", "/events")):
            return Response("login required", status_code=401)
        return RedirectResponse("/login", status_code=303)

    # ---- helpers ---------------------------------------------------------------------------------
    def _user(request: Request) -> auth.User:
        user = auth.session_user(request.session, db, policy=policy)
        if user is None:
            request.session.clear()
            raise LoginRequired()
        return user

    def _operator(request: Request, action: str) -> auth.User:
        user = _user(request)
        if not user.can("operator"):
            db.audit(user.username, "denied", action, {"role": user.role})
            raise HTTPException(status_code=403, detail="operators only")
        return user

    def _csrf(request: Request, token: str | None) -> None:
        if not auth.csrf_ok(request.session, token):
            db.audit(request.session.get("uid") and str(request.session.get("uid")) or "anonymous",
                     "csrf_rejected", request.url.path)
            raise HTTPException(status_code=403, detail="missing or wrong CSRF token")

    def _is_trusted_proxy(host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in trusted_proxies)

    def _remote(request: Request) -> str:
        """The client's address: the TCP peer, or, when the peer is a configured trusted proxy, the
        nearest address in ``X-Forwarded-For`` that is not itself a trusted proxy."""
        peer = request.client.host if request.client else "unknown"
        if not _is_trusted_proxy(peer):
            return peer
        hops = [h.strip() for h in ",".join(request.headers.getlist("x-forwarded-for")).split(",") if h.strip()]
        for hop in reversed(hops):
            if not _is_trusted_proxy(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return peer  # garbage from the client side of the proxy: fall back to the proxy
        return peer

    def render(request: Request, name: str, user: auth.User | None, status_code: int = 200, **ctx: Any):
        ctx.update(user=user, csrf=auth.csrf_token(request.session), nav=name.split(".")[0])
        return templates.TemplateResponse(request, name, ctx, status_code=status_code)

    def _box_or_404(box_id: str) -> dict:
        box = db.get_box(box_id) if BOX_ID_RE.match(box_id) else None
        if box is None:
            raise HTTPException(status_code=404, detail="no such box")
        return box

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError):
        # FastAPI's default 422 echoes the offending input back; say only which field was wrong.
        fields = ", ".join(str(e.get("loc", ["?"])[-1]) for e in exc.errors())[:200]
        return await _http_error(request, HTTPException(status_code=400, detail=f"malformed request ({fields})"))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        if request.url.path.startswith(("/fragments/", "/events", "/static/")):
            return Response(str(exc.detail), status_code=exc.status_code)
        user = auth.session_user(request.session, db, policy=policy)
        return templates.TemplateResponse(request, "error.html", {
            "user": user, "csrf": auth.csrf_token(request.session), "nav": "",
            "status": exc.status_code, "detail": str(exc.detail)}, status_code=exc.status_code)

    # ---- login -----------------------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request):
        return render(request, "login.html", None, error=None, username="")

    @app.post("/login")
    def login(request: Request, username: Annotated[str, Form()] = "",
              password: Annotated[str, Form()] = "", csrf_token: Annotated[str, Form()] = ""):
        _csrf(request, csrf_token)
        remote = _remote(request)
        username, password = username[:64], password[:1024]
        try:
            user = auth.authenticate(db, username, password, remote=remote, policy=policy)
        except auth.RateLimited as e:
            db.audit(username or "?", "login.rate_limited", remote)
            return render(request, "login.html", None, status_code=429, error=str(e), username=username)
        except auth.AuthError as e:
            db.audit(username or "?", "login.failed", remote)
            return render(request, "login.html", None, status_code=401, error=str(e), username=username)
        auth.start_session(request.session, db, user)
        db.audit(user.username, "login", remote)
        return RedirectResponse("/", status_code=303)

    @app.post("/logout")
    def logout(request: Request, csrf_token: Annotated[str, Form()] = ""):
        user = _user(request)
        _csrf(request, csrf_token)
        db.audit(user.username, "logout")
        auth.end_session(request.session, db)
        return RedirectResponse("/login", status_code=303)

    # ---- pages -----------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def fleet(request: Request):
        user = _user(request)
        return render(request, "fleet.html", user, boxes=db.list_boxes(), counts=db.fleet_counts(),
                      alerts=db.recent_alerts(limit=20), last_event=db.last_live_event_id())

    @app.get("/fragments/fleet", response_class=HTMLResponse)
    def fleet_rows(request: Request):
        user = _user(request)
        return render(request, "_fleet_rows.html", user, boxes=db.list_boxes(), counts=db.fleet_counts())

    @app.get("/alerts", response_class=HTMLResponse)
    def alerts_page(request: Request):
        user = _user(request)
        return render(request, "alerts.html", user, alerts=db.recent_alerts(limit=200),
                      last_event=db.last_live_event_id())

    @app.get("/boxes/{box_id}", response_class=HTMLResponse)
    def box_page(request: Request, box_id: str):
        user = _user(request)
        box = _box_or_404(box_id)
        nights = []
        for r in db.reports_for_box(box_id, limit=7):
            rep = r["payload"] if isinstance(r["payload"], dict) else {}
            nights.append({"night": r["night"], "report": rep, "svg": hypnogram_svg(rep.get("hypnogram"))})
        return render(request, "box.html", user, box=box, nights=nights, alerts=db.recent_alerts(limit=20, box_id=box_id),
                      pushes=db.config_pushes_for_box(box_id), last_event=db.last_live_event_id())

    @app.post("/boxes/{box_id}/group")
    def set_group(request: Request, box_id: str, group_name: Annotated[str, Form()] = "",
                  csrf_token: Annotated[str, Form()] = ""):
        user = _operator(request, f"group:{box_id}")
        _csrf(request, csrf_token)
        _box_or_404(box_id)
        group_name = group_name.strip()
        if not GROUP_RE.match(group_name):
            raise HTTPException(status_code=400, detail="group: up to 32 of a-z 0-9 _ - (e.g. canary)")
        db.upsert_box(box_id, group_name=group_name, live_event=True)
        db.audit(user.username, "box.group", box_id, {"group": group_name})
        notifier.notify()
        return RedirectResponse(f"/boxes/{box_id}", status_code=303)

    @app.get("/fragments/boxes/{box_id}/pushes", response_class=HTMLResponse)
    def box_pushes(request: Request, box_id: str):
        user = _user(request)
        box = _box_or_404(box_id)
        return render(request, "_pushes.html", user, box=box, pushes=db.config_pushes_for_box(box_id))

    @app.get("/boxes/{box_id}/config", response_class=HTMLResponse)
    def config_page(request: Request, box_id: str):
        user = _user(request)
        box = _box_or_404(box_id)
        pushes = db.config_pushes_for_box(box_id, limit=10)
        if pushes:
            text = json.dumps(pushes[0]["body"], indent=2, sort_keys=True)
        else:
            from appliance.config import ConfigError, validate_config

            try:
                defaults = validate_config({"box": {"id": box_id}})
            except ConfigError:  # an MQTT box id the config schema does not allow (e.g. with '.')
                defaults = validate_config({})
            text = json.dumps(defaults.to_dict(), indent=2, sort_keys=True)
        return render(request, "config.html", user, box=box, text=text, version="", errors=None, pushes=pushes,
                      can_sign=signing_key is not None, last_event=db.last_live_event_id())

    @app.post("/boxes/{box_id}/config", response_class=HTMLResponse)
    def push_config(request: Request, box_id: str, config_json: Annotated[str, Form()] = "",
                    version: Annotated[str, Form()] = "", csrf_token: Annotated[str, Form()] = ""):
        user = _operator(request, f"config:{box_id}")
        _csrf(request, csrf_token)
        box = _box_or_404(box_id)
        from appliance.config import ConfigError
        from appliance.fleet.configcheck import validate_offline

        def again(error: str, status: int = 400):
            return render(request, "config.html", user, status_code=status, box=box, text=config_json, version=version,
                          errors=error, pushes=db.config_pushes_for_box(box_id), can_sign=signing_key is not None,
                          last_event=db.last_live_event_id())

        if len(config_json) > 200_000:
            return again("config too large")
        version = version.strip() or utcnow().strftime("cfg-%Y%m%dT%H%M%S")
        if not VERSION_RE.match(version):
            return again("version: use letters, digits, '.', '_', '+' and '-' (max 64)")
        try:
            doc = json.loads(config_json)
            # Never the plain validator here: it would read files the config names on *this* host.
            validate_offline(doc)
        except json.JSONDecodeError as e:
            return again(f"not valid JSON: {e}")
        except RecursionError:
            return again("not valid JSON: nested too deeply")
        except ConfigError as e:
            return again(f"refused by the box's schema: {e}")
        if signing_key is None:
            return again("this console has no signing key (serve --signing-key); boxes accept only signed configs", 409)
        if channel is None:
            return again("not connected to the broker; nothing was sent", 503)
        payload = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
        # bound to this box, with a short life: it is sent now, and a box refuses it anywhere else or later
        manifest = sign_bytes(payload, signing_key, kind="config", name=f"{box_id}.json", version=version,
                              boxes=[box_id], lifetime_s=CONFIG_PUSH_LIFETIME_S)
        push_id = db.add_config_push(box_id, version, doc, user.username)
        db.audit(user.username, "config.pushed", box_id, {"version": version, "sha256": manifest["sha256"],
                                                           "push_id": push_id})
        notifier.notify()

        def send() -> None:
            from appliance.updates import encode_update_args

            try:
                reply = channel.request(box_id, "update", encode_update_args("config", payload, manifest),
                                        timeout_s=settings.command_timeout_s)
            except TimeoutError:
                reply = None
            except Exception as e:  # noqa: BLE001 - recorded on the push, not raised into a worker
                reply = {"ok": False, "error": {"code": "send_failed", "message": f"{type(e).__name__}: {e}"}}
            bridge.on_config_reply(push_id, reply)
            state = (db.get_config_push(push_id) or {}).get("state", "?")
            db.audit("console", f"config.{state.replace(' ', '_')}", box_id, {"version": version, "push_id": push_id})

        workers.submit(send)
        return RedirectResponse(f"/boxes/{box_id}/config", status_code=303)

    @app.get("/rollouts", response_class=HTMLResponse)
    def rollouts_page(request: Request):
        user = _user(request)
        boxes = db.list_boxes()
        return render(request, "rollouts.html", user, rollouts=db.list_rollouts(), boxes=boxes, error=None,
                      canary_default=",".join(b["box_id"] for b in boxes if b["group_name"] == "canary"),
                      can_sign=signing_key is not None, last_event=db.last_live_event_id())

    @app.post("/rollouts", response_class=HTMLResponse)
    async def start_rollout(request: Request):
        # Who is asking is settled before a byte of the (up to max_request_bytes) body is read or spooled:
        # an anonymous or viewer upload, or one a browser says comes from another site's page, is refused
        # unread. (Sec-Fetch-Site rather than Origin: behind a TLS proxy the app sees neither the scheme nor,
        # often, the host the browser used.) The CSRF token, in the body, is checked once it is read.
        user = await anyio.to_thread.run_sync(_operator, request, "rollout")
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            await anyio.to_thread.run_sync(db.audit, user.username, "csrf_rejected", "/rollouts")
            raise HTTPException(status_code=403, detail="cross-site request refused")
        try:
            form = await request.form(max_files=2, max_fields=8)
        except HTTPException:
            raise
        except Exception as e:  # noqa: BLE001 - a malformed multipart body
            raise HTTPException(status_code=400, detail="malformed form") from e
        try:
            fields = {k: form.get(k) for k in ("kind", "version", "canary", "rest", "csrf_token")}
            texts = {k: v if isinstance(v, str) else "" for k, v in fields.items()}
            files = {k: form.get(k) for k in ("payload", "manifest")}
            uploads = {k: v if hasattr(v, "file") and hasattr(v, "filename") else None for k, v in files.items()}
            return await anyio.to_thread.run_sync(lambda: _start_rollout(
                request, user, texts["kind"], texts["version"], texts["canary"], texts["rest"],
                texts["csrf_token"], uploads["payload"], uploads["manifest"]))
        finally:
            await form.close()

    def _start_rollout(request: Request, user: auth.User, kind: str, version: str, canary: str, rest: str,
                       csrf_token: str, payload: UploadFile | None, manifest: UploadFile | None):
        _csrf(request, csrf_token)

        def again(error: str, status: int = 400):
            boxes = db.list_boxes()
            return render(request, "rollouts.html", user, status_code=status, rollouts=db.list_rollouts(),
                          boxes=boxes, error=error, canary_default=canary, can_sign=signing_key is not None,
                          last_event=db.last_live_event_id())

        if kind not in ("model", "config"):
            return again("kind must be model or config")
        if len(canary) > 20_000 or len(rest) > 200_000:
            return again("box lists too long")
        canary_ids = [b.strip() for b in canary.replace("\n", ",").split(",") if b.strip()]
        rest_ids = [b.strip() for b in rest.replace("\n", ",").split(",") if b.strip()]
        if rest.strip() == "*":
            # "*": every other box that is online now; an offline box would only time out and stop it.
            rest_ids = [b["box_id"] for b in db.list_boxes() if b["box_id"] not in canary_ids and b["online"]]
        bad = [b for b in canary_ids + rest_ids if not BOX_ID_RE.match(b) or db.get_box(b) is None]
        if bad:
            return again(f"unknown box id(s): {', '.join(bad[:10])}")
        if not canary_ids:
            return again("choose at least one canary box")
        if payload is None or not payload.filename:
            return again("choose the model or config file")
        data = payload.file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES or not data:
            return again("file empty or too large")
        if manifest is not None and manifest.filename:
            try:
                man = parse_manifest(manifest.file.read(MAX_MANIFEST_CHARS))
            except SignatureError as e:
                return again(f"signature manifest: {e}")
        elif signing_key is not None:
            version = version.strip()
            if not VERSION_RE.match(version):
                return again("version: use letters, digits, '.', '_', '+' and '-' (max 64)")
            # bound to exactly the boxes of this rollout
            man = sign_bytes(data, signing_key, kind=kind, name=Path(payload.filename).name[:128], version=version,
                             boxes=canary_ids + rest_ids)
        else:
            return again("upload the .sig.json manifest from `bedtime-fleet sign` (this console holds no key)")
        if channel is None:
            return again("not connected to the broker; nothing was sent", 503)
        try:
            rid = create_rollout(db, kind=kind, payload=data, manifest=man, canary=canary_ids, rest=rest_ids,
                                 created_by=user.username, public_key_pem=public_pem)
        except (SignatureError, ValueError) as e:
            return again(f"refused: {e}")
        runner = RolloutRunner(_NotifyingDB(db, notifier), channel, timeout_s=settings.rollout_health_timeout_s,
                               batch_size=settings.rollout_batch_size, actor=f"rollout:{user.username}")
        workers.submit(_run_logged, runner, rid)
        notifier.notify()
        return RedirectResponse(f"/rollouts/{rid}", status_code=303)

    @app.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
    def rollout_page(request: Request, rollout_id: int):
        user = _user(request)
        ro = db.get_rollout(rollout_id)
        if ro is None:
            raise HTTPException(status_code=404, detail="no such rollout")
        return render(request, "rollout.html", user, ro=ro, last_event=db.last_live_event_id())

    @app.get("/fragments/rollouts/{rollout_id}", response_class=HTMLResponse)
    def rollout_fragment(request: Request, rollout_id: int):
        user = _user(request)
        ro = db.get_rollout(rollout_id)
        if ro is None:
            raise HTTPException(status_code=404, detail="no such rollout")
        return render(request, "_rollout.html", user, ro=ro)

    @app.get("/audit", response_class=HTMLResponse)
    def audit_page(request: Request):
        user = _user(request)
        return render(request, "audit.html", user, entries=db.audit_entries(limit=300))

    # ---- live events -----------------------------------------------------------------------------
    @app.get("/events")
    async def events(request: Request, after: str = "0"):
        await anyio.to_thread.run_sync(_user, request)
        last_header = request.headers.get("last-event-id")
        raw = after if last_header is None else last_header
        # str.isdigit() accepts "²" and int() then fails (a 500); and a number past 64 bits breaks the query.
        if not EVENT_ID_RE.fullmatch(raw):
            raise HTTPException(status_code=400, detail="Last-Event-ID / after: a non-negative event number")
        last = int(raw)
        poll_s = float(settings.extra.get("sse_poll_s", 1.0))

        async def stream():
            nonlocal last
            yield "retry: 2000\n\n"
            idle = 0.0
            checked = time.monotonic()
            while not app.state.closing:
                if time.monotonic() - checked > 30.0:
                    # A stream outlives the request that opened it: re-check the session, so logging out
                    # (or the session expiring) also ends the live feed.
                    checked = time.monotonic()
                    if await anyio.to_thread.run_sync(lambda: auth.session_user(request.session, db, policy=policy)) is None:
                        yield "event: logout\ndata: {}\n\n"
                        break
                wake = notifier.current()
                rows = await anyio.to_thread.run_sync(db.live_events_after, last)
                for row in rows:
                    last = row["id"]
                    data: dict[str, Any] = {"kind": row["kind"], "box_id": row["box_id"], "ref_id": row["ref_id"]}
                    if row["kind"] == "alert" and row["ref_id"]:
                        a = await anyio.to_thread.run_sync(db.get_alert, row["ref_id"])
                        if a:
                            data.update(title=a["title"], message=a["message"], severity=a["severity"],
                                        received=_iso(a["received_at"]), sent=(a["payload"] or {}).get("time_utc"))
                    yield f"id: {row['id']}\nevent: {row['kind']}\ndata: {json.dumps(data)}\n\n"
                if rows:
                    idle = 0.0
                    continue
                if await request.is_disconnected():
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=poll_s)
                idle += poll_s
                if idle >= 15.0:  # keep proxies from closing an idle stream
                    idle = 0.0
                    yield ": keep-alive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/healthz")
    def healthz():
        # Liveness for a load balancer or systemd: 503 when the MQTT ingest's thread is dead, because then
        # no alert reaches this console however well the web side answers.
        body: dict[str, Any] = {"ok": True}
        if ingest is not None and hasattr(ingest, "health"):
            body["ingest"] = ingest.health()
            if not body["ingest"]["thread_alive"]:
                body["ok"] = False
                return JSONResponse(body, status_code=503)
        return body

    return app


def _run_logged(runner: RolloutRunner, rollout_id: int) -> None:
    try:
        runner.run(rollout_id)
    except Exception:  # noqa: BLE001 - a crashed rollout must be visible, not silently lost
        logger.exception("rollout %d crashed", rollout_id)
        runner.db.set_rollout_state(rollout_id, "stopped", "internal error; see the console log", finished=True)
        runner.db.audit("console", "rollout.crashed", f"rollout:{rollout_id}")
