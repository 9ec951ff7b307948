"""The safety envelope (appliance/protocol/safety.py): limits are sane and configs outside them are refused by name."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from appliance.protocol import safety
from appliance.protocol.safety import BreatherConfig, SafetyEnvelopeError


def test_default_config_is_inside_envelope():
    cfg = BreatherConfig()
    assert cfg.light_brightness <= safety.MAX_BRIGHTNESS
    assert cfg.cue_volume <= safety.MAX_VOLUME
    assert cfg.light_ramp_per_s <= safety.MAX_RAMP_PER_S
    assert cfg.session_s <= safety.MAX_SESSION_S
    assert cfg.sessions_per_night <= safety.MAX_SESSIONS_PER_NIGHT
    assert cfg.min_gap_s >= safety.MIN_GAP_BETWEEN_SESSIONS_S


def test_envelope_constants_are_conservative():
    assert 0 < safety.MAX_BRIGHTNESS <= 0.5 and 0 < safety.MAX_VOLUME <= 0.5
    # The light can never go from dark to its cap in under 30 s.
    assert safety.MAX_BRIGHTNESS / safety.MAX_RAMP_PER_S >= 30
    assert safety.MIN_GAP_BETWEEN_SESSIONS_S >= safety.MAX_SESSION_S
    assert set(safety.envelope()) >= {"MAX_BRIGHTNESS", "MAX_VOLUME", "MAX_RAMP_PER_S", "MAX_SESSION_S",
                                      "MAX_SESSIONS_PER_NIGHT", "MIN_GAP_BETWEEN_SESSIONS_S"}


@pytest.mark.parametrize("field,value", [
    ("light_brightness", safety.MAX_BRIGHTNESS + 0.01), ("light_brightness", 0.0), ("light_brightness", -0.1),
    ("cue_volume", safety.MAX_VOLUME * 1.5), ("light_ramp_per_s", safety.MAX_RAMP_PER_S * 2),
    ("volume_ramp_per_s", safety.MAX_VOLUME_RAMP_PER_S + 0.1), ("sessions_per_night", safety.MAX_SESSIONS_PER_NIGHT + 1),
    ("sessions_per_night", 0), ("min_gap_s", safety.MIN_GAP_BETWEEN_SESSIONS_S - 1),
    ("p_loop_threshold", 0.3), ("min_stage_confidence", 0.2), ("cue_tone_hz", 5000.0),
    ("light_brightness", math.nan), ("cue_volume", math.inf), ("light_brightness", "0.1"),
    ("light_brightness", True), ("sessions_per_night", 1.5), ("escalate", "yes"), ("confirm_epochs", 0),
])
def test_out_of_envelope_values_are_refused_naming_the_field(field, value):
    with pytest.raises(SafetyEnvelopeError) as e:
        BreatherConfig(**{field: value})
    assert e.value.field == field
    assert field in str(e.value)


def test_session_length_is_checked_across_fields():
    with pytest.raises(SafetyEnvelopeError, match="MAX_SESSION_S") as e:
        BreatherConfig(cue_s=200.0, light_s=200.0)
    assert e.value.field == "light_s"


def test_from_dict_refuses_unknown_keys_and_never_clamps():
    with pytest.raises(SafetyEnvelopeError, match="unknown field") as e:
        BreatherConfig.from_dict({"light_brightnes": 0.1})
    assert e.value.field == "light_brightnes"
    cfg = BreatherConfig.from_dict({"light_brightness": safety.MAX_BRIGHTNESS})
    assert cfg.light_brightness == safety.MAX_BRIGHTNESS
    assert BreatherConfig.from_dict(cfg.to_dict()) == cfg


@settings(max_examples=300, deadline=None)
@given(b=st.floats(allow_nan=True, allow_infinity=True), v=st.floats(allow_nan=True, allow_infinity=True))
def test_any_accepted_config_is_inside_envelope(b, v):
    try:
        cfg = BreatherConfig(light_brightness=b, cue_volume=v)
    except SafetyEnvelopeError:
        return
    assert 0 < cfg.light_brightness <= safety.MAX_BRIGHTNESS
    assert 0 < cfg.cue_volume <= safety.MAX_VOLUME
    assert cfg.light_brightness == b and cfg.cue_volume == v  # accepted means taken as given, not clamped
