"""The clinic console: a FastAPI app with server-rendered Jinja2 pages and a Server-Sent Events feed.

Pages (all behind a login, except ``/login``), each in its router under :mod:`appliance.fleet.web.routes`:

=========================  ==========================================================================
``/``                      the fleet: online/offline, last seen, versions, signal quality, last night,
                           and the live alert feed (``pages``)
``/alerts``                the alert feed on its own (``pages``)
``/boxes/<id>``            one box: last nights' hypnograms and reports, telemetry, alerts, config pushes
                           (``boxes``)
``/boxes/<id>/config``     config editor (validated with the box's own ``validate_config``; operator)
                           (``config_push``)
``/rollouts``              signed model/config rollouts: start one (operator), follow them (``rollouts``)
``/audit``                 the console's audit log (``pages``)
``/events``                SSE stream: ``alert``, ``box``, ``config``, ``rollout``, ``report`` events (``live``)
=========================  ==========================================================================

Security: Argon2id passwords, signed session cookies with server-side expiry and revocation, a CSRF
token in every form, a login rate limit, roles (:mod:`appliance.fleet.auth`), each checked by a route
dependency (:mod:`appliance.fleet.web.deps`); Jinja2 autoescaping for every value; and a strict
Content-Security-Policy (no inline script), so even a value that slipped past escaping could not run
(:mod:`appliance.fleet.web.middleware`).

Pages re-render fragments (``/fragments/...``) when the event stream says something changed; the alert
feed builds its rows from the event's JSON with ``textContent``. The stream reads the database's change
feed, so it works the same when several console instances share one database.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from appliance.fleet.db import FleetDB
from appliance.fleet.rollout import CommandChannel
from appliance.fleet.web import errors, middleware
from appliance.fleet.web.deps import BOX_ID_RE  # noqa: F401 - the one box-id rule, as the console uses it
from appliance.fleet.web.routes import ROUTERS
from appliance.fleet.web.routes.rollouts import UPLOAD_PATH
from appliance.fleet.web.settings import ConsoleSettings
from appliance.fleet.web.state import Console
from appliance.fleet.web.templating import HERE


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
    console = Console.build(settings, db=db, ingest=ingest, channel=channel)
    app = FastAPI(title="bedtime clinic console", lifespan=console.lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.console = console
    app.state.db, app.state.settings, app.state.bridge = console.db, settings, console.bridge
    app.state.ingest, app.state.channel = console.ingest, console.channel
    app.state.notifier, app.state.workers = console.notifier, console.workers
    app.state.closing = False
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    middleware.install(app, settings, upload_paths=(UPLOAD_PATH,))
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    return app
