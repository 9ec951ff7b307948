"""The clinic console without its broker: it starts, says so on every page, and follows the fleet once it is back.

A clinic's console comes up after a power cut whether or not mosquitto is up yet. Before, ``bedtime-fleet serve``
with the broker down printed uvicorn's traceback ("Application startup failed") and exited; and a console that
lost its broker while running looked exactly like one with a quiet fleet. Here the real ``bedtime-fleet serve``
(uvicorn, real TCP) runs against Debian's mosquitto with the project's ACL, started only after the console.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.fleet.db import FleetDB
from appliance.fleet.web.cli import listen_address
from tests.broker import USERS, MosquittoBroker, free_port, make_box, mosquitto_available
from tests.console_helpers import PASSWORDS, add_staff, csrf_of, wait_for

BANNER = "Not connected to the broker at"


def _bedtime_fleet() -> str:
    return str(Path(sys.executable).with_name("bedtime-fleet"))


class _Events(threading.Thread):
    """Reads the console's ``/events`` stream (its own connection, the session's cookies) and keeps each ``broker``
    event's data."""

    def __init__(self, client: httpx.Client) -> None:
        super().__init__(name="sse-reader", daemon=True)
        self.client = httpx.Client(base_url=client.base_url, cookies=client.cookies, timeout=30)
        self.broker_events, self.error = [], None

    def run(self) -> None:
        kind = None
        try:
            with self.client.stream("GET", "/events", timeout=httpx.Timeout(10, read=None)) as r:
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind == "broker":
                        self.broker_events.append(json.loads(line[6:]))
        except Exception as e:  # the console stopping ends the stream; anything else is the test's failure
            self.error = e
        finally:
            self.client.close()


@pytest.mark.broker
@pytest.mark.skipif(not mosquitto_available(), reason="Debian's mosquitto is not installed")
def test_console_serves_without_its_broker_says_so_and_follows_the_fleet_once_it_is_up(tmp_path, mqtt_pki):
    broker = MosquittoBroker(tmp_path / "mq", mqtt_pki)  # ports chosen, not started yet
    db_url = f"sqlite:///{tmp_path}/fleet.db"
    db = FleetDB(db_url)
    add_staff(db)
    db.close()
    pw = tmp_path / "fleet.pw"
    pw.write_text(USERS["fleet"])
    pw.chmod(0o600)
    http_port = free_port()
    serve = subprocess.Popen(
        [_bedtime_fleet(), "--host", broker.host, "--port", str(broker.auth_port), "--username", "fleet",
         "--password-file", str(pw), "serve", "--db", db_url, "--listen", f"127.0.0.1:{http_port}", "--plain-http",
         "--secret-file", str(tmp_path / "session.key")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    client = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30)
    box = None
    try:
        def up() -> bool:
            assert serve.poll() is None, serve.communicate()[1][-3000:]
            try:
                return client.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        assert wait_for(up, 120), "the console did not start without its broker"
        health = client.get("/healthz").json()
        assert health["ok"] is True and health["ingest"]["connected"] is False
        assert health["ingest"]["problem"] == "cannot reach the broker"

        page = client.get("/login")
        r = client.post("/login", data={"username": "victor", "password": PASSWORDS["victor"],
                                        "csrf_token": csrf_of(page.text)})
        assert r.status_code in (200, 303), r.text[:500]
        for path in ("/", "/alerts", "/audit"):  # every page says it
            text = client.get(path).text
            assert f"{BANNER} {broker.host}:{broker.auth_port}" in text and "cannot reach the broker" in text, path
        events = _Events(client)
        events.start()
        assert wait_for(lambda: events.broker_events, 30), events.error
        assert events.broker_events[0] == {"connected": False, "problem": "cannot reach the broker"}

        broker.start()  # mosquitto comes up after the console, as after a power cut
        # paho retries 1 s to 30 s apart: bound the wait well past its longest delay
        assert wait_for(lambda: client.get("/fragments/broker-link").text.strip() == "", 120), \
            client.get("/fragments/broker-link").text
        assert BANNER not in client.get("/").text
        assert wait_for(lambda: {"connected": True, "problem": None} in events.broker_events, 30), \
            events.broker_events

        box = make_box(tmp_path, "box-a", broker.host, broker.auth_port, username="box-a", password=USERS["box-a"])
        box.start()
        assert box.wait_connected(30)
        box.publish_alert(title="Nightmare loop", message="the breather did not settle it", severity="warning")
        assert wait_for(lambda: "the breather did not settle it" in client.get("/alerts").text, 60)

        broker.stop()  # the broker goes away while staff watch: the open page learns it from the live feed
        assert wait_for(lambda: not events.broker_events[-1]["connected"] and len(events.broker_events) >= 3, 60), \
            events.broker_events
        banner = client.get("/fragments/broker-link").text
        assert BANNER in banner and ("the connection was lost" in banner or "cannot reach the broker" in banner)
        # Stopped (as systemd does) with a dashboard's live stream still open: the stream ends at once, so the
        # stop does not wait out uvicorn's graceful timeout and cancel the stream with a traceback, as it did.
        assert events.is_alive()
    finally:
        if box is not None:
            box.stop()
        client.close()
        serve.send_signal(signal.SIGINT)
        try:
            _, err = serve.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
            _, err = serve.communicate()
        broker.stop()
    assert serve.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "graceful shutdown exceeded" not in err, err[-3000:]
    assert "serving from the database and trying again in the background" in err
    events.join(30)
    assert not events.is_alive()


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.from_regex(r"\A\[?[0-9a-z.:]{0,20}\]?:[0-9]{1,7}\Z")))
def test_listen_address_is_an_address_and_a_port_or_a_one_line_refusal(text):
    try:
        host, port = listen_address(text)
    except argparse.ArgumentTypeError as e:
        assert "\n" not in str(e)
        return
    assert 1 <= port <= 65535 and host and not any(c.isspace() for c in host)


@pytest.mark.parametrize("listen", ["abc", "127.0.0.1:99999", "127.0.0.1:", ":8080x", "no where:80", ":٣٣"])
def test_serve_refuses_a_bad_listen_address_in_one_line(tmp_path, capsys, listen):
    from appliance.fleet import cli

    db = tmp_path / "serve.db"
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--no-mqtt", "--db", f"sqlite:///{db}", "--listen", listen,
                  "--secret-file", str(tmp_path / "k")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--listen" in err and "Traceback" not in err
    assert not db.exists() and not (tmp_path / "k").exists()  # nothing created


@pytest.mark.broker
def test_link_state_names_a_refusal_and_a_lost_connection(broker):
    from appliance.fleet.ingest import FleetIngest

    wrong = FleetIngest(broker.host, broker.auth_port, username="fleet", password="not the password")
    wrong.start(wait_s=None)
    try:
        assert wait_for(lambda: (wrong.link_state().problem or "").startswith("the broker refused the connection"), 30)
        assert wrong.link_state().connected is False
    finally:
        wrong.stop()
    ingest = FleetIngest(broker.host, broker.auth_port, username="fleet", password=USERS["fleet"])
    ingest.start(wait_s=None)
    try:
        assert ingest.wait_subscribed(30)
        up = ingest.link_state()
        assert up.connected and up.problem is None and up.where == f"{broker.host}:{broker.auth_port}"
        broker.stop()
        assert wait_for(lambda: not ingest.link_state().connected, 30)
        down = ingest.link_state()
        assert down.since >= up.since and down.problem in ("the connection was lost", "cannot reach the broker")
    finally:
        ingest.stop()
