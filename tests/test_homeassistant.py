"""Home Assistant discovery and the plain-text alert copy.

Without a broker: the discovery payloads follow the rules Home Assistant 2024.3 applies to MQTT discovery
(checked against the real Home Assistant in tests/interop/test_home_assistant.py, whose own schemas validate
them there), and their templates, rendered with Jinja2, turn the box's real payloads into valid states.
With the real mosquitto: the daemon announces the box (retained) when it connects and again after a
reconnect, its status carries the breather's state, and every alert also goes out as short text.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from appliance import homeassistant as ha
from appliance.epoch import Epoch
from appliance.protocol import schema

T0 = datetime(2026, 11, 23, 2, 41, 30, tzinfo=timezone.utc)
BOX = "ward3-07"

# Home Assistant's own classes (homeassistant.components.*.const, 2024.3) for the ones we use.
HA_SENSOR_CLASSES_USED = {"enum"}
HA_BINARY_SENSOR_CLASSES_USED = {"safety", "problem"}


def _jinja():
    jinja2 = pytest.importorskip("jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment()  # Home Assistant renders in a sandboxed environment too


def _payloads(**status_fields):
    status = schema.status_payload(BOX, T0, state="recording", firmware_version="0.1.0", model_versions={},
                                   outbox_depth=3, **status_fields)
    stage = schema.stage_payload(BOX, T0, Epoch(index=5, start_sample=0, end_time_s=180.0,
                                                stage_probs=np.array([0, 0, 0.1, 0, 0.9]), p_loop=0.8))
    alert = schema.alert_payload(BOX, T0, title="Nightmare loop: please check", message="m", severity="warning",
                                 kind="loop_not_resolved") | {"seq": 4}
    telemetry = schema.telemetry_payload(BOX, T0, signal_quality_percent=87.5)
    return {schema.topic(BOX, c): p for c, p in
            [("status", status), ("stage", stage), ("alert", alert), ("telemetry", telemetry)]}


def _render(env, cfg: dict, payload: dict, key: str = "value_template") -> str:
    return env.from_string(cfg[key]).render(value_json=payload).strip()


def test_one_device_with_the_entities_a_family_needs():
    configs = ha.discovery_payloads(BOX, firmware_version="0.1.0")
    by_object = {}
    for topic, cfg in configs.items():
        m = re.fullmatch(rf"homeassistant/(sensor|binary_sensor|event)/{re.escape(BOX)}/([a-z_]+)/config", topic)
        assert m, topic
        json.dumps(cfg)
        by_object[m.group(2)] = (m.group(1), cfg)
    # the five the issue names, and the alert as an event entity an automation can trigger on
    for obj, comp in [("sleep_stage", "sensor"), ("loop_probability", "sensor"), ("signal_quality", "sensor"),
                      ("breather", "sensor"), ("status", "sensor"), ("alert", "event")]:
        assert by_object[obj][0] == comp, obj
    devices = {json.dumps(cfg["device"], sort_keys=True) for _, cfg in by_object.values()}
    assert len(devices) == 1, "every entity must name the same device"
    device = next(iter(by_object.values()))[1]["device"]
    assert device["identifiers"] == [f"bedtime_{BOX}"] and device["sw_version"] == "0.1.0"
    uids = [cfg["unique_id"] for _, cfg in by_object.values()]
    assert len(set(uids)) == len(uids)
    for _, cfg in by_object.values():
        # Home Assistant slugifies object_id into the entity id; keep it predictable
        assert re.fullmatch(r"[a-z0-9_]+", re.sub(r"[-.]", "_", cfg["object_id"]))
        assert cfg["availability_topic"] == schema.topic(BOX, "status")
        assert cfg["state_topic"].startswith(f"bedtime/v1/{BOX}/")


def test_units_and_device_classes_follow_home_assistant_rules():
    for topic, cfg in ha.discovery_payloads(BOX, firmware_version="0.1.0").items():
        component = topic.split("/")[1]
        if component == "sensor":
            if cfg.get("device_class") == "enum":
                # HA refuses an enum sensor with a unit or a state class, and needs its options
                assert cfg["options"] and "unit_of_measurement" not in cfg and "state_class" not in cfg, topic
            else:
                assert cfg.get("device_class") in (None, *HA_SENSOR_CLASSES_USED)
                assert cfg["state_class"] == "measurement", topic  # numbers: kept as long-term statistics
        elif component == "binary_sensor":
            assert cfg.get("device_class") in (None, *HA_BINARY_SENSOR_CLASSES_USED)
            assert {cfg["payload_on"], cfg["payload_off"]} == {"ON", "OFF"}
        else:
            assert component == "event" and cfg["event_types"] == list(schema.SEVERITIES)
    cfgs = {t.split("/")[3]: c for t, c in ha.discovery_payloads(BOX, firmware_version="0.1.0").items()}
    assert cfgs["loop_probability"]["unit_of_measurement"] == "%"
    assert cfgs["signal_quality"]["unit_of_measurement"] == "%"
    assert cfgs["sleep_stage"]["options"] == ["W", "N1", "N2", "N3", "REM", "UNSCORED"]
    assert set(cfgs["status"]["options"]) == set(schema.STATUS_STATES)
    assert cfgs["alert_active"]["device_class"] == "safety"


def test_templates_turn_real_box_payloads_into_valid_states():
    env = _jinja()
    configs = ha.discovery_payloads(BOX, firmware_version="0.1.0")
    by_topic = _payloads(breather_state="cue")
    offline = schema.status_payload(BOX, T0, state="offline", firmware_version="0.1.0", model_versions={})
    rendered = {}
    for topic, cfg in configs.items():
        component, obj = topic.split("/")[1], topic.split("/")[3]
        value = _render(env, cfg, by_topic[cfg["state_topic"]])
        rendered[obj] = value
        if component == "binary_sensor":
            assert value in (cfg["payload_on"], cfg["payload_off"])
        elif component == "event":
            ev = json.loads(value)
            assert ev["event_type"] in cfg["event_types"]
        elif cfg.get("device_class") == "enum":
            assert value in cfg["options"], (obj, value)
        else:
            float(value)
        if "json_attributes_template" in cfg:
            assert isinstance(json.loads(_render(env, cfg, by_topic[cfg["json_attributes_topic"]],
                                                 "json_attributes_template")), dict)
        assert _render(env, cfg, by_topic[cfg["availability_topic"]], "availability_template") == "online"
        assert _render(env, cfg, offline, "availability_template") == "offline"
    assert rendered["sleep_stage"] == "REM"
    assert float(rendered["loop_probability"]) == 80.0
    assert rendered["nightmare_loop"] == "ON"
    assert float(rendered["signal_quality"]) == 87.5
    assert rendered["signal_problem"] == "OFF"
    assert rendered["breather"] == "cue"
    assert rendered["status"] == "recording"
    assert rendered["outbox_depth"] == "3"
    assert json.loads(rendered["alert"]) == {"event_type": "warning", "title": "Nightmare loop: please check",
                                             "message": "m", "kind": "loop_not_resolved", "seq": 4}


def test_missing_numbers_become_unknown_not_zero():
    """A stage without a loop probability, telemetry without signal quality, a status without a breather
    (an older box, or between nights): Home Assistant gets "None" (unknown) or "off", never a made-up 0."""
    env = _jinja()
    configs = {t.split("/")[3]: c for t, c in ha.discovery_payloads(BOX, firmware_version="0.1.0").items()}
    stage = schema.stage_payload(BOX, T0, Epoch(index=1, start_sample=0, end_time_s=30.0,
                                                stage_probs=np.array([1.0, 0, 0, 0, 0]), p_loop=None))
    tel = schema.telemetry_payload(BOX, T0, cpu_percent=3.0)
    status = schema.status_payload(BOX, T0, state="idle", firmware_version="0.1.0", model_versions={})
    assert _render(env, configs["loop_probability"], stage) == "None"
    assert _render(env, configs["nightmare_loop"], stage) == "OFF"
    assert _render(env, configs["signal_quality"], tel) == "None"
    assert _render(env, configs["breather"], status) == "off"
    assert _render(env, configs["outbox_depth"], status | {"outbox_depth": None}) == "None"


def test_breather_options_cover_every_breather_state():
    from appliance.breather import BreatherState

    assert {s.value for s in BreatherState} | {"off", "disabled"} == set(ha.BREATHER_OPTIONS)


# ---- the plain-text alert ----------------------------------------------------------------------

def test_alert_text_topic_sits_in_the_box_subtree():
    assert schema.alert_text_topic(BOX) == f"bedtime/v1/{BOX}/alert/text"
    with pytest.raises(schema.SchemaError):
        schema.alert_text_topic("bad/box")


@settings(max_examples=200, deadline=None)
@given(title=st.text(min_size=1, max_size=64), message=st.text(min_size=1, max_size=240))
def test_alert_text_is_the_title_line_then_the_message(title, message):
    try:
        schema.alert_payload(BOX, T0, title=title, message=message, severity="info")
    except schema.SchemaError:
        return
    text = schema.alert_text(title, message).decode("utf-8")
    first, rest = text.split("\n", 1)
    assert first == " ".join(title.split()) and "\n" not in first
    assert rest == message


# ---- on the real broker -------------------------------------------------------------------------

@pytest.mark.broker
def test_text_copy_of_each_alert_survives_an_offline_box_and_comes_just_before_it(broker, tmp_path):
    from tests.broker import RawRecorder, make_box

    box = make_box(tmp_path, "box-a", broker.host, broker.port)
    # raised while the box has never been connected: both copies wait in the outbox
    box.publish_alert(title="Nightmare loop: please check", message="Kid's room: it did not settle.",
                      severity="warning", kind="loop_not_resolved")
    box.publish_alert(title="Second", message="two", severity="info")
    assert box.outbox_depth == 2  # the copies take no outbox rows: its bounds still count alerts
    phone = RawRecorder(broker.host, broker.port, ["bedtime/v1/box-a/alert", "bedtime/v1/box-a/alert/text"])
    box.start()
    try:
        assert box.wait_delivered(30)
        assert phone.wait_for(lambda ms: len(ms) >= 4, 20), phone.messages
    finally:
        box.stop()
        phone.close()
    topics = [t for t, _, _ in phone.messages]
    assert topics == ["bedtime/v1/box-a/alert/text", "bedtime/v1/box-a/alert"] * 2
    texts = [p.decode() for t, p, _ in phone.messages if t.endswith("/text")]
    assert texts == ["Nightmare loop: please check\nKid's room: it did not settle.", "Second\ntwo"]
    assert not any(r for _, _, r in phone.messages)  # never retained: an old alert must not pop up again


@pytest.mark.broker
def test_discovery_is_sent_again_after_every_reconnect(broker, tmp_path):
    """A broker that lost its retained messages (a new broker, a wiped disk) learns the box again as soon as
    the box reconnects."""
    from tests.broker import RawRecorder, make_box

    box = make_box(tmp_path, "box-a", broker.host, broker.port)
    box.publish_discovery()  # before the first connect: sent when it connects
    expected = set(ha.discovery_payloads("box-a", firmware_version="0.1.0"))
    box.start()
    try:
        assert box.wait_connected(20)
        ha_side = RawRecorder(broker.host, broker.port, ["homeassistant/#"])
        assert ha_side.wait_for(lambda ms: {t for t, _, _ in ms} >= expected, 20)
        ha_side.close()
        broker.stop()
        (broker.workdir / "mosquitto.db").unlink(missing_ok=True)  # the retained discovery is gone
        broker.start()
        ha_side = RawRecorder(broker.host, broker.port, ["homeassistant/#"])
        assert ha_side.wait_for(lambda ms: {t for t, _, _ in ms} >= expected, 30), ha_side.messages
        ha_side.close()
    finally:
        box.stop()
    assert box.stats["connects"] >= 2


@pytest.mark.broker
@pytest.mark.slow
def test_daemon_announces_the_box_and_reports_breather_and_alerts(tmp_path, broker):
    """The real daemon on a short night with a nightmare loop: discovery (retained) when it connects, the
    breather's state in the retained status, and the alert's text copy."""
    from appliance.daemon import Daemon
    from appliance.hardware import SimulationSource, open_hardware
    from tests.broker import RawRecorder
    from tests.daemon_helpers import box_config, pipeline_parts, short_night_with_loop

    hyp, loop = short_night_with_loop()
    cfg = box_config(tmp_path, port=broker.port)
    rec = RawRecorder(broker.host, broker.port, ["homeassistant/#", f"bedtime/v1/{cfg.box.id}/#"])
    parts, used = pipeline_parts(hyp)
    hw = open_hardware(cfg, simulate=True, source=SimulationSource(hypnogram=hyp, seed=3), speed=float("inf"))
    daemon = Daemon(cfg, hardware=hw, parts=parts)
    try:
        daemon.run()
        assert daemon.alerts_sent, f"no alert on the scripted loop ({used})"
        assert rec.wait_for(lambda ms: any(t.endswith("/alert/text") for t, _, _ in ms), 20)
    finally:
        rec.close()
    disc = [(t, p, r) for t, p, r in rec.messages if t.startswith("homeassistant/")]
    assert {t for t, _, _ in disc} == set(ha.discovery_payloads(cfg.box.id, firmware_version="x"))
    for t, p, _ in disc:
        assert json.loads(p)["device"]["identifiers"] == [f"bedtime_{cfg.box.id}"]
    statuses = [json.loads(p) for t, p, _ in rec.messages if t.endswith("/status")]
    breather = [s.get("breather_state") for s in statuses]
    assert "cue" in breather and "idle" in breather, breather
    assert [s["state"] for s in statuses][-2:] == ["idle", "offline"]  # night over, then a clean stop
    assert statuses[-2]["breather_state"] == "off"
    texts = [p.decode() for t, p, _ in rec.messages if t.endswith("/alert/text")]
    assert texts[0] == f"{daemon.alerts_sent[0]['title']}\n{daemon.alerts_sent[0]['message']}"
