"""The daemon joined to signed updates, over a real mosquitto: a pinned clinic key turns on cmd/update and shuts
the unsigned retained config topic; without one the topic works as before. Also: the commands a night allows
(`selftest` without the chip; no `identify`), and an applied model/config being the next start's."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from appliance.clinic_commands import SIGNED_UPDATES_REQUIRED
from appliance.daemon import Daemon, PipelineParts
from appliance.hardware import SimulationSource, open_hardware
from appliance.jsonl import JsonlWriter
from appliance.night_parts import load_stager
from appliance.protocol import signing
from appliance.protocol.commands import COMMANDS
from appliance.protocol.updates import encode_update_args
from appliance.pushed_config import PUSHED_CONFIG
from tests.broker import Recorder, wait_until
from tests.daemon_helpers import box_config
from tests.test_daemon_logic import ScriptedLoops, ScriptedStager

pytestmark = pytest.mark.broker

W, N2 = 0, 2


@pytest.fixture
def keys(tmp_path):
    priv, pub = tmp_path / "clinic.key", tmp_path / "clinic.pub"
    signing.generate_keypair(priv, pub)
    return signing.load_private_key(priv), pub


class RunningBox:
    """The real daemon on a simulated chip replayed at 60x (an epoch every 0.5 s), in a thread, on the broker;
    a clinic console (FleetIngest) to send commands and a recorder for the box's events."""

    def __init__(self, tmp_path, broker, *, stages=(W,), **sections) -> None:
        from appliance.fleet.ingest import FleetIngest

        self.cfg = box_config(tmp_path, port=broker.port, **sections)
        hyp = np.full(240, N2, dtype=np.int8)  # 2 h of signal: far longer than any test here runs
        hw = open_hardware(self.cfg, simulate=True, source=SimulationSource(hypnogram=hyp), speed=60.0)
        self.daemon = Daemon(self.cfg, hardware=hw,
                             parts=PipelineParts(stager=ScriptedStager(list(stages)), loop_detector=ScriptedLoops([0.0])))
        self.events = Recorder(broker.host, broker.port, [f"bedtime/v1/{self.cfg.box.id}/event"])
        self.clinic = FleetIngest(broker.host, broker.port).start()
        self.result = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert wait_until(lambda: self.daemon.link is not None and self.daemon.link.wait_connected(0.1)
                          and len(self.daemon.epochs) >= 2, 30), "the daemon did not connect and stage"

    def _run(self) -> None:
        self.result = self.daemon.run()

    def request(self, name: str, args: dict | None = None) -> dict:
        return self.clinic.request(self.cfg.box.id, name, args or {}, timeout_s=15, check=False)

    def event(self, kind: str) -> list[dict]:
        return [e for e in self.events.of("/event") if e.get("kind") == kind]

    def stop(self) -> None:
        self.daemon.stop()
        self.thread.join(60)
        self.clinic.stop()
        self.events.close()


@pytest.fixture
def running(tmp_path, broker):
    boxes = []

    def start(**kw) -> RunningBox:
        boxes.append(RunningBox(tmp_path, broker, **kw))
        return boxes[-1]

    yield start
    for b in boxes:
        b.stop()


def _push_unsigned(box: RunningBox, config: dict) -> None:
    box.clinic.push_config(box.cfg.box.id, config, config_version="unsigned-1")


def test_pinned_key_refuses_the_unsigned_config_and_applies_a_signed_one(running, keys, tmp_path):
    key, pub = keys
    box = running(updates={"public_key_file": str(pub)})
    pushed = tmp_path / "state" / PUSHED_CONFIG

    _push_unsigned(box, {"telemetry": {"interval_s": 5.0}})
    assert box.events.wait_for(lambda r: any(e.get("kind") == "config_rejected" for e in r.of("/event")), 10)
    assert SIGNED_UPDATES_REQUIRED in box.event("config_rejected")[0]["error"]
    assert not pushed.exists()

    payload = json.dumps({"telemetry": {"interval_s": 45.0}}).encode()
    manifest = signing.sign_bytes(payload, key, boxes=["box-a"], kind="config", name="clinic.json", version="cfg-7")
    reply = box.request("update", encode_update_args("config", payload, manifest))
    res = reply["result"]
    assert reply["ok"] and res["state"] == "applied" and res["running_version"] == "cfg-7"
    assert res["health"]["checks"] == {"config_valid": True, "stages_flowing": True}
    assert json.loads(pushed.read_text()) == {"telemetry": {"interval_s": 45.0}}  # the next start's config
    assert box.daemon.updates.current_version("config") == "cfg-7"

    # a config signed by someone else is refused and changes nothing
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    evil = b'{"telemetry": {"interval_s": 9.0}}'
    bad = signing.sign_bytes(evil, Ed25519PrivateKey.generate(), boxes=["box-a"], kind="config", name="x.json", version="evil")
    res = box.request("update", encode_update_args("config", evil, bad))["result"]
    assert res["state"] == "refused" and "signature" in res["reason"]
    assert json.loads(pushed.read_text()) == {"telemetry": {"interval_s": 45.0}}


def test_a_signed_config_cannot_unpin_the_key(running, keys, tmp_path):
    key, pub = keys
    box = running(updates={"public_key_file": str(pub)})
    payload = json.dumps({"updates": {"public_key_file": ""}, "telemetry": {"interval_s": 30.0}}).encode()
    manifest = signing.sign_bytes(payload, key, boxes=["box-a"], kind="config", name="clinic.json", version="cfg-8")
    assert box.request("update", encode_update_args("config", payload, manifest))["result"]["state"] == "applied"
    stored = json.loads((tmp_path / "state" / PUSHED_CONFIG).read_text())
    assert "updates" not in stored and stored["telemetry"] == {"interval_s": 30.0}


def test_the_health_check_fails_when_stages_stop_flowing(running, keys, tmp_path):
    key, pub = keys
    box = running(updates={"public_key_file": str(pub)})
    box.daemon.hw.acquisition.acq.stop()  # the chip goes quiet: the daemon declares "no data from the chip"
    assert wait_until(lambda: box.daemon.night.fault_active is not None, 30)
    payload = json.dumps({"telemetry": {"interval_s": 20.0}}).encode()
    manifest = signing.sign_bytes(payload, key, boxes=["box-a"], kind="config", name="clinic.json", version="cfg-9")
    res = box.request("update", encode_update_args("config", payload, manifest))["result"]
    assert res["state"] == "rolled_back" and res["health"]["checks"]["stages_flowing"] is False
    assert "stages not flowing" in res["reason"]
    assert not (tmp_path / "state" / PUSHED_CONFIG).exists()


def test_without_a_pinned_key_the_unsigned_config_is_kept_and_update_is_not_served(running, tmp_path):
    box = running()
    _push_unsigned(box, {"telemetry": {"interval_s": 5.0}})
    assert box.events.wait_for(lambda r: any(e.get("kind") == "config_applied" for e in r.of("/event")), 10)
    assert json.loads((tmp_path / "state" / PUSHED_CONFIG).read_text())["telemetry"]["interval_s"] == 5.0
    reply = box.request("update", {"kind": "config", "payload_b64": "e30=", "manifest": "{\"x\": 1}"})
    assert not reply["ok"] and reply["error"]["code"] == "unknown_command"


def test_every_listed_command_is_served_and_selftest_leaves_the_chip_alone(running, keys):
    _key, pub = keys
    box = running(updates={"public_key_file": str(pub)})
    args = {"report": {}, "set_breather": {"enabled": True}, "selftest": {}, "ping": {}, "restart": {"reason": "test"},
            "update": {"kind": "config", "payload_b64": "e30=", "manifest": "{\"x\": 1}"}}
    assert set(COMMANDS) == set(args), "a new command needs a case here"
    assert "identify" not in COMMANDS  # no clinic command may light a bedroom
    assert box.request("identify", {"duration_s": 3})["error"]["code"] == "unknown_command"

    st = box.request("selftest")
    assert st["ok"], st
    res = st["result"]
    checked = {c["name"]: c for c in res["checked"]}
    assert set(checked) == {"outputs_off", "acquisition_running", "broker"}
    assert all(c["passed"] for c in checked.values()) and res["passed"] is True
    assert {"chip_id", "noise", "impedance", "light_drive"} <= set(res["not_checked"])
    assert box.daemon.outputs.levels() == (0.0, 0.0)
    frames = box.daemon.counters["frames"]
    assert wait_until(lambda: box.daemon.counters["frames"] > frames, 30)  # acquisition never paused

    for name in sorted(set(args) - {"restart"}) + ["restart"]:  # restart last: it ends the night
        reply = box.request(name, args[name])
        assert reply.get("error", {}).get("code") != "unknown_command", (name, reply)
    box.thread.join(60)
    assert box.result is not None and box.daemon.restart_requested


def test_an_applied_model_is_the_stage_model_of_the_next_start(tmp_path, keys):
    """The update carries the model card signed with the model; the box writes it beside the applied version, so
    the next start stages with the applied model. Only an applied model that cannot load (here: its card removed
    from disk afterwards) is reported as model_update_unused, with the configured model staging instead."""
    import hashlib

    from appliance.stager import DEFAULT_MODEL_PATH
    from appliance.updates import UpdateManager

    key, pub = keys
    cfg = box_config(tmp_path, port=None, updates={"public_key_file": str(pub)})
    model = DEFAULT_MODEL_PATH.read_bytes()
    card = json.loads(DEFAULT_MODEL_PATH.with_name("model_card.json").read_text())
    mgr = UpdateManager(cfg.box.state_dir, pub.read_bytes(), box_id=cfg.box.id)
    res = mgr.apply("model", model, signing.sign_bytes(model, key, boxes=["box-a"], kind="model", name="stager.tflite", version="s-9",
                                                       model_card=card))
    assert res.state == "applied", res
    applied = mgr.current_path("model")
    assert applied.parent != DEFAULT_MODEL_PATH.parent and json.loads(applied.with_name("model_card.json").read_text()) == card

    def load():
        hw = open_hardware(cfg, simulate=True, source=SimulationSource(hypnogram=np.full(2, N2, np.int8)), speed=60.0)
        d = Daemon(cfg, hardware=hw)
        d.journal.events_file = JsonlWriter(tmp_path / "events.jsonl")  # as the daemon opens it
        try:
            updates = d.commands.make_update_manager(stages_flowing=d._stages_flowing)
            return load_stager(cfg, updates=updates, record_event=d.journal.event), d.events
        finally:
            d.journal.close()

    stager, events = load()
    assert stager.model_path == applied
    assert stager.sha256 == hashlib.sha256(model).hexdigest() == res.sha256  # the applied model stages the night
    assert [e["kind"] for e in events] == ["model_from_update"] and events[0]["version"] == "s-9"

    applied.with_name("model_card.json").unlink()  # a genuinely unusable applied model
    stager, events = load()
    assert stager.model_path == DEFAULT_MODEL_PATH
    assert [e["kind"] for e in events] == ["model_update_unused"] and "model card" in events[0]["reason"]
