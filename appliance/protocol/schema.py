"""The MQTT topic schema (version 1): topic builders, payload builders and payload validators.

Everything a box and a clinic console say to each other over MQTT is defined here, once, so the box
(:mod:`appliance.mqtt`), the fleet ingest (:mod:`appliance.fleet.ingest`) and the tests agree by
construction. docs/mqtt.md is the human-readable version of this module. It is part of the protocol layer and
imports nothing of the box: :func:`stage_payload` reads an epoch through :class:`ScoredEpoch`, the attributes it
needs, not the box's ``Epoch`` type.

Conventions
-----------
- Topics: ``bedtime/v1/<box_id>/<channel>``. The ``v1`` is the schema version; a breaking change
  gets ``v2`` topics so old and new boxes can share a broker.
- Payloads: UTF-8 JSON objects, each with ``"schema": 1``, ``"box_id"`` and ``"time_utc"``
  (ISO-8601 UTC with a ``Z`` suffix, millisecond precision).
- Units are in field names (``end_time_s``, ``impedance_kohm``, ``cpu_percent``, ``temperature_c``).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol, Sequence

import numpy as np

from appliance.protocol.ids import BOX_ID_RE, BOX_ID_RULE, is_box_id  # noqa: F401  (BOX_ID_RE: re-exported)
from appliance.protocol.stages import STAGE_NAMES, Stage

SCHEMA_VERSION = 1
TOPIC_ROOT = "bedtime"
TOPIC_PREFIX = f"{TOPIC_ROOT}/v{SCHEMA_VERSION}"


STATUS_STATES = ("online", "recording", "idle", "fault", "offline")
SEVERITIES = ("info", "warning", "critical")

# Channel -> (QoS, retained). The one table of delivery guarantees; docs/mqtt.md repeats it.
CHANNELS: dict[str, tuple[int, bool]] = {
    "status": (1, True),
    "stage": (0, False),
    "event": (1, False),
    "alert": (1, False),
    "telemetry": (0, True),  # retained: a console that starts later sees the last values at once
    "report": (1, True),
    "config": (1, True),
    "cmd": (1, False),
    "reply": (1, False),
}

HA_DISCOVERY_PREFIX = "homeassistant"
"""Home Assistant's default MQTT discovery prefix: the box publishes its discovery configs under
``homeassistant/<component>/<box_id>/...`` and the broker's ACL lets each box write only its own (and read
``homeassistant/status``, Home Assistant's birth message)."""

#: The level under ``alert`` where the plain-text copy of each alert goes (:func:`alert_text_topic`).
ALERT_TEXT_LEVEL = "text"


class SchemaError(ValueError):
    """A payload or topic that does not follow the bedtime/v1 schema."""


# ---- time -----------------------------------------------------------------------------------------

def is_schema_version(v: Any) -> bool:
    """Whether ``v`` is exactly the integer :data:`SCHEMA_VERSION` (``True`` and ``1.0`` compare equal to 1 in
    Python, and are not it)."""
    return type(v) is int and v == SCHEMA_VERSION


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def iso_utc(t: datetime) -> str:
    """Format an aware datetime as ISO-8601 UTC with milliseconds and a ``Z`` suffix."""
    if t.tzinfo is None:
        raise SchemaError("naive datetime: bedtime times are always timezone-aware UTC")
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso_utc(s: str) -> datetime:
    """Parse a ``time_utc`` field; it must carry a UTC offset (``Z`` or ``+00:00``)."""
    if not isinstance(s, str):
        raise SchemaError(f"time must be an ISO-8601 string, got {type(s).__name__}")
    try:
        t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError as e:
        raise SchemaError(f"not an ISO-8601 time: {s!r}") from e
    if t.tzinfo is None or t.utcoffset() != timezone.utc.utcoffset(None):
        raise SchemaError(f"time must be UTC with an explicit offset: {s!r}")
    return t


# ---- topics ---------------------------------------------------------------------------------------

def check_box_id(box_id: str) -> str:
    """Return ``box_id`` if it is a valid topic level, else raise :class:`SchemaError`."""
    if not is_box_id(box_id):
        raise SchemaError(f"invalid box id {box_id!r}: {BOX_ID_RULE}")
    return box_id


def box_prefix(box_id: str) -> str:
    """``bedtime/v1/<box_id>``: the subtree one box may touch (the broker ACL enforces it)."""
    return f"{TOPIC_PREFIX}/{check_box_id(box_id)}"


def topic(box_id: str, channel: str) -> str:
    """The topic of one channel of one box, e.g. ``topic("b1", "alert") -> "bedtime/v1/b1/alert"``."""
    if channel not in CHANNELS or channel in ("cmd", "reply"):
        raise SchemaError(f"unknown channel {channel!r}")
    return f"{box_prefix(box_id)}/{channel}"


def command_topic(box_id: str, name: str) -> str:
    """``bedtime/v1/<box_id>/cmd/<name>``: where the clinic sends a command."""
    if not re.match(r"^[a-z][a-z0-9_]{0,31}$", name or ""):
        raise SchemaError(f"invalid command name {name!r}")
    return f"{box_prefix(box_id)}/cmd/{name}"


def reply_topic(box_id: str, tag: str) -> str:
    """``bedtime/v1/<box_id>/reply/<tag>``: where the box answers a command.

    Replies live under the box's own subtree so that the box's ACL (its own subtree only) lets it
    publish them; the requester picks ``tag`` (usually its client id) and subscribes to it.
    """
    if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", tag or ""):
        raise SchemaError(f"invalid reply tag {tag!r}")
    return f"{box_prefix(box_id)}/reply/{tag}"


def alert_text_topic(box_id: str) -> str:
    """``bedtime/v1/<box_id>/alert/text``: each alert again as plain text, for MQTT phone apps that show raw
    payloads (:func:`alert_text`). Same QoS as ``alert``, never retained (an old alert must not pop up again
    when an app reconnects)."""
    return f"{topic(box_id, 'alert')}/{ALERT_TEXT_LEVEL}"


def fleet_filter(channel: str) -> str:
    """Topic filter for one channel of every box: ``bedtime/v1/+/<channel>``."""
    return f"{TOPIC_PREFIX}/+/{channel}"


def shared_filter(group: str, channel: str) -> str:
    """MQTT v5 shared subscription ``$share/<group>/bedtime/v1/+/<channel>``.

    Subscribers in the same group split the messages between them (each message to one member),
    which is how several console processes or broker nodes share one fleet's ingest.
    """
    if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", group or ""):
        raise SchemaError(f"invalid share group {group!r}")
    return f"$share/{group}/{fleet_filter(channel)}"


@dataclass(frozen=True)
class ParsedTopic:
    """A topic split into its box id, channel and (for cmd/reply) the last level."""

    box_id: str
    channel: str
    name: str | None = None


def parse_topic(t: str) -> ParsedTopic:
    """Split ``bedtime/v1/<box>/<channel>[/<name>]``; raise :class:`SchemaError` otherwise."""
    parts = t.split("/")
    if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != TOPIC_PREFIX:
        raise SchemaError(f"not a {TOPIC_PREFIX} topic: {t!r}")
    box_id, channel = check_box_id(parts[2]), parts[3]
    if channel not in CHANNELS:
        raise SchemaError(f"unknown channel in {t!r}")
    if channel in ("cmd", "reply"):
        if len(parts) != 5:
            raise SchemaError(f"{channel} topic needs exactly one name level: {t!r}")
        return ParsedTopic(box_id, channel, parts[4])
    if len(parts) != 4:
        raise SchemaError(f"unexpected levels after channel: {t!r}")
    return ParsedTopic(box_id, channel)


# ---- payloads -------------------------------------------------------------------------------------

def _json_default(o: Any) -> Any:
    # The daemon's numbers often come straight from numpy; aware datetimes become time strings.
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, datetime):
        return iso_utc(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def encode(payload: dict) -> bytes:
    """Serialise a payload (compact JSON, UTF-8). NaN/inf are refused: JSON has no such numbers.

    numpy scalars and arrays become JSON numbers and lists; aware datetimes become ISO-8601 UTC strings.
    """
    return json.dumps(payload, separators=(",", ":"), allow_nan=False, default=_json_default).encode()


def decode(data: bytes | str) -> dict:
    """Parse a payload and check the envelope (schema, box_id, time_utc)."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise SchemaError(f"payload is not JSON: {e}") from e
    except RecursionError:
        raise SchemaError("payload nested too deeply") from None
    if not isinstance(obj, dict):
        raise SchemaError("payload must be a JSON object")
    if not is_schema_version(obj.get("schema")):
        raise SchemaError(f"schema must be the integer {SCHEMA_VERSION}, got a {type(obj.get('schema')).__name__}")
    return obj


def envelope(box_id: str, now: datetime, **fields: Any) -> dict:
    """The fields every payload starts with."""
    return {"schema": SCHEMA_VERSION, "box_id": check_box_id(box_id), "time_utc": iso_utc(now), **fields}


def is_finite_number(v: Any) -> bool:
    """``v`` is a JSON number that is a finite float: not a bool, not NaN or infinite, and not an integer too large
    for a float (JSON allows thousands of digits; ``math.isfinite`` raises ``OverflowError`` on those)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _finite(name: str, v: Any) -> float:
    if not is_finite_number(v):
        raise SchemaError(f"{name} must be a finite number, got {repr(v)[:80]}")
    return float(v)


def status_payload(box_id: str, now: datetime, *, state: str, firmware_version: str,
                   model_versions: dict, **fields: Any) -> dict:
    """Retained ``status``: online/recording/idle/fault, or ``offline`` (the last will)."""
    if state not in STATUS_STATES:
        raise SchemaError(f"state must be one of {STATUS_STATES}, got {state!r}")
    return envelope(box_id, now, state=state, online=state != "offline",
                    firmware_version=firmware_version, model_versions=dict(model_versions), **fields)


class EpochQuality(Protocol):
    """What :func:`stage_payload` reads of an epoch's signal quality."""

    ok: bool
    flags: Any
    artefact_fraction: float


class ScoredEpoch(Protocol):
    """What :func:`stage_payload` reads of a scored epoch (the box's ``appliance.epoch.Epoch`` has all of it)."""

    index: int
    end_time_s: float
    stage: Stage
    confidence: float
    stage_probs: Sequence[float] | None
    p_loop: float | None
    quality: EpochQuality


def stage_payload(box_id: str, now: datetime, epoch: ScoredEpoch) -> dict:
    """``stage``: one scored 30-s epoch (sent each epoch, QoS 0)."""
    probs = None
    if epoch.stage_probs is not None:
        probs = {n: round(float(p), 4) for n, p in zip(STAGE_NAMES, epoch.stage_probs)}
    stage = epoch.stage
    return envelope(
        box_id, now,
        epoch_index=int(epoch.index),
        end_time_s=float(epoch.end_time_s),
        stage=stage.name,
        stage_code=int(stage.value),
        confidence=round(epoch.confidence, 4),
        stage_probs=probs,
        p_loop=None if epoch.p_loop is None else round(float(epoch.p_loop), 4),
        signal_ok=bool(epoch.quality.ok),
        quality_flags=sorted(epoch.quality.flags),
        artefact_fraction=round(float(epoch.quality.artefact_fraction), 4),
    )


def event_payload(box_id: str, now: datetime, *, kind: str, **fields: Any) -> dict:
    """``event``: something that happened (breather started/ended, fault, config applied...)."""
    if not isinstance(kind, str) or not re.fullmatch(r"[a-z][a-z0-9_.]{0,63}", kind):
        raise SchemaError(f"event kind must be lower-case snake_case (dots allowed), got {kind!r}")
    return envelope(box_id, now, kind=kind, **fields)


ALERT_TITLE_MAX_CHARS = 64
"""An alert's title fits a phone's lock screen."""
ALERT_MESSAGE_MAX_CHARS = 240
"""An alert's message fits a phone's notification."""


def alert_payload(box_id: str, now: datetime, *, title: str, message: str, severity: str,
                  **fields: Any) -> dict:
    """``alert``: something a parent must see, readable on a phone's lock screen.

    ``title`` (<= 64 chars) and ``message`` (<= 240 chars) are for people; the rest
    (``kind``, ``epoch_index``, ``p_loop``...) for machines.
    """
    if severity not in SEVERITIES:
        raise SchemaError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    if not isinstance(title, str) or not 0 < len(title) <= ALERT_TITLE_MAX_CHARS:
        raise SchemaError(f"title must be 1-{ALERT_TITLE_MAX_CHARS} characters (it has to fit a lock screen)")
    if not isinstance(message, str) or not 0 < len(message) <= ALERT_MESSAGE_MAX_CHARS:
        raise SchemaError(f"message must be 1-{ALERT_MESSAGE_MAX_CHARS} characters")
    return envelope(box_id, now, title=title, message=message, severity=severity, **fields)


def alert_text(title: str, message: str) -> bytes:
    """The plain-text copy of an alert: the title, a newline, the message (UTF-8, no JSON).

    For phone apps that show a raw MQTT payload as a notification: the first line is the headline. A line
    break inside the title would make the message look like a second headline, so it becomes a space.
    """
    return f"{' '.join(title.split())}\n{message}".encode()


def telemetry_payload(box_id: str, now: datetime, **fields: Any) -> dict:
    """``telemetry``: signal quality, impedance, frame counters, CPU, temperature.

    Numbers must be finite; field names carry units (``impedance_kohm``, ``cpu_percent``...).
    """
    for k, v in fields.items():
        if isinstance(v, float):
            _finite(k, v)
    return envelope(box_id, now, **fields)


def report_payload(box_id: str, now: datetime, report: dict) -> dict:
    """``report``: the night summary (retained, so a console that starts later still gets it)."""
    if not isinstance(report, dict):
        raise SchemaError("report must be a dict")
    return envelope(box_id, now, report=report)


def config_payload(box_id: str, now: datetime, *, config: dict, config_version: str,
                   issued_by: str = "bedtime-fleet") -> dict:
    """Retained ``config``, set by the clinic; the box validates ``config`` before applying it."""
    if not isinstance(config, dict):
        raise SchemaError("config must be a JSON object")
    if not isinstance(config_version, str) or not config_version:
        raise SchemaError("config_version must be a non-empty string")
    return envelope(box_id, now, config_version=config_version, issued_by=issued_by, config=config)


def command_payload(now: datetime, args: dict | None = None) -> dict:
    """A command request. Commands carry no box_id: the topic names the box."""
    return {"schema": SCHEMA_VERSION, "time_utc": iso_utc(now), "args": dict(args or {})}


def reply_payload(box_id: str, now: datetime, *, command: str, ok: bool,
                  result: dict | None = None, error: str | None = None, code: str | None = None) -> dict:
    """A command reply: ``ok`` with a ``result``, or not ok with an ``error`` (``code`` + ``message``)."""
    body: dict[str, Any] = {"command": command, "ok": bool(ok)}
    if ok:
        body["result"] = result or {}
    else:
        body["error"] = {"code": code or "error", "message": error or "failed"}
    return envelope(box_id, now, **body)


# Required fields per channel, checked by :func:`validate` (used by the fleet ingest and the tests).
_REQUIRED: dict[str, dict[str, type | tuple[type, ...]]] = {
    "status": {"state": str, "online": bool, "firmware_version": str, "model_versions": dict},
    "stage": {"epoch_index": int, "end_time_s": (int, float), "stage": str, "stage_code": int,
              "signal_ok": bool},
    "event": {"kind": str, "seq": int},
    "alert": {"title": str, "message": str, "severity": str, "seq": int},
    "telemetry": {},
    "report": {"report": dict},
    "config": {"config": dict, "config_version": str},
}


def validate(channel: str, payload: dict) -> dict:
    """Check a decoded box payload against the v1 schema for ``channel``; return it unchanged."""
    if channel not in _REQUIRED:
        raise SchemaError(f"no schema for channel {channel!r}")
    if not is_schema_version(payload.get("schema")):
        raise SchemaError(f"schema must be the integer {SCHEMA_VERSION}")
    check_box_id(payload.get("box_id"))
    parse_iso_utc(payload.get("time_utc"))
    for name, typ in _REQUIRED[channel].items():
        v = payload.get(name)
        if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
            raise SchemaError(f"{channel}.{name} missing or not {typ}")
    if channel == "status" and payload["state"] not in STATUS_STATES:
        raise SchemaError(f"status.state {payload['state']!r} not in {STATUS_STATES}")
    if channel == "alert" and payload["severity"] not in SEVERITIES:
        raise SchemaError(f"alert.severity {payload['severity']!r} not in {SEVERITIES}")
    if channel == "stage" and payload["stage"] not in {s.name for s in Stage}:
        raise SchemaError(f"stage.stage {payload['stage']!r} is not a Stage name")
    return payload
