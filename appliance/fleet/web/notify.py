"""Waking this console instance's open event streams when something changed.

The streams read the database's change feed (:mod:`appliance.fleet.web.routes.live`) and also poll it, so a
change ingested by another console instance shows up within the poll interval; :class:`Notifier` only makes
a change made by *this* process show up at once. :class:`NotifyingBridge` and :class:`NotifyingDB` are the
two writers that notify: the MQTT ingest's bridge and the rollout runner's database.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from appliance.fleet.db import FleetDB
from appliance.fleet.web.bridge import IngestBridge


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


class NotifyingDB:
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
