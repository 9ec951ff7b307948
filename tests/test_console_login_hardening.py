"""Login rate limit under parallel attack, client address behind proxies, pruning, and the database file's
mode (issue 11, Medium #5 and Lows).

The parallel test runs the real console under uvicorn on a loopback port and fires 40 real HTTP logins
for one user at once, on SQLite and on PostgreSQL.
"""
from __future__ import annotations

import datetime as dt
import os
import socket
import stat
import threading

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from appliance.fleet.db import FleetDB, login_attempts
from tests.console_helpers import add_staff, console_settings, create_app, csrf_of, login, wait_for
from tests.postgres import db_url_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
MAX_FAILURES = 5


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    return db_url_for(request, tmp_path)


class Server:
    """The console app under a real uvicorn on a free loopback port."""

    def __init__(self, app) -> None:
        import uvicorn

        from appliance.fleet.web.server import ConsoleServer, uvicorn_options

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        options = uvicorn_options(host="127.0.0.1", port=self.port) | {"log_level": "warning", "lifespan": "on"}
        self.server = ConsoleServer(uvicorn.Config(app, **options))
        self.thread = threading.Thread(target=self.server.run, name="console-uvicorn", daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 20)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def test_parallel_logins_check_at_most_the_allowed_passwords(db_url, tmp_path):
    settings = console_settings(db_url, tmp_path, login_max_failures=MAX_FAILURES, login_window_s=300)
    app = create_app(settings)
    add_staff(app.state.db)
    server = Server(app)
    n = 40
    try:
        clients = [httpx.Client(base_url=server.url, timeout=60) for _ in range(n)]
        tokens = [csrf_of(c.get("/login").text) for c in clients]
        start = threading.Barrier(n)
        codes: list[int] = []
        lock = threading.Lock()

        def attempt(i: int) -> None:
            start.wait(30)
            r = clients[i].post("/login", data={"username": "victor", "password": f"guess number {i}",
                                                "csrf_token": tokens[i]})
            with lock:
                codes.append(r.status_code)

        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(codes) == n and set(codes) <= {401, 429}, codes
        checked = codes.count(401)  # a 401 means the password was checked (and wrong)
        assert 1 <= checked <= MAX_FAILURES, f"{checked} passwords checked for {n} parallel attempts"
        with app.state.db.engine.connect() as conn:
            rows = conn.execute(select(login_attempts.c.ok).where(login_attempts.c.username == "victor")).all()
        assert len(rows) == n and not any(r.ok for r in rows)
        # And the right password is refused too until the window passes.
        c = httpx.Client(base_url=server.url, timeout=60)
        r = c.post("/login", data={"username": "victor", "password": "viewer-pass-1234",
                                   "csrf_token": csrf_of(c.get("/login").text)})
        assert r.status_code == 429
        for c in clients:
            c.close()
    finally:
        server.close()
        app.state.db.close()


def test_successful_login_is_not_counted_as_a_failure(tmp_path):
    app = create_app(console_settings(f"sqlite:///{tmp_path}/fleet.db", tmp_path, login_max_failures=2))
    add_staff(app.state.db)
    with TestClient(app) as client:
        for _ in range(4):
            assert login(client, "olivia").status_code == 200
            client.post("/logout", data={"csrf_token": csrf_of(client.get("/").text)})
        assert login(client, "olivia", "wrong password!").status_code == 401
        assert login(client, "olivia").status_code == 200
    app.state.db.close()


def _spoofed_failures(client, victim_ip: str, k: int) -> None:
    for i in range(k):
        page = client.get("/login")
        client.post("/login", data={"username": f"nobody{i}", "password": "x" * 12, "csrf_token": csrf_of(page.text)},
                    headers={"X-Forwarded-For": victim_ip})


def _remotes(db) -> set[str]:
    with db.engine.connect() as conn:
        return set(conn.execute(select(login_attempts.c.remote)).scalars())


def test_x_forwarded_for_ignored_unless_from_a_trusted_proxy(tmp_path):
    """Default: no proxy is trusted, so a client cannot pose as another address (and lock it out).
    Run as ``bedtime-fleet serve`` runs it (uvicorn, real TCP), where uvicorn itself used to believe it."""
    app = create_app(console_settings(f"sqlite:///{tmp_path}/fleet.db", tmp_path, login_max_failures=3))
    add_staff(app.state.db)
    server = Server(app)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as attacker:
            _spoofed_failures(attacker, "198.51.100.20", 3)
    finally:
        server.close()
    assert _remotes(app.state.db) == {"127.0.0.1"}
    with TestClient(app, client=("198.51.100.20", 5000)) as victim:  # the victim's address is not locked out
        assert login(victim, "olivia").status_code == 200
    app.state.db.close()


def test_x_forwarded_for_from_a_trusted_proxy_names_the_client(tmp_path):
    app = create_app(console_settings(f"sqlite:///{tmp_path}/fleet.db", tmp_path, login_max_failures=3,
                                      trusted_proxies=("10.0.0.0/24",)))
    add_staff(app.state.db)
    with TestClient(app, client=("10.0.0.5", 5000)) as proxy:
        # A client-supplied hop on the left is not believed beyond the nearest untrusted address.
        _spoofed_failures(proxy, "198.51.100.20, 203.0.113.7, 10.0.0.9", 1)
        _spoofed_failures(proxy, "not-an-address", 1)
    assert _remotes(app.state.db) == {"203.0.113.7", "10.0.0.5"}
    app.state.db.close()


def test_old_login_attempts_are_pruned(tmp_path):
    db_url = f"sqlite:///{tmp_path}/fleet.db"
    db = FleetDB(db_url)
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)
    with db.engine.begin() as conn:
        conn.execute(insert(login_attempts), [{"username": f"u{i}", "remote": "1.2.3.4", "at": old, "ok": False}
                                              for i in range(50)])
    db.record_login("olivia", "1.2.3.4", True)
    db.close()
    app = create_app(console_settings(db_url, tmp_path))
    with TestClient(app):
        wait_for(lambda: len(_remotes_rows(app.state.db)) == 1, 30)
    assert _remotes_rows(app.state.db) == ["olivia"]
    app.state.db.close()


def _remotes_rows(db) -> list[str]:
    with db.engine.connect() as conn:
        return list(conn.execute(select(login_attempts.c.username)).scalars())


def test_database_file_is_private(tmp_path):
    umask = os.umask(0o022)  # the usual umask: files 0644 unless created otherwise
    try:
        path = tmp_path / "fleet.db"
        FleetDB(f"sqlite:///{path}").close()
    finally:
        os.umask(umask)
    for p in (path, *tmp_path.glob("fleet.db-*")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    path.chmod(0o644)  # an existing database from before: fixed on open
    FleetDB(f"sqlite:///{path}").close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_serve_refuses_a_bad_trusted_proxy_in_one_line(tmp_path, capsys):
    from appliance.fleet import cli

    db = tmp_path / "serve.db"
    assert cli.main(["serve", "--no-mqtt", "--db", f"sqlite:///{db}", "--trusted-proxy", "10.0.0.0/8",
                     "--trusted-proxy", "proxy.example", "--secret-file", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--trusted-proxy 'proxy.example'" in err and "Traceback" not in err
    assert not db.exists() and not (tmp_path / "k").exists()  # nothing created
