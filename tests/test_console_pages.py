"""Console pages render the fleet, and hostile input in every form field (and from boxes) is inert."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from appliance.protocol import signing
from tests.console_helpers import (InProcessBoxes, add_staff, config_json, console_settings, create_app, csrf_of,
                                   login, wait_for)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

XSS = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
SQLI = "x'); DROP TABLE boxes; --"
HOSTILE = [XSS, SQLI, "\" onmouseover=\"alert(1)", "{{ 7*7 }}"]


@pytest.fixture
def console(tmp_path):
    settings = console_settings(f"sqlite:///{tmp_path}/fleet.db", tmp_path)
    boxes = InProcessBoxes(tmp_path / "boxes", settings.public_key_file.read_bytes())
    app = create_app(settings, channel=boxes)
    add_staff(app.state.db)
    with TestClient(app) as client:
        client.app_ref, client.boxes, client.settings = app, boxes, settings
        login(client, "olivia")
        yield client
    app.state.db.close()


def assert_inert(html: str) -> None:
    assert "<script>window.pwned" not in html and "<img src=x" not in html
    assert 'onmouseover="alert' not in html


def feed_box(app, box_id="b1"):
    b = app.state.bridge
    b.on_status(box_id, {"state": "online", "online": True, "firmware_version": "1.4.2",
                         "model_versions": {"stager": "s-2026.11"}, "config_version": "c0",
                         "time_utc": "2026-11-23T18:00:00Z"})
    b.on_telemetry(box_id, {"signal_quality_percent": 93.0, "impedance_kohm": 4.1, "time_utc": "2026-11-23T18:00:00Z"})
    b.flush()
    b.on_alert(box_id, {"title": "Nightmare loop", "message": "Third REM arousal in 20 min; breather did not help",
                        "severity": "critical"})
    hyp = ([0] * 20 + [1] * 10 + [2] * 60 + [3] * 40 + [2] * 30 + [4] * 20 + [0] * 2 + [4] * 15) * 3
    b.on_report(box_id, {"report": {"night_start": "2026-11-22T20:30:00Z", "hypnogram": hyp,
                                    "statistics": {"total_sleep_time_min": 380.5, "sleep_efficiency_pct": 91.2},
                                    "interventions": {"loops_detected": 2, "breather_sessions": [{}, {}],
                                                      "alerts": 1}}})


def test_pages_show_the_fleet(console):
    feed_box(console.app_ref)
    fleet = console.get("/").text
    assert "b1" in fleet and "online" in fleet and "1.4.2" in fleet and "stager s-2026.11" in fleet
    assert "Nightmare loop" in fleet and ">93<" in fleet
    box = console.get("/boxes/b1").text
    assert "<svg class=\"hypnogram\"" in box and "polyline" in box and "loops detected 2" in box
    assert "impedance_kohm" in box and "critical" in box
    assert console.get("/boxes/nope").status_code == 404
    assert console.get("/alerts").status_code == 200 and console.get("/rollouts").status_code == 200
    assert "login" in console.get("/audit").text


def test_hostile_login_fields(console):
    console.post("/logout", data={"csrf_token": csrf_of(console.get("/").text)})
    for s in HOSTILE:
        r = console.post("/login", data={"username": s, "password": s, "csrf_token": csrf_of(console.get("/login").text)})
        assert r.status_code in (401, 429)
        assert_inert(r.text)
    assert console.app_ref.state.db.fleet_counts()["total"] == 0  # the boxes table still exists
    login(console, "olivia")
    assert_inert(console.get("/audit").text)


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_config_fields(console, hostile):
    console.app_ref.state.db.set_box_online("b1", True)
    token = csrf_of(console.get("/boxes/b1/config").text)
    # as the version
    r = console.post("/boxes/b1/config", data={"config_json": config_json(), "version": hostile, "csrf_token": token})
    assert r.status_code == 400 and "version" in r.text
    assert_inert(r.text)
    # as the whole config text, and inside a JSON string value the box schema then refuses
    for text in (hostile, json.dumps({"box": {"name": hostile, "id": hostile}})):
        r = console.post("/boxes/b1/config", data={"config_json": text, "version": "v1", "csrf_token": token})
        assert r.status_code == 400
        assert_inert(r.text)
    assert console.boxes.requests == []
    # a string the schema accepts (box.name is free text): signed, pushed, shown escaped everywhere
    r = console.post("/boxes/b1/config", data={"config_json": json.dumps({"box": {"name": hostile}}),
                                               "version": "v2", "csrf_token": token})
    assert r.status_code == 200
    wait_for(lambda: console.app_ref.state.db.config_pushes_for_box("b1")[0]["state"] == "acknowledged")
    for page in ("/boxes/b1/config", "/boxes/b1", "/audit", "/"):
        assert_inert(console.get(page).text)
    if hostile == "{{ 7*7 }}":  # template syntax in a value is shown, never evaluated
        assert "{{ 7*7 }}" in console.get("/boxes/b1/config").text
    assert console.boxes.manager("b1").current_version("config") == "v2"


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_rollout_fields(console, hostile):
    db = console.app_ref.state.db
    db.set_box_online("b1", True)
    token = csrf_of(console.get("/rollouts").text)
    base = {"kind": "config", "version": "v1", "canary": "b1", "rest": "", "csrf_token": token}
    cfg = config_json().encode()
    for field in ("kind", "version", "canary", "rest"):
        r = console.post("/rollouts", data={**base, field: hostile}, files={"payload": ("c.json", cfg)})
        assert r.status_code == 400, field
        assert_inert(r.text)
    r = console.post("/rollouts", data=base, files={"payload": ("c.json", cfg), "manifest": ("m.sig.json", hostile.encode())})
    assert r.status_code == 400 and "manifest" in r.text
    assert_inert(r.text)
    # a hostile *file name* is only a label: signed, rolled out, shown escaped
    r = console.post("/rollouts", data=base, files={"payload": (hostile, cfg)})
    assert r.status_code == 200
    rid = db.list_rollouts()[0]["id"]
    wait_for(lambda: db.get_rollout(rid)["state"] == "completed")
    for page in (f"/rollouts/{rid}", "/rollouts", "/audit"):
        assert_inert(console.get(page).text)
    assert len(db.list_boxes()) == 1


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_group_field(console, hostile):
    db = console.app_ref.state.db
    db.set_box_online("b1", True)
    token = csrf_of(console.get("/boxes/b1").text)
    r = console.post("/boxes/b1/group", data={"group_name": hostile, "csrf_token": token})
    assert r.status_code == 400
    assert_inert(r.text)
    assert db.get_box("b1")["group_name"] == ""
    r = console.post("/boxes/b1/group", data={"group_name": "canary", "csrf_token": token})
    assert r.status_code == 200 and db.get_box("b1")["group_name"] == "canary"
    assert 'name="canary" value="b1"' in console.get("/rollouts").text


def test_hostile_values_from_boxes_are_escaped(console):
    b = console.app_ref.state.bridge
    b.on_status("b1", {"state": "online", "online": True, "firmware_version": XSS, "model_versions": {XSS: XSS},
                       "config_version": XSS, "time_utc": "2026-11-23T18:00:00Z"})
    b.on_telemetry("b1", {XSS: XSS, "time_utc": "2026-11-23T18:00:00Z"})
    b.flush()
    b.on_alert("b1", {"title": XSS, "message": XSS, "severity": XSS})
    b.on_report("b1", {"report": {"night_start": XSS, "hypnogram": [XSS], "interventions": {"loops_detected": XSS}}})
    for page in ("/", "/alerts", "/boxes/b1", "/fragments/fleet"):
        html = console.get(page).text
        assert_inert(html)
        assert "&lt;script&gt;window.pwned" in html


def test_rollout_refuses_payload_not_matching_manifest(console, tmp_path):
    db = console.app_ref.state.db
    db.set_box_online("b1", True)
    key = signing.load_private_key(console.settings.signing_key_file)
    good = config_json().encode()
    man = signing.sign_bytes(good, key, boxes=["b1"], kind="config", name="c.json", version="v9")
    token = csrf_of(console.get("/rollouts").text)
    r = console.post("/rollouts", data={"kind": "config", "canary": "b1", "rest": "", "csrf_token": token},
                     files={"payload": ("c.json", config_json(interval_s=99.0).encode()),
                            "manifest": ("c.json.sig.json", json.dumps(man).encode())})
    assert r.status_code == 400 and "sha256" in r.text
    assert db.list_rollouts() == [] and console.boxes.requests == []
