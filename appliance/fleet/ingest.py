"""The clinic's MQTT ingest: one connection that follows a whole fleet of boxes.

:class:`FleetIngest` subscribes to every box's topics, validates each payload against
:mod:`appliance.protocol.schema`, keeps an in-memory fleet view (:class:`BoxView` per box) and calls the
callbacks you give it. ``bedtime-fleet`` (the CLI) and the web console both sit on it.

Scaling out (docs/scaling.md): with ``group="bedtime-fleet"`` the high-volume channels (``alert``,
``event``, ``stage``, ``telemetry``, ``report``) are MQTT v5 *shared subscriptions*
``$share/<group>/bedtime/v1/+/<channel>``: every console process in the group gets a share of the
messages and each message goes to one of them, so adding processes (or broker nodes on a clustered
broker such as EMQX or HiveMQ) adds capacity with no code change. ``status`` is subscribed normally
(not shared) because it is small and retained, and every process needs the whole fleet list.
With ``group=None`` every channel is subscribed normally: an observer (``bedtime-fleet alerts``) that
sees everything without taking messages away from the consoles.

A console with a stable ``client_id`` uses a persistent session (``clean_start=False`` and a session
expiry), so QoS 1 alerts sent while the console is restarting wait for it at the broker.

Callbacks run on paho's network thread: keep them short (hand work to a queue or a database writer).

Hostile or broken boxes: every box may publish anything on its own topics (docs/mosquitto/acl.conf), so
nothing a message carries may stop the ingest. Each message is bounded (size, JSON nesting depth), decoded,
validated and checked (``seq`` an integer, the payload's ``box_id`` the topic's) before it touches the
fleet view or a callback; anything else is counted in :attr:`FleetIngest.stats` (``dropped`` and
``dropped_<reason>``) and dropped, and the next message is handled as usual. A failing callback is
counted (``callback_errors``) and logged, never raised into paho's thread. :meth:`FleetIngest.health`
says whether the network thread is alive and how long ago the last message arrived (the console's
``/healthz``).
"""
from __future__ import annotations

import collections
import copy
import logging
import math
import os
import socket
import ssl
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.protocol import schema
from appliance.protocol.commands import COMMANDS, CommandSpec
from appliance.protocol.transport import set_tcp_nodelay

log = logging.getLogger(__name__)


class _QuietRetries(logging.Filter):
    """paho logs an ERROR ("Client is not connected...") on every retry while the broker is down; the ingest says
    that itself, in words and at most once a minute (:meth:`FleetIngest._on_connect_fail`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Client is not connected")


paho_log = logging.getLogger(f"{__name__}.paho")
paho_log.addFilter(_QuietRetries())
CONNECT_FAIL_LOG_EVERY_S = 60.0
"""While the broker cannot be reached, the ingest logs it at most this often, s."""

Callback = Callable[[str, dict], object]

SHARED_CHANNELS = ("alert", "event", "stage", "telemetry", "report")

#: Largest payload decoded per channel, bytes. A night report with its hypnogram is tens of kB, every
#: other box message well under 1 kB; anything larger is dropped unread.
MAX_PAYLOAD_BYTES = {"report": 2 * 1024 * 1024}
MAX_PAYLOAD_BYTES_DEFAULT = 256 * 1024
#: Largest command reply decoded, bytes (a reply may carry a night report or an update result).
MAX_REPLY_BYTES = 32 * 1024 * 1024
#: Largest MQTT packet the console accepts at all, bytes (MQTT v5 Maximum Packet Size, told to the broker
#: at connect): the broker drops larger ones for this client, so none is ever read into memory here.
MAX_PACKET_BYTES = MAX_REPLY_BYTES + 64 * 1024
#: Deepest JSON nesting accepted (box payloads are at most 4 levels deep). Bounded so that copying or
#: serialising a payload later (fleet view snapshot, database JSON) cannot hit the recursion limit.
MAX_JSON_DEPTH = 32
#: ``seq`` is an outbox row id: a non-negative integer that fits a 64-bit column.
MAX_SEQ = 2 ** 63 - 1
#: Short text fields kept in the fleet view (versions, ids), characters.
MAX_VIEW_TEXT = 64


@dataclass(frozen=True)
class LinkState:
    """The ingest's connection to the broker, as the clinic's staff should see it (:meth:`FleetIngest.link_state`).

    Attributes
    ----------
    where : str
        The broker, ``host:port``.
    connected : bool
        Connected now (subscriptions asked for): the boxes' alerts can reach this ingest.
    since : datetime
        When ``connected`` last changed (UTC; the ingest's start before its first connection).
    problem : str or None
        Why it is not connected, in words ("cannot reach the broker", the broker's refusal, "the connection was
        lost"); None while connected or before the first attempt has ended.
    """

    where: str
    connected: bool
    since: datetime
    problem: str | None


@dataclass
class BoxView:
    """What the clinic knows about one box, from its latest messages.

    Times are aware UTC datetimes. ``last_seen_utc`` is when this ingest last heard from the box live,
    or, for what it only knows from retained messages (status, telemetry), the box's own ``time_utc`` in them.
    """

    box_id: str
    state: str = "unknown"
    online: bool = False
    last_seen_utc: datetime | None = None
    firmware_version: str | None = None
    model_versions: dict = field(default_factory=dict)
    config_version: str | None = None
    outbox_depth: int | None = None
    signal_quality_percent: float | None = None
    last_stage: str | None = None
    last_p_loop: float | None = None
    last_alert: dict | None = None
    alerts: int = 0
    events: int = 0
    last_event: dict | None = None
    last_report: dict | None = None
    telemetry: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TLSClientSettings:
    """TLS for the console's broker connection (CA, optional client certificate)."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None


def json_problem(obj: object, *, max_depth: int = MAX_JSON_DEPTH) -> tuple[str, str] | None:
    """What makes decoded JSON unsafe to keep, as ``(reason, detail)``, or None.

    Unsafe: nested more than ``max_depth`` containers deep, or holding NaN/Infinity (Python's JSON parser
    accepts them; PostgreSQL's ``json`` and every other JSON reader refuse them). Iterative: no recursion.
    """
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        cur, depth = stack.pop()
        if isinstance(cur, float) and not math.isfinite(cur):
            return "invalid", "NaN or Infinity in JSON"
        if isinstance(cur, dict):
            children = cur.values()
        elif isinstance(cur, list):
            children = cur
        else:
            continue
        if depth > max_depth:
            return "too_deep", f"JSON nested deeper than {max_depth}"
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list, float)))
    return None


def _view_text(value: object) -> str | None:
    """A short string for the fleet view, or None when ``value`` is not a string."""
    return value[:MAX_VIEW_TEXT] if isinstance(value, str) else None


class DroppedMessage(Exception):
    """A message the ingest refuses; ``reason`` names the counter (``dropped_<reason>``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class CommandTimeout(TimeoutError):
    """A box did not answer a command in time (offline, or the command is slow)."""


class FleetIngest:
    """Follow a fleet of boxes over MQTT.

    Parameters
    ----------
    host, port : str, int
        Broker address.
    tls : TLSClientSettings or None
        TLS settings, or None for plain TCP.
    username, password : str or None
        Broker credentials of the clinic console (docs/mosquitto/acl.conf: user ``fleet``).
    group : str or None
        Shared-subscription group; None for an observer that sees every message.
    client_id : str or None
        Stable id for a persistent session; default ``<group>-<host name>-<pid>`` (a fresh one per run).
    session_expiry_s : int
        How long the broker keeps this console's subscriptions and queued QoS 1 messages while it is
        away (persistent session only; with ``client_id=None`` the session is clean).
    max_packet_bytes : int
        Largest MQTT packet the broker may send this console, bytes (default :data:`MAX_PACKET_BYTES`).
    on_alert, on_event, on_status, on_report, on_stage, on_telemetry : callable or None
        ``callback(box_id, payload)`` for each valid, de-duplicated message of that channel, after the
        fleet view is updated; ``payload`` is the decoded JSON (see docs/mqtt.md).
    """

    def __init__(self, host: str, port: int, *, tls: TLSClientSettings | None = None,
                 username: str | None = None, password: str | None = None,
                 group: str | None = "bedtime-fleet", client_id: str | None = None,
                 session_expiry_s: int = 3600, keepalive_s: int = 30,
                 max_packet_bytes: int = MAX_PACKET_BYTES,
                 on_alert: Callback | None = None, on_event: Callback | None = None,
                 on_status: Callback | None = None, on_report: Callback | None = None,
                 on_stage: Callback | None = None, on_telemetry: Callback | None = None) -> None:
        self.host, self.port, self.group = host, int(port), group
        if group is not None:
            schema.shared_filter(group, "alert")  # validates the group name
        self.persistent = client_id is not None
        self.client_id = client_id or f"{group or 'observer'}-{socket.gethostname()}-{os.getpid()}-" \
                                      f"{uuid.uuid4().hex[:6]}"
        self.reply_tag = "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in self.client_id)[:64]
        self.session_expiry_s = session_expiry_s
        self.keepalive_s = keepalive_s
        self.max_packet_bytes = int(max_packet_bytes)
        self.callbacks: dict[str, Callback | None] = {
            "alert": on_alert, "event": on_event, "status": on_status, "report": on_report,
            "stage": on_stage, "telemetry": on_telemetry}
        self._views: dict[str, BoxView] = {}
        self._lock = threading.Lock()
        self._last_seq: dict[tuple[str, str], tuple[str, int]] = {}
        self._pending: dict[bytes, Future] = {}
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._refused: str | None = None  # the broker's CONNACK reason when it refused us
        self._link_since = datetime.now(timezone.utc)  # when connected last changed (LinkState.since)
        self._link_problem: str | None = None  # why not connected (LinkState.problem)
        self._started = False
        self._thread: threading.Thread | None = None
        self._last_message: float | None = None  # time.monotonic() of the last message received
        self._last_drop_log = 0.0
        self._last_connect_fail_log = float("-inf")
        self.stats: collections.Counter = collections.Counter()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5)
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls is not None:
            self._client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
                                 cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.max_inflight_messages_set(100)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        # Defence in depth: should a callback still raise, paho logs it instead of ending its thread.
        self._client.suppress_exceptions = True
        self._client.enable_logger(paho_log)

    # ---- life cycle ---------------------------------------------------------------------------
    def start(self, *, wait_s: float | None = 10.0, fail_fast: bool = False) -> "FleetIngest":
        """Connect (in paho's network thread) and, unless ``wait_s`` is None, wait until subscribed.

        Parameters
        ----------
        wait_s : float or None
            Seconds to wait for the subscriptions; None returns at once (paho keeps trying in the background,
            as a long-running console wants).
        fail_fast : bool
            Connect synchronously and give up at the first refusal (TCP or CONNACK) instead of waiting out
            ``wait_s``: what a one-shot command line wants.

        Raises
        ------
        ConnectionError
            One line: the broker's address and why.
        """
        if self._started:
            return self
        self._started = True
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s if self.persistent else 0
        props.MaximumPacketSize = self.max_packet_bytes
        where = f"{self.host}:{self.port}"
        if fail_fast:
            try:
                self._client.connect(self.host, self.port, keepalive=self.keepalive_s,
                                     clean_start=not self.persistent, properties=props)
            except (OSError, ssl.SSLError) as e:
                raise ConnectionError(f"cannot reach the broker at {where}: "
                                      f"{getattr(e, 'strerror', None) or e}") from None
        else:
            self._client.connect_async(self.host, self.port, keepalive=self.keepalive_s,
                                       clean_start=not self.persistent, properties=props)
        self._client.loop_start()
        # paho keeps its network thread private; hold on to it so health() can tell whether it still runs.
        self._thread = getattr(self._client, "_thread", None)
        if wait_s is None:
            return self
        deadline = time.monotonic() + wait_s
        while not self._subscribed.wait(0.05):
            if fail_fast and self._refused is not None:
                self.stop()
                raise ConnectionError(f"the broker at {where} refused the connection: {self._refused}")
            if time.monotonic() > deadline:
                self.stop()
                raise ConnectionError(f"could not connect and subscribe to {where} in {wait_s} s")
        return self

    def stop(self) -> None:
        """Disconnect and stop the network thread."""
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()

    def __enter__(self) -> "FleetIngest":
        return self.start()  # no-op when already started

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_subscribed(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` seconds for the first subscriptions; True once they are in place."""
        return self._subscribed.wait(timeout_s)

    def link_state(self) -> LinkState:
        """The connection to the broker now (the console shows it on every page while it is down)."""
        return LinkState(where=f"{self.host}:{self.port}", connected=self.connected, since=self._link_since,
                         problem=None if self.connected else self._link_problem)

    def health(self) -> dict:
        """Liveness of the ingest, for ``/healthz``.

        Returns
        -------
        dict
            ``thread_alive`` (paho's network thread runs), ``connected``, ``problem`` (why not, see
            :class:`LinkState`), ``last_message_age_s`` (seconds since the last message of any kind, None before
            the first), ``messages`` (received) and ``dropped`` (refused: malformed, too large, too deep, wrong
            ``seq``...).
        """
        thread = self._thread
        last = self._last_message
        link = self.link_state()
        return {"thread_alive": bool(thread is not None and thread.is_alive()),
                "connected": link.connected, "problem": link.problem,
                "last_message_age_s": None if last is None else round(time.monotonic() - last, 3),
                "messages": int(self.stats["received"]), "dropped": int(self.stats["dropped"]),
                "callback_errors": int(self.stats["callback_errors"])}

    # ---- the fleet view -----------------------------------------------------------------------
    @property
    def boxes(self) -> dict[str, BoxView]:
        """A snapshot of the fleet view, box id -> :class:`BoxView` (copies; safe to keep)."""
        with self._lock:
            return {k: copy.deepcopy(v) for k, v in sorted(self._views.items())}

    def box(self, box_id: str) -> BoxView | None:
        with self._lock:
            v = self._views.get(box_id)
            return None if v is None else copy.deepcopy(v)

    # ---- clinic actions -----------------------------------------------------------------------
    def push_config(self, box_id: str, config: dict, *, config_version: str,
                    validator: Callable[[dict], object] | None = None, timeout_s: float = 5.0) -> None:
        """Validate ``config`` (with the box's own validator) and publish it as the box's retained config.

        Raises whatever ``validator`` raises for an invalid config; nothing is published then.
        """
        if validator is not None:
            validator(config)
        payload = schema.config_payload(box_id, schema.utc_now(), config=config, config_version=config_version)
        info = self._client.publish(schema.topic(box_id, "config"), schema.encode(payload), qos=1, retain=True)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise ConnectionError(f"config for {box_id} not acknowledged by the broker in {timeout_s} s")

    def request(self, box_id: str, command: str, args: dict | None = None, *, timeout_s: float = 10.0,
                check: bool = True) -> dict:
        """Send ``cmd/<command>`` to a box and wait for its reply (MQTT v5 response topic + correlation).

        Returns the reply payload (``ok``, ``result`` or ``error``). ``check`` validates ``args`` against
        :data:`appliance.protocol.commands.COMMANDS` first (set False only to test the box's own validation).
        """
        if check:
            spec: CommandSpec | None = COMMANDS.get(command)
            if spec is None:
                raise ValueError(f"unknown command {command!r}; known: {sorted(COMMANDS)}")
            spec.validate_args(args or {})
        corr = uuid.uuid4().bytes
        fut: Future = Future()
        self._pending[corr] = fut
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = schema.reply_topic(box_id, self.reply_tag)
        props.CorrelationData = corr
        try:
            self._client.publish(schema.command_topic(box_id, command),
                                 schema.encode(schema.command_payload(schema.utc_now(), args)),
                                 qos=1, properties=props)
            try:
                return fut.result(timeout_s)
            except TimeoutError as e:
                raise CommandTimeout(f"{box_id} did not answer {command!r} in {timeout_s} s") from e
        finally:
            self._pending.pop(corr, None)

    # ---- paho callbacks -----------------------------------------------------------------------
    def _subscriptions(self) -> list[tuple[str, int]]:
        subs = [(schema.fleet_filter("status"), 1),
                (f"{schema.TOPIC_PREFIX}/+/reply/{self.reply_tag}", 1)]
        for ch in SHARED_CHANNELS:
            subs.append((schema.shared_filter(self.group, ch) if self.group else schema.fleet_filter(ch), 1))
        return subs

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
            self._link_problem = f"the broker refused the connection: {reason_code}"
            log.error("broker refused the fleet console: %s", reason_code)
            return
        set_tcp_nodelay(client)
        self._link_problem = None
        self._link_since = datetime.now(timezone.utc)
        self._connected.set()
        client.subscribe(self._subscriptions())

    def _on_connect_fail(self, client, userdata) -> None:
        # paho's network thread could not open the TCP (or TLS) connection; it tries again (1 s to 30 s apart)
        self._link_problem = "cannot reach the broker"
        now = time.monotonic()
        if now - self._last_connect_fail_log >= CONNECT_FAIL_LOG_EVERY_S:
            self._last_connect_fail_log = now
            log.warning("cannot reach the broker at %s:%d; trying again every 1-30 s", self.host, self.port)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        bad = [rc for rc in reason_codes if rc.is_failure]
        if bad:
            log.error("subscriptions refused by the broker: %s", bad)
            self.stats["subscribe_refused"] += len(bad)
        self._subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set():
            self._link_since = datetime.now(timezone.utc)
            self._link_problem = "the connection was lost"
        self._connected.clear()
        if reason_code != 0:
            log.warning("fleet console disconnected: %s (paho reconnects)", reason_code)

    def _on_message(self, client, userdata, msg: paho.MQTTMessage) -> None:
        # Whatever a message holds, this returns normally: it is either handled or counted and dropped.
        self._last_message = time.monotonic()
        self.stats["received"] += 1
        try:
            self._handle(msg)
        except DroppedMessage as e:
            self._drop(e.reason, msg, str(e))
        except Exception as e:  # noqa: BLE001 - the last line of defence for the whole fleet's feed
            log.exception("fleet ingest: unexpected error on a message")
            self._drop("internal", msg, type(e).__name__)

    def _drop(self, reason: str, msg: paho.MQTTMessage, detail: str) -> None:
        self.stats["dropped"] += 1
        self.stats[f"dropped_{reason}"] += 1
        try:
            where = msg.topic
        except Exception:  # noqa: BLE001 - a topic that is not UTF-8
            where = repr(getattr(msg, "_topic", b""))
        # A hostile box can send thousands a second: warn at most once a second, never echo the payload.
        now = time.monotonic()
        level = logging.WARNING if now - self._last_drop_log >= 1.0 else logging.DEBUG
        if level == logging.WARNING:
            self._last_drop_log = now
        log.log(level, "dropped a message on %.200s (%s): %.300s [%d dropped so far]", where, reason, detail,
                self.stats["dropped"])

    def _handle(self, msg: paho.MQTTMessage) -> None:
        try:
            t = schema.parse_topic(msg.topic)
        except (schema.SchemaError, UnicodeDecodeError) as e:
            raise DroppedMessage("topic", str(e)) from None
        if t.channel != "reply" and t.channel not in self.callbacks:
            raise DroppedMessage("topic", f"not a channel the ingest reads: {t.channel}")
        if t.channel == "reply":
            self._on_reply(msg)  # even an empty one: it answers (and fails) the command now, not at its timeout
            return
        data = msg.payload
        if not data:
            return  # a cleared retained message
        limit = MAX_PAYLOAD_BYTES.get(t.channel, MAX_PAYLOAD_BYTES_DEFAULT)
        if len(data) > limit:
            raise DroppedMessage("too_large", f"{len(data)} bytes > {limit}")
        payload = self._decode(data)
        try:
            payload = schema.validate(t.channel, payload)
            if payload["box_id"] != t.box_id:
                raise schema.SchemaError(f"payload box_id {payload['box_id']!r} on {t.box_id!r}'s topic")
        except schema.SchemaError as e:
            self.stats["invalid"] += 1
            raise DroppedMessage("invalid", f"{t.channel}: {e}") from None
        if "seq" in payload:
            seq = payload["seq"]
            if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= MAX_SEQ:
                self.stats["invalid"] += 1
                raise DroppedMessage("invalid", f"{t.channel}.seq must be an integer 0..2^63-1, got {type(seq).__name__}")
            if self._is_duplicate(t.box_id, t.channel, payload):
                self.stats["duplicates"] += 1
                return
        self.stats[t.channel] += 1
        self._update_view(t.box_id, t.channel, payload, retained=bool(msg.retain))
        cb = self.callbacks.get(t.channel)
        if cb is not None:
            try:
                cb(t.box_id, payload)
            except Exception:  # a console bug (or a database hiccup) must not stop the ingest
                self.stats["callback_errors"] += 1
                log.exception("%s callback failed for %s", t.channel, t.box_id)

    @staticmethod
    def _decode(data: bytes) -> dict:
        """Decode a payload, bounded in nesting; raise :class:`DroppedMessage` for anything but a v1 object."""
        try:
            payload = schema.decode(data)
        except schema.SchemaError as e:
            raise DroppedMessage("invalid", str(e)) from None
        except RecursionError:  # nested deeper than the JSON parser goes
            raise DroppedMessage("too_deep", "JSON nested too deeply") from None
        problem = json_problem(payload)
        if problem is not None:
            raise DroppedMessage(*problem)
        return payload

    def _is_duplicate(self, box_id: str, channel: str, payload: dict) -> bool:
        """QoS 1 is at least once: a re-sent message has the same (outbox_id, seq) or an older seq."""
        key = (box_id, channel)
        cur = (str(payload.get("outbox_id"))[:MAX_VIEW_TEXT], payload["seq"])
        prev = self._last_seq.get(key)
        if prev is not None and prev[0] == cur[0] and cur[1] <= prev[1]:
            return True
        if prev is not None and prev[0] == cur[0] and cur[1] > prev[1] + 1:
            self.stats["seq_gaps"] += 1
            # In a shared-subscription group gaps are normal (other members took those messages).
            (log.debug if self.group else log.warning)("%s %s: seq jumped %d -> %d (outbox overflow or another console in the group "
                        "took them)", box_id, channel, prev[1], cur[1])
        self._last_seq[key] = cur
        return False

    def _update_view(self, box_id: str, channel: str, p: dict, *, retained: bool = False) -> None:
        now = schema.utc_now()
        with self._lock:
            v = self._views.get(box_id)
            if v is None:
                v = self._views[box_id] = BoxView(box_id)
            # A retained message may be days old: it proves only that the box was there at its own time_utc
            # (never later than now: a box's clock in the future must not pin it "seen" for years).
            seen = min(schema.parse_iso_utc(p["time_utc"]), now) if retained else now
            if v.last_seen_utc is None or seen > v.last_seen_utc:
                v.last_seen_utc = seen
            if channel == "status":
                v.state, v.online = p["state"], p["online"]
                v.firmware_version = _view_text(p["firmware_version"])
                v.model_versions = {str(k)[:MAX_VIEW_TEXT]: _view_text(val) for k, val in
                                    list(p["model_versions"].items())[:16]}
                if "config_version" in p:
                    v.config_version = _view_text(p["config_version"])
                depth = p.get("outbox_depth")
                v.outbox_depth = depth if isinstance(depth, int) and not isinstance(depth, bool) else None
            else:
                # Anything but a (possibly retained, possibly last-will) status proves the box is up.
                if channel in ("stage", "event", "alert") and not v.online:
                    v.online, v.state = True, "online" if v.state in ("unknown", "offline") else v.state
            if channel == "stage":
                p_loop = p.get("p_loop")
                v.last_stage = p["stage"]
                v.last_p_loop = float(p_loop) if schema.is_finite_number(p_loop) else None
            elif channel == "telemetry":
                v.telemetry = {k: val for k, val in p.items() if k not in ("schema", "box_id")}
                q = p.get("signal_quality_percent")
                if schema.is_finite_number(q):
                    v.signal_quality_percent = float(q)
            elif channel == "alert":
                v.alerts += 1
                v.last_alert = p
            elif channel == "event":
                v.events += 1
                v.last_event = p
                if p.get("kind") == "config_applied":
                    v.config_version = _view_text(p.get("config_version"))
            elif channel == "report":
                v.last_report = p

    def _on_reply(self, msg: paho.MQTTMessage) -> None:
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        fut = self._pending.get(bytes(corr)) if isinstance(corr, (bytes, bytearray)) else None
        if fut is None or fut.done():
            self.stats["replies_unmatched"] += 1
            return  # nobody asked: never decoded
        try:
            if len(msg.payload) > MAX_REPLY_BYTES:
                raise DroppedMessage("too_large", f"reply of {len(msg.payload)} bytes > {MAX_REPLY_BYTES}")
            fut.set_result(self._decode(msg.payload))
        except DroppedMessage as e:
            fut.set_exception(schema.SchemaError(f"unusable reply: {e}"))
            raise
