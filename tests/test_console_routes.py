"""The console's routers (issue 14 item 4): every route but the login page and ``/healthz`` names the
session check as a dependency, every form route the CSRF check, and the checks run before the input is
parsed or validated."""
from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from appliance.fleet.web import deps
from appliance.fleet.web.routes import ROUTERS
from tests.console_helpers import add_staff, console_settings, create_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

OPEN = {("GET", "/login"), ("POST", "/login"), ("GET", "/healthz")}
ROUTES = sorted((method, route.path) for router in ROUTERS for route in router.routes if isinstance(route, APIRoute)
                for method in route.methods)


def _calls(route: APIRoute) -> set:
    found, todo = set(), list(route.dependant.dependencies)
    while todo:
        d = todo.pop()
        found.add(d.call)
        todo.extend(d.dependencies)
    return found


@pytest.fixture
def app(tmp_path):
    app = create_app(console_settings(f"sqlite:///{tmp_path}/fleet.db", tmp_path))
    add_staff(app.state.db)
    app.state.db.set_box_online("b1", True)
    yield app
    app.state.db.close()


def test_every_route_but_login_and_health_requires_a_session() -> None:
    assert len(ROUTES) >= 15
    for router in ROUTERS:
        for route in router.routes:
            for method in route.methods:
                if (method, route.path) not in OPEN:
                    assert deps.current_user in _calls(route), (method, route.path)
                if method == "POST" and route.path != "/rollouts":  # the upload checks its token once parsed
                    assert deps.csrf_checked in _calls(route), route.path


@pytest.mark.parametrize("method,path", [r for r in ROUTES if r not in OPEN])
def test_anonymous_is_refused_before_the_input_is_looked_at(app, method: str, path: str) -> None:
    # Path parameters that could not even be parsed ("x" for an int): still a login question first.
    url = re.sub(r"\{[^}]+\}", "x", path)
    with TestClient(app) as client:
        r = client.request(method, url, data={"csrf_token": "x"} if method == "POST" else None, follow_redirects=False)
    if path.startswith(("/fragments/", "/events")):
        assert r.status_code == 401, (method, url, r.status_code)
    else:
        assert r.status_code == 303 and r.headers["location"] == "/login", (method, url, r.status_code)
    assert "content-security-policy" in r.headers
