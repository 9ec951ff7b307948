"""The MQTT schema, command validation and the outbox's disk policy (no broker; Home Assistant discovery is in
tests/test_homeassistant.py)."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pytest

from appliance.epoch import Epoch, SignalQuality
from appliance.outbox import PRIORITY_ALERT, PRIORITY_EVENT, Outbox
from appliance.protocol import commands
from appliance.protocol import schema

T0 = datetime(2026, 11, 23, 2, 30, tzinfo=timezone.utc)


def test_topics_are_versioned_and_parse_back():
    assert schema.topic("box-1", "alert") == "bedtime/v1/box-1/alert"
    assert schema.command_topic("box-1", "ping") == "bedtime/v1/box-1/cmd/ping"
    assert schema.shared_filter("clinic", "stage") == "$share/clinic/bedtime/v1/+/stage"
    assert schema.parse_topic("bedtime/v1/box-1/reply/console-7") == schema.ParsedTopic("box-1", "reply", "console-7")
    for bad in ("box/1", "+", "#", "", "a" * 65, "-x"):
        with pytest.raises(schema.SchemaError):
            schema.topic(bad, "alert")
    for bad in ("bedtime/v2/b/alert", "bedtime/v1/b/nope", "bedtime/v1/b/alert/x", "bedtime/v1/b/cmd"):
        with pytest.raises(schema.SchemaError):
            schema.parse_topic(bad)


def test_times_are_iso8601_utc_with_z():
    assert schema.iso_utc(T0) == "2026-11-23T02:30:00.000Z"
    assert schema.parse_iso_utc("2026-11-23T02:30:00.000Z") == T0
    with pytest.raises(schema.SchemaError):
        schema.iso_utc(datetime(2026, 1, 1))  # naive
    with pytest.raises(schema.SchemaError):
        schema.parse_iso_utc("2026-11-23T02:30:00")  # no offset
    with pytest.raises(schema.SchemaError):
        schema.parse_iso_utc("2026-11-23T02:30:00+01:00")  # not UTC


def test_stage_payload_from_an_epoch_has_units_in_names_and_validates():
    e = Epoch(index=41, start_sample=41 * 7500, end_time_s=1260.0,
              quality=SignalQuality(ok=False, flags=frozenset({"lead_off"}), artefact_fraction=0.25),
              stage_probs=np.array([0.05, 0.05, 0.1, 0.0, 0.8]), p_loop=0.62)
    p = schema.validate("stage", json.loads(schema.encode(schema.stage_payload("b1", T0, e))))
    assert p["stage"] == "REM" and p["stage_code"] == 4 and p["end_time_s"] == 1260.0
    assert p["confidence"] == 0.8 and p["p_loop"] == 0.62 and p["signal_ok"] is False
    assert p["quality_flags"] == ["lead_off"] and p["stage_probs"]["REM"] == 0.8
    unscored = schema.stage_payload("b1", T0, Epoch(index=0, start_sample=0, end_time_s=30.0))
    assert unscored["stage"] == "UNSCORED" and unscored["stage_probs"] is None


def test_alert_payload_fits_a_lock_screen_and_refuses_bad_fields():
    p = schema.alert_payload("b1", T0, title="Nightmare loop", message="Mia's loop did not settle after the breather.",
                             severity="critical", kind="loop_persisted", epoch_index=812, p_loop=0.91)
    assert p["title"] == "Nightmare loop" and p["severity"] == "critical" and p["p_loop"] == 0.91
    with pytest.raises(schema.SchemaError):
        schema.alert_payload("b1", T0, title="x" * 65, message="m", severity="info")
    with pytest.raises(schema.SchemaError):
        schema.alert_payload("b1", T0, title="t", message="m", severity="urgent")
    with pytest.raises(schema.SchemaError):
        schema.alert_payload("b1", T0, title="", message="m", severity="info")
    with pytest.raises(ValueError):  # JSON has no NaN: refused at encoding, never sent
        schema.encode(schema.telemetry_payload("b1", T0, cpu_percent=3.0) | {"x": float("nan")})
    with pytest.raises(schema.SchemaError):
        schema.telemetry_payload("b1", T0, temperature_c=float("inf"))
    # numpy values from the pipeline encode as plain JSON; a numpy NaN is still refused.
    out = json.loads(schema.encode({"a": np.float32(0.5), "b": np.arange(3), "t": T0}))
    assert out == {"a": 0.5, "b": [0, 1, 2], "t": "2026-11-23T02:30:00.000Z"}
    with pytest.raises(ValueError):
        schema.encode({"x": np.float64("nan")})


def test_validate_rejects_wrong_envelope():
    good = schema.status_payload("b1", T0, state="recording", firmware_version="1.0", model_versions={"stager": "1"})
    assert schema.validate("status", good)["online"] is True
    for mutate in ({"schema": 2}, {"box_id": "a/b"}, {"time_utc": "yesterday"}, {"state": "sleepy"},
                   {"online": "yes"}):
        with pytest.raises(schema.SchemaError):
            schema.validate("status", good | mutate)
    with pytest.raises(schema.SchemaError):
        schema.decode(b"[1, 2]")
    with pytest.raises(schema.SchemaError):
        schema.decode(b"\xff\xfe")


# ---- commands ---------------------------------------------------------------------------------

def body(args=None, **extra) -> bytes:
    return json.dumps(schema.command_payload(T0, args) | extra).encode()


def test_commands_validate_names_payloads_and_arguments():
    assert commands.parse_command("ping", body(), now=T0) == {}
    assert commands.parse_command("set_breather", body({"enabled": False}), now=T0) == {"enabled": False}
    assert commands.parse_command("report", body({"night": "2026-11-22"}), now=T0) == {"night": "2026-11-22"}
    assert commands.parse_command("ping", b"") == {}
    cases = [
        ("format_disk", body(), "unknown_command"),
        ("ping", b"{not json", "bad_payload"),
        ("ping", b"[]", "bad_payload"),
        ("ping", body(evil=1), "bad_payload"),
        ("ping", body(schema=9), "bad_payload"),
        ("set_breather", body({}), "bad_args"),
        ("set_breather", body({"enabled": "yes"}), "bad_args"),
        ("set_breather", body({"enabled": True, "volume": 1}), "bad_args"),
        ("identify", body({"duration_s": 3}), "unknown_command"),  # removed: no command may light a bedroom
        ("report", body({"night": "last tuesday"}), "bad_args"),
    ]
    for name, b, code in cases:
        with pytest.raises(commands.CommandError) as ei:
            commands.parse_command(name, b, now=T0)
        assert ei.value.code == code, (name, b)


# ---- outbox -----------------------------------------------------------------------------------

def test_outbox_is_ordered_persistent_and_numbers_per_channel(tmp_path):
    ob = Outbox(tmp_path / "ob.sqlite")
    seqs = [ob.put("t/alert", {"n": i}, channel="alert", priority=PRIORITY_ALERT) for i in range(3)]
    ob.put("t/event", {"n": 99}, channel="event")
    assert seqs == [1, 2, 3]
    rows = ob.peek()
    assert [json.loads(r.payload)["n"] for r in rows] == [0, 1, 2, 99]
    ob.ack(rows[0].row_id)
    oid = ob.outbox_id
    ob.close()
    ob = Outbox(tmp_path / "ob.sqlite")  # a restart: rows, ids and counters survive
    assert ob.outbox_id == oid and len(ob) == 3
    assert [json.loads(r.payload)["seq"] for r in ob.peek()] == [2, 3, 1]
    assert ob.put("t/alert", {"n": 3}, channel="alert") == 4  # never reused
    assert [r.row_id for r in ob.peek(after_row_id=ob.peek()[1].row_id)] == [r.row_id for r in ob.peek()[2:]]


def test_outbox_is_bounded_and_drops_events_before_alerts(tmp_path):
    ob = Outbox(tmp_path / "ob.sqlite", max_rows=10)
    for i in range(6):
        ob.put("t/alert", {"i": i}, channel="alert", priority=PRIORITY_ALERT)
    for i in range(4):
        ob.put("t/event", {"i": i}, channel="event", priority=PRIORITY_EVENT)
    ob.put("t/alert", {"i": 6}, channel="alert", priority=PRIORITY_ALERT)  # full: the oldest event goes
    kinds = [(r.topic, json.loads(r.payload)["i"]) for r in ob.peek(limit=100)]
    assert len(kinds) == 10 and ("t/event", 0) not in kinds and ("t/alert", 0) in kinds
    for i in range(7, 12):  # more alerts: events go first, then the oldest alerts
        ob.put("t/alert", {"i": i}, channel="alert", priority=PRIORITY_ALERT)
    kinds = [(r.topic, json.loads(r.payload)["i"]) for r in ob.peek(limit=100)]
    assert all(t == "t/alert" for t, _ in kinds) and [i for _, i in kinds] == list(range(2, 12))
    assert ob.dropped == 6 and ob.take_unreported_drops() == 6 and ob.take_unreported_drops() == 0
    small = Outbox(tmp_path / "small.sqlite", max_bytes=400)
    for i in range(20):
        small.put("t/alert", {"pad": "x" * 50, "i": i}, channel="alert")
    assert small.size_bytes <= 400 and len(small) >= 3
    with pytest.raises(ValueError):
        small.put("t/alert", {"pad": "x" * 1000}, channel="alert")


# ---- robustness: arbitrary input never escapes as anything but the documented error ----------

from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=20), body=st.one_of(
    st.binary(max_size=200),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                 max_leaves=10).map(lambda o: json.dumps({"args": o}).encode())))
def test_any_command_input_is_either_valid_or_a_command_error(name, body):
    try:
        args = commands.parse_command(name, body, now=T0)
    except commands.CommandError as e:
        assert e.code in ("unknown_command", "bad_payload", "bad_args")
    else:
        assert name in commands.COMMANDS and isinstance(args, dict)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200), channel=st.sampled_from(sorted(schema._REQUIRED)))
def test_any_payload_is_either_valid_or_a_schema_error(data, channel):
    try:
        schema.validate(channel, schema.decode(data))
    except schema.SchemaError:
        pass


def _valid_examples() -> dict[str, dict]:
    e = Epoch(index=1, start_sample=0, end_time_s=30.0, stage_probs=np.array([0.1, 0.1, 0.6, 0.1, 0.1]))
    return {
        "status": schema.status_payload("b1", T0, state="idle", firmware_version="1", model_versions={}),
        "stage": schema.stage_payload("b1", T0, e),
        "event": schema.event_payload("b1", T0, kind="fault") | {"seq": 1},
        "alert": schema.alert_payload("b1", T0, title="t", message="m", severity="info") | {"seq": 1},
        "telemetry": schema.telemetry_payload("b1", T0, cpu_percent=1.0),
        "report": schema.report_payload("b1", T0, {}),
        "config": schema.config_payload("b1", T0, config={}, config_version="v"),
    }


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                           max_leaves=6)


@settings(max_examples=200, deadline=None)
@given(channel=st.sampled_from(sorted(schema._REQUIRED)), data=st.data())
def test_a_valid_payload_with_any_field_replaced_is_valid_or_a_schema_error(channel, data):
    good = _valid_examples()[channel]
    key = data.draw(st.sampled_from(sorted(good) + ["extra"]))
    mutated = json.loads(json.dumps(good | {key: data.draw(JSON_VALUES)}))
    try:
        schema.validate(channel, mutated)
    except schema.SchemaError:
        pass


# ---- issue 11, lows: hostile commands get a bounded, typed answer -------------------------------

def test_deeply_nested_command_is_bad_args_not_a_recursion_error():
    """100k-deep nesting raised RecursionError out of parse_command (so the box sent no reply at all). A command
    that may be large (update) parses it and says bad_args; a small one refuses the size first."""

    for b in (b'{"args": {"manifest": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}", b"[" * 100_000):
        with pytest.raises(commands.CommandError) as ei:
            commands.parse_command("update", b, now=T0)
        assert ei.value.code == "bad_args" and "nested too deeply" in str(ei.value)
        with pytest.raises(commands.CommandError) as ei:
            commands.parse_command("restart", b, now=T0)
        assert ei.value.code == "bad_payload" and "at most" in str(ei.value)
    with pytest.raises(schema.SchemaError, match="nested too deeply"):
        schema.decode(b"[" * 100_000 + b"]" * 100_000)


def test_a_huge_argument_is_never_echoed_whole():
    """A 10 MB argument came back in a 10 MB error reply and log line; now the body is refused by size, and any
    argument is quoted in at most a few dozen characters."""
    huge = "A" * 10_000_000
    with pytest.raises(commands.CommandError) as ei:
        commands.parse_command("restart", body({"reason": huge}), now=T0)
    assert ei.value.code == "bad_payload" and len(str(ei.value)) <= commands.MAX_MESSAGE_CHARS + 60
    big_but_allowed = "B" * 60_000  # under the size limit, over the argument's pattern
    with pytest.raises(commands.CommandError) as ei:
        commands.parse_command("restart", body({"reason": big_but_allowed}), now=T0)
    assert ei.value.code == "bad_args" and len(str(ei.value)) <= commands.MAX_MESSAGE_CHARS + 60
    with pytest.raises(commands.CommandError) as ei:
        commands.parse_command("restart", body({"x" * 50_000: 1}), now=T0)
    assert len(str(ei.value)) <= commands.MAX_MESSAGE_CHARS + 60
    with pytest.raises(commands.CommandError) as ei:
        commands.parse_command("set_breather", body({"enabled": [[["deep"]]] * 10_000}), now=T0)
    assert len(str(ei.value)) <= commands.MAX_MESSAGE_CHARS + 60


@pytest.mark.parametrize("v", [True, 1.0, "1", None, [1]])
def test_schema_must_be_the_integer_one(v):
    """``schema: true`` and ``1.0`` compared equal to 1 and passed."""
    with pytest.raises(commands.CommandError) as ei:
        commands.parse_command("ping", json.dumps({"schema": v}).encode(), now=T0)
    assert ei.value.code == "bad_payload"
    payload = schema.status_payload("b1", T0, state="idle", firmware_version="1", model_versions={}) | {"schema": v}
    with pytest.raises(schema.SchemaError):
        schema.validate("status", schema.decode(json.dumps(payload)))


@pytest.mark.parametrize("when, ok", [("1970-01-01T00:00:00Z", False), ("2026-11-23T01:29:00Z", False),
                                      ("2026-11-23T01:31:00Z", True), ("2026-11-23T02:39:00Z", True),
                                      ("2026-11-23T02:41:00Z", False), ("2999-01-01T00:00:00Z", False)])
def test_command_time_must_be_fresh(when, ok):
    """A 1970 timestamp was accepted: a command older than an hour or more than 10 minutes ahead is refused."""
    b = json.dumps({"schema": 1, "time_utc": when, "args": {}}).encode()
    if ok:
        assert commands.parse_command("ping", b, now=T0) == {}
    else:
        with pytest.raises(commands.CommandError, match="stale|future") as ei:
            commands.parse_command("ping", b, now=T0)
        assert ei.value.code == "bad_payload"


def test_update_command_takes_a_model_manifest_with_its_card():
    """Medium #8: the shipped stage model's manifest with its card was 11,059 characters, over the old bound of
    8,000; a manifest at least that long (the card padded, since cards change with each model) passes."""
    import base64
    import hashlib

    from appliance.stager import DEFAULT_MODEL_PATH

    card = json.loads(DEFAULT_MODEL_PATH.with_name("model_card.json").read_text())
    model = DEFAULT_MODEL_PATH.read_bytes()
    assert card["sha256"] == hashlib.sha256(model).hexdigest()
    base = json.dumps({"schema": "bedtime.signature/2", "kind": "model", "model_card": card, "x": ""})
    manifest = json.dumps({"schema": "bedtime.signature/2", "kind": "model", "model_card": card,
                           "x": "y" * max(100, 11_100 - len(base))})
    assert len(manifest) > 11_059
    args = {"kind": "model", "payload_b64": base64.b64encode(model).decode(), "manifest": manifest}
    assert commands.parse_command("update", body(args), now=T0)["manifest"] == manifest
