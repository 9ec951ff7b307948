"""Helpers shared by the console tests (tests/test_console_*.py, test_rollout.py, test_console_browser.py)."""
from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

from appliance.fleet import auth
from appliance.fleet.web import ConsoleSettings, create_app
from appliance.protocol import signing
from appliance.protocol.updates import decode_update_args
from appliance.updates import HealthReport, UpdateManager

def cheap_hashing() -> None:
    """Argon2id with the cheapest parameters: the tests check the logic, not the cost (1 s per hash here)."""
    from argon2 import PasswordHasher, profiles

    auth.use_hasher(PasswordHasher.from_parameters(profiles.CHEAPEST))


cheap_hashing()

PASSWORDS = {"olivia": "operator-pass-123", "victor": "viewer-pass-1234"}


def add_staff(db) -> None:
    auth.create_user(db, "olivia", PASSWORDS["olivia"], "operator")
    auth.create_user(db, "victor", PASSWORDS["victor"], "viewer")


def make_keys(folder: Path) -> tuple[Path, Path]:
    priv, pub = folder / "clinic.key", folder / "clinic.pub"
    if not priv.exists():
        signing.generate_keypair(priv, pub)
    return priv, pub


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "page has no CSRF field"
    return m.group(1)


def login(client, username: str, password: str | None = None):
    page = client.get("/login")
    return client.post("/login", data={"username": username, "password": password or PASSWORDS[username],
                                       "csrf_token": csrf_of(page.text)})


class InProcessBoxes:
    """A command channel straight into real :class:`UpdateManager` objects, one per box id (no broker).

    Used by the HTTP-level tests, which are about the console's own checks; the MQTT hop itself is
    covered by test_updates.py, test_rollout.py and the browser tests against a real mosquitto.
    """

    def __init__(self, root: Path, public_pem: bytes, *, failing: set[str] = frozenset()) -> None:
        self.root, self.public_pem, self.failing = root, public_pem, set(failing)
        self.managers: dict[str, UpdateManager] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def manager(self, box_id: str) -> UpdateManager:
        with self.lock:
            if box_id not in self.managers:
                fail = box_id in self.failing
                self.managers[box_id] = UpdateManager(
                    self.root / box_id, self.public_pem, box_id=box_id,
                    health_check=lambda kind, path, fail=fail: HealthReport(
                        not fail, {"model_loads": not fail, "self_test": not fail, "stages_flowing": not fail},
                        "no stages for 90 s after the update" if fail else ""))
            return self.managers[box_id]

    def request(self, box_id: str, name: str, args: dict, *, timeout_s: float) -> dict:
        self.requests.append((box_id, name))
        kind, payload, manifest = decode_update_args(args)
        result = self.manager(box_id).apply(kind, payload, manifest).to_dict()
        return {"ok": True, "result": result}


def wait_for(predicate, timeout_s: float = 10.0, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met in {timeout_s} s")


def console_settings(db_url: str, folder: Path, **kw) -> ConsoleSettings:
    priv, pub = make_keys(folder)
    return ConsoleSettings(database_url=db_url, https_only=False, signing_key_file=priv, public_key_file=pub, **kw)


def config_json(**telemetry) -> str:
    return json.dumps({"telemetry": telemetry or {"interval_s": 30.0}})


__all__ = ["add_staff", "make_keys", "csrf_of", "login", "InProcessBoxes", "wait_for", "console_settings",
           "config_json", "create_app", "PASSWORDS"]


class SimBox:
    """A simulated box on a real broker: the real :class:`appliance.mqtt.BoxLink` and a real
    :class:`UpdateManager`, wired with :func:`appliance.updates.attach_to_link` as the daemon does."""

    def __init__(self, box_id: str, broker, folder: Path, public_pem: bytes, *, health_check=None,
                 firmware: str = "1.4.2", models: dict | None = None, groups: tuple[str, ...] = ()) -> None:
        from appliance.mqtt import BoxLink
        from appliance.updates import attach_to_link

        folder.mkdir(parents=True, exist_ok=True)
        self.box_id = box_id
        self.updates = UpdateManager(folder / "state", public_pem, box_id=box_id, box_groups=groups,
                                     **({"health_check": health_check} if health_check else {}))
        self.link = BoxLink(box_id=box_id, host=broker.host, port=broker.port, outbox_path=folder / "outbox.db",
                            firmware_version=firmware, model_versions=models or {"stager": "s-2026.10"},
                            reconnect_min_s=0.1, reconnect_max_s=1.0)
        attach_to_link(self.updates, self.link)

    def start(self) -> "SimBox":
        self.link.start()
        assert self.link.wait_connected(10), f"{self.box_id} did not connect"
        return self

    def stop(self) -> None:
        self.link.stop()
