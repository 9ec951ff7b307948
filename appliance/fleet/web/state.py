"""The running parts of one console instance, and their life: :class:`Console`.

:func:`~appliance.fleet.web.app.create_app` builds one :class:`Console` and keeps it as
``app.state.console``; the route dependencies (:mod:`appliance.fleet.web.deps`) hand it to the routes.
Its :meth:`Console.lifespan` starts and stops the MQTT ingest and the housekeeping thread.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import ipaddress
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI

from appliance.fleet import auth
from appliance.fleet.db import FleetDB, utcnow
from appliance.fleet.rollout import CommandChannel
from appliance.fleet.web.notify import Notifier, NotifyingBridge
from appliance.fleet.web.settings import ConsoleSettings, read_public_key
from appliance.protocol.signing import load_private_key

if TYPE_CHECKING:
    from appliance.fleet.ingest import LinkState

logger = logging.getLogger(__name__)

#: Every this many seconds housekeeping drops old change-feed rows and login attempts.
PRUNE_EVERY_S = 600.0
#: At start the console waits this long for its broker subscriptions (so retained box states are in before the
#: first page); past it, it serves from its database, says so on every page and keeps trying in the background.
FIRST_CONNECT_WAIT_S = 10.0


@dataclass
class Console:
    """What the routes of one console instance share.

    Attributes
    ----------
    settings : ConsoleSettings
    db : FleetDB
    policy : auth.LoginPolicy
        Login rate limit and session lifetime, from ``settings``.
    notifier : Notifier
        Wakes this instance's event streams.
    bridge : NotifyingBridge
        The MQTT ingest's callbacks into ``db``.
    ingest : object or None
        The :class:`~appliance.fleet.ingest.FleetIngest` (or a test's stand-in), started in :meth:`lifespan`.
    channel : CommandChannel or None
        How commands reach boxes; None when there is no broker (pushes and rollouts answer 503).
    workers : ThreadPoolExecutor
        Runs config pushes and rollouts after their request has been answered.
    signing_key : object or None
        The clinic's Ed25519 private key; None disables config pushes and server-side signing.
    public_pem : bytes or None
        The matching public key, PEM.
    trusted_proxies : list of ip_network
        Proxies whose ``X-Forwarded-For`` is believed.
    """

    settings: ConsoleSettings
    db: FleetDB
    policy: auth.LoginPolicy
    notifier: Notifier
    bridge: NotifyingBridge
    ingest: Any
    channel: CommandChannel | None
    workers: concurrent.futures.ThreadPoolExecutor
    signing_key: Any
    public_pem: bytes | None
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
    _housekeeping_stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def build(cls, settings: ConsoleSettings, *, db: FleetDB | None = None, ingest: Any = None,
              channel: CommandChannel | None = None) -> Console:
        """The console's parts from ``settings`` (see :func:`~appliance.fleet.web.app.create_app`)."""
        # the key files first: a bad one is refused before the database or the broker is touched
        signing_key = load_private_key(settings.signing_key_file) if settings.signing_key_file else None
        public_pem = read_public_key(settings.public_key_file) if settings.public_key_file else None
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
        return cls(
            settings=settings, db=db, policy=policy, notifier=notifier, bridge=bridge, ingest=ingest, channel=channel,
            workers=concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="console-worker"),
            signing_key=signing_key, public_pem=public_pem,
            trusted_proxies=[ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies])

    def housekeeping(self) -> None:
        """Flush coalesced telemetry every second; every 10 min drop change-feed rows older than a day and
        login attempts older than ``settings.login_attempts_keep_s``."""
        last_prune = float("-inf")
        while not self._housekeeping_stop.wait(self.bridge.telemetry_flush_s):
            try:
                self.bridge.flush()
                if time.monotonic() - last_prune > PRUNE_EVERY_S:
                    last_prune = time.monotonic()
                    self.db.prune_live_events(utcnow() - dt.timedelta(days=1))
                    keep_s = max(self.settings.login_attempts_keep_s, self.settings.login_window_s)
                    self.db.prune_login_attempts(utcnow() - dt.timedelta(seconds=keep_s))
            except Exception:  # noqa: BLE001 - a database hiccup must not end housekeeping
                logger.exception("console housekeeping failed")

    def _start_ingest(self) -> None:
        """Start the MQTT ingest; a broker that is down (or refuses) does not stop the console from serving.

        A clinic's console must come up after a power cut even when the broker comes up later: paho keeps
        trying in the background, and every page says the console is not connected until it is.
        """
        ingest = self.ingest
        if not hasattr(ingest, "wait_subscribed"):  # a test's stand-in
            ingest.start()
            return
        ingest.start(wait_s=None)
        if not ingest.wait_subscribed(FIRST_CONNECT_WAIT_S):
            link = ingest.link_state()
            logger.warning("not connected to the MQTT broker at %s (%s): serving from the database and trying again "
                           "in the background", link.where, link.problem or "no answer yet")

    def broker_link(self) -> LinkState | None:
        """The ingest's :class:`~appliance.fleet.ingest.LinkState`, or None without a broker (``--no-mqtt``)."""
        link_state = getattr(self.ingest, "link_state", None)
        return link_state() if link_state is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """The app's lifespan: ingest and housekeeping run while the app serves.

        On the way out ``app.state.closing`` ends every event stream, then the ingest stops, the last
        telemetry is flushed and queued pushes and rollouts are cancelled.
        """
        self.notifier.bind(asyncio.get_running_loop())
        app.state.closing = False
        self._housekeeping_stop.clear()
        keeper = threading.Thread(target=self.housekeeping, name="console-housekeeping", daemon=True)
        keeper.start()
        if self.ingest is not None and hasattr(self.ingest, "start"):
            await anyio.to_thread.run_sync(self._start_ingest)
        try:
            yield
        finally:
            app.state.closing = True
            self.notifier.notify()
            if self.ingest is not None and hasattr(self.ingest, "stop"):
                await anyio.to_thread.run_sync(self.ingest.stop)
            self._housekeeping_stop.set()
            await anyio.to_thread.run_sync(keeper.join, 5)
            self.bridge.flush()
            self.workers.shutdown(wait=False, cancel_futures=True)
