"""Broker-side security with the shipped ACL patterns: box isolation, passwords, TLS and mutual TLS."""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from appliance import mqtt_schema as schema
from appliance.mqtt import TLSSettings
from tests.broker import ACL, MOSQUITTO, Recorder, make_box, wait_until

pytestmark = pytest.mark.broker
DOCS = Path(__file__).resolve().parents[1] / "docs" / "mosquitto"


def rules(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_shipped_acl_example_is_the_one_tested_here():
    assert rules((DOCS / "acl.conf").read_text()) == rules(ACL)


def test_a_box_can_only_touch_its_own_topics(broker, tmp_path):
    h, p = broker.host, broker.auth_port
    fleet = Recorder(h, p, ["bedtime/v1/#"], username="fleet", password="pw-fleet")
    ha = Recorder(h, p, ["homeassistant/#"], username="homeassistant", password="pw-ha")
    a = make_box(tmp_path, "box-a", h, p, username="box-a", password="pw-a")
    b = make_box(tmp_path, "box-b", h, p, username="box-b", password="pw-b")
    b_configs = []
    b.on_config(b_configs.append)
    # box-a's credentials used by a hostile client: tries to read box-b and to speak for box-b.
    spy = Recorder(h, p, ["bedtime/v1/box-b/#", "bedtime/v1/+/alert"], username="box-a", password="pw-a")
    a.start(), b.start()
    try:
        assert a.wait_connected(5) and b.wait_connected(5)
        a.publish_alert(title="Loop", message="from a", severity="warning")
        a.publish_discovery()
        b.publish_alert(title="Loop", message="from b", severity="warning")
        forged = schema.alert_payload("box-b", schema.utc_now(), title="FAKE", message="forged by a",
                                      severity="critical") | {"seq": 999}
        spy.c.publish("bedtime/v1/box-b/alert", schema.encode(forged), qos=1).wait_for_publish(5)
        spy.c.publish("bedtime/v1/box-b/config", schema.encode(schema.config_payload(
            "box-b", schema.utc_now(), config={}, config_version="evil")), qos=1, retain=True).wait_for_publish(5)
        spy.c.publish("homeassistant/sensor/box-b/sleep_stage/config", b"{}", qos=1, retain=True).wait_for_publish(5)
        assert a.wait_delivered(5) and b.wait_delivered(5)
        assert fleet.wait_for(lambda r: len(r.of("/alert")) >= 2)
        assert ha.wait_for(lambda r: len(r.messages) >= 6)
        time.sleep(0.3)  # give anything that should not arrive a chance to arrive
    finally:
        a.stop(), b.stop()
    # The clinic sees both boxes' real alerts and nothing forged.
    assert sorted(p["message"] for p in fleet.of("/alert")) == ["from a", "from b"]
    assert not any(p and p.get("config_version") == "evil" for _, p, _ in fleet.messages)
    # box-b never received a config; box-a's spy heard nothing of box-b (its own alert only).
    assert b_configs == [] and b.config_version is None
    assert [t for t, _, _ in spy.messages] == ["bedtime/v1/box-a/alert"]
    # Discovery: box-a may announce itself, not box-b.
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
        assert good.wait_connected(5)
        good.publish_alert(title="Loop", message="over TLS", severity="info")
        assert good.wait_delivered(5)
        good.stop()
        # Mutual TLS: the certificate's CN (box-a) is the user name, so the ACL still applies.
        mtls.start()
        assert mtls.wait_connected(5)
        mtls.publish_alert(title="Loop", message="over mutual TLS", severity="info")
        assert mtls.wait_delivered(5)
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
    conf = re.sub(r"^(persistence_location|log_dest) .*$", "", conf, flags=re.M)
    conf += f"\nuser {__import__('getpass').getuser()}\n"
    path = tmp_path / "docs.conf"
    path.write_text(conf)
    proc = subprocess.Popen([MOSQUITTO, "-c", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        link = make_box(tmp_path, "box-a", "127.0.0.1", port, tls=TLSSettings(mqtt_pki.ca_file),
                        username="box-a", password="pw-a")
        link.start()
        ok = link.wait_connected(5)
        link.stop()
        assert ok, proc.stdout.read1().decode() if proc.poll() is not None else "no connection"
    finally:
        proc.terminate()
        proc.wait(5)
