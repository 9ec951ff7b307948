"""Console security on SQLite and PostgreSQL: passwords, sessions, CSRF, rate limit, roles."""
from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from appliance.fleet import auth
from tests.console_helpers import (PASSWORDS, InProcessBoxes, add_staff, config_json, console_settings, create_app,
                                   csrf_of, login)
from tests.postgres import db_url_for

PROTECTED = ["/", "/alerts", "/boxes/b1", "/boxes/b1/config", "/rollouts", "/rollouts/1", "/audit"]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    return db_url_for(request, tmp_path)


@pytest.fixture
def console(db_url, tmp_path):
    settings = console_settings(db_url, tmp_path, login_max_failures=3, login_window_s=60)
    boxes = InProcessBoxes(tmp_path / "boxes", settings.public_key_file.read_bytes())
    app = create_app(settings, channel=boxes)
    add_staff(app.state.db)
    app.state.db.set_box_online("b1", True, firmware="1.0")
    with TestClient(app) as client:
        client.app_ref, client.boxes = app, boxes
        yield client
    app.state.db.close()


def test_passwords_are_argon2id_and_never_stored(console):
    row = console.app_ref.state.db.get_user(username="olivia")
    assert row["password_hash"].startswith("$argon2id$") and PASSWORDS["olivia"] not in row["password_hash"]
    with pytest.raises(ValueError):
        auth.create_user(console.app_ref.state.db, "short", "2short", "viewer")
    with pytest.raises(ValueError):
        auth.create_user(console.app_ref.state.db, "x", "long enough pass", "admin")


def test_anonymous_sees_only_the_login_page(console):
    for path in PROTECTED:
        r = console.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    assert console.get("/fragments/fleet").status_code == 401
    assert console.get("/events").status_code == 401
    assert console.post("/rollouts", data={}, follow_redirects=False).status_code == 303
    r = console.get("/login")
    assert r.status_code == 200 and "Log in" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]


def test_login_and_wrong_password(console):
    r = login(console, "olivia", "not the password")
    assert r.status_code == 401 and "wrong user name or password" in r.text
    assert console.get("/", follow_redirects=False).status_code == 303
    r = login(console, "nobody", "whatever at all")
    assert r.status_code == 401 and "wrong user name or password" in r.text  # same answer: no enumeration
    r = login(console, "olivia")
    assert r.status_code == 200 and "Fleet" in r.text and "olivia (operator)" in r.text
    actions = [e["action"] for e in console.app_ref.state.db.audit_entries()]
    assert actions[:3] == ["login", "login.failed", "login.failed"]


def test_login_rate_limited(console):
    for _ in range(3):
        assert login(console, "victor", "guess guess guess").status_code == 401
    r = login(console, "victor")  # right password, but locked out for the window
    assert r.status_code == 429 and "too many failed logins" in r.text
    assert console.get("/", follow_redirects=False).status_code == 303


def test_session_cookie_flags(db_url, tmp_path):
    settings = console_settings(db_url, tmp_path)
    settings.https_only = True
    app = create_app(settings)
    add_staff(app.state.db)
    with TestClient(app, base_url="https://testserver") as c:
        r = login(c, "victor")
        cookie = r.history[0].headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    app.state.db.close()


def test_expired_session(tmp_path):
    # 2 s, not 1: the client's cookie jar expires a Max-Age=1 cookie at the next whole second after
    # int(now) + 1, which can be a few ms after login (a flaky 303 on the first request).
    settings = console_settings(f"sqlite:///{tmp_path}/f.db", tmp_path, session_max_age_s=2.0)
    app = create_app(settings)
    add_staff(app.state.db)
    with TestClient(app) as c:
        assert login(c, "victor").status_code == 200
        assert c.get("/", follow_redirects=False).status_code == 200
        time.sleep(3.1)
        assert c.get("/", follow_redirects=False).status_code == 303  # expired
    app.state.db.close()


def test_logout_revokes_the_session(console):
    login(console, "victor")
    stolen = dict(console.cookies)
    console.post("/logout", data={"csrf_token": csrf_of(console.get("/").text)})
    assert console.get("/", follow_redirects=False).status_code == 303
    console.cookies.update(stolen)  # replaying the old cookie after logout does not work
    assert console.get("/", follow_redirects=False).status_code == 303


def test_missing_or_wrong_csrf_refused(console):
    r = console.post("/login", data={"username": "olivia", "password": PASSWORDS["olivia"]})
    assert r.status_code == 403
    login(console, "olivia")
    for token in (None, "forged-token-forged-token-forged-token"):
        data = {"config_json": config_json(interval_s=31.0), "version": "c1"}
        if token:
            data["csrf_token"] = token
        assert console.post("/boxes/b1/config", data=data).status_code == 403
        r = console.post("/rollouts", data={"kind": "config", "canary": "b1", "version": "v1", **({"csrf_token": token} if token else {})},
                         files={"payload": ("c.json", config_json().encode())})
        assert r.status_code == 403
        assert console.post("/logout", data={"csrf_token": token} if token else {}).status_code == 403
    assert console.boxes.requests == []  # nothing reached a box
    assert console.app_ref.state.db.config_pushes_for_box("b1") == []
    assert console.app_ref.state.db.list_rollouts() == []
    assert console.get("/", follow_redirects=False).status_code == 200  # still logged in


def test_viewer_cannot_do_operator_actions(console):
    login(console, "victor")
    page = console.get("/boxes/b1/config")
    assert page.status_code == 200 and "disabled" in page.text  # may look, not push
    token = csrf_of(page.text)
    r = console.post("/boxes/b1/config", data={"config_json": config_json(), "version": "c1", "csrf_token": token})
    assert r.status_code == 403 and "operators only" in r.text
    r = console.post("/rollouts", data={"kind": "config", "canary": "b1", "version": "v1", "csrf_token": token},
                     files={"payload": ("c.json", config_json().encode())})
    assert r.status_code == 403
    r = console.post("/boxes/b1/group", data={"group_name": "canary", "csrf_token": token})
    assert r.status_code == 403 and console.app_ref.state.db.get_box("b1")["group_name"] == ""
    assert console.boxes.requests == []
    denied = [e for e in console.app_ref.state.db.audit_entries() if e["action"] == "denied"]
    assert {e["target"] for e in denied} == {"config:b1", "rollout", "group:b1"}


def test_operator_pushes_signed_config(console):
    login(console, "olivia")
    token = csrf_of(console.get("/boxes/b1/config").text)
    r = console.post("/boxes/b1/config", data={"config_json": config_json(interval_s=42.0), "version": "c42",
                                               "csrf_token": token})
    assert r.status_code == 200
    db = console.app_ref.state.db
    from tests.console_helpers import wait_for

    push = wait_for(lambda: (p := db.config_pushes_for_box("b1")) and p[0]["state"] != "sent" and p[0])
    assert push["state"] == "acknowledged" and push["version"] == "c42"
    assert console.boxes.manager("b1").current_version("config") == "c42"
    assert db.get_box("b1")["config_version"] == "c42"
    # an invalid config is refused by the console with the box's own schema, and nothing is sent
    n = len(console.boxes.requests)
    r = console.post("/boxes/b1/config", data={"config_json": config_json(interval_s=-3), "version": "c43",
                                               "csrf_token": token})
    assert r.status_code == 400 and "telemetry.interval_s" in r.text
    assert len(console.boxes.requests) == n


def test_cli_user_add_and_list(tmp_path, monkeypatch, capsys):
    import io

    from appliance.fleet import cli

    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-enough-password\n"))
    assert cli.main(["user", "add", "nina", "--role", "operator", "--password-stdin", "--db", url]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli.main(["user", "add", "sam", "--password-stdin", "--db", url]) == 2
    assert cli.main(["user", "list", "--db", url]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "nina\toperator"
    from appliance.fleet.db import FleetDB

    db = FleetDB(url)
    assert auth.authenticate(db, "nina", "a-long-enough-password", remote="cli").role == "operator"
    db.close()
