"""The clinic console in a real browser (Debian's chromium through Playwright), against a real mosquitto,
real simulated boxes (BoxLink + UpdateManager) and the console's own MQTT ingest.

The tests run in order and share one console, one broker and one browser (starting them is the slow
part). Set ``BEDTIME_WRITE_SCREENSHOTS=1`` to refresh the screenshots in docs/.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
DOCS = Path(__file__).resolve().parent.parent / "docs"

pytestmark = [pytest.mark.browser, pytest.mark.broker,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed at /usr/bin/chromium")]
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
pytest.importorskip("uvicorn")

from appliance.protocol import signing  # noqa: E402
from tests.console_helpers import PASSWORDS, SimBox, add_staff, console_settings, wait_for  # noqa: E402

XSS_TITLE = '<img src=x onerror="window.pwned=1">Loop'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """Broker + console server + boxes + browser page, for the whole module."""

    def __init__(self, folder: Path, pki) -> None:
        import uvicorn

        from appliance.fleet.web import create_app
        from tests.broker import MosquittoBroker

        self.folder = folder
        self.broker = MosquittoBroker(folder / "mosquitto", pki).start()
        self.settings = console_settings(f"sqlite:///{folder}/fleet.db", folder, mqtt_host=self.broker.host,
                                         mqtt_port=self.broker.port, command_timeout_s=15.0,
                                         rollout_health_timeout_s=15.0)
        self.settings.extra["sse_poll_s"] = 0.5
        self.app = create_app(self.settings)
        self.db = self.app.state.db
        add_staff(self.db)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                   timeout_graceful_shutdown=1, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="console-uvicorn", daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 15)
        self.public_pem = self.settings.public_key_file.read_bytes()
        self.boxes: dict[str, SimBox] = {}
        self.pw = sync_api.sync_playwright().start()
        self.browser = self.pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        self.context = self.browser.new_context(viewport={"width": 1180, "height": 760})
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("dialog", lambda d: (self.errors.append(f"dialog: {d.message}"), d.dismiss()))

    def add_box(self, box_id: str, **kw) -> SimBox:
        box = SimBox(box_id, self.broker, self.folder / "boxes" / box_id, self.public_pem, **kw).start()
        self.boxes[box_id] = box
        return box

    def shot(self, name: str, *, full_page: bool = False) -> None:
        path = self.folder / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        if os.environ.get("BEDTIME_WRITE_SCREENSHOTS") == "1":
            shutil.copy(path, DOCS / f"{name}.png")

    def close(self) -> None:
        for closer in (self.context.close, self.browser.close, self.pw.stop):
            try:
                closer()
            except Exception:  # noqa: BLE001 - tear down as much as possible
                pass
        for b in self.boxes.values():
            b.stop()
        self.server.should_exit = True
        self.thread.join(10)
        self.broker.stop()
        self.db.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, mqtt_pki):
    s = Stack(tmp_path_factory.mktemp("console-browser"), mqtt_pki)
    yield s
    s.close()


def test_login(stack):
    page = stack.page
    page.goto(stack.url + "/")
    assert page.url.endswith("/login")
    page.fill("input[name=username]", "olivia")
    page.fill("input[name=password]", "wrong password!")
    page.click("button[type=submit]")
    assert "wrong user name or password" in page.inner_text(".error")
    stack.shot("console-login")
    page.fill("input[name=username]", "olivia")
    page.fill("input[name=password]", PASSWORDS["olivia"])
    page.click("button[type=submit]")
    page.wait_for_selector("h1:has-text('Fleet')")
    page.wait_for_selector("#live-status[data-connected='1']")


def test_box_comes_online_live(stack):
    page = stack.page
    assert page.locator("tr[data-box='ward-3']").count() == 0
    box = stack.add_box("ward-3")
    row = page.locator("tr[data-box='ward-3']")
    row.wait_for()  # appears without a reload, through the event stream
    sync_api.expect(row.locator("td.state")).to_have_text("online")
    box.link.publish_telemetry(signal_quality_percent=94.0, impedance_kohm=4.2, cpu_percent=23.0, temperature_c=48.5)
    hyp = ([0] * 20 + [1] * 8 + [2] * 50 + [3] * 40 + [2] * 30 + [4] * 22 + [0] * 2 + [4] * 14) * 3 + [0] * 6
    box.link.publish_report({"night_start": "2026-11-22T20:30:00Z", "hypnogram": hyp,
                             "statistics": {"total_sleep_time_min": 381.0, "sleep_efficiency_pct": 90.3},
                             "interventions": {"loops_detected": 2, "breather_sessions": [{}, {}], "alerts": 1}})
    sync_api.expect(row.locator("td").nth(7)).to_have_text("2", timeout=15_000)  # loops last night
    wait_for(lambda: (stack.db.get_box("ward-3") or {}).get("telemetry"), 10)  # coalesced, written within ~1 s
    for other in ("ward-1", "ward-2"):
        stack.add_box(other)
    page.locator("tr[data-box='ward-2']").wait_for()


def test_alert_appears_live_and_is_inert(stack):
    page = stack.page
    t0 = time.monotonic()
    stack.boxes["ward-3"].link.publish_alert(title=XSS_TITLE, message="REM loop: third distressed arousal; breather did not settle it",
                                             severity="critical", kind="loop_unresolved", p_loop=0.93)
    item = page.locator("#alert-feed li.alert").first
    sync_api.expect(item.locator(".title")).to_have_text(XSS_TITLE)  # shown as text, not markup
    latency_s = time.monotonic() - t0
    assert latency_s < 10
    assert page.evaluate("window.pwned") is None
    assert page.locator("#alert-feed img").count() == 0
    stack.boxes["ward-1"].link.publish_alert(title="Nightmare loop not resolved",
                                             message="Two breathers did not settle a REM loop at 03:12; please check on Mia.",
                                             severity="critical", kind="loop_unresolved", p_loop=0.88)
    sync_api.expect(page.locator("#alert-feed li.alert").first.locator(".title")).to_have_text("Nightmare loop not resolved")
    stack.shot("console-fleet")


def test_box_page(stack):
    page = stack.page
    page.click("tr[data-box='ward-3'] a")
    page.wait_for_selector("svg.hypnogram polyline")
    assert "loops detected 2" in page.inner_text("main")
    assert "impedance_kohm" in page.inner_text("main")
    page.fill("input[name=group_name]", "canary")
    page.click("button:has-text('Set group')")
    page.wait_for_selector("svg.hypnogram polyline")
    assert page.input_value("input[name=group_name]") == "canary"
    stack.shot("console-box", full_page=True)


def test_push_config_and_box_acknowledges(stack):
    page = stack.page
    page.goto(stack.url + "/boxes/ward-3/config")
    cfg = json.loads(page.input_value("textarea[name=config_json]"))
    cfg["telemetry"]["interval_s"] = 20.0
    page.fill("textarea[name=config_json]", json.dumps(cfg, indent=2))
    page.fill("input[name=version]", "clinic-2026-11-23")
    page.click("button:has-text('Validate, sign and push')")
    state = page.locator("#pushes tr.push").first.locator(".push-state")
    sync_api.expect(state).to_have_text("acknowledged", timeout=20_000)
    assert stack.boxes["ward-3"].updates.current_version("config") == "clinic-2026-11-23"
    # the box's retained status now carries the new version too, and the fleet view shows it
    wait_for(lambda: stack.db.get_box("ward-3")["config_version"] == "clinic-2026-11-23", 10)
    stack.shot("console-config")
    # an invalid one is refused on the page, with the box schema's message, and never sent
    cfg["telemetry"]["interval_s"] = -1
    page.fill("textarea[name=config_json]", json.dumps(cfg))
    page.click("button:has-text('Validate, sign and push')")
    assert "telemetry.interval_s" in page.inner_text(".error")
    assert len(stack.db.config_pushes_for_box("ward-3")) == 1


def test_rollout_failing_canary_stops_it(stack, tmp_path):
    page = stack.page
    page.goto(stack.url + "/rollouts")
    broken = tmp_path / "stager-2026.11.tflite"
    broken.write_bytes(b"TFL3" + bytes(range(256)) * 16)  # signed below, but no runtime can load it
    page.select_option("select[name=kind]", "model")
    page.set_input_files("input[name=payload]", str(broken))
    page.fill("input[name=version]", "s-2026.11")
    assert page.input_value("input[name=canary]") == "ward-3"  # the box put in the canary group above
    page.fill("input[name=rest]", "ward-1, ward-2")
    page.click("button:has-text('Start rollout')")
    # signed here, a model has no model card with it: refused before any box sees it
    assert "model_card" in page.inner_text(".error")
    # signed with its card by `bedtime-fleet sign` (model_card.json beside it), uploaded with its .sig.json
    (tmp_path / "model_card.json").write_text(json.dumps({"sha256": hashlib.sha256(broken.read_bytes()).hexdigest()}))
    sig = signing.sign_file(broken, signing.load_private_key(stack.settings.signing_key_file), boxes=["ward-1", "ward-2", "ward-3"],
                            kind="model",
                            version="s-2026.11")
    page.select_option("select[name=kind]", "model")
    page.set_input_files("input[name=payload]", str(broken))
    page.set_input_files("input[name=manifest]", str(sig))
    page.fill("input[name=canary]", "ward-3")
    page.fill("input[name=rest]", "ward-1, ward-2")
    page.click("button:has-text('Start rollout')")
    page.wait_for_url("**/rollouts/*")
    sync_api.expect(page.locator("#rollout-state")).to_have_text("stopped", timeout=30_000)
    sync_api.expect(page.locator("tr[data-box='ward-3'] .target-state")).to_have_text("failed")
    assert "model_loads FAILED" in page.inner_text("tr[data-box='ward-3']")
    for other in ("ward-1", "ward-2"):
        sync_api.expect(page.locator(f"tr[data-box='{other}'] .target-state")).to_have_text("skipped")
        assert stack.boxes[other].updates.audit_entries() == []
    canary = stack.boxes["ward-3"].updates
    assert canary.current_path("model") is None  # rolled back to the packaged model
    assert [e["action"] for e in canary.audit_entries()][-1] == "update.rolled_back"
    stack.shot("console-rollout")
    # both sides' trails are in the console's audit log (the box's arrives as update_audit events)
    wait_for(lambda: any(e["actor"] == "box:ward-3" and e["action"] == "update.rolled_back"
                         for e in stack.db.audit_entries()), 10)
    page.goto(stack.url + "/audit")
    assert "rollout.stopped" in page.inner_text("#audit")


def test_viewer_sees_no_operator_controls(stack):
    ctx = stack.browser.new_context()
    page = ctx.new_page()
    page.goto(stack.url + "/login")
    page.fill("input[name=username]", "victor")
    page.fill("input[name=password]", PASSWORDS["victor"])
    page.click("button[type=submit]")
    page.wait_for_selector("h1:has-text('Fleet')")
    page.goto(stack.url + "/rollouts")
    assert page.locator("form.rollout-form").count() == 0
    page.goto(stack.url + "/boxes/ward-3/config")
    assert page.locator("button:has-text('Validate, sign and push')").is_disabled()
    ctx.close()


def test_no_script_errors_or_csp_violations(stack):
    # "Failed to load resource" is chromium logging the intended 401/400/404 answers (wrong password,
    # refused config, favicon); anything else (a JS error, a CSP violation, a dialog) is a failure.
    assert [e for e in stack.errors if not e.startswith("Failed to load resource")] == []
