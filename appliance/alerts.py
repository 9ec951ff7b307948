"""Sending the parent's alerts: what :mod:`appliance.episodes` decides, sent, recorded and audited.

An alert is queued on the link (QoS 1, through the persistent outbox), recorded as an ``alert`` event (events.jsonl,
EDF+), and its audit record appended, in that order: a failing audit write must not hold the alert back. A link that
raises (a closed or broken outbox) neither loses the alert nor stops the night: it is kept and queued again at the
next epoch (:meth:`AlertSender.retry_unsent`), and each failure is logged and counted.
"""
from __future__ import annotations

import collections
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from appliance.episodes import LoopAlert

if TYPE_CHECKING:
    from appliance.audit import AuditLog
    from appliance.mqtt import BoxLink

logger = logging.getLogger(__name__)


class AlertSender:
    """Sends, records and audits the night's alerts.

    Parameters
    ----------
    record_event : callable
        ``record_event(kind, time_s, **fields)``: the night's event journal
        (:meth:`appliance.night_journal.NightJournal.event`).
    clock : callable
        Signal time now, s since the night's start.
    errors : collections.Counter
        Failures on paths that must go on regardless, counted by name (``alert_publish``, ``audit_write``).

    Attributes
    ----------
    link : BoxLink or None
        Where alerts go (set once the link is built); None sends nothing (recorded only).
    audit : AuditLog or None
        The hash-chained audit log alert records are appended to (set once it is open).
    sent : list of dict
        Every alert of the night with ``time_s`` (signal, s), ``wall_s`` (``time.monotonic()``), ``title``,
        ``message``, ``kind``, ``night_time_s`` and the alert's fields, sent or still waiting.
    """

    def __init__(self, *, record_event: Callable[..., None], clock: Callable[[], float],
                 errors: collections.Counter) -> None:
        self._record_event = record_event
        self._clock = clock
        self.errors = errors
        self.link: BoxLink | None = None
        self.audit: AuditLog | None = None
        self.sent: list[dict] = []
        self._unsent: list[dict] = []  # alerts the link could not take yet (it raised), oldest first

    @property
    def waiting(self) -> int:
        """Alerts the link refused so far and that are queued again at the next epoch."""
        return len(self._unsent)

    def send(self, alert: LoopAlert) -> None:
        """Tell the parent: queue ``alert`` on the link and record it; then append its audit record, if any."""
        t = self._clock()
        kind, title, message = alert.kind, alert.title, alert.message
        fields = {"kind": kind, "night_time_s": round(t, 1), **alert.fields}
        self.sent.append({"time_s": t, "wall_s": time.monotonic(), "title": title, "message": message, **fields})
        if self.link is not None:
            self._unsent.append({"title": title, "message": message, "severity": alert.severity, **fields})
            self.retry_unsent()
        self._record_event("alert", t, title=title,
                           **{k: v for k, v in fields.items() if k not in ("kind", "night_time_s")}, alert_kind=kind)
        if alert.audit is not None:
            self.audit_append("alert", **alert.audit)

    def retry_unsent(self) -> None:
        """Queue the alerts the link refused so far, oldest first; stop at the first that fails again."""
        while self._unsent and self.link is not None:
            alert = self._unsent[0]
            try:
                self.link.publish_alert(**alert)
            except Exception as e:  # noqa: BLE001 - whatever the link raises, the alert is kept
                self.errors["alert_publish"] += 1
                logger.error("could not queue the alert %r (%d waiting; retried next epoch): %s",
                             alert.get("kind"), len(self._unsent), e)
                return
            self._unsent.pop(0)

    def audit_append(self, event: str, **data: Any) -> None:
        """Add a record to the hash-chained audit log the breather writes (alerts are decisions too)."""
        if self.audit is not None:
            try:
                self.audit.append(event, **data)
            except Exception as e:  # the alert must still go out
                self.errors["audit_write"] += 1
                logger.error("could not audit %s: %s", event, e)
