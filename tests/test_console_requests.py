"""Requests the console refuses before reading them, bounded bodies, and error answers that keep the
security headers (issue 11, Medium #6 and Lows).

Whether an upload was spooled to disk is observed with the interpreter's audit hook (PEP 578): a
multipart file part past 1 MB rolls over into ``tempfile.TemporaryFile``, which opens the temp folder.
"""
from __future__ import annotations

import os
import sys
import tempfile
import threading

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.console_helpers import add_staff, console_settings, create_app, csrf_of, login

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SECURITY_HEADERS = ("content-security-policy", "x-content-type-options", "x-frame-options", "referrer-policy")

_spooled: list[str] = []
_watching = threading.Event()
_TMP = os.path.realpath(tempfile.gettempdir())


def _audit(event: str, args: tuple) -> None:
    if not _watching.is_set():
        return
    if event == "tempfile.mkstemp" or (event == "open" and args and isinstance(args[0], str)
                                       and os.path.realpath(args[0]) == _TMP):
        _spooled.append(event)


sys.addaudithook(_audit)


@pytest.fixture
def app(tmp_path):
    settings = console_settings(f"sqlite:///{tmp_path}/fleet.db", tmp_path, max_request_bytes=3 * 1024 * 1024)
    app = create_app(settings)
    add_staff(app.state.db)
    app.state.db.set_box_online("b1", True)
    yield app
    app.state.db.close()


def upload(client, *, size: int = 8 * 1024 * 1024, csrf: str = "x", headers: dict | None = None):
    _spooled.clear()
    _watching.set()
    try:
        return client.post("/rollouts", data={"kind": "model", "canary": "b1", "version": "1", "csrf_token": csrf},
                           files={"payload": ("m.tflite", b"\0" * size)}, headers=headers or {},
                           follow_redirects=False)
    finally:
        _watching.clear()


def assert_headers(r) -> None:
    for h in SECURITY_HEADERS:
        assert h in r.headers, (h, r.status_code, dict(r.headers))


def test_anonymous_upload_is_refused_unread(app):
    with TestClient(app) as client:
        r = upload(client, size=2 * 1024 * 1024)  # under the limit: refused for who sends it, not its size
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert _spooled == [], "the anonymous upload was spooled to the temp folder"


def test_viewer_and_cross_site_uploads_are_refused_unread(app):
    with TestClient(app) as client:
        login(client, "victor")
        r = upload(client, size=2 * 1024 * 1024)
        assert r.status_code == 403 and _spooled == []
    with TestClient(app) as client:
        login(client, "olivia")
        r = upload(client, size=2 * 1024 * 1024, csrf=csrf_of(client.get("/rollouts").text),
                   headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403 and _spooled == []
        assert_headers(r)


def test_operator_upload_over_the_limit_is_413(app):
    with TestClient(app) as client:
        login(client, "olivia")
        token = csrf_of(client.get("/rollouts").text)
        r = upload(client, size=4 * 1024 * 1024, csrf=token)
        assert r.status_code == 413 and "larger than" in r.text
        assert_headers(r)

        def chunks():  # no Content-Length: counted while read
            boundary = b"--b0undary"
            yield boundary + b'\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n' + token.encode() + b"\r\n"
            yield boundary + b'\r\nContent-Disposition: form-data; name="payload"; filename="m"\r\n\r\n'
            for _ in range(8):
                yield b"\0" * (1024 * 1024)
            yield b"\r\n" + boundary + b"--\r\n"

        r = client.post("/rollouts", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
        assert r.status_code == 413
        # A right-sized upload still goes through every check, to "not connected" (this console has no broker).
        r = upload(client, size=1024, csrf=token)
        assert r.status_code == 503 and "not connected to the broker" in r.text


def test_other_forms_are_bounded(app):
    with TestClient(app) as client:
        login(client, "olivia")
        token = csrf_of(client.get("/boxes/b1/config").text)
        r = client.post("/boxes/b1/config", data={"config_json": "x" * (2 * 1024 * 1024), "csrf_token": token})
        assert r.status_code == 413
        assert_headers(r)


@pytest.mark.parametrize("value", ["\u00b2", "1\u0663", "-1", "1.0", "9" * 19, "99999999999999999999999", ""])
def test_bad_last_event_id_is_400_with_headers(app, value):
    with TestClient(app, raise_server_exceptions=False) as client:
        login(client, "victor")
        try:  # a header is bytes: "²" as one Latin-1 byte is what str.isdigit() took for a digit
            raw = value.encode("latin-1")
        except UnicodeEncodeError:
            raw = value.encode("utf-8")
        r = client.get("/events", headers={"Last-Event-ID": raw})
        assert r.status_code == 400, (value, r.status_code)
        assert_headers(r)
        r = client.get("/events", params={"after": value})
        assert r.status_code == 400 and "Traceback" not in r.text
        assert_headers(r)


def test_internal_error_page_has_security_headers_and_no_trace(app):
    with TestClient(app, raise_server_exceptions=False) as client:
        login(client, "victor")
        with app.state.db.engine.begin() as conn:  # a broken database: every page now fails
            conn.execute(text("DROP TABLE boxes"))
        r = client.get("/")
        assert r.status_code == 500 and "Traceback" not in r.text and "boxes" not in r.text
        assert_headers(r)
