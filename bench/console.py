"""Clinic console under a 1,000-box fleet: dashboard load time and alert-to-screen latency.

Everything runs on loopback: a private mosquitto, the console (uvicorn + its real MQTT ingest + SQLite),
Debian's chromium through Playwright, and publishers speaking for the simulated boxes.

Why a few publisher connections and not 1,000 BoxLinks: this measures the *console* (ingest into the
database, page rendering, the live feed), which sees the same topics and payloads either way; 1,000
client connections to the broker are the MQTT layer's load test (bench/mqtt_load.py). Each publisher
speaks for ``boxes / publishers`` box ids with schema-valid payloads (retained status, telemetry, alerts).

Figures (each with a baseline from the same process, because the machine is shared and noisy):

* dashboard load: server time for ``GET /`` listing every box, and chromium's navigation time to the
  ``load`` event; baseline: the same page with an empty fleet.
* alert-to-screen: from the moment a box's alert is published to the moment the browser's live feed has
  inserted it (the page stamps ``Date.now()``; same clock); with the fleet streaming telemetry at the given
  rate, baseline: the same with the fleet silent.
"""
from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class _Broker:
    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        conf = folder / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"
                        f"persistence false\nlog_dest none\n")
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


class _Fleet:
    """Publishers speaking for many simulated boxes."""

    def __init__(self, port: int, box_ids: list[str], publishers: int) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.box_ids = box_ids
        self.clients = []
        for i in range(publishers):
            c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{i}", protocol=paho.MQTTv5)
            c.max_queued_messages_set(0)
            c.max_inflight_messages_set(1000)
            c.connect("127.0.0.1", port)
            c.loop_start()
            self.clients.append(c)
        self.seq: dict[int, int] = {}
        self.lock = threading.Lock()

    def _client(self, i: int):
        return self.clients[i % len(self.clients)]

    def publish(self, i: int, channel: str, payload: dict, *, qos: int = 0, retain: bool = False):
        from appliance.protocol import schema

        return self._client(i).publish(schema.topic(self.box_ids[i], channel), schema.encode(payload), qos=qos,
                                       retain=retain)

    def status_all(self) -> None:
        from appliance.protocol import schema

        infos = []
        for i, box in enumerate(self.box_ids):
            p = schema.status_payload(box, schema.utc_now(), state="recording", firmware_version="1.4.2",
                                      model_versions={"stager": "s-2026.10", "loops": "l-2026.10"},
                                      config_version="clinic-7")
            infos.append(self.publish(i, "status", p, qos=1, retain=True))
        for info in infos:
            info.wait_for_publish(10)

    def telemetry(self, i: int) -> None:
        from appliance.protocol import schema

        p = schema.telemetry_payload(self.box_ids[i], schema.utc_now(), signal_quality_percent=80.0 + (i % 20),
                                     impedance_kohm=3.0 + (i % 7) * 0.5, frames_dropped=0, cpu_percent=21.0,
                                     temperature_c=47.5)
        self.publish(i, "telemetry", p)

    def alert(self, i: int) -> float:
        """Publish one alert; return its wall-clock publish time in ms."""
        from appliance.protocol import schema

        with self.lock:
            seq = self.seq[i] = self.seq.get(i, 0) + 1
        p = schema.alert_payload(self.box_ids[i], schema.utc_now(), title=f"Loop on {self.box_ids[i]}",
                                 message="REM loop not resolved by the breather", severity="critical",
                                 seq=seq, outbox_id="bench", kind="loop_unresolved")
        t_ms = time.time() * 1000.0
        self.publish(i, "alert", p, qos=1)
        return t_ms

    def stop(self) -> None:
        for c in self.clients:
            c.disconnect()
            c.loop_stop()


def _telemetry_loop(fleet: _Fleet, rate_per_s: float, stop: threading.Event, sent: list[int]) -> None:
    n, i, t0 = 0, 0, time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - t0) * rate_per_s)
        while n < due and not stop.is_set():
            fleet.telemetry(i % len(fleet.box_ids))
            i += 1
            n += 1
        time.sleep(0.01)
    sent.append(n)


def run(*, quick: bool = False) -> str:
    import httpx
    import uvicorn
    from playwright.sync_api import sync_playwright

    from appliance.fleet import auth
    from appliance.fleet.web import ConsoleSettings, create_app

    if not os.path.exists(CHROMIUM):
        raise RuntimeError("Debian's chromium (/usr/bin/chromium) is required")
    n_boxes = 1000
    telemetry_rate = 100.0 if quick else 200.0  # messages/s from the whole fleet while alerts are timed
    n_alerts = 10 if quick else 30
    n_loads = 5 if quick else 15
    folder = Path(tempfile.mkdtemp(prefix="bench-console-"))
    broker = _Broker(folder)
    settings = ConsoleSettings(database_url=f"sqlite:///{folder}/fleet.db", https_only=False,
                               mqtt_host="127.0.0.1", mqtt_port=broker.port)
    settings.extra["sse_poll_s"] = 1.0
    app = create_app(settings)
    db = app.state.db
    auth.create_user(db, "bench", "bench-password-1", "viewer")
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    fleet = None
    pw = browser = None
    try:
        http = httpx.Client(base_url=url)
        import re

        tok = re.search(r'name="csrf_token" value="([^"]+)"', http.get("/login").text).group(1)
        http.post("/login", data={"username": "bench", "password": "bench-password-1", "csrf_token": tok})

        def server_load_ms(k: int) -> list[float]:
            out = []
            for _ in range(k):
                t0 = time.perf_counter()
                r = http.get("/")
                r.raise_for_status()
                out.append((time.perf_counter() - t0) * 1000)
            return out

        pw = sync_playwright().start()
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        ctx = browser.new_context()
        page = ctx.new_page()
        page.goto(url + "/login")
        page.fill("input[name=username]", "bench")
        page.fill("input[name=password]", "bench-password-1")
        page.click("button[type=submit]")
        page.wait_for_selector("#fleet-table")

        def browser_load_ms(k: int) -> list[float]:
            out = []
            for _ in range(k):
                page.goto(url + "/", wait_until="load")
                out.append(page.evaluate("performance.getEntriesByType('navigation')[0].duration"))
            return out

        base_server, base_browser = server_load_ms(n_loads), browser_load_ms(max(3, n_loads // 3))

        # ---- the fleet comes online ------------------------------------------------------------
        box_ids = [f"box-{i:04d}" for i in range(n_boxes)]
        fleet = _Fleet(broker.port, box_ids, publishers=10)
        t0 = time.perf_counter()
        fleet.status_all()
        deadline = time.monotonic() + 120
        while db.fleet_counts()["online"] < n_boxes and time.monotonic() < deadline:
            time.sleep(0.1)
        ingest_s = time.perf_counter() - t0
        online = db.fleet_counts()["online"]
        for i in range(n_boxes):
            fleet.telemetry(i)
        time.sleep(1.0)
        page_kb = len(http.get("/").content) / 1024
        full_server, full_browser = server_load_ms(n_loads), browser_load_ms(max(3, n_loads // 3))

        # ---- alert to screen: silent fleet, then fleet streaming telemetry -----------------------
        def alert_latencies(k: int) -> list[float]:
            page.goto(url + "/", wait_until="load")
            page.wait_for_selector("#live-status[data-connected='1']")
            out = []
            for j in range(k):
                before = page.locator("#alert-feed li.alert").count()
                i = (j * 37) % n_boxes
                sent_ms = fleet.alert(i)
                # (a locator, not wait_for_function: the console's CSP forbids eval'd strings, rightly)
                page.locator("#alert-feed li.alert").nth(before).wait_for(state="attached", timeout=20_000)
                shown = float(page.get_attribute("#alert-feed li.alert:first-child", "data-shown-ms"))
                out.append(shown - sent_ms)
                time.sleep(0.2)
            return out

        quiet = alert_latencies(n_alerts)
        stop, sent = threading.Event(), []
        tl = threading.Thread(target=_telemetry_loop, args=(fleet, telemetry_rate, stop, sent), daemon=True)
        t_load = time.monotonic()
        tl.start()
        loaded = alert_latencies(n_alerts)
        stop.set()
        tl.join(5)
        actual_rate = sent[0] / (time.monotonic() - t_load) if sent else 0.0
        http.close()
    finally:
        if browser is not None:
            browser.close()
        if pw is not None:
            pw.stop()
        if fleet is not None:
            fleet.stop()
        server.should_exit = True
        th.join(10)
        broker.stop()
        db.close()
        shutil.rmtree(folder, ignore_errors=True)

    def row(name: str, xs: list[float], base: list[float] | None) -> str:
        ratio = f"{statistics.median(xs) / statistics.median(base):.1f}x" if base else ""
        return f"| {name} | {statistics.median(xs):.0f} | {_pct(xs, 95):.0f} | {len(xs)} | {ratio} |"

    return "\n".join([
        "## Clinic console (1,000 simulated boxes)",
        "",
        f"{n_boxes} boxes ({online} seen online) published retained status through 10 loopback publisher "
        f"connections to a private mosquitto; the console (uvicorn, its shared-subscription MQTT ingest, SQLite) "
        f"wrote all of them to its database in {ingest_s:.1f} s. The dashboard lists every box ({page_kb:.0f} kB "
        f"of HTML). Alert latency is from publish to the row appearing in chromium's live feed "
        f"(SSE + DOM insert), first with the fleet silent, then with the fleet streaming telemetry at "
        f"{actual_rate:.0f} msg/s into the same console.",
        "",
        "| measure | median ms | p95 ms | n | vs baseline |",
        "|---|---|---|---|---|",
        row("GET / server time, empty fleet (baseline)", base_server, None),
        row(f"GET / server time, {n_boxes} boxes", full_server, base_server),
        row("chromium load event, empty fleet (baseline)", base_browser, None),
        row(f"chromium load event, {n_boxes} boxes", full_browser, base_browser),
        row("alert to screen, fleet silent (baseline)", quiet, None),
        row(f"alert to screen, {actual_rate:.0f} telemetry msg/s", loaded, quiet),
    ])


if __name__ == "__main__":
    print(run(quick=True))
