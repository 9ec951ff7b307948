"""Broker-side security with the shipped config: box isolation, family accounts, client id = user name,
passwords, TLS and mutual TLS (docs/mosquitto/, run unchanged but for host paths and ports)."""
from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from appliance.mqtt import TLSSettings
from appliance.protocol import schema
from tests.broker import ACL, MOSQUITTO, DocsBroker, Recorder, make_box, wait_until

pytestmark = pytest.mark.broker
DOCS = Path(__file__).resolve().parents[1] / "docs" / "mosquitto"


def rules(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_shipped_acl_example_is_the_one_tested_here():
    shipped = rules((DOCS / "acl.conf").read_text())
    assert rules(ACL)[:len(shipped)] == shipped
    # Only family blocks follow the shipped rules, and nobody but the console reads every box.
    extra = rules(ACL)[len(shipped):]
    assert extra and all(r.startswith(("user family-", "topic read bedtime/v1/box-", "topic read homeassistant/+/box-",
                                        "topic write homeassistant/status")) for r in extra), extra
    assert [r for r in rules(ACL) if r == "topic read bedtime/v1/#"] == ["topic read bedtime/v1/#"]


def test_a_box_can_only_touch_its_own_topics(broker, tmp_path):
    h, p = broker.host, broker.auth_port
    fleet = Recorder(h, p, ["bedtime/v1/#"], username="fleet", password="pw-fleet")
    ha = Recorder(h, p, ["homeassistant/#"], username="family-smith", password="pw-smith")
    a = make_box(tmp_path, "box-a", h, p, username="box-a", password="pw-a")
    b = make_box(tmp_path, "box-b", h, p, username="box-b", password="pw-b")
    b_configs = []
    b.on_config(b_configs.append)
    # A hostile box's credentials (box-c): tries to read box-b and to speak for box-b.
    spy = Recorder(h, p, ["bedtime/v1/box-b/#", "bedtime/v1/+/alert"], username="box-c", password="pw-c")
    a.start(), b.start()
    try:
        assert a.wait_connected(30) and b.wait_connected(30)
        a.publish_alert(title="Loop", message="from a", severity="warning")
        a.publish_discovery()
        b.publish_alert(title="Loop", message="from b", severity="warning")
        forged = schema.alert_payload("box-b", schema.utc_now(), title="FAKE", message="forged by a",
                                      severity="critical") | {"seq": 999}
        spy.c.publish("bedtime/v1/box-b/alert", schema.encode(forged), qos=1).wait_for_publish(5)
        spy.c.publish("bedtime/v1/box-b/config", schema.encode(schema.config_payload(
            "box-b", schema.utc_now(), config={}, config_version="evil")), qos=1, retain=True).wait_for_publish(5)
        spy.c.publish("homeassistant/sensor/box-b/sleep_stage/config", b"{}", qos=1, retain=True).wait_for_publish(5)
        assert a.wait_delivered(30) and b.wait_delivered(30)
        assert fleet.wait_for(lambda r: len(r.of("/alert")) >= 2)
        assert ha.wait_for(lambda r: len(r.messages) >= 6)
        spy.c.publish("bedtime/v1/box-c/alert", schema.encode(schema.alert_payload(
            "box-c", schema.utc_now(), title="Loop", message="from c", severity="info")), qos=1).wait_for_publish(5)
        assert spy.wait_for(lambda r: len(r.messages) >= 1)
        time.sleep(0.3)  # give anything that should not arrive a chance to arrive
    finally:
        a.stop(), b.stop()
    # The clinic sees both boxes' real alerts and nothing forged.
    assert sorted(p["message"] for p in fleet.of("/alert") if p["box_id"] != "box-c") == ["from a", "from b"]
    assert not any(p and p.get("config_version") == "evil" for _, p, _ in fleet.messages)
    # box-b never received a config; the spy heard nothing of box-a or box-b (its own alert only).
    assert b_configs == [] and b.config_version is None
    assert [t for t, _, _ in spy.messages] == ["bedtime/v1/box-c/alert"]
    # Discovery: box-a may announce itself, not box-b (the Smiths' account reads box-a's only).
    assert ha.messages and all("/box-a/" in t for t, _, _ in ha.messages)
    for r in (fleet, ha, spy):
        r.close()


def test_wrong_or_missing_credentials_are_refused(broker, tmp_path):
    for user, pw in [("box-a", "wrong"), (None, None), ("nobody", "x")]:
        link = make_box(tmp_path / str(user), "box-a", broker.host, broker.auth_port, username=user, password=pw)
        link.start()
        try:
            assert not wait_until(lambda: link.connected, 0.5)
        finally:
            link.stop()


def test_tls_is_required_where_configured(broker, tmp_path, mqtt_pki):
    rec = Recorder(broker.host, broker.port, ["bedtime/v1/#"])  # the open loopback listener
    creds = {"username": "box-a", "password": "pw-a"}
    good = make_box(tmp_path / "good", "box-a", broker.host, broker.tls_port, tls=TLSSettings(mqtt_pki.ca_file), **creds)
    plain = make_box(tmp_path / "plain", "box-a", broker.host, broker.tls_port, **creds)
    wrong_ca = make_box(tmp_path / "ca", "box-a", broker.host, broker.tls_port,
                        tls=TLSSettings(mqtt_pki.other_ca_file), **creds)
    mtls = make_box(tmp_path / "mtls", "box-a", broker.host, broker.mtls_port,
                    tls=TLSSettings(mqtt_pki.ca_file, mqtt_pki.client_cert, mqtt_pki.client_key))
    no_cert = make_box(tmp_path / "nocert", "box-a", broker.host, broker.mtls_port, tls=TLSSettings(mqtt_pki.ca_file))
    try:
        for link in (plain, wrong_ca, no_cert):
            link.start()
        assert not wait_until(lambda: plain.connected or wrong_ca.connected or no_cert.connected, 1.5)
        for link in (plain, wrong_ca, no_cert):
            link.stop()
        good.start()
        assert good.wait_connected(30)
        good.publish_alert(title="Loop", message="over TLS", severity="info")
        assert good.wait_delivered(30)
        good.stop()
        # Mutual TLS: the certificate's CN (box-a) is the user name, so the ACL still applies.
        mtls.start()
        assert mtls.wait_connected(30)
        mtls.publish_alert(title="Loop", message="over mutual TLS", severity="info")
        assert mtls.wait_delivered(30)
        assert rec.wait_for(lambda r: len(r.of("/alert")) == 2)
    finally:
        mtls.stop()
    assert [p["message"] for p in rec.of("/alert")] == ["over TLS", "over mutual TLS"]
    assert "box-a" in [p["box_id"] for p in rec.of("/status")]
    rec.close()


def test_shipped_mosquitto_conf_starts_with_test_files_substituted(tmp_path, mqtt_pki, broker):
    """docs/mosquitto/mosquitto.conf is a real, loadable config (paths swapped for test files)."""
    conf = (DOCS / "mosquitto.conf").read_text()
    subs = {"/etc/mosquitto/certs/ca.crt": mqtt_pki.ca_file, "/etc/mosquitto/certs/server.crt": mqtt_pki.server_cert,
            "/etc/mosquitto/certs/server.key": mqtt_pki.server_key, "/etc/mosquitto/passwd": broker.passwd_file,
            "/etc/mosquitto/bedtime.acl": DOCS / "acl.conf"}
    for k, v in subs.items():
        assert k in conf, k
        conf = conf.replace(k, str(v))
    from tests.broker import free_port
    port = free_port()
    conf = re.sub(r"^listener 8883.*$", f"listener {port} 127.0.0.1", conf, flags=re.M)
    conf = re.sub(r"^listener 1883.*$", f"listener {free_port()} 127.0.0.1", conf, flags=re.M)
    conf = re.sub(r"^log_dest .*$", "", conf, flags=re.M)
    # its own folder: without a location mosquitto wrote mosquitto.db into the checkout (the working directory)
    conf = re.sub(r"^persistence_location .*$", f"persistence_location {tmp_path}/", conf, flags=re.M)
    conf += f"\nuser {__import__('getpass').getuser()}\n"
    path = tmp_path / "docs.conf"
    path.write_text(conf)
    proc = subprocess.Popen([MOSQUITTO, "-c", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        link = make_box(tmp_path, "box-a", "127.0.0.1", port, tls=TLSSettings(mqtt_pki.ca_file),
                        username="box-a", password="pw-a")
        link.start()
        ok = link.wait_connected(30)
        link.stop()
        assert ok, proc.stdout.read1().decode() if proc.poll() is not None else "no connection"
    finally:
        proc.terminate()
        proc.wait(5)


def _hostile_client(host: str, port: int, *, username: str, password: str, client_id: str, tls_ca=None):
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    c.username_pw_set(username, password)
    if tls_ca is not None:
        c.tls_set(ca_certs=str(tls_ca))
    connected = []
    c.on_connect = lambda cl, u, f, rc, p: connected.append(rc)
    c.connect(host, port, keepalive=5)
    c.loop_start()
    return c, connected


def test_no_other_credential_can_take_over_a_box_s_connection(tmp_path, mqtt_pki):
    """Issue 11 #9: with the docs config, connecting with box-a's client id under any other credential
    (another box, a family, the console) no longer kicks box-a off; the broker gives each connection its
    user name as client id. Failed on the old docs config (box-a reconnected after every takeover)."""
    with DocsBroker(tmp_path / "docs-broker", mqtt_pki) as db:
        box = make_box(tmp_path, "box-a", db.host, db.tls_port, tls=TLSSettings(mqtt_pki.ca_file),
                       username="box-a", password="pw-a", keepalive_s=5)
        box.start()
        attackers = []
        try:
            assert box.wait_connected(30), db.log()
            assert box.stats["connects"] == 1
            creds = [("box-b", "pw-b"), ("family-smith", "pw-smith"), ("fleet", "pw-fleet")]
            for user, pw in creds:
                for cid in ("bedtime-box-a", "box-a"):  # BoxLink's own client id, and the user name
                    for port, ca in ((db.tls_port, mqtt_pki.ca_file), (db.plain_port, None)):
                        attackers.append(_hostile_client(db.host, port, username=user, password=pw,
                                                         client_id=cid, tls_ca=ca))
            # Every attacker is in (so each had its chance to take over), then box-a is still on its
            # first connection and still delivers.
            assert wait_until(lambda: all(conn for _, conn in attackers), 15), db.log()
            assert all(not conn[0].is_failure for _, conn in attackers)
            box.publish_alert(title="Loop", message="still here", severity="info")
            assert box.wait_delivered(30)
            assert box.connected and box.stats["connects"] == 1, db.log()
            assert box.stats["reconnects"] == 0
        finally:
            for c, _ in attackers:
                c.disconnect()
                c.loop_stop()
            box.stop()


def _publish_verdict(rec: Recorder, topic: str, payload: bytes, *, retain: bool = False) -> bool:
    """Publish at QoS 1 and return whether the broker accepted it (MQTT v5: a refused publish gets a
    PUBACK with reason "Not authorized")."""
    verdict: dict[int, bool] = {}
    done = threading.Event()

    def on_publish(c, u, mid, rc, props) -> None:
        verdict[mid] = not rc.is_failure
        done.set()

    rec.c.on_publish = on_publish
    info = rec.c.publish(topic, payload, qos=1, retain=retain)
    assert wait_until(lambda: info.mid in verdict, 30), topic
    return verdict[info.mid]


def test_a_family_reads_its_own_boxes_only_and_cannot_command_them(broker, tmp_path):
    """Issue 11 #12: each family account (made by ``bedtime-fleet family-acl``) reads only its own boxes'
    topics and discovery, may publish only Home Assistant's birth message, and cannot send commands or
    configs, nor forge alerts or discovery. Failed on the old ACL (one shared account read bedtime/v1/#)."""
    h, p = broker.host, broker.auth_port
    smith = Recorder(h, p, ["bedtime/v1/#", "homeassistant/#"], username="family-smith", password="pw-smith")
    jones = Recorder(h, p, ["bedtime/v1/#", "homeassistant/#"], username="family-jones", password="pw-jones")
    fleet = Recorder(h, p, ["bedtime/v1/#"], username="fleet", password="pw-fleet")
    boxes = {b: make_box(tmp_path, b, h, p, username=b, password=broker.users[b]) for b in ("box-a", "box-b", "box-c")}
    applied: dict[str, list] = {b: [] for b in boxes}
    verdicts: dict[str, bool] = {}
    try:
        for b, link in boxes.items():
            link.on_config(applied[b].append)
            link.start()
        assert all(link.wait_connected(30) for link in boxes.values())
        for b, link in boxes.items():
            link.publish_discovery()
            link.publish_alert(title="Loop", message=f"from {b}", severity="warning")
            link.publish_telemetry(signal_quality_percent=90.0)
        assert all(link.wait_delivered(30) for link in boxes.values())
        # The Smiths (box-a) try to command and configure their own box and the Joneses' box, and to
        # forge an alert and a discovery config; then Home Assistant's birth message.
        for target in ("box-a", "box-b"):
            verdicts[f"cmd {target}"] = _publish_verdict(smith, f"bedtime/v1/{target}/cmd/ping", b"{}")
            verdicts[f"config {target}"] = _publish_verdict(smith, f"bedtime/v1/{target}/config", schema.encode(
                schema.config_payload(target, schema.utc_now(), config={}, config_version="family")), retain=True)
            verdicts[f"alert {target}"] = _publish_verdict(smith, f"bedtime/v1/{target}/alert", schema.encode(
                schema.alert_payload(target, schema.utc_now(), title="FAKE", message="forged by family",
                                     severity="critical")))
            verdicts[f"discovery {target}"] = _publish_verdict(smith, f"homeassistant/sensor/{target}/x/config",
                                                               b"{}", retain=True)
        verdicts["birth"] = _publish_verdict(smith, "homeassistant/status", b"online")
        assert fleet.wait_for(lambda r: len(r.of("/alert")) >= 3)
        assert smith.wait_for(lambda r: len(r.of("/alert")) >= 1) and jones.wait_for(lambda r: len(r.of("/alert")) >= 1)
        # The console's account can command box-a, so the command path works and the families' commands
        # above were refused rather than slow.
        fleet.c.publish("bedtime/v1/box-a/cmd/ping", b"{}", qos=1).wait_for_publish(5)
        assert fleet.wait_for(lambda r: any(t.startswith("bedtime/v1/box-a/reply/") for t, _, _ in r.messages))
    finally:
        for link in boxes.values():
            link.stop()
    assert verdicts == {"birth": True} | {k: False for k in verdicts if k != "birth"}, verdicts
    replies = [t for t, _, _ in fleet.messages if "/reply/" in t]
    assert replies == ["bedtime/v1/box-a/reply/ping"]  # the console's ping only
    assert all(v == [] for v in applied.values())
    assert not any(p and p.get("message") == "forged by family" for _, p, _ in fleet.messages)
    for rec, own in ((smith, "box-a"), (jones, "box-b")):
        topics = [t for t, _, _ in rec.messages]
        assert topics and all(f"/{own}/" in t for t in topics), [t for t in topics if f"/{own}/" not in t]
        assert any(t.startswith("homeassistant/") for t in topics)  # its own discovery
        assert any(t == f"bedtime/v1/{own}/status" for t in topics)
        assert not any("/x/config" in t for t in topics)  # the forged discovery never got through
    for r in (smith, jones, fleet):
        r.close()


def test_family_acl_cli_writes_blocks_and_refuses_bad_input_with_one_line(tmp_path):
    """``bedtime-fleet family-acl``: the documented generator; bad input -> one line, exit 2, nothing written."""
    import sys

    base = DOCS / "acl.conf"
    out = tmp_path / "bedtime.acl"
    cmd = [sys.executable, "-m", "appliance.fleet.cli", "family-acl", "--base", str(base)]
    ok = subprocess.run(cmd + ["--family", "smith=box-a,box-a2", "--family", "jones=box-b", "--out", str(out)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    text = out.read_text()
    assert text.startswith(base.read_text())
    assert "user family-smith\ntopic read bedtime/v1/box-a/#\ntopic read homeassistant/+/box-a/#\n" \
           "topic read bedtime/v1/box-a2/#\ntopic read homeassistant/+/box-a2/#\ntopic write homeassistant/status\n" in text
    assert (out.stat().st_mode & 0o777) == 0o640
    before = out.read_bytes()
    for bad in (["--family", "smith"], ["--family", "Smith=box-a"], ["--family", "x=box/#"],
                ["--family", "x=+"], ["--family", "x="], ["--family", "a=b", "--family", "a=c"],
                ["--family", "x=family-y"]):
        r = subprocess.run(cmd + bad + ["--out", str(out)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (bad, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert out.read_bytes() == before


def test_the_shipped_broker_drops_a_client_sending_an_oversized_packet(tmp_path, mqtt_pki):
    """docs/mosquitto/mosquitto.conf's max_packet_size: a client (MQTT 3.1.1, which is never told the limit)
    sending a packet over 32 MiB + 64 KiB is disconnected and nothing reaches the console; 1 MB passes."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    with DocsBroker(tmp_path / "docs-broker", mqtt_pki) as db:
        fleet = Recorder(db.host, db.plain_port, ["bedtime/v1/+/reply/#"], username="fleet", password="pw-fleet")
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="box-a", protocol=paho.MQTTv311)
        c.username_pw_set("box-a", "pw-a")
        gone = threading.Event()
        c.on_disconnect = lambda *a: gone.set()
        c.connect(db.host, db.plain_port, keepalive=30)
        c.loop_start()
        try:
            assert wait_until(c.is_connected, 30)
            c.publish("bedtime/v1/box-a/reply/ok", b"{}" + b" " * 1_000_000, qos=1).wait_for_publish(30)
            assert fleet.wait_for(lambda r: any(t.endswith("/reply/ok") for t, _, _ in r.messages), 30)
            c.publish("bedtime/v1/box-a/reply/big", b"{}" + b" " * (33619968 + 1), qos=1)
            assert gone.wait(60), "the broker kept a client that sent an oversized packet"
            assert not wait_until(lambda: any(t.endswith("/reply/big") for t, _, _ in fleet.messages), 2)
        finally:
            c.loop_stop()
            fleet.close()
