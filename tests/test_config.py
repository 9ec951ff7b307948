"""Configuration: the documented example is valid, and every bad value is refused naming its key."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config import check_local_files, load_config
from appliance.protocol.boxconfig import BoxConfig, ConfigError, describe_keys, merge_config, validate_config
from appliance.protocol.cliparse import MAX_LINE_CHARS, one_line

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "bedtime.example.toml"


def test_example_is_valid_and_documents_every_key():
    cfg = load_config(EXAMPLE)
    assert isinstance(cfg, BoxConfig)
    text = EXAMPLE.read_text()
    keys = [k for k, _d, _doc in describe_keys()]
    from appliance.protocol.safety import BreatherConfig

    keys += [f"breather.{k}" for k in BreatherConfig().to_dict()]
    for key in keys:
        section, name = key.split(".")
        assert f"[{section}]" in text and name in text, f"{key} is not documented in the example"


def test_defaults_round_trip():
    cfg = validate_config({})
    assert validate_config(cfg.to_dict()) == cfg


@pytest.mark.parametrize("doc, key", [
    ({"mqtt": {"port": 70000}}, "mqtt.port"),
    ({"mqtt": {"port": "1883"}}, "mqtt.port"),
    ({"mqtt": {"prot": 1883}}, "mqtt.prot"),
    ({"mqtt": 5}, "mqtt"),
    ({"acquisition": {"gain": 5}}, "acquisition.gain"),
    ({"acquisition": {"sample_rate_sps": 300}}, "acquisition.sample_rate_sps"),
    ({"acquisition": {"channels": 4, "staging_channel": 6}}, "acquisition.staging_channel"),
    ({"acquisition": {"channel_labels": ["a", "b"]}}, "acquisition.channel_labels"),
    ({"acquisition": {"spi_max_speed_hz": 20_000_000}}, "acquisition.spi_max_speed_hz"),
    ({"outputs": {"light_pin": 25}}, "outputs.light_pin"),
    ({"recording": {"enabled": "yes"}}, "recording.enabled"),
    ({"recording": {"flush_interval_s": float("nan")}}, "recording.flush_interval_s"),
    ({"staging": {"min_confidence": 0.5}}, "staging.min_confidence"),
    ({"breather": {"light_brightness": 0.9}}, "breather.light_brightness"),
    ({"breather": {"p_loop_threshold": 0.1}}, "breather.p_loop_threshold"),
    ({"box": {"id": "box/1"}}, "box.id"),
    ({"mqtt": {"tls_cert": "/c.pem"}}, "mqtt.tls_key"),
    ({"nonsense": {}}, "nonsense"),
    ({"updates": {"public_key_file": 5}}, "updates.public_key_file"),
    ({"box": {"groups": ["a/b"]}}, "box.groups"),
])
def test_bad_values_name_their_key(doc, key):
    with pytest.raises(ConfigError) as ei:
        validate_config(doc)
    assert ei.value.key == key
    assert key in str(ei.value)


def test_breather_settings_are_checked_against_the_safety_envelope():
    pytest.importorskip("appliance.protocol.safety")
    with pytest.raises(ConfigError) as ei:
        validate_config({"breather": {"no_such_setting": 1}})
    assert ei.value.key == "breather.no_such_setting"


def test_file_errors_are_clear(tmp_path):
    p = tmp_path / "b.toml"
    p.write_text("[mqtt]\nport = = 3\n")
    with pytest.raises(ConfigError, match="TOML syntax error"):
        load_config(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    p.write_text("[mqtt]\nport = 0\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert ei.value.key == "mqtt.port" and str(p) in str(ei.value)


def test_merge_pushed_config():
    base = validate_config(tomllib.loads(EXAMPLE.read_text()))
    new = merge_config(base, {"breather": {"p_loop_threshold": 0.8}, "telemetry": {"interval_s": 10}})
    assert new.breather["p_loop_threshold"] == 0.8 and new.breather["cue_s"] == base.breather["cue_s"]
    assert new.telemetry.interval_s == 10 and new.mqtt == base.mqtt
    with pytest.raises(ConfigError) as ei:
        merge_config(base, {"breather": {"cue_volume": 2}})
    assert ei.value.key == "breather.cue_volume"


def test_example_breather_values_are_the_safety_defaults():
    """The example shows the breather's defaults; if appliance/protocol/safety.py changes one, the example must
    follow."""
    from appliance.protocol.safety import BreatherConfig

    example = tomllib.loads(EXAMPLE.read_text())["breather"]
    assert example == BreatherConfig().to_dict()


def test_pinned_update_key_must_be_an_ed25519_public_key(tmp_path):
    from appliance.protocol import signing

    priv, pub = tmp_path / "clinic.key", tmp_path / "clinic.pub"
    signing.generate_keypair(priv, pub)
    cfg = validate_config({"updates": {"public_key_file": str(pub)}})
    check_local_files(cfg)
    assert cfg.updates.public_key_file == str(pub)
    for bad in (priv, EXAMPLE):  # a private key, or not a key at all
        with pytest.raises(ConfigError) as ei:
            check_local_files(validate_config({"updates": {"public_key_file": str(bad)}}))
        assert ei.value.key == "updates.public_key_file" and "not an Ed25519 public key" in str(ei.value)
    assert validate_config({}).updates.public_key_file == ""  # default: signed updates off
    # the box's own file is checked with its files: a missing key file is named
    toml = tmp_path / "b.toml"
    toml.write_text('[updates]\npublic_key_file = "/no/such/clinic.pub"\n')
    with pytest.raises(ConfigError) as ei:
        load_config(toml)
    assert ei.value.key == "updates.public_key_file" and "cannot read" in str(ei.value)


def test_validation_never_reads_a_file_and_key_files_are_read_bounded(tmp_path, monkeypatch):
    """Issue 11, High #2: validating a configuration read the file its updates.public_key_file named (2.25 GB of
    /dev/zero in a second). Validation is now pure; the box's own file is checked by check_local_files, which
    reads only a small regular file. (Fails on the old code: validate_config opened /dev/zero.)"""
    import builtins
    import io
    import os

    opened = []
    real_open, real_os_open = builtins.open, os.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (opened.append(str(f)), real_open(f, *a, **k))[1])
    monkeypatch.setattr(io, "open", builtins.open)
    monkeypatch.setattr(os, "open", lambda f, *a, **k: (opened.append(str(f)), real_os_open(f, *a, **k))[1])
    for path in ("/dev/zero", "/etc/passwd", str(tmp_path)):
        cfg = validate_config({"updates": {"public_key_file": path}, "mqtt": {"password_file": path}})
        assert cfg.updates.public_key_file == path
    assert opened == []
    monkeypatch.undo()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.pem"
    big.write_bytes(b"x" * 100_000)
    for path, why in (("/dev/zero", "not a regular file"), (str(fifo), "not a regular file"),
                      (str(tmp_path), "not a regular file"), (str(big), "larger than")):
        with pytest.raises(ConfigError, match=why):
            check_local_files(validate_config({"updates": {"public_key_file": path}}))


# ---- every key, any value a TOML or JSON document can hold: a config or one ConfigError naming the key ---------
def _every_key() -> list[tuple[str, str]]:
    import dataclasses

    from appliance.protocol.safety import BreatherConfig

    defaults = BoxConfig()
    keys = [(section.name, f.name) for section in dataclasses.fields(BoxConfig)
            if dataclasses.is_dataclass(getattr(defaults, section.name))
            for f in dataclasses.fields(getattr(defaults, section.name))]
    return keys + [("breather", f.name) for f in dataclasses.fields(BreatherConfig)]  # a table the envelope checks


_HOSTILE_VALUES = st.one_of(
    st.integers(min_value=-10**4000, max_value=10**4000),  # TOML and JSON allow up to Python's 4300 digits
    st.sampled_from([10**400, -(10**400), 2**63, 2**64, -(2**63) - 1, 1e308, -1e308, float("inf"), float("nan"),
                     True, False, 0, -0.0, 5e-324, "", "1", "a" * 10000, [], {}, [[[]]], {"a": {"b": {}}}]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=50), st.booleans(),
    st.recursive(st.none() | st.integers() | st.text(max_size=5),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                 max_leaves=8))


@settings(max_examples=600, deadline=None)
@given(key=st.sampled_from(_every_key()), value=_HOSTILE_VALUES)
def test_any_value_at_any_key_is_accepted_or_one_config_error_naming_it(key, value):
    """Integers of hundreds of digits reached ``float()`` (an OverflowError: ``bedtime config check`` and the
    daemon's start printed a traceback, and a pushed config did too on the box)."""
    section, name = key
    try:
        validate_config({section: {name: value}})
    except ConfigError as e:
        assert f"{section}.{name}" in str(e) or section in str(e)
        assert len(one_line(e)) <= MAX_LINE_CHARS + 40
