"""The console's ingest survives any payload on any topic it reads (issue 11, High #1).

A box may publish anything on its own topics (the broker ACL lets it), so every kind of garbage is
generated with hypothesis: wrong types in every field (``seq`` as a string was the reported crash),
huge payloads, deeply nested JSON, binary and non-UTF-8 bytes, retained or not. Each must be counted and
dropped (or handled), and a valid alert from another box must still arrive afterwards.

Two levels: the ingest's message handler directly (fast, many examples), and the real thing: mosquitto
started from the shipped docs/mosquitto/mosquitto.conf and ACL (tests/broker.py ``DocsBroker``), hostile
messages from box-b's own credentials, the console app with its real :class:`FleetIngest`, and box-a's
real :class:`BoxLink` alert reaching the console's database.
"""
from __future__ import annotations

import datetime as dt
import json
import math

import paho.mqtt.client as paho
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from appliance.fleet.ingest import MAX_JSON_DEPTH, FleetIngest, json_problem
from appliance.protocol import schema
from tests.console_helpers import console_settings, create_app, wait_for

CHANNELS = ("status", "telemetry", "alert", "event", "stage", "report")
NOW = "2026-11-23T02:00:00.000Z"

# ---- generated payloads ---------------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10 ** 300), max_value=10 ** 300)
           | st.sampled_from([10 ** 400, -(10 ** 400), 10 ** 4000, 2 ** 64, -(2 ** 63) - 1])
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
           | st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=3))
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)


def _valid(channel: str, box_id: str, seq: int = 1) -> dict:
    base = {"schema": schema.SCHEMA_VERSION, "box_id": box_id, "time_utc": NOW}
    return {**base, **{
        "status": {"state": "recording", "online": True, "firmware_version": "1.0", "model_versions": {"s": "1"},
                   "config_version": "c1", "outbox_depth": 0, "seq": seq},
        "telemetry": {"signal_quality_percent": 90.0, "seq": seq},
        "alert": {"title": "Loop", "message": "m", "severity": "warning", "seq": seq},
        "event": {"kind": "config_applied", "config_version": "c2", "seq": seq},
        "stage": {"epoch_index": 1, "end_time_s": 30.0, "stage": "N2", "stage_code": 2, "signal_ok": True,
                  "p_loop": 0.1},
        "report": {"report": {"night_start": "2026-11-22T20:00:00Z", "interventions": {"loops_detected": 1}}},
    }[channel]}


@st.composite
def mutated(draw, box_id: str = "box-b") -> bytes:
    """A valid payload with some fields replaced by arbitrary JSON (gets past decoding, into the logic)."""
    channel = draw(st.sampled_from(CHANNELS))
    p = _valid(channel, box_id)
    for key in draw(st.lists(st.sampled_from(sorted(p) + ["seq", "outbox_id", "p_loop", "group", "report"]),
                             max_size=4)):
        p[key] = draw(json_values)
    return json.dumps(p, allow_nan=True).encode("utf-8", "surrogatepass")


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    inner = b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"schema":1,"box_id":"box-b","time_utc":"' + NOW.encode() + b'","report":' + inner + b"}"


hostile_payloads = st.one_of(
    mutated(),
    st.binary(max_size=200),
    st.binary(max_size=50).map(lambda b: b"\xff\xfe" + b),  # never UTF-8
    st.text(max_size=50).map(lambda t: t.encode("utf-8", "surrogatepass")),
    json_values.map(lambda v: json.dumps(v, allow_nan=True).encode("utf-8", "surrogatepass")),
    st.builds(_nested, st.sampled_from([MAX_JSON_DEPTH + 1, 200, 5_000, 200_000]), st.sampled_from(["list", "dict"])),
    st.sampled_from([300_000, 3_000_000]).map(lambda n: json.dumps({**_valid("telemetry", "box-b"),
                                                                       "blob": "x" * n}).encode()),
)
hostile_topics = st.sampled_from([f"{schema.TOPIC_PREFIX}/box-b/{c}" for c in CHANNELS]
                                 + [f"{schema.TOPIC_PREFIX}/box-b/reply/anything"])


def message(topic: str, payload: bytes, *, retain: bool = False) -> paho.MQTTMessage:
    m = paho.MQTTMessage(topic=topic.encode())
    m.payload, m.retain = payload, retain
    return m


# ---- unit level: the ingest's message handler -----------------------------------------------------
def test_json_bounds():
    assert json_problem({"a": [1, {"b": 2}]}, max_depth=3) is None
    assert json_problem({"a": [1, {"b": [2]}]}, max_depth=3)[0] == "too_deep"
    assert json_problem({"a": [1.0, {"b": float("nan")}]})[0] == "invalid" == json_problem([float("-inf")])[0]
    deep: list = []
    cur = deep
    for _ in range(100_000):  # deeper than any recursive walk could go
        cur.append([])
        cur = cur[0]
    assert json_problem(deep) is not None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(topic=hostile_topics, payload=hostile_payloads, retain=st.booleans())
def test_handler_survives_any_payload_and_keeps_ingesting(topic, payload, retain):
    got = []
    ingest = FleetIngest("127.0.0.1", 1, group=None, on_alert=lambda b, p: got.append((b, p["seq"])),
                         on_status=lambda b, p: None, on_telemetry=lambda b, p: None)
    handler = ingest._client.on_message  # exactly what paho's network thread calls
    handler(ingest._client, None, message(topic, payload, retain=retain))  # must not raise
    handler(ingest._client, None, message(f"{schema.TOPIC_PREFIX}/box-a/alert", json.dumps(_valid("alert", "box-a", 7)).encode()))
    assert got[-1] == ("box-a", 7)
    assert ingest.stats["received"] == 2
    view = ingest.boxes  # the snapshot (deep copies) still works whatever was stored
    assert view["box-a"].alerts == 1
    b = view.get("box-b")
    if b is not None:  # whatever was accepted from box-b is well-typed in the view
        assert b.firmware_version is None or isinstance(b.firmware_version, str)
        assert b.config_version is None or isinstance(b.config_version, str)
        assert b.last_p_loop is None or math.isfinite(b.last_p_loop)
        assert b.last_seen_utc <= dt.datetime.now(dt.timezone.utc)


def test_non_integer_seq_is_counted_and_dropped():
    """The reported crash: ``int(seq)`` on a status whose seq is not an integer."""
    statuses = []
    ingest = FleetIngest("127.0.0.1", 1, group=None, on_status=lambda b, p: statuses.append(b))
    for seq in ("x", 1.5, None, [1], True, -1, 2 ** 64):
        ingest._client.on_message(ingest._client, None, message(
            f"{schema.TOPIC_PREFIX}/box-b/status", json.dumps(_valid("status", "box-b", 0) | {"seq": seq}).encode()))
    assert statuses == [] and ingest.stats["dropped"] == 7 and ingest.stats["dropped_invalid"] == 7
    ingest._client.on_message(ingest._client, None, message(
        f"{schema.TOPIC_PREFIX}/box-b/status", json.dumps(_valid("status", "box-b", 3)).encode()))
    assert statuses == ["box-b"]


# ---- the real thing: the shipped mosquitto config and ACL, the console app, real boxes ---------------
@pytest.fixture
def shipped(tmp_path, mqtt_pki):
    """mosquitto from docs/mosquitto/mosquitto.conf (password + ACL listener on ``plain_port``)."""
    from tests.broker import DocsBroker

    with DocsBroker(tmp_path / "docs-broker", mqtt_pki) as b:
        yield b


def _client(broker, user: str) -> paho.Client:
    from tests.broker import USERS

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=paho.MQTTv5)
    c.username_pw_set(user, USERS[user])
    c.connect(broker.host, broker.plain_port, keepalive=30)
    c.loop_start()
    assert wait_for(c.is_connected, 10)
    return c


@pytest.mark.broker
def test_console_survives_hostile_box_over_real_broker(shipped, tmp_path):
    from tests.broker import USERS, make_box

    broker = shipped
    settings_ = console_settings(f"sqlite:///{tmp_path}/fleet.db", tmp_path)

    def new_console():
        ingest = FleetIngest(broker.host, broker.plain_port, username="fleet", password=USERS["fleet"],
                             group="bedtime-console")
        return create_app(settings_, ingest=ingest), ingest

    app, ingest = new_console()
    db = app.state.db
    hostile = _client(broker, "box-b")
    box_a = make_box(tmp_path, "box-a", broker.host, broker.plain_port, username="box-a",
                     password=USERS["box-a"])
    box_a.start()
    assert box_a.wait_connected(10)
    sent = {"n": 0}

    def alert_arrives(client: TestClient) -> None:
        sent["n"] += 1
        box_a.publish_alert(title="Loop", message=f"alert {sent['n']}", severity="warning")
        wait_for(lambda: len(db.recent_alerts(limit=1000, box_id="box-a")) >= sent["n"], 20)
        r = client.get("/healthz")
        assert r.status_code == 200 and r.json()["ingest"]["thread_alive"], r.text

    try:
        with TestClient(app) as client:
            alert_arrives(client)

            @settings(max_examples=60, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
            @given(topic=hostile_topics, payload=hostile_payloads, retain=st.booleans())
            def one(topic, payload, retain):
                if topic.endswith("/reply/anything"):  # replies to this very console, asked for or not
                    topic = topic.replace("anything", ingest.reply_tag)
                info = hostile.publish(topic, payload, qos=1, retain=retain)
                info.wait_for_publish(10)
                alert_arrives(client)

            one()
            # The reported case, retained: a status whose seq is not an integer.
            hostile.publish(f"{schema.TOPIC_PREFIX}/box-b/status",
                            json.dumps(_valid("status", "box-b") | {"seq": "not a number"}), qos=1,
                            retain=True).wait_for_publish(10)
            alert_arrives(client)
            health = client.get("/healthz").json()["ingest"]
            assert health["dropped"] > 0 and health["last_message_age_s"] is not None
        # A console starting now gets box-b's retained garbage first, and still follows box-a.
        app2, _ = new_console()
        with TestClient(app2) as client2:
            alert_arrives(client2)
            assert client2.get("/healthz").status_code == 200
    finally:
        box_a.stop()
        hostile.disconnect()
        hostile.loop_stop()
        db.close()


@pytest.mark.broker
def test_healthz_fails_when_the_ingest_thread_is_dead(shipped, tmp_path):
    from tests.broker import USERS

    settings_ = console_settings(f"sqlite:///{tmp_path}/fleet.db", tmp_path)
    ingest = FleetIngest(shipped.host, shipped.plain_port, username="fleet", password=USERS["fleet"])
    app = create_app(settings_, ingest=ingest)
    with TestClient(app) as client:
        ok = client.get("/healthz")
        assert ok.status_code == 200 and ok.json()["ingest"]["thread_alive"] is True
        ingest._client.loop_stop()  # the network thread ends (as it did after an exception in a callback)
        r = client.get("/healthz")
        assert r.status_code == 503 and r.json()["ingest"]["thread_alive"] is False
        assert r.headers["x-content-type-options"] == "nosniff"
    app.state.db.close()


# ---- ingest + the console's database bridge, on both engines --------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    from tests.postgres import db_url_for

    return db_url_for(request, tmp_path)


def test_whatever_the_ingest_accepts_the_database_stores(db_url):
    """Every payload that passes the ingest's checks is written without error (NUL, lone surrogates,
    huge numbers, odd types), so no accepted alert is lost in the database write."""
    from appliance.fleet.db import FleetDB
    from appliance.fleet.web.bridge import IngestBridge
    from appliance.fleet.web.mqtt_ingest import attach_bridge

    db = FleetDB(db_url)
    bridge = IngestBridge(db, telemetry_flush_s=0.0)
    ingest = FleetIngest("127.0.0.1", 1, group=None)
    attach_bridge(ingest, bridge)
    seq = {"n": 0}

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(topic=hostile_topics, payload=hostile_payloads | mutated().map(lambda b: b.replace(b"Loop", b"\\u0000\\ud800")))
    def one(topic, payload):
        ingest._client.on_message(ingest._client, None, message(topic, payload))
        seq["n"] += 1
        ingest._client.on_message(ingest._client, None, message(
            f"{schema.TOPIC_PREFIX}/box-a/alert", json.dumps(_valid("alert", "box-a", seq["n"])).encode()))
        assert len(db.recent_alerts(limit=seq["n"] + 1, box_id="box-a")) == seq["n"]  # every one stored, none more

    try:
        one()
        assert ingest.stats["callback_errors"] == 0, ingest.stats
    finally:
        db.close()


def test_a_box_cannot_put_itself_in_a_rollout_group(tmp_path):
    """Group membership (``canary`` gets rollouts first) comes from operators only, not a box's status."""
    from appliance.fleet.db import FleetDB
    from appliance.fleet.web.bridge import IngestBridge

    db = FleetDB(f"sqlite:///{tmp_path}/fleet.db")
    bridge = IngestBridge(db)
    bridge.on_status("box-b", _valid("status", "box-b") | {"group": "canary"})
    assert db.get_box("box-b")["group_name"] == ""
    db.upsert_box("box-b", group_name="ward3")  # what the console's operator form does
    bridge.on_status("box-b", _valid("status", "box-b") | {"group": "canary"})
    assert db.get_box("box-b")["group_name"] == "ward3"
    db.close()


@pytest.mark.broker
def test_the_broker_never_sends_the_console_a_packet_over_its_limit(shipped, tmp_path):
    """MQTT v5 Maximum Packet Size: an oversized message is dropped by the broker, never read here."""
    from tests.broker import USERS

    broker = shipped
    alerts = []
    ingest = FleetIngest(broker.host, broker.plain_port, username="fleet", password=USERS["fleet"],
                         group=None, max_packet_bytes=512 * 1024,
                         on_alert=lambda b, p: alerts.append((b, p["seq"]))).start()
    hostile, box_a = _client(broker, "box-b"), _client(broker, "box-a")
    try:
        big = json.dumps(_valid("alert", "box-b", 1) | {"pad": "x" * (2 * 1024 * 1024)}).encode()
        hostile.publish(f"{schema.TOPIC_PREFIX}/box-b/alert", big, qos=1).wait_for_publish(10)
        box_a.publish(f"{schema.TOPIC_PREFIX}/box-a/alert", json.dumps(_valid("alert", "box-a", 1)),
                      qos=1).wait_for_publish(10)
        wait_for(lambda: alerts, 20)
        assert alerts == [("box-a", 1)] and ingest.stats["received"] == 1  # the 2 MB one never arrived
        assert ingest.health()["thread_alive"]
    finally:
        for c in (hostile, box_a):
            c.disconnect()
            c.loop_stop()
        ingest.stop()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(payload=hostile_payloads)
def test_a_hostile_reply_to_a_pending_command_fails_that_command_only(payload):
    from concurrent.futures import Future

    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    ingest = FleetIngest("127.0.0.1", 1, group=None)
    corr = b"0123456789abcdef"
    fut: Future = Future()
    ingest._pending[corr] = fut  # what request() registers before it publishes the command
    m = message(f"{schema.TOPIC_PREFIX}/box-b/reply/{ingest.reply_tag}", payload)
    m.properties = Properties(PacketTypes.PUBLISH)
    m.properties.CorrelationData = corr
    ingest._client.on_message(ingest._client, None, m)  # must not raise
    assert fut.done()
    if fut.exception() is None:
        assert isinstance(fut.result(), dict)  # a decodable v1 object: the caller checks the rest
    else:
        assert isinstance(fut.exception(), schema.SchemaError)
