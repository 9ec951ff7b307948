"""BoxLink against a real mosquitto: retained status and last will, QoS 1 alerts in order across a broker
restart, a 5-minute network cut and a box restart, commands and config validation."""
from __future__ import annotations

import time

import pytest

from appliance.fleet.ingest import FleetIngest
from appliance.protocol import schema
from tests.broker import (BlackholeProxy, Recorder, SimClock, collapse_redeliveries, make_box, seqs,
                          wait_until)

pytestmark = pytest.mark.broker


def alert(link, i: int, **kw) -> int:
    return link.publish_alert(title="Nightmare loop", message=f"Loop #{i} did not settle after the breather.",
                              severity="warning", kind="loop_persisted", n=i, **kw)


def test_status_is_retained_and_the_last_will_sets_it_offline(broker, tmp_path):
    proxy = BlackholeProxy(broker.host, broker.port)
    link = make_box(tmp_path, "box-a", proxy.host, proxy.port, keepalive_s=1, reconnect_min_s=30)
    link.start()
    try:
        assert link.wait_connected(30)
        link.publish_status("recording", night_start_utc="2026-11-22T21:00:00.000Z")
        probe = Recorder(broker.host, broker.port, ["bedtime/v1/+/status"])
        assert probe.wait_for(lambda r: any(p["state"] == "recording" for p in r.of("/status")))
        probe.close()
        # A console that connects later still sees the status: it is retained.
        late = Recorder(broker.host, broker.port, ["bedtime/v1/+/status"])
        assert late.wait_for(lambda r: any(p["state"] == "recording" for p in r.of("/status")))
        t, p, retained = late.messages[-1]
        assert t == "bedtime/v1/box-a/status" and retained and p["online"] is True
        assert schema.validate("status", p)["model_versions"] == {"stager": "s1", "loops": "l1"}
        # The box vanishes from the network (no FIN, no RST): the broker's keepalive check fires the
        # will, which sets the retained status offline.
        proxy.cut()
        assert late.wait_for(lambda r: r.of("/status")[-1]["state"] == "offline", timeout_s=30)
        assert late.of("/status")[-1]["online"] is False
        late.close()
        again = Recorder(broker.host, broker.port, ["bedtime/v1/+/status"])
        assert again.wait_for(lambda r: r.messages and r.messages[-1][2] and r.of("/status")[-1]["state"] == "offline")
        again.close()
    finally:
        link.stop()
        proxy.close()


def test_clean_stop_leaves_retained_status_offline(broker, tmp_path):
    link = make_box(tmp_path, "box-a", broker.host, broker.port)
    link.start()
    assert link.wait_connected(30)
    link.stop()
    rec = Recorder(broker.host, broker.port, ["bedtime/v1/box-a/status"])
    assert rec.wait_for(lambda r: r.of("/status") and r.of("/status")[-1]["state"] == "offline")
    rec.close()


def test_alerts_arrive_exactly_once_in_order_across_a_broker_restart(broker, tmp_path):
    rec = Recorder(broker.host, broker.port, ["bedtime/v1/+/alert"], persistent=True)
    ingest = FleetIngest(broker.host, broker.port, group=None, client_id="console-restart-test").start()
    link = make_box(tmp_path, "box-a", broker.host, broker.port)
    link.start()
    try:
        assert link.wait_connected(30)
        for i in range(40):
            alert(link, i)
            if i == 15:
                broker.stop()  # mid-stream: some alerts are in flight, the rest queue in the outbox
            time.sleep(0.005)
        assert wait_until(lambda: not link.connected, 30)
        assert link.outbox_depth > 0
        time.sleep(0.5)
        broker.start()
        for i in range(40, 60):
            alert(link, i)
        assert link.wait_delivered(30), f"outbox still holds {link.outbox_depth}"
        assert rec.wait_for(lambda r: len(set(seqs(r.of("/alert")))) == 60, timeout_s=30)
        assert ingest.connected or wait_until(lambda: ingest.connected, 30)
        assert wait_until(lambda: ingest.stats["alert"] == 60, 30), ingest.stats
    finally:
        link.stop()
    raw = seqs(rec.of("/alert"))
    # Never out of order; a message the broker took just before it stopped may come twice (QoS 1
    # is at-least-once), and the ingest drops that duplicate by (outbox_id, seq).
    assert collapse_redeliveries(raw) == list(range(1, 61))
    assert len(raw) - 60 <= 20, "at most one in-flight window may be re-delivered"
    assert ingest.box("box-a").alerts == 60
    # the payloads too (a re-delivered one may come again right after itself, as 14 did once under load: 0..14, 14)
    assert collapse_redeliveries([p["n"] for p in rec.of("/alert")])[:16] == list(range(16))
    ingest.stop()
    rec.close()


def test_alerts_survive_a_five_minute_network_cut_in_order(broker, tmp_path):
    """A night's worth of 5 minutes of alerts, one per simulated second, generated while the network is
    blackholed (no RST: the box must notice through its keepalive), then healed."""
    clock = SimClock()
    proxy = BlackholeProxy(broker.host, broker.port)
    got: list[dict] = []
    ingest = FleetIngest(broker.host, broker.port, group=None, on_alert=lambda b, p: got.append(p)).start()
    rec = Recorder(broker.host, broker.port, ["bedtime/v1/box-a/alert"])
    link = make_box(tmp_path, "box-a", proxy.host, proxy.port, keepalive_s=1, clock=clock)
    link.start()
    try:
        assert link.wait_connected(30)
        for i in range(10):  # before the cut
            alert(link, i)
            clock.advance(1)
        assert link.wait_delivered(30)
        proxy.cut()
        cut_started = clock()
        noticed_at = None
        for i in range(10, 310):  # 300 simulated seconds = 5 minutes of cut
            alert(link, i, epoch_index=i // 30)
            clock.advance(1)
            time.sleep(0.01)
            if noticed_at is None and not link.connected:
                noticed_at = i
        assert noticed_at is not None, "the box never noticed the dead link (keepalive)"
        assert (clock() - cut_started).total_seconds() == 300
        assert proxy.dropped_bytes > 0
        assert link.outbox_depth >= 300 - noticed_at
        proxy.heal()
        for i in range(310, 320):
            alert(link, i)
            clock.advance(1)
        assert link.wait_delivered(30), f"outbox still holds {link.outbox_depth}"
        assert wait_until(lambda: len(got) == 320, 30), len(got)
    finally:
        link.stop()
        proxy.close()
    assert [p["n"] for p in got] == list(range(320))
    assert seqs(got) == list(range(1, 321))
    assert collapse_redeliveries(seqs(rec.of("/alert"))) == list(range(1, 321))
    times = [schema.parse_iso_utc(p["time_utc"]) for p in got]
    assert times == sorted(times) and (times[309] - times[10]).total_seconds() == 299
    ingest.stop()
    rec.close()


def test_outbox_survives_a_box_restart_while_the_broker_is_down(broker, tmp_path):
    """Alerts raised while the broker is away, then a daemon restart (power cut): still delivered."""
    broker.stop()
    link = make_box(tmp_path, "box-a", broker.host, broker.port)
    link.start()
    for i in range(5):
        alert(link, i)
    assert not link.connected and link.outbox_depth == 5
    link.stop()
    broker.start()
    rec = Recorder(broker.host, broker.port, ["bedtime/v1/box-a/alert"])
    link2 = make_box(tmp_path, "box-a", broker.host, broker.port)
    link2.start()
    try:
        alert(link2, 5)
        assert link2.wait_delivered(30)
        assert rec.wait_for(lambda r: len(r.of("/alert")) == 6)
    finally:
        link2.stop()
    assert [p["n"] for p in rec.of("/alert")] == list(range(6))
    assert seqs(rec.of("/alert")) == list(range(1, 7))
    rec.close()


# ---- commands ---------------------------------------------------------------------------------

@pytest.fixture
def box_and_console(broker, tmp_path):
    link = make_box(tmp_path, "box-a", broker.host, broker.port)
    state = {"breather_enabled": True, "calls": 0}

    def set_breather(args):
        state["calls"] += 1
        state["breather_enabled"] = args["enabled"]
        return {"breather_enabled": state["breather_enabled"]}

    def selftest(args):
        raise RuntimeError("light driver not ready")

    link.on_command("set_breather", set_breather)
    link.on_command("selftest", selftest)
    link.start()
    ingest = FleetIngest(broker.host, broker.port, group=None).start()
    assert link.wait_connected(30)
    yield link, ingest, state
    link.stop()
    ingest.stop()


def test_commands_reply_with_correlation_and_bad_ones_change_nothing(box_and_console, broker):
    link, ingest, state = box_and_console
    pong = ingest.request("box-a", "ping", timeout_s=30)
    assert pong["ok"] and pong["result"]["firmware_version"] == "0.1.0" and pong["command"] == "ping"
    ok = ingest.request("box-a", "set_breather", {"enabled": False}, timeout_s=30)
    assert ok["ok"] and ok["result"] == {"breather_enabled": False} and state["calls"] == 1
    bad = [
        ("set_breather", {"enabled": "no"}, "bad_args"),
        ("set_breather", {}, "bad_args"),
        ("set_breather", {"enabled": True, "volume": 0.9}, "bad_args"),
        ("restart", {}, "unknown_command"),       # known to the schema, no handler on this box
        ("selftest", {}, "handler_error"),
    ]
    for name, args, code in bad:
        r = ingest.request("box-a", name, args, timeout_s=30, check=False)
        assert not r["ok"] and r["error"]["code"] == code, (name, r)
    # Not even a command: unknown name and a body that is not JSON, sent raw with a response topic.
    rec = Recorder(broker.host, broker.port, ["bedtime/v1/box-a/reply/#"])
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    for topic, body in [("bedtime/v1/box-a/cmd/format_disk", b"{}"), ("bedtime/v1/box-a/cmd/set_breather", b"\x00{")]:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "bedtime/v1/box-a/reply/raw"
        props.CorrelationData = b"c1"
        rec.c.publish(topic, body, qos=1, properties=props)
    assert rec.wait_for(lambda r: len(r.of("/reply/raw")) == 2)
    assert sorted(p["error"]["code"] for p in rec.of("/reply/raw")) == ["bad_payload", "unknown_command"]
    # None of it changed anything.
    assert state == {"breather_enabled": False, "calls": 1}
    assert link.stats["commands_refused"] == 7
    rec.close()


# ---- config -----------------------------------------------------------------------------------

def test_config_is_validated_applied_acknowledged_and_a_bad_one_changes_nothing(broker, tmp_path):
    from appliance.protocol.boxconfig import validate_config

    applied = []
    link = make_box(tmp_path, "box-a", broker.host, broker.port, config_validator=validate_config)
    link.on_config(applied.append)
    events = []
    ingest = FleetIngest(broker.host, broker.port, group=None, on_event=lambda b, p: events.append(p)).start()
    link.start()
    try:
        assert link.wait_connected(30)
        good = {"box": {"id": "box-a", "name": "Mia's room"}, "breather": {"cue_volume": 0.1}}
        ingest.push_config("box-a", good, config_version="v1")
        assert wait_until(lambda: any(e["kind"] == "config_applied" for e in events), 30), events
        assert len(applied) == 1 and applied[0].box.name == "Mia's room" and link.config_version == "v1"
        assert wait_until(lambda: ingest.box("box-a").config_version == "v1", 30)
        # Outside the breather's safety envelope: refused by the box's own validator, reported, nothing applied.
        unsafe = {"breather": {"cue_volume": 0.9}}
        ingest.push_config("box-a", unsafe, config_version="v2-unsafe")
        # Not even a config: wrong shape, published raw.
        ingest._client.publish(schema.topic("box-a", "config"), b'{"schema":1,"config":"loud"}', qos=1,
                               retain=True).wait_for_publish(5)
        assert wait_until(lambda: sum(e["kind"] == "config_rejected" for e in events) == 2, 30), events
        rejected = [e for e in events if e["kind"] == "config_rejected"]
        assert rejected[0]["config_version"] == "v2-unsafe" and "cue_volume" in rejected[0]["error"]
        assert len(applied) == 1 and link.config_version == "v1"
        # A box with no config handler says so instead of claiming it applied anything.
        link._config_handler = None
        ingest.push_config("box-a", good, config_version="v4")
        assert wait_until(lambda: any(e.get("config_version") == "v4" for e in events), 30)
        (v4,) = [e for e in events if e.get("config_version") == "v4"]
        assert v4["kind"] == "config_rejected" and "no config handler" in v4["error"]
        assert link.config_version == "v1"
        # The validator on the console side refuses the unsafe config before it is ever published.
        with pytest.raises(Exception, match="cue_volume"):
            ingest.push_config("box-a", unsafe, config_version="v3", validator=validate_config)
    finally:
        link.stop()
        ingest.stop()


def test_a_full_outbox_keeps_the_newest_alerts_and_says_what_it_dropped(broker, tmp_path):
    """Disk policy end to end: offline too long for the outbox, events go first, then the oldest alerts;
    the drop is announced once the box is back."""
    rec = Recorder(broker.host, broker.port, ["bedtime/v1/box-a/alert", "bedtime/v1/box-a/event"], persistent=True)
    broker.stop()
    link = make_box(tmp_path, "box-a", broker.host, broker.port, outbox_max_rows=5)
    link.start()
    try:
        link.publish_event("breather_started")
        for i in range(7):
            alert(link, i)
        assert link.outbox_depth == 5 and link.outbox.dropped == 3
        broker.start()  # the recorder's persistent session survives: it gets everything
        assert link.wait_delivered(30)
        assert rec.wait_for(lambda r: len(r.of("/alert")) == 5 and r.of("/event"))
    finally:
        link.stop()
    assert [p["n"] for p in rec.of("/alert")] == [2, 3, 4, 5, 6]  # the newest five, in order
    assert [(e["kind"], e["dropped_total"]) for e in rec.of("/event")] == [("outbox_overflow", 3)]
    rec.close()


def test_a_simulated_box_says_so_in_every_status_and_in_its_last_will(broker, tmp_path):
    # A box on the chip simulator ([hardware] simulate = true) must never pass for a real one on the parent's
    # phone or the clinic's console: simulated=true rides on the retained status, the last will included.
    proxy = BlackholeProxy(broker.host, broker.port)
    link = make_box(tmp_path, "box-a", proxy.host, proxy.port, keepalive_s=1, reconnect_min_s=30,
                    status_fields={"simulated": True})
    link.start()
    try:
        assert link.wait_connected(30)
        link.publish_status("recording")
        probe = Recorder(broker.host, broker.port, ["bedtime/v1/+/status"])
        assert probe.wait_for(lambda r: any(p["state"] == "recording" for p in r.of("/status")))
        assert all(p["simulated"] is True for p in probe.of("/status"))
        proxy.cut()  # vanishes without a goodbye: the broker publishes the will
        assert probe.wait_for(lambda r: r.of("/status")[-1]["state"] == "offline", timeout_s=30)
        assert probe.of("/status")[-1]["simulated"] is True
        probe.close()
    finally:
        link.stop()
        proxy.close()


def test_stage_messages_skip_paho_s_publish_callback_and_alerts_are_still_acknowledged(broker, tmp_path):
    """A QoS 0 stage message is written without paho's on_publish (nothing to acknowledge; paho builds a reason
    code and property set for it), while every QoS 1 message around it is acknowledged and the outbox empties."""
    from tests.test_breather import R, ep

    link = make_box(tmp_path, "box-a", broker.host, broker.port)
    rec = Recorder(broker.host, broker.port, ["bedtime/v1/box-a/stage", "bedtime/v1/box-a/alert"])
    link.start()
    try:
        assert link.wait_connected(30)
        called: list[int] = []
        sent: dict[int, list[int]] = {0: [], 1: []}
        client = link._client
        real_callback, real_publish = client.on_publish, client.publish

        def counting(c, userdata, mid, reason_code, properties):
            called.append(mid)
            real_callback(c, userdata, mid, reason_code, properties)

        def publish(topic, payload=None, qos=0, retain=False, properties=None):
            info = real_publish(topic, payload, qos=qos, retain=retain, properties=properties)
            sent[qos].append(info.mid)
            return info

        with link._net_lock:
            client.on_publish, client.publish = counting, publish
        for i in range(20):
            alert(link, i)
            link.publish_stage(ep(i, R, p_loop=0.5))
        assert link.wait_delivered(30), "alerts not acknowledged"
        assert rec.wait_for(lambda r: len(r.of("/stage")) == 20 and len(r.of("/alert")) >= 20)
        assert [p["epoch_index"] for p in rec.of("/stage")] == list(range(20))
        assert client.on_publish is counting  # put back after each QoS 0 message
        assert len(sent[0]) == 20 and len(sent[1]) >= 20
        assert wait_until(lambda: set(sent[1]) <= set(called))  # every QoS 1 message acknowledged
        assert not set(sent[0]) & set(called)  # no callback for the stage messages (all written at once)
    finally:
        link.stop()
        rec.close()
