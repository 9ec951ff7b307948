"""From the MQTT ingest to the console's database: one method per channel a box publishes.

:class:`IngestBridge` is what the console hands to :class:`appliance.fleet.ingest.FleetIngest` as its
callbacks. Each call writes the message's meaning into :class:`~appliance.fleet.db.FleetDB` (box row,
alert, night report, config acknowledgement); the live pages then pick the change up from the database's
change feed, so it does not matter which console instance of a shared-subscription group ingested it.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

from appliance.fleet.db import FleetDB

logger = logging.getLogger(__name__)


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _short(value: Any, n: int = 64) -> str:
    """``value`` as at most ``n`` characters of storable text (any database, any driver)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        value = str(value)
    # Lone surrogates (valid in JSON, not in UTF-8) and NUL (refused by PostgreSQL text) would make the
    # write fail and the message be lost; replace them.
    return value[:n].encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


class IngestBridge:
    """Writes what boxes publish into the database. Thread-safe (called from the MQTT thread)."""

    def __init__(self, db: FleetDB, *, telemetry_flush_s: float = 1.0) -> None:
        self.db = db
        # Telemetry is the bulk of a fleet's traffic and only the latest value per box is shown, so it is
        # coalesced in memory and written in one transaction per ``telemetry_flush_s``, instead of one
        # write per message queueing alerts behind it.
        self.telemetry_flush_s = telemetry_flush_s
        self._telemetry: dict[str, dict] = {}
        self._telemetry_lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one writer at a time, so an older batch never lands last
        self._last_flush = time.monotonic()

    def flush(self) -> int:
        """Write the coalesced telemetry now; return how many boxes were written."""
        with self._flush_lock:
            return self._flush()

    def _flush(self) -> int:
        with self._telemetry_lock:
            rows, self._telemetry = list(self._telemetry.values()), {}
            self._last_flush = time.monotonic()
        for box_id in self.db.update_telemetry_bulk(rows):  # telemetry from a box never seen before
            row = next(r for r in rows if r["box_id"] == box_id)
            self.db.upsert_box(box_id, last_seen=row["last_seen"], telemetry=row["telemetry"],
                               **({"signal_quality": row["signal_quality"]} if row["signal_quality"] is not None else {}))
        return len(rows)

    def on_status(self, box_id: str, payload: dict) -> None:
        models = payload.get("model_versions") or {}
        model = ", ".join(f"{k} {v}" for k, v in sorted(models.items())) if isinstance(models, dict) else ""
        self.db.set_box_online(
            box_id, bool(payload.get("online", payload.get("state") != "offline")),
            last_seen=_parse_time(payload.get("time_utc")) or dt.datetime.now(dt.timezone.utc),
            firmware=_short(payload.get("firmware_version")), model_version=_short(model),
            # No group from here: rollout groups (canary) are set by operators only, never by a box's own word.
            config_version=_short(payload.get("config_version")))

    def on_telemetry(self, box_id: str, payload: dict) -> None:
        q = payload.get("signal_quality_percent")
        row = {"box_id": box_id,
               "last_seen": _parse_time(payload.get("time_utc")) or dt.datetime.now(dt.timezone.utc),
               "telemetry": {k: v for k, v in payload.items() if k not in ("schema", "box_id")},
               "signal_quality": float(q) if isinstance(q, (int, float)) and not isinstance(q, bool) else None}
        with self._telemetry_lock:
            self._telemetry[box_id] = row
            due = time.monotonic() - self._last_flush >= self.telemetry_flush_s
        if due:
            self.flush()

    def on_alert(self, box_id: str, payload: dict) -> int:
        return self.db.add_alert(box_id, severity=_short(payload.get("severity"), 16) or "info",
                                 title=_short(payload.get("title"), 200), message=_short(payload.get("message", ""), 2000),
                                 payload=payload)

    def on_report(self, box_id: str, payload: dict) -> None:
        report = payload.get("report") if isinstance(payload.get("report"), dict) else payload
        night = _short(report.get("night_start") or payload.get("time_utc"), 10) or "unknown"
        self.db.add_report(box_id, night, report)
        interventions = report.get("interventions")
        interventions = interventions if isinstance(interventions, dict) else {}
        loops = interventions.get("loops_detected")
        sessions = interventions.get("breather_sessions")
        loops_ok = isinstance(loops, int) and not isinstance(loops, bool) and 0 <= loops < 2 ** 31
        self.db.upsert_box(box_id, loops_last_night=loops if loops_ok else None,
                           breathers_last_night=len(sessions) if isinstance(sessions, list) else None)

    def on_event(self, box_id: str, payload: dict) -> None:
        kind = payload.get("kind")
        if kind == "update_audit" and isinstance(payload.get("action"), str):
            # A box's own update audit trail (appliance.updates), mirrored into the clinic's log.
            detail = {k: v for k, v in payload.items() if k not in ("schema", "box_id", "kind", "action")}
            self.db.audit(f"box:{box_id}", _short(payload["action"]), box_id, detail)
            return
        if kind in ("update.applied", "config_applied") and payload.get("config_version"):
            self.db.upsert_box(box_id, config_version=_short(payload.get("config_version")))

    def on_config_reply(self, push_id: int, reply: dict | None) -> None:
        """Record a box's answer to a config push (``None``: no answer in time)."""
        if reply is None:
            self.db.set_config_push_state(push_id, "no answer", "the box did not answer in time")
            return
        result = reply.get("result") or {}
        if reply.get("ok") and result.get("ok"):
            push = self.db.get_config_push(push_id)
            # The box's row first: whoever sees the push acknowledged must also see the box's new version.
            if push:
                self.db.upsert_box(push["box_id"], config_version=_short(result.get("running_version")))
            self.db.set_config_push_state(push_id, "acknowledged", f"running {_short(result.get('running_version'))}")
        else:
            err = reply.get("error") or {}
            detail = result.get("reason") or f"{err.get('code', '')}: {err.get('message', '')}"
            self.db.set_config_push_state(push_id, result.get("state") or "refused", detail)
