"""The box against a real Home Assistant Core (2024.3.x from PyPI, its own venv: `make interop`).

Nothing of Home Assistant is imitated: `hass` runs on loopback with its own config folder, the test mosquitto
(tests/broker.py) runs with the shipped ACL and listener options and the families' read-only accounts made by
`bedtime-fleet family-acl`'s generator, and Home Assistant is set up the way a family would, only through its
own APIs: the onboarding API creates the owner and yields a
token, the config-flow REST API adds the MQTT integration with the family's broker account. Then a real box
(`bedtime run --simulate`, a subprocess) sleeps through a night with a nightmare loop, and the test shows

- the box is one device in Home Assistant's device registry with its entities, units and device classes;
- their states follow the night (stages, loop probability, signal quality, breather, status);
- the box's alert reaches Home Assistant as an event entity and on MQTT, and automations (written to the
  config folder's automations.yaml before start) turn it into a persistent notification; the plain-text copy
  reaches a phone app logged in with the family account;
- `kill -9` of the box fires its last will and every entity goes `unavailable`;
- the family account sees nothing of another family's box on the same broker, and Home Assistant writes
  nothing but its birth message `homeassistant/status`.

Not collected by `make test` (pyproject's norecursedirs); run `make interop`, which builds the venv first.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from appliance import __version__
from appliance import homeassistant as ha
from appliance.protocol import schema
from tests.broker import (DOCS_MOSQUITTO, FAMILIES, USERS, MosquittoBroker, RawRecorder, _die_with_parent,
                          free_port, make_box, mosquitto_available)

ROOT = Path(__file__).resolve().parents[2]
HA_VENV = Path(os.environ.get("BEDTIME_HA_VENV", "build/ha-venv"))
HA_VENV = HA_VENV if HA_VENV.is_absolute() else ROOT / HA_VENV
HA_PYTHON = HA_VENV / "bin" / "python"
HASS = HA_VENV / "bin" / "hass"
WS_HELPER = Path(__file__).with_name("ha_ws.py")

# The test broker's families (tests/broker.py): smith owns box-a, jones owns box-b. This family's Home
# Assistant logs in with the account `bedtime-fleet family-acl` made for smith, which reads box-a only and
# writes only Home Assistant's birth/will topic (docs/mqtt.md, "A family's Home Assistant").
BOX, BOX_PW = "box-a", USERS["box-a"]
OTHER_BOX, OTHER_PW = "box-b", USERS["box-b"]
FAMILY = "family-smith"
FAMILY_PW = USERS[FAMILY]
# The family's phone app needs an account of its own: the broker makes the client id the user name
# (use_username_as_clientid), so a second login as family-smith would take over Home Assistant's connection.
PHONE_FAMILY, PHONE_PW = "smith-phone", "pw-smith-phone"

HA_START_S = 420.0  # hass on a loaded 2-core machine: 1-2 min is usual; bounded generously
ENTITIES = {  # entity id -> (component, object id)
    f"{comp}.{ha.entity_object_id(BOX, obj).replace('-', '_')}": (comp, obj)
    for comp, obj in (t.split("/")[1:4:2] for t in ha.discovery_payloads(BOX, firmware_version="x"))
}

pytestmark = [pytest.mark.interop, pytest.mark.broker, pytest.mark.slow]


def _need_ha() -> None:
    if not HASS.exists():
        msg = f"no Home Assistant venv at {HA_VENV}: run `make interop` (it builds one)"
        if "BEDTIME_HA_VENV" in os.environ:  # under `make interop` a missing venv is a failure, not a skip
            pytest.fail(msg)
        pytest.skip(msg)
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed; the interop test needs the real broker")


def until(fn: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.5) -> Any:
    """Poll ``fn`` until it returns something truthy; fail naming ``what`` after ``timeout_s``. An exception
    that ``fn`` raises or returns means "not yet", and the last one is reported."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as e:  # noqa: BLE001 - a not-yet-ready service: keep polling, report the last error
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(step_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}; last: {last!r}")


class FamilyBroker(MosquittoBroker):
    """The test mosquitto (shipped ACL and listener options, the test families), plus one more family entry for
    the smith family's phone app, made by the same generator as every family block."""

    def _write_files(self, extra_conf: str) -> None:
        from appliance.fleet.broker_acl import family_acl, family_user

        self.users = {**USERS, family_user(PHONE_FAMILY): PHONE_PW}
        super()._write_files(extra_conf)
        self.acl_file.write_text(family_acl([*FAMILIES.items(), (PHONE_FAMILY, [BOX])],
                                            base=(DOCS_MOSQUITTO / "acl.conf").read_text()))


class HomeAssistant:
    """A real `hass` on a free loopback port with its own config folder."""

    def __init__(self, config_dir: Path, *, automations: list[dict]) -> None:
        import httpx

        self.dir = config_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_file = self.dir / "ha.log"
        # No default_config: only what this test uses (and Home Assistant's always-on core integrations).
        (self.dir / "configuration.yaml").write_text(
            "homeassistant:\n  name: bedtime interop\n  latitude: 52.37\n  longitude: 4.89\n  elevation: 0\n"
            "  unit_system: metric\n  time_zone: UTC\n  country: NL\n  currency: EUR\n"
            f"http:\n  server_host: 127.0.0.1\n  server_port: {self.port}\n"
            "api:\nconfig:\nonboarding:\nwebsocket_api:\nautomation: !include automations.yaml\n"
            "logger:\n  default: warning\n  logs:\n    homeassistant.components.mqtt: info\n    homeassistant.components.automation: info\n")
        (self.dir / "automations.yaml").write_text(json.dumps(automations, indent=1))  # JSON is YAML
        self.proc: subprocess.Popen | None = None
        self.token: str | None = None
        self.http = httpx.Client(timeout=30)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(HASS), "--config", str(self.dir), "--skip-pip", "--log-no-color", "--log-file", str(self.log_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            env={**os.environ, "HOME": str(self.dir)})

        def up():
            if self.proc.poll() is not None:
                pytest.fail(f"hass exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            return self.http.get(f"{self.base}/api/onboarding").status_code == 200
        until(up, HA_START_S, "Home Assistant's HTTP server", step_s=1.0)

    def onboard(self) -> None:
        """Create the owner through the onboarding API and trade its auth code for a token."""
        client_id = f"{self.base}/"
        r = self.http.post(f"{self.base}/api/onboarding/users",
                           json={"client_id": client_id, "name": "Parent", "username": "parent",
                                 "password": "a long family passphrase", "language": "en"})
        r.raise_for_status()
        r = self.http.post(f"{self.base}/auth/token", data={"grant_type": "authorization_code",
                                                             "code": r.json()["auth_code"], "client_id": client_id})
        r.raise_for_status()
        self.token = r.json()["access_token"]

    def api(self, method: str, path: str, **kw) -> Any:
        r = self.http.request(method, f"{self.base}{path}", headers={"Authorization": f"Bearer {self.token}"}, **kw)
        r.raise_for_status()
        return r.json()

    def ws(self, *commands: dict) -> list[dict]:
        out = subprocess.run([str(HA_PYTHON), str(WS_HELPER), f"ws://127.0.0.1:{self.port}/api/websocket",
                              self.token, json.dumps(list(commands))],
                             capture_output=True, text=True, timeout=120, check=True)
        results = json.loads(out.stdout)
        for r in results:
            assert r["success"], r
        return [r["result"] for r in results]

    def states(self) -> dict[str, dict]:
        return {s["entity_id"]: s for s in self.api("GET", "/api/states")}

    def notifications(self) -> dict[str, dict]:
        return {n["notification_id"]: n for n in self.ws({"type": "persistent_notification/get"})[0]}

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.http.close()


def automations() -> list[dict]:
    """What a family would add: the box's alert (its event entity, and the raw MQTT topic) becomes a phone
    notification; here `persistent_notification.create` stands in for `notify.mobile_app_...`."""
    alert_entity = f"event.{ha.entity_object_id(BOX, 'alert').replace('-', '_')}"
    breather = f"sensor.{ha.entity_object_id(BOX, 'breather').replace('-', '_')}"
    return [
        {"id": "bedtime_alert_event", "alias": "bedtime alert (event entity)",
         # not from/to unavailable or unknown: a box coming back online is not a new alert
         "trigger": [{"platform": "state", "entity_id": alert_entity,
                      "not_from": ["unavailable"], "not_to": ["unavailable", "unknown"]}],
         "action": [{"service": "persistent_notification.create",
                     "data": {"notification_id": "bedtime_alert_{{ trigger.to_state.attributes.seq }}",
                              "title": "{{ trigger.to_state.attributes.title }}",
                              "message": "{{ trigger.to_state.attributes.message }}"}}]},
        {"id": "bedtime_alert_mqtt", "alias": "bedtime alert (MQTT topic)",
         "trigger": [{"platform": "mqtt", "topic": schema.topic(BOX, "alert")}],
         "action": [{"service": "persistent_notification.create",
                     "data": {"notification_id": "bedtime_mqtt_{{ trigger.payload_json.seq }}",
                              "title": "{{ trigger.payload_json.title }}",
                              "message": "{{ trigger.payload_json.message }}"}}]},
        {"id": "bedtime_breather", "alias": "bedtime breather started",
         "trigger": [{"platform": "state", "entity_id": breather, "to": "cue"}],
         "action": [{"service": "persistent_notification.create",
                     "data": {"notification_id": "bedtime_breather", "title": "Breather",
                              "message": "The breather started a session."}}]},
    ]


def test_discovery_payloads_pass_home_assistants_own_schemas():
    """Each config through the MQTT integration's DISCOVERY_SCHEMA of its platform (Home Assistant's own code,
    in its venv): valid, and no key silently dropped (unknown keys would be) except an enum sensor's
    ``options``, which the MQTT sensor reads from a later release on and 2024.3 drops (its enum sensors
    take any state)."""
    _need_ha()
    script = """
import json, sys
from homeassistant.components.mqtt import binary_sensor, event, sensor
schemas = {"sensor": sensor.DISCOVERY_SCHEMA, "binary_sensor": binary_sensor.DISCOVERY_SCHEMA,
           "event": event.DISCOVERY_SCHEMA}
out = {}
for topic, cfg in json.load(sys.stdin).items():
    validated = schemas[topic.split("/")[1]](dict(cfg))
    out[topic] = sorted(set(cfg) - set(validated))
print(json.dumps(out))
"""
    configs = ha.discovery_payloads(BOX, firmware_version=__version__)
    r = subprocess.run([str(HA_PYTHON), "-c", script], input=json.dumps(configs), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    dropped = json.loads(r.stdout)
    assert set(dropped) == set(configs)
    for topic, keys in dropped.items():
        enum = configs[topic].get("device_class") == "enum"
        assert keys == (["options"] if enum else []), (topic, keys)


@pytest.fixture
def world(tmp_path, mqtt_pki):
    _need_ha()
    broker = FamilyBroker(tmp_path / "mosquitto", mqtt_pki).start()
    hass = HomeAssistant(tmp_path / "ha", automations=automations())
    procs: list[subprocess.Popen] = []
    links: list = []
    try:
        t0 = time.monotonic()
        hass.start()
        started_s = time.monotonic() - t0
        hass.onboard()
        yield {"broker": broker, "hass": hass, "procs": procs, "links": links, "tmp": tmp_path,
               "started_s": started_s}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        for link in links:
            link.stop()
        hass.stop()
        broker.stop()
        # What the box did, for a failing run (pytest shows a test's output only when it fails): its events
        # say why an expected alert never came (how the breather's session ended, when the loop did).
        for events in sorted((tmp_path / "nights").glob("*/events.jsonl")):
            print(f"[interop] box events ({events}):")
            print("\n".join(ln for ln in events.read_text().splitlines() if '"kind": "stage"' not in ln)[-4000:])


def _add_mqtt_integration(hass: HomeAssistant, broker: MosquittoBroker) -> dict:
    """The MQTT integration through Home Assistant's config-flow REST API, with the family's account."""
    flow = hass.api("POST", "/api/config/config_entries/flow", json={"handler": "mqtt", "show_advanced_options": False})
    assert flow["type"] == "form" and flow["step_id"] == "broker", flow
    fields = {f["name"] for f in flow["data_schema"]}
    assert {"broker", "port", "username", "password"} <= fields, fields
    done = hass.api("POST", f"/api/config/config_entries/flow/{flow['flow_id']}",
                    json={"broker": broker.host, "port": broker.auth_port, "username": FAMILY, "password": FAMILY_PW})
    assert done["type"] == "create_entry", done
    # An automation whose MQTT trigger was loaded before MQTT existed is not armed, and automation.reload
    # skips automations whose config did not change: turning them off and on again arms the trigger. (A
    # family writing automations after adding the integration never meets this; this test, which writes
    # them before start, does.)
    for service in ("turn_off", "turn_on"):
        hass.api("POST", f"/api/services/automation/{service}", json={"entity_id": "all"})
    return done


def _start_box(world: dict, *, tail_epochs: int, speed: float) -> subprocess.Popen:
    """The real daemon (`bedtime run --simulate`) on a night with the scripted nightmare loop early on."""
    from tests.daemon_helpers import short_night_with_loop

    tmp, broker = world["tmp"], world["broker"]
    hyp, _ = short_night_with_loop(after_epochs=tail_epochs)
    (tmp / "night.txt").write_text("# stages 0-4, one 30-s epoch a line\n" + "\n".join(str(int(s)) for s in hyp))
    (tmp / "box.pw").write_text(BOX_PW)
    (tmp / "bedtime.toml").write_text(
        f'[box]\nid = "{BOX}"\nname = "Kid\'s room"\nstate_dir = "{tmp / "state"}"\n'
        f'[recording]\ndir = "{tmp / "nights"}"\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.auth_port}\nusername = "{BOX}"\n'
        f'password_file = "{tmp / "box.pw"}"\nkeepalive_s = 5\n'
        f'[breather]\nconfirm_epochs = 2\n')
    bedtime = Path(sys.executable).with_name("bedtime")
    proc = subprocess.Popen([str(bedtime), "run", "--simulate", "--config", str(tmp / "bedtime.toml"),
                             "--hypnogram", str(tmp / "night.txt"), "--speed", str(speed)],
                            stdout=open(tmp / "box.log", "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            preexec_fn=_die_with_parent)
    world["procs"].append(proc)
    return proc


def test_home_assistant_sees_the_box_and_acts_on_its_alert(world):
    hass, broker, tmp = world["hass"], world["broker"], world["tmp"]
    print(f"\n[interop] Home Assistant answered after {world['started_s']:.0f} s")
    # Everything anyone publishes, heard on the test broker's open loopback listener: what did Home Assistant
    # write? (Boxes write only under their own bedtime/v1/<box>/ and homeassistant/+/<box>/.)
    wire = RawRecorder(broker.host, broker.port, ["#"])
    _add_mqtt_integration(hass, broker)

    # Another family's box on the same broker: this family's Home Assistant must never see it.
    other = make_box(tmp, OTHER_BOX, broker.host, broker.auth_port, username=OTHER_BOX, password=OTHER_PW)
    other.publish_discovery()
    other.start()
    world["links"].append(other)
    assert other.wait_connected(30)
    other.publish_alert(title="Not yours", message="box-b's alert", severity="critical")

    # A phone app on the family account, showing raw payloads.
    phone = RawRecorder(broker.host, broker.auth_port, [schema.alert_text_topic(BOX), schema.alert_text_topic(OTHER_BOX)],
                        username=f"family-{PHONE_FAMILY}", password=PHONE_PW)
    box = _start_box(world, tail_epochs=1200, speed=30)

    # 1. one device, its entities, units and classes (device and entity registries, websocket API)
    def registered():
        devices, entities = hass.ws({"type": "config/device_registry/list"}, {"type": "config/entity_registry/list"})
        ours = [d for d in devices if ["mqtt", ha.device_identifier(BOX)] in d["identifiers"]]
        mine = {e["entity_id"] for e in entities if ours and e["device_id"] == ours[0]["id"]}
        if mine != set(ENTITIES):
            return Exception(f"devices {[d['identifiers'] for d in devices]}, box entities {sorted(mine)}")
        return devices, ours, entities
    devices, ours, entities = until(registered, 120, "the box's device and all its entities in the registries")
    assert len(ours) == 1
    dev = ours[0]
    assert (dev["name"], dev["manufacturer"], dev["sw_version"]) == (f"bedtime {BOX}", "bedtime (open source)",
                                                                     __version__)
    mqtt_devices = [d for d in devices if any(i[0] == "mqtt" for i in d["identifiers"])]
    assert mqtt_devices == ours, "the family's Home Assistant sees a device that is not its box"
    assert not [e for e in entities if OTHER_BOX.replace("-", "_") in e["entity_id"]]

    # 2. units, device classes and states that follow the night
    def live():
        # Telemetry (signal quality) can come before the first epoch's stage: wait for both, or the stage
        # sensor is still Home Assistant's "unknown" (a race this test lost once on a quiet machine).
        st = hass.states()
        known = [st.get(f"sensor.bedtime_{BOX.replace('-', '_')}_{name}", {}).get("state")
                 for name in ("signal_quality", "sleep_stage")]
        return st if st and all(s not in (None, "unknown", "unavailable") for s in known) else None
    st = until(live, 120, "the box's states (signal quality from telemetry, the first epoch's stage)")
    p = f"bedtime_{BOX.replace('-', '_')}"
    stage = st[f"sensor.{p}_sleep_stage"]
    assert stage["attributes"]["device_class"] == "enum"
    assert stage["state"] in ha.STAGE_OPTIONS
    for num in ("loop_probability", "signal_quality"):
        a = st[f"sensor.{p}_{num}"]["attributes"]
        assert (a["unit_of_measurement"], a["state_class"]) == ("%", "measurement"), (num, a)
    assert 0 <= float(st[f"sensor.{p}_signal_quality"]["state"]) <= 100
    assert st[f"sensor.{p}_status"]["state"] == "recording"
    assert st[f"sensor.{p}_status"]["attributes"]["device_class"] == "enum"
    assert st[f"sensor.{p}_breather"]["attributes"]["device_class"] == "enum"
    assert st[f"binary_sensor.{p}_alert_active"]["attributes"]["device_class"] == "safety"
    assert st[f"binary_sensor.{p}_signal_problem"]["attributes"]["device_class"] == "problem"
    assert st[f"event.{p}_alert"]["attributes"]["event_types"] == list(schema.SEVERITIES)
    stages_seen = {stage["state"]}
    loop_seen: set[str] = set()

    def stages_move():
        s = hass.states()
        stages_seen.add(s[f"sensor.{p}_sleep_stage"]["state"])
        loop_seen.add(s[f"sensor.{p}_loop_probability"]["state"])
        return len(stages_seen - {"unknown"}) >= 3 and "REM" in stages_seen
    until(stages_move, 240, "the sleep stage to move through the night (W, N1, N2, REM)")
    assert any(v not in ("unknown", "unavailable") and 0 <= float(v) <= 100 for v in loop_seen), loop_seen

    # 3. the alert: an event entity and an MQTT message, both turned into a notification by automations
    def alerted():
        n = hass.notifications()
        kinds = {k.rsplit("_", 1)[0] for k in n}
        return n if {"bedtime_alert", "bedtime_mqtt"} <= kinds else Exception(f"notifications so far: {n}")
    notes = until(alerted, 420, "the box's alert to become persistent notifications")
    ev = [n for k, n in notes.items() if k.startswith("bedtime_alert_")]
    mq = [n for k, n in notes.items() if k.startswith("bedtime_mqtt_")]
    for n in ev + mq:
        assert n["title"] == "Nightmare loop: please check", n
        assert n["message"].startswith("Kid's room: a nightmare loop"), n
    assert "bedtime_breather" in notes, "the breather's 'cue' state never reached Home Assistant"
    assert not any("box-b" in n["message"] or "Not yours" in n["title"] for n in notes.values())
    alert_state = hass.states()[f"event.{p}_alert"]
    assert alert_state["attributes"]["event_type"] == "warning"
    assert alert_state["attributes"]["title"] == "Nightmare loop: please check"
    # the plain-text copy reached the family's phone app; the other box's did not
    assert phone.wait_for(lambda ms: any(t == schema.alert_text_topic(BOX) for t, _, _ in ms), 60), phone.messages
    texts = [m.decode() for t, m, _ in phone.messages if t == schema.alert_text_topic(BOX)]
    assert texts[0].split("\n")[0] == "Nightmare loop: please check"
    assert texts[0].split("\n", 1)[1].startswith("Kid's room: a nightmare loop")
    assert not [t for t, _, _ in phone.messages if OTHER_BOX in t]
    phone.close()

    # Home Assistant wrote exactly one thing, with the family account: its birth message.
    def from_a_box(topic: str) -> bool:
        parts = topic.split("/")
        return (parts[:2] == ["bedtime", "v1"] and parts[2:3] in ([BOX], [OTHER_BOX])) or \
            (parts[0] == "homeassistant" and len(parts) > 3 and parts[2] in (BOX, OTHER_BOX))
    ha_wrote = {(t, m) for t, m, _ in wire.messages if not from_a_box(t)}
    assert ha_wrote == {("homeassistant/status", b"online")}, ha_wrote
    wire.close()

    # 4. kill -9: the broker publishes the box's last will, every entity goes unavailable
    assert box.poll() is None, "the box's night ended before the test could pull its plug"
    assert hass.states()[f"sensor.{p}_status"]["state"] == "recording"
    box.send_signal(signal.SIGKILL)
    box.wait(30)
    t_kill = time.monotonic()

    def all_unavailable():
        s = hass.states()
        return all(s[e]["state"] == "unavailable" for e in ENTITIES)
    until(all_unavailable, 60, "every entity of the killed box to become unavailable")
    print(f"[interop] entities unavailable {time.monotonic() - t_kill:.1f} s after kill -9")

    # Home Assistant processed every discovery message without complaint
    log = hass.log()
    bad = [ln for ln in log.splitlines() if "discovery" in ln.lower() and ("error" in ln.lower() or "invalid" in ln.lower())]
    assert not bad, "\n".join(bad)
