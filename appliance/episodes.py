"""Loop episodes and the parent's alerts: when a nightmare loop starts and ends, and when the parent is told.

:class:`LoopEpisodes` turns the loop detector's P(loop), one value per 30-s epoch, into episodes (one
``loop_detected`` and one ``loop_ended`` event per loop, however borderline P(loop) is) and decides the parent's
alerts:

* ``loop_not_resolved``: the breather ended a session with the loop still under way (its escalation), every time;
* ``loop_detected_breather_off``: a loop while the clinic has switched the breather off;
* ``loop_persists_after_breather``: a session ended without escalating (whatever ended it: the sleeper woke,
  P(loop) dipped at its end, a doubtful stage or a bad signal stopped it, the bedside button, a fault) and the
  same loop went on for :data:`LOOP_PERSIST_EPOCHS` more loop epochs.

* ``loop_breather_unavailable``: a loop the breather cannot act on (a fault stopped it, it gave tonight's
  sessions, or it is inside its gap after an earlier session) went on for :data:`LOOP_PERSIST_EPOCHS` loop epochs
  with no session of its own.

The last three come at most once per loop, and not after an escalation in the same loop.

The texts the parent reads are written in one place, :func:`alert_text`. This module decides and words; it sends
nothing: the daemon records, publishes and audits what it returns. It imports nothing of the box. Its default
threshold, :data:`appliance.protocol.safety.P_LOOP_THRESHOLD`, is the safety envelope's (the default of
``breather.p_loop_threshold``, which the clinic may push), as Home Assistant's display's.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from appliance.protocol.safety import P_LOOP_THRESHOLD
from appliance.protocol.schema import ALERT_MESSAGE_MAX_CHARS

LOOP_END_EPOCHS = 10
"""A detected loop counts as over after this many epochs (5 min) with P(loop) below the threshold."""

LOOP_PERSIST_EPOCHS = 4
"""Loop epochs (2 min) after a breather session that ended without an alert (the sleeper woke, or P(loop) dipped
at its end) after which the parent is alerted that the loop went on."""

ALERT_TITLE = "Nightmare loop: please check"
"""The title of every loop alert (the phone's notification title)."""

ALERT_SEVERITY = "warning"
"""The severity every loop alert carries on MQTT."""

_MESSAGES = {
    "loop_detected_breather_off": "{box}: a nightmare loop is under way ({hours:.1f} h into the night). "
                                  "The breather is switched off on this box.",
    "loop_persists_after_breather": "{box}: a nightmare loop went on after a gentle breather "
                                    "({hours:.1f} h into the night). Sound and light are off.",
    "loop_not_resolved": "{box}: a nightmare loop did not settle after a gentle breather "
                         "({hours:.1f} h into the night). Sound and light are off now.",
    "loop_breather_unavailable": "{box}: a nightmare loop is under way ({hours:.1f} h into the night). "
                                 "The breather cannot help now: {why}.",
}

_UNAVAILABLE_WHY = {
    "refractory": "it is resting after an earlier breather",
    "night_limit_reached": "it has given all of tonight's breathers",
    "fault": "it stopped on a fault",
}
"""What the parent reads for each :attr:`appliance.breather.Breather.unavailable` reason."""

_SESSION_STATES = ("cue", "light")
"""Breather states in which a session is running (``appliance.breather.BreatherState`` values)."""


def alert_text(kind: str, *, box_name: str, night_time_s: float, why: str = "") -> tuple[str, str]:
    """The title and message of a loop alert.

    Parameters
    ----------
    kind : str
        One of ``loop_detected_breather_off``, ``loop_persists_after_breather``, ``loop_not_resolved``.
    box_name : str
        The box's name as the family knows it (``[box] name``).
    night_time_s : float
        Signal time since the night's start, s (shown in hours).
    why : str
        For ``loop_breather_unavailable``: the breather's reason (``refractory``, ``night_limit_reached``,
        ``fault``).

    Returns
    -------
    (title, message) : tuple of str

    Raises
    ------
    KeyError
        For an unknown ``kind``.
    """
    template = _MESSAGES[kind]
    why_text = _UNAVAILABLE_WHY.get(why, "it is unavailable")
    message = template.format(box=box_name, hours=night_time_s / 3600, why=why_text)
    if len(message) > ALERT_MESSAGE_MAX_CHARS:
        # A box name too long for a phone's notification is shortened: the alert must always go out (the
        # schema refuses a longer message, and a refused alert would wait, unsent, all night).
        room = max(1, len(box_name) - (len(message) - ALERT_MESSAGE_MAX_CHARS) - 1)
        message = template.format(box=box_name[:room] + "\u2026", hours=night_time_s / 3600, why=why_text)
    return ALERT_TITLE, message


@dataclass(frozen=True)
class LoopAlert:
    """An alert to send: its kind, texts, severity and payload fields; ``audit`` is the audit record (``alert``
    event) to append after it is sent, or None.

    ``fields`` keeps its order (the EDF+ annotation and the event are written in it)."""

    kind: str
    title: str
    message: str
    severity: str
    fields: dict[str, Any]
    audit: dict[str, Any] | None = field(default=None)


class LoopEpisodes:
    """One night's loop episodes and the alert policy.

    Parameters
    ----------
    box_name : str
        The box's name, for the alert messages.
    threshold : float
        P(loop) at or above which an epoch counts as loop (default :data:`P_LOOP_THRESHOLD`).
    """

    def __init__(self, *, box_name: str, threshold: float = P_LOOP_THRESHOLD) -> None:
        self.box_name = box_name
        self.threshold = float(threshold)
        self.in_loop = False
        self.alerted_this_loop = False
        self.loop_start_index = 0
        self._below_thr = 0
        self._persist_epochs = 0
        self._unattended_epochs = 0

    def on_epoch(self, *, index: int, p_loop: float, signal_ok: bool) -> tuple[str, dict[str, Any]] | None:
        """Follow the episode with one epoch; returns the event to record (``loop_detected`` or ``loop_ended``
        with its fields), or None.

        Parameters
        ----------
        index : int
            The epoch's index in the night.
        p_loop : float
            The loop detector's P(loop) for it, 0..1.
        signal_ok : bool
            The epoch's signal-quality verdict: a bad epoch never starts a loop.
        """
        # One loop episode per detection: it ends only after P(loop) has stayed below the threshold for
        # LOOP_END_EPOCHS epochs, so a borderline P(loop) does not report one loop as several.
        if p_loop >= self.threshold and signal_ok:
            self._below_thr = 0
            if not self.in_loop:
                self.in_loop = True
                self.alerted_this_loop = False
                self.loop_start_index = index
                self._persist_epochs = 0
                self._unattended_epochs = 0
                return "loop_detected", {"epoch_index": index, "p_loop": round(p_loop, 4)}
        elif self.in_loop:
            self._below_thr += 1
            if self._below_thr >= LOOP_END_EPOCHS:
                self.in_loop = False
                return "loop_ended", {"epoch_index": index, "p_loop": round(p_loop, 4)}
        return None

    def breather_off(self, *, index: int, p_loop: float, night_time_s: float) -> LoopAlert | None:
        """With the breather switched off by the clinic, the parent hears about a loop directly (once per loop).

        ``night_time_s`` is the epoch's end, s since the night's start."""
        if not self.in_loop or self.alerted_this_loop:
            return None
        self.alerted_this_loop = True
        return self._alert("loop_detected_breather_off", night_time_s, epoch_index=index, p_loop=round(p_loop, 4))

    def after_breather(self, *, index: int, p_loop: float, night_time_s: float,
                       session_reports: Sequence[dict] | None, in_session: bool,
                       unavailable: str | None = None) -> LoopAlert | None:
        """The alert when the loop outlasts a breather session that did not escalate, else None.

        The breather alerts when its session ends with the loop still under way; but a session that ends any
        other way (the sleeper woke, P(loop) dipped at its last epoch, a doubtful stage or a bad signal aborted
        it, the button, a fault) is followed by the refractory gap (40 min by default) in which it cannot act
        again. If the same loop goes on after such a session for
        :data:`LOOP_PERSIST_EPOCHS` more loop epochs, the breather did not help: tell the parent (once per loop).

        Parameters
        ----------
        index, p_loop
            The epoch just seen (after the breather saw it).
        night_time_s : float
            Signal time now, s since the night's start.
        session_reports : sequence of dict or None
            The breather's session reports so far (``outcome``, ``start_epoch``, ``end_epoch``, ``session``).
        in_session : bool
            A breather session is running.
        unavailable : str or None
            Why the breather could start no session now (:attr:`appliance.breather.Breather.unavailable`), or
            None. A loop with no session of its own that goes on for :data:`LOOP_PERSIST_EPOCHS` loop epochs
            while the breather cannot act is the parent's to know about (``loop_breather_unavailable``).
        """
        if not self.in_loop or self.alerted_this_loop or in_session:
            return None
        reports = session_reports or []
        own_session = any((r.get("start_epoch") is not None and r["start_epoch"] >= self.loop_start_index)
                          for r in reports)
        if not own_session:
            if unavailable is None:
                self._unattended_epochs = 0  # the breather may still act on this loop: it goes first
                return None
            if p_loop >= self.threshold:
                self._unattended_epochs += 1
            if self._unattended_epochs < LOOP_PERSIST_EPOCHS:
                return None
            self.alerted_this_loop = True
            alert = self._alert("loop_breather_unavailable", night_time_s, why=unavailable, p_loop=round(p_loop, 4),
                                epoch_index=index, breather=unavailable)
            return replace(alert, audit={"reason": f"loop_breather_{unavailable}", "epoch": index,
                                         "p_loop": round(p_loop, 4)})
        if not reports:
            return None
        last = reports[-1]
        # Every way a session can end without alerting counts: after any of them the breather sits out its
        # refractory gap, so a loop that goes on is the parent's to know about. (A session stopped for a doubtful
        # stage once kept a whole loop from the parent: the box neither acted nor told anyone for an hour.)
        start = last.get("start_epoch")
        if last.get("outcome") == "escalated" or start is None or start < self.loop_start_index:
            return None
        if p_loop >= self.threshold and index > (last.get("end_epoch") or index):
            self._persist_epochs += 1
        if self._persist_epochs < LOOP_PERSIST_EPOCHS:
            return None
        self.alerted_this_loop = True
        alert = self._alert("loop_persists_after_breather", night_time_s, p_loop=round(p_loop, 4),
                            session=last.get("session"), epoch_index=index)
        # The alert first, then its audit record: a failing audit write (a full disk) must not hold it back.
        return replace(alert, audit={"reason": "loop_persists_after_session", "session": last.get("session"),
                                     "epoch": index, "p_loop": round(p_loop, 4)})

    def escalated(self, payload: dict | None, *, night_time_s: float) -> LoopAlert:
        """The breather ended a session with the loop still going (its ``on_escalate`` payload: ``p_loop``,
        ``session``, ``epoch``): the alert for the parent; no other alert follows for this loop."""
        payload = dict(payload or {})
        self.alerted_this_loop = True
        return self._alert("loop_not_resolved", night_time_s, p_loop=float(payload.get("p_loop", 0.0)),
                           session=payload.get("session"), epoch_index=payload.get("epoch"))

    def _alert(self, kind: str, night_time_s: float, *, why: str = "", **fields: Any) -> LoopAlert:
        title, message = alert_text(kind, box_name=self.box_name, night_time_s=night_time_s, why=why)
        return LoopAlert(kind=kind, title=title, message=message, severity=ALERT_SEVERITY, fields=fields)
