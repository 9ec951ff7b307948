"""The box's link to the broker: :class:`BoxLink` (paho-mqtt 2.x, MQTT v5).

What a box says and hears (the topic schema is in :mod:`appliance.protocol.schema` and docs/mqtt.md):

- ``status`` (retained): published on every connect and on every :meth:`BoxLink.publish_status`; the last
  will sets it ``offline`` when the box drops off without saying goodbye.
- ``stage`` and ``telemetry`` (QoS 0; telemetry retained): fire-and-forget; dropped while offline (the
  next epoch supersedes).
- ``event``, ``alert`` and ``report`` (QoS 1): written to the SQLite :class:`~appliance.outbox.Outbox`
  first, then published oldest first and deleted on PUBACK, so nothing is lost while the network or
  broker is down, and everything arrives in order once it is back. Each alert is preceded by its
  plain-text copy on ``alert/text`` (made from the outbox row when it is sent) for phone apps that show
  raw payloads.
- Home Assistant discovery (retained, :mod:`appliance.homeassistant`): after :meth:`BoxLink.publish_discovery`,
  sent on every connect, before the outbox is pumped.
- ``cmd/<name>``: validated by :mod:`appliance.protocol.commands`; replies go to the MQTT v5 response topic with
  the request's correlation data.
- ``config`` (retained, set by the clinic): validated with the daemon's ``config_validator``; refused
  configs are reported and change nothing.

Threads: one link thread owns the network (connect, keepalive, reconnect with backoff, outbox pump);
one command thread runs command/config handlers so a slow handler never starves the keepalive. The
``publish_*`` methods may be called from any thread.

One writer per connection: paho's client is not safe for concurrent writes (each thread that publishes
also writes the socket, and a multi-MB packet written half by one thread while another thread writes
its own packet reaches the broker interleaved: "malformed packet", connection dropped). Every call into
the paho client (publish, subscribe, read, write, keepalive) therefore holds ``BoxLink._net_lock``, and the
link thread waits for the socket with its own ``select`` outside that lock, woken through a socket pair
when another thread leaves bytes unsent.

Why a fresh paho client per connection: paho keeps its own in-memory copy of unacknowledged QoS 1
messages and re-sends it on reconnect; with the outbox also re-sending, messages would be duplicated
and could be re-ordered. A new client per connection leaves the outbox the single source of truth.
"""
from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import logging
import random
import os
import re
import select
import socket
import sqlite3
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance import homeassistant
from appliance.epoch import Epoch
from appliance.outbox import PRIORITY_ALERT, PRIORITY_EVENT, Outbox, OutboxFullError
from appliance.protocol import commands as cmds
from appliance.protocol import schema
from appliance.protocol.transport import set_tcp_nodelay

log = logging.getLogger(__name__)

#: QoS 1 messages in flight at once (paho's and mosquitto's default window).
INFLIGHT_WINDOW = 20
MAX_CONFIG_BYTES = 256 * 1024
"""Largest retained config message the box parses (a full configuration is ~3 kB)."""

#: Alerts held in memory when even the full-disk outbox cannot store them (oldest go first beyond this).
MEMORY_ALERTS_MAX = 1000


@dataclass(frozen=True)
class TLSSettings:
    """TLS for the broker connection.

    Attributes
    ----------
    ca_file : Path
        CA certificate(s) the broker's certificate must chain to. The host name is always checked.
    cert_file, key_file : Path or None
        Optional client certificate and key (mutual TLS).
    """

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


class BoxLink:
    """A box's MQTT connection: status, stages, events, alerts, telemetry, reports, commands, config.

    Parameters
    ----------
    box_id : str
        The box's id; also its topic level and (by convention) its broker user name.
    host, port : str, int
        Broker address.
    outbox_path : Path
        SQLite file of the persistent outbox (keep it in the state directory).
    tls : TLSSettings or None
        TLS settings; None for plain TCP (loopback or a trusted network only).
    username, password : str or None
        Broker credentials.
    firmware_version : str
        Reported in status and Home Assistant discovery.
    model_versions : dict
        e.g. ``{"stager": "1.2.0", "loops": "0.3.1"}``; reported in status.
    keepalive_s : int
        MQTT keepalive; a dead link is noticed after about 1.5-2x this.
    config_validator : callable or None
        ``config_validator(config_dict) -> validated``; raises on an invalid config. None accepts any
        JSON object (only for tests and demos).
    clock : callable
        Returns the current aware UTC datetime (injectable for tests and accelerated replays).
    reconnect_min_s, reconnect_max_s : float
        Reconnect backoff: starts at min, doubles per failure up to max, with +-20 % jitter so a fleet
        does not reconnect in lock step after a broker restart.
    outbox_max_rows, outbox_max_bytes : int
        Bounds of the outbox (see :mod:`appliance.outbox` for the drop policy).
    """

    def __init__(self, *, box_id: str, host: str, port: int, outbox_path: Path,
                 tls: TLSSettings | None = None, username: str | None = None, password: str | None = None,
                 firmware_version: str, model_versions: dict, keepalive_s: int = 30,
                 config_validator: Callable[[dict], object] | None = None,
                 clock: Callable[[], datetime] = schema.utc_now,
                 reconnect_min_s: float = 0.5, reconnect_max_s: float = 60.0,
                 outbox_max_rows: int = 10_000, outbox_max_bytes: int = 8 * 1024 * 1024,
                 status_fields: dict | None = None) -> None:
        self.box_id = schema.check_box_id(box_id)
        # carried by every status, the last will included (e.g. simulated=True: a simulated box never passes
        # for a real one, even when it has dropped off)
        self.status_fields = dict(status_fields or {})
        self.host, self.port = host, int(port)
        self.tls, self.username, self.password = tls, username, password
        self.firmware_version = firmware_version
        self.model_versions = dict(model_versions)
        self.keepalive_s = int(keepalive_s)
        self.config_validator = config_validator
        self.clock = clock
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self.outbox = Outbox(outbox_path, max_rows=outbox_max_rows, max_bytes=outbox_max_bytes)
        self.prefix = schema.box_prefix(box_id)

        self._commands: dict[str, Callable[[dict], dict]] = {"ping": self._ping}
        self._config_handler: Callable[[object], object] | None = None
        self._last_config_digest: str | None = None
        self.incoming_config_version: str | None = None
        self.config_version: str | None = None
        self._status: dict[str, Any] = {"state": "online"}
        self._discovery = False

        self._client: paho.Client | None = None
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="bedtime-mqtt-cmd")
        # Outbox pump state, guarded by _pump_lock. PUBACKs are queued by paho's callback and applied
        # under the lock later, never inside the callback (paho holds its own lock there).
        self._pump_lock = threading.Lock()
        self._inflight: dict[int, int] = {}
        self._last_sent_row = 0
        self._acks: collections.deque[tuple[int, bool]] = collections.deque()
        # Alerts the outbox refused (disk full, nothing droppable left): kept in memory, sent after the
        # outbox's rows; their own outbox_id and seq so a console neither drops them as duplicates nor
        # reports a gap. _inflight maps a mid to an outbox row id (int) or to such an alert (tuple).
        self._memory_alerts: collections.deque[tuple[str, bytes, int, bool]] = collections.deque(
            maxlen=MEMORY_ALERTS_MAX)
        self._memory_id = f"mem-{os.urandom(5).hex()}"
        self._memory_seq = 0
        self._reported_problem: str | None = None
        self.stats = collections.Counter()
        # The one lock around every use of the paho client (see the module docstring), and the socket
        # pair that wakes the link thread's select when a publisher left bytes for it to write.
        self._net_lock = threading.RLock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # ---- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the link thread (returns at once; the link connects and reconnects by itself)."""
        if self._thread is not None:
            raise RuntimeError("BoxLink already started")
        self._thread = threading.Thread(target=self._run, name=f"bedtime-mqtt-{self.box_id}", daemon=True)
        self._thread.start()

    def stop(self, *, timeout_s: float = 3.0) -> None:
        """Say goodbye (status ``offline``, retained), disconnect and stop. Undelivered rows stay in the
        outbox for the next start."""
        client = self._client
        if client is not None and self._connected.is_set():
            try:
                qos, retain = schema.CHANNELS["status"]
                info = self._send(client, schema.topic(self.box_id, "status"),
                                  schema.encode(self._status_payload("offline")), qos=qos, retain=retain)
                info.wait_for_publish(timeout=min(1.0, timeout_s))  # outside the lock: the link thread acks
            except (RuntimeError, ValueError) as e:
                log.warning("could not publish offline status on stop: %s", e)
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._worker.shutdown(wait=False, cancel_futures=True)
        self.outbox.close()
        for s in (self._wake_r, self._wake_w):
            s.close()

    @property
    def connected(self) -> bool:
        """True while the broker has accepted the connection."""
        return self._connected.is_set()

    @property
    def outbox_depth(self) -> int:
        """QoS 1 messages stored and not yet acknowledged by the broker."""
        return len(self.outbox)

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until connected and subscribed to commands and config (or the timeout); return whether so."""
        deadline = time.monotonic() + timeout_s
        return self._connected.wait(timeout_s) and \
            self._subscribed.wait(max(0.0, deadline - time.monotonic())) and self._connected.is_set()

    def wait_delivered(self, timeout_s: float) -> bool:
        """Block until the outbox is empty (or the timeout); return whether it is."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.outbox_depth == 0:
                return True
            time.sleep(0.02)
        return self.outbox_depth == 0

    # ---- publishing (any thread) --------------------------------------------------------------
    def publish_status(self, state: str, **fields: Any) -> None:
        """Set and publish the retained status (``online``, ``recording``, ``idle``, ``fault``)."""
        self._status_payload(state, **fields)  # validate before storing
        self._status = {"state": state, **fields}
        self._publish_channel("status", self._status_payload(**self._status))

    def publish_stage(self, epoch: Epoch) -> None:
        """Publish one scored epoch (QoS 0; dropped while offline)."""
        self._publish_channel("stage", schema.stage_payload(self.box_id, self.clock(), epoch))

    def publish_telemetry(self, **fields: Any) -> None:
        """Publish telemetry (QoS 0, retained: the last values), e.g. ``signal_quality_percent``,
        ``impedance_kohm``, ``frames_dropped``, ``frames_corrupt``, ``cpu_percent``, ``temperature_c``."""
        self._publish_channel("telemetry", schema.telemetry_payload(self.box_id, self.clock(), **fields))

    def publish_event(self, kind: str, **fields: Any) -> int:
        """Queue an event (QoS 1, via the outbox); return its ``seq``."""
        payload = schema.event_payload(self.box_id, self.clock(), kind=kind, **fields)
        return self._enqueue("event", payload, PRIORITY_EVENT)

    def publish_alert(self, *, title: str, message: str, severity: str, **fields: Any) -> int:
        """Queue an alert for people (QoS 1, via the outbox); return its ``seq``.

        ``title``/``message`` are shown on a phone's lock screen; ``severity`` is ``info``,
        ``warning`` or ``critical``; extra fields (``kind``, ``epoch_index``, ``p_loop``...) are for machines.
        """
        payload = schema.alert_payload(self.box_id, self.clock(), title=title, message=message,
                                       severity=severity, **fields)
        return self._enqueue("alert", payload, PRIORITY_ALERT)

    def publish_report(self, report: dict) -> int:
        """Queue the night report (QoS 1, retained, via the outbox); return its ``seq``."""
        return self._enqueue("report", schema.report_payload(self.box_id, self.clock(), report), PRIORITY_EVENT)

    def publish_discovery(self) -> None:
        """Publish Home Assistant discovery configs (retained) now and after every reconnect."""
        self._discovery = True
        if self.connected:
            self._send_discovery(self._client)

    # ---- subscriptions ------------------------------------------------------------------------
    def on_command(self, name: str, handler: Callable[[dict], dict]) -> None:
        """Handle ``cmd/<name>``: ``handler(validated_args) -> result dict``.

        ``name`` must be one of :data:`appliance.protocol.commands.COMMANDS`; the arguments are validated before
        the handler sees them. An exception in the handler becomes a ``handler_error`` reply.
        """
        if name not in cmds.COMMANDS:
            raise ValueError(f"{name!r} is not a known command; add its spec to appliance.protocol.commands.COMMANDS")
        self._commands[name] = handler

    def on_config(self, handler: Callable[[object], object]) -> None:
        """Handle the retained ``config`` topic: ``handler(validated_config)`` runs only for a config that
        passed ``config_validator``; a refused one is reported with a ``config_rejected`` event."""
        self._config_handler = handler

    # ---- internals: payloads ------------------------------------------------------------------
    def outbox_problem(self) -> str | None:
        """What is wrong with the outbox's storage (a full disk), as the status reports it; None if fine."""
        problem = self.outbox.problem
        held = len(self._memory_alerts)
        if held:
            problem = f"{problem or 'outbox full'}; {held} alerts held in memory only"
        return problem

    def _status_payload(self, state: str, **fields: Any) -> dict:
        try:
            depth = len(self.outbox) if state != "offline" else None
        except sqlite3.Error as e:  # a broken outbox must not also silence the status
            log.error("outbox depth unknown: %s", e)
            depth = None
        extra = {"config_version": self.config_version, "outbox_depth": depth, **self.status_fields}
        problem = self.outbox_problem() if state != "offline" else None
        if problem is not None:
            extra["outbox_problem"] = problem
        extra.update(fields)  # the daemon's own fields win over the link's defaults
        for reserved in ("firmware_version", "model_versions", "schema", "box_id", "time_utc", "online"):
            extra.pop(reserved, None)
        return schema.status_payload(self.box_id, self.clock(), state=state, firmware_version=self.firmware_version,
                                     model_versions=self.model_versions, **extra)

    def _ping(self, args: dict) -> dict:
        return {"firmware_version": self.firmware_version, "model_versions": self.model_versions,
                "outbox_depth": self.outbox_depth, "config_version": self.config_version}

    # ---- internals: sending -------------------------------------------------------------------
    def _publish_channel(self, channel: str, payload: dict) -> bool:
        """Publish now with the channel's QoS/retain from ``schema.CHANNELS``; dropped while offline."""
        qos, retain = schema.CHANNELS[channel]
        client = self._client
        if client is None or not self._connected.is_set():
            self.stats["dropped_offline"] += 1
            return False
        info = self._send(client, schema.topic(self.box_id, channel), schema.encode(payload), qos=qos, retain=retain)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _send(self, client: paho.Client, topic: str, payload: bytes, *, qos: int, retain: bool,
              properties: Properties | None = None) -> paho.MQTTMessageInfo:
        """Publish through the connection's single writer (any thread); wake the link thread if paho
        could not write everything at once (a multi-MB reply), so it finishes the write.

        A QoS 0 message has no acknowledgement to wait for, yet paho calls ``on_publish`` once it is written,
        building a reason code and an empty MQTT v5 property set for it (most of the Python cost of a stage
        message); the callback is therefore off while paho writes one. Safe: every use of the client holds
        ``_net_lock``, so no PUBACK of a QoS 1 message is read meanwhile; and a QoS 0 message paho finishes
        writing later calls it as before, where its ``mid`` matches nothing in flight.
        """
        with self._net_lock:
            if qos == 0:
                callback, client.on_publish = client.on_publish, None
                try:
                    info = client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
                finally:
                    client.on_publish = callback
            else:
                info = client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
            unsent = client.want_write()
        if unsent:
            self._wake()
        return info

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"w")
        except OSError:  # full (already awake) or closed (stopping)
            pass

    def _enqueue(self, channel: str, payload: dict, priority: int) -> int:
        """Store in the outbox and pump; return the seq (0 for an event the full disk refused)."""
        qos, retain = schema.CHANNELS[channel]
        topic = schema.topic(self.box_id, channel)
        try:
            seq = self.outbox.put(topic, payload, channel=channel, priority=priority, qos=qos, retain=retain)
        except OutboxFullError as e:
            self.stats["outbox_refused"] += 1
            if priority < PRIORITY_ALERT:
                log.warning("%s not stored: %s", channel, e)
                seq = 0
            else:
                # Nothing droppable left on a full disk: keep the alert in memory rather than lose it.
                with self._pump_lock:
                    self._memory_seq += 1
                    seq = self._memory_seq
                    if len(self._memory_alerts) == self._memory_alerts.maxlen:
                        self.stats["memory_alerts_dropped"] += 1
                    self._memory_alerts.append((topic, schema.encode(
                        {**payload, "outbox_id": self._memory_id, "seq": seq}), qos, retain))
                log.error("alert held in memory only (%d held): %s", len(self._memory_alerts), e)
        self._pump()
        return seq

    def _pump(self) -> None:
        """Apply received PUBACKs, then publish outbox rows in order while the window allows."""
        with self._pump_lock:
            acked: list[int] = []
            while self._acks:
                mid, ok = self._acks.popleft()
                row_id = self._inflight.pop(mid, None)
                if row_id is None:
                    continue
                if not ok:
                    # A broker that refuses a message (e.g. not authorised) will refuse it again;
                    # keeping it would block every later alert behind it.
                    self.stats["rejected"] += 1
                    log.error("broker refused outbox row %s; dropped", row_id if isinstance(row_id, int) else "(memory)")
                if isinstance(row_id, int):
                    acked.append(row_id)
            if acked:
                try:
                    # One transaction for all acknowledged rows; never raises for a full disk (the rows
                    # are marked delivered and never sent again).
                    self.outbox.ack_many(acked)
                except sqlite3.Error:
                    log.exception("could not delete %d delivered outbox rows", len(acked))
            try:
                self.outbox.retry_pending()
            except sqlite3.Error:
                log.exception("outbox retry failed")
            client = self._client
            if client is None or not self._connected.is_set():
                return
            room = INFLIGHT_WINDOW - len(self._inflight)
            alert_topic = schema.topic(self.box_id, "alert")
            if room > 0:
                for row in self.outbox.peek(after_row_id=self._last_sent_row, limit=room):
                    if row.topic == alert_topic:
                        self._publish_alert_text(client, row.payload, qos=row.qos)
                    info = self._send(client, row.topic, row.payload, qos=row.qos, retain=row.retain)
                    if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        return  # connection going down; the next session re-sends from the outbox
                    self._inflight[info.mid] = row.row_id
                    self._last_sent_row = row.row_id
                    room -= 1
            while room > 0 and self._memory_alerts:
                item = self._memory_alerts.popleft()
                if item[0] == alert_topic:
                    self._publish_alert_text(client, item[1], qos=item[2])
                info = self._send(client, item[0], item[1], qos=item[2], retain=item[3])
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._memory_alerts.appendleft(item)
                    return
                self._inflight[info.mid] = item
                room -= 1
        problem = self.outbox_problem()
        if problem != self._reported_problem and self._connected.is_set():
            self._reported_problem = problem  # the status says what is wrong (and when it is over)
            self.publish_status(**self._status)

    def _publish_alert_text(self, client: paho.Client, payload: bytes, *, qos: int) -> None:
        """Publish an outbox alert's plain-text copy, just *before* the alert itself.

        Why no outbox row of its own: it would double the rows (and halve the alerts) the outbox's bounds
        hold. Why before: the broker handles one connection's packets in order, so once the alert's PUBACK
        arrives (and its row is deleted) the copy has reached the broker too; if the connection dies first,
        both are sent again from the outbox. At least once, like the alert.
        """
        try:
            alert = schema.decode(payload)
            text = schema.alert_text(alert["title"], alert["message"])
        except (schema.SchemaError, KeyError, TypeError) as e:  # alerts are written by publish_alert: never here
            log.error("an outbox alert has no title/message for its text copy: %s", e)
            return
        self._send(client, schema.alert_text_topic(self.box_id), text, qos=qos, retain=False)

    def _send_discovery(self, client: paho.Client | None) -> None:
        if client is None:
            return
        for t, cfg in homeassistant.discovery_payloads(self.box_id, firmware_version=self.firmware_version).items():
            self._send(client, t, schema.encode(cfg), qos=1, retain=True)

    # ---- internals: connection ----------------------------------------------------------------
    def _make_client(self) -> paho.Client:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bedtime-{self.box_id}",
                        protocol=paho.MQTTv5)
        c.max_inflight_messages_set(INFLIGHT_WINDOW)
        if self.username is not None:
            c.username_pw_set(self.username, self.password)
        if self.tls is not None:
            c.tls_set(ca_certs=str(self.tls.ca_file),
                      certfile=None if self.tls.cert_file is None else str(self.tls.cert_file),
                      keyfile=None if self.tls.key_file is None else str(self.tls.key_file),
                      cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        c.will_set(schema.topic(self.box_id, "status"), schema.encode(self._status_payload("offline")),
                   *schema.CHANNELS["status"])
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        return c

    def _run(self) -> None:
        backoff = self.reconnect_min_s
        while not self._stop.is_set():
            client = self._make_client()
            was_up = False
            try:
                client.connect(self.host, self.port, keepalive=self.keepalive_s, clean_start=True)
            except (OSError, ssl.SSLError) as e:
                log.info("broker %s:%d unreachable: %s", self.host, self.port, e)
            except Exception:  # never let the link thread die: log, back off, try again
                log.exception("unexpected error connecting to %s:%d", self.host, self.port)
            else:
                try:
                    was_up = self._session(client)
                except Exception:
                    log.exception("unexpected error in the MQTT session; reconnecting")
            self._connected.clear()
            self._subscribed.clear()
            with self._pump_lock:
                self._client = None
                # Alerts held in memory and not acknowledged go back to the front, in order.
                for item in reversed([v for v in self._inflight.values() if not isinstance(v, int)]):
                    self._memory_alerts.appendleft(item)
                self._inflight.clear()
                self._acks.clear()
                self._last_sent_row = 0
            sock = client.socket()
            if sock is not None:  # a session that ended without paho closing it (CONNACK timeout)
                try:
                    sock.close()
                except OSError:
                    pass
            if self._stop.is_set():
                break
            backoff = self.reconnect_min_s if was_up else min(backoff * 2, self.reconnect_max_s)
            delay = backoff * random.uniform(0.8, 1.2)
            self.stats["reconnects"] += 1
            self._stop.wait(delay)

    def _session(self, client: paho.Client) -> bool:
        """Run one connection until it drops or stop(); return whether the broker accepted it."""
        self._session_dead = False
        with self._pump_lock:
            self._client = client
        # paho checks keepalive only once connected; a CONNECT swallowed by a dead network would hang.
        connack_deadline = time.monotonic() + max(2.0, 2 * self.keepalive_s)
        accepted = False
        while not self._stop.is_set() and not self._session_dead:
            rc = self._loop_once(client, timeout_s=0.05)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            if self._connected.is_set():
                accepted = True
                self._pump()
            elif time.monotonic() > connack_deadline:
                log.warning("no CONNACK from %s:%d within %.0f s", self.host, self.port,
                            max(2.0, 2 * self.keepalive_s))
                break
        if self._stop.is_set():
            try:
                with self._net_lock:
                    client.disconnect()
                self._loop_once(client, timeout_s=0.1)
            except (OSError, ValueError):
                pass
        return accepted

    def _loop_once(self, client: paho.Client, *, timeout_s: float) -> MQTTErrorCode:
        """One turn of the network loop (what paho's ``loop()`` does), waiting outside ``_net_lock``.

        Waits up to ``timeout_s`` (s) for the socket to be readable (or writable, if bytes wait), or for
        another thread to wake us; then reads, writes and runs keepalive under the lock.
        """
        sock = client.socket()
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        with self._net_lock:
            want_write = client.want_write()
        pending = sock.pending() if hasattr(sock, "pending") else 0  # TLS bytes already decrypted
        try:
            readable, _, _ = select.select([sock, self._wake_r], [sock] if want_write else [], [],
                                           0.0 if pending else timeout_s)
        except (TypeError, ValueError, OSError):  # socket closed under us: the connection is gone
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if self._wake_r in readable:
            try:
                self._wake_r.recv(4096)
            except OSError:
                pass
        with self._net_lock:
            if sock in readable or pending:
                rc = client.loop_read()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or client.socket() is None:
                    return rc
            if client.want_write():
                rc = client.loop_write()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return rc
            return client.loop_misc()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused connection: %s", reason_code)
            self._session_dead = True
            return
        set_tcp_nodelay(client)
        log.info("connected to %s:%d", self.host, self.port)
        self.stats["connects"] += 1
        client.subscribe([(f"{self.prefix}/cmd/+", 1), (schema.topic(self.box_id, "config"), 1)])
        qos, retain = schema.CHANNELS["status"]
        self._reported_problem = self.outbox_problem()
        self._send(client, schema.topic(self.box_id, "status"), schema.encode(self._status_payload(**self._status)),
                   qos=qos, retain=retain)
        if self._discovery:
            self._send_discovery(client)
        self._connected.set()
        try:
            dropped = self.outbox.take_unreported_drops()
            if dropped:
                self.outbox.put(schema.topic(self.box_id, "event"),
                                schema.event_payload(self.box_id, self.clock(), kind="outbox_overflow",
                                                     dropped_total=dropped), channel="event", over_bound=True)
        except (OutboxFullError, sqlite3.Error) as e:  # a full disk must not cost the connection
            log.warning("outbox_overflow notice not stored: %s", e)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [rc for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("broker refused the command/config subscriptions: %s (check the ACL)", refused)
        self._subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set():
            if self._stop.is_set():  # our own goodbye from stop(): the end of a night, not a fault
                log.info("disconnected from broker: %s", reason_code)
            else:
                log.warning("disconnected from broker: %s", reason_code)
        self._connected.clear()
        self._session_dead = True

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acks.append((mid, not reason_code.is_failure))

    def _on_message(self, client, userdata, msg: paho.MQTTMessage) -> None:
        # Handlers may be slow (a report, a self-test): run them off the network thread.
        self._worker.submit(self._handle_message, msg.topic, bytes(msg.payload), msg.properties, msg.retain)

    # ---- internals: commands and config -------------------------------------------------------
    def _handle_message(self, topic: str, payload: bytes, props: Properties | None, retained: bool) -> None:
        try:
            if topic == schema.topic(self.box_id, "config"):
                self._handle_config(payload)
            elif topic.startswith(f"{self.prefix}/cmd/"):
                self._handle_command(topic.rsplit("/", 1)[1], payload, props, retained=retained)
        except Exception:  # a handler bug must never kill the command thread
            log.exception("error handling %s", topic)

    def _handle_command(self, name: str, payload: bytes, props: Properties | None, *, retained: bool = False) -> None:
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        if not (isinstance(response_topic, str) and response_topic.startswith(f"{self.prefix}/reply/")):
            # The ACL lets a box publish only under its own subtree; a reply anywhere else would be
            # silently dropped by the broker, so answer on the default reply topic instead.
            response_topic = f"{self.prefix}/reply/{name if re.fullmatch(r'[a-z][a-z0-9_]{0,31}', name) else 'invalid'}"
        try:
            if retained:
                # A command kept by the broker would run again at every connect (a retained restart: a restart
                # loop); commands are one-off, so a retained one is refused.
                raise cmds.CommandError("bad_payload", "retained command refused: commands are never retained")
            args = cmds.parse_command(name, payload, now=self.clock())
            handler = self._commands.get(name)
            if handler is None:
                raise cmds.CommandError("unknown_command", f"command {name!r} is not supported by this box")
            try:
                result = handler(args)
            except Exception as e:
                log.exception("command %s failed", name)
                raise cmds.CommandError("handler_error", f"{type(e).__name__}: {e}") from e
            reply = schema.reply_payload(self.box_id, self.clock(), command=name, ok=True, result=result or {})
            self.stats["commands_ok"] += 1
        except cmds.CommandError as e:
            log.warning("command %s refused: %s", name, e)
            reply = schema.reply_payload(self.box_id, self.clock(), command=name, ok=False,
                                         error=str(e), code=e.code)
            self.stats["commands_refused"] += 1
        props_out = Properties(PacketTypes.PUBLISH)
        if correlation is not None:
            props_out.CorrelationData = correlation
        try:
            data = schema.encode(reply)
        except ValueError as e:  # result not JSON-serialisable
            data = schema.encode(schema.reply_payload(self.box_id, self.clock(), command=name, ok=False,
                                                      error=f"result not JSON: {e}", code="handler_error"))
        client = self._client
        if client is not None and self._connected.is_set():
            self._send(client, response_topic, data, qos=1, retain=False, properties=props_out)

    def _handle_config(self, payload: bytes) -> None:
        if not payload:
            return  # the retained config was cleared; keep running with what we have
        digest = hashlib.sha256(payload).hexdigest()
        if len(payload) > MAX_CONFIG_BYTES:
            if digest != self._last_config_digest:
                self._last_config_digest = digest
                self.publish_event("config_rejected", config_version=None, config_sha256=digest,
                                   error=f"config message of {len(payload)} bytes; at most {MAX_CONFIG_BYTES}")
            return
        if digest == self._last_config_digest:
            return  # the same retained config, redelivered on reconnect
        self._last_config_digest = digest
        version = None
        try:
            env = schema.decode(payload)
            version = env.get("config_version")
            schema.validate("config", env)
            if env["box_id"] != self.box_id:
                raise schema.SchemaError(f"config is addressed to {env['box_id']!r}, not {self.box_id!r}")
            config = env["config"]
            validated = self.config_validator(config) if self.config_validator is not None else config
        except Exception as e:
            error = cmds.clip(f"{type(e).__name__}: {e}", 400)
            version = version[:64] if isinstance(version, str) else None
            log.warning("config %s refused: %s", version, error)
            self.publish_event("config_rejected", config_version=version, config_sha256=digest, error=error)
            return
        if self._config_handler is None:
            # Valid, but nothing on this box would apply it: say so rather than claim it was applied.
            self.publish_event("config_rejected", config_version=version, config_sha256=digest,
                               error="this box applies no pushed configuration (no config handler)")
            return
        self.incoming_config_version = version  # for the handler: the version of the config it is given
        try:
            self._config_handler(validated)
        except Exception as e:
            log.exception("config handler failed")
            self.publish_event("config_rejected", config_version=version, config_sha256=digest,
                               error=cmds.clip(f"handler failed: {type(e).__name__}: {e}", 400))
            return
        self.config_version = version
        self.publish_event("config_applied", config_version=version, config_sha256=digest)
        self.publish_status(**self._status)
