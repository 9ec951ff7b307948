"""THE safety envelope of the breather: hard limits compiled into the code, and the config checked against them.

Everything the box can do to a sleeping person is bounded here, in one place, so a reviewer reads one
file. It is in the protocol layer because the clinic checks every breather setting it pushes against the same
envelope before sending it (:mod:`appliance.protocol.boxconfig`), and the box again before applying it. The
limits are module constants, not configuration: changing one means changing this file, which
shows in review and in the audit of a release. :class:`BreatherConfig` holds what a clinic or parent may
tune; it refuses any value outside the envelope with :class:`SafetyEnvelopeError` naming the field, and
never clamps silently (a config that silently did something other than what was asked is worse than none).

The checks are plain code rather than a validation library (pydantic and the like): a dozen range checks
do not justify a runtime dependency on the box, and each error must name the field and the envelope.

Units: light and sound levels are fractions (0..1) of the output's full PWM duty cycle; rates are
fraction of full scale per second; times are seconds.

Why these numbers (none come from a standard for this use; they are conservative engineering choices):

* A warm LED at 30 % duty in a dark bedroom is a soft glow; the point is to lighten REM, not to wake.
* A small speaker at 20 % duty of its driver is quiet; the cue is meant to be barely there.
* The light may rise at most 1 %/s of full scale (0 -> 30 % in no less than 30 s): slow enough not to startle.
* Sound bursts may fade in at most 50 %/s of full scale (0 -> 20 % in no less than 0.4 s): no clicks or
  sudden onsets.
* A session lasts at most 5 min; at most 3 per night; at least 30 min between the end of one and the
  start of the next (one loop window, docs/loops.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

P_LOOP_THRESHOLD = 0.5
"""P(loop) at or above which an epoch counts as "loop" unless ``breather.p_loop_threshold`` says otherwise: the
loop model card's threshold, where its metrics were measured; the default of that key, which a clinic may push
(never below :data:`MIN_P_LOOP_THRESHOLD`). :mod:`appliance.episodes` and Home Assistant's "nightmare loop" sensor
use it."""

MAX_BRIGHTNESS = 0.30
"""Highest light level (fraction of full PWM duty) the box will ever set."""
MAX_VOLUME = 0.20
"""Highest sound level (fraction of full PWM duty of the speaker driver) the box will ever set."""
MAX_RAMP_PER_S = 0.01
"""Fastest rise of the light level, fraction of full scale per second."""
MAX_VOLUME_RAMP_PER_S = 0.50
"""Fastest rise of the sound level (burst fade-in), fraction of full scale per second."""
MAX_TICK_STEP_S = 1.0
"""Longest time step credited to a ramp in one tick: after a stall, ramps resume, they never jump."""
MAX_SESSION_S = 300.0
"""Longest breather session (cue + light), seconds."""
MAX_SESSIONS_PER_NIGHT = 3
"""Most sessions in one night."""
MIN_GAP_BETWEEN_SESSIONS_S = 1800.0
"""Shortest time from the end of one session to the start of the next, seconds."""
MIN_P_LOOP_THRESHOLD = 0.5
"""Lowest P(loop) threshold a config may set: below it the box would act on a coin toss."""
MIN_STAGE_CONFIDENCE = 0.5
"""Lowest stage confidence a config may accept for stimulating (below: the stage is 'uncertain')."""
MIN_TONE_HZ = 150.0
"""Lowest cue tone, Hz (small speakers do not reproduce lower)."""
MAX_TONE_HZ = 1000.0
"""Highest cue tone, Hz (higher tones are more alerting)."""


class SafetyEnvelopeError(ValueError):
    """A breather config value lies outside the hard envelope (or is not a valid value at all)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"breather config field {field!r}: {message}")


def _number(name: str, value: Any) -> float:
    # bool is an int in Python; "true" as a brightness is a config mistake, not 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SafetyEnvelopeError(name, f"must be a number, got {value!r}")
    try:
        v = float(value)
    except OverflowError:  # an integer of hundreds of digits (TOML and JSON allow them): no float holds it
        raise SafetyEnvelopeError(name, f"must be finite, got an integer of {len(str(abs(value)))} digits") from None
    if not math.isfinite(v):
        raise SafetyEnvelopeError(name, f"must be finite, got {value!r}")
    return v


def _in_range(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, unit: str = "") -> None:
    v = _number(name, value)
    too_low = v <= lo if lo_open else v < lo
    if too_low or v > hi:
        # repr, not :g: six digits would print 0.2000001 as "0.2", which reads as a contradiction
        lo_s = f"> {_num(lo)}" if lo_open else f">= {_num(lo)}"
        raise SafetyEnvelopeError(name, f"{_num(v)}{unit} is outside the safety envelope "
                                        f"({lo_s} and <= {_num(hi)}{unit})")


def _num(x: float) -> str:
    """``x`` with as many digits as tell it apart from its neighbours (Python's shortest round-trip repr)."""
    return repr(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def _int_in_range(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SafetyEnvelopeError(name, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise SafetyEnvelopeError(name, f"{value} is outside the safety envelope ({lo}..{hi})")


@dataclass(frozen=True)
class BreatherConfig:
    """What may be tuned about the breather, each value checked against the envelope on creation.

    Attributes
    ----------
    p_loop_threshold : float
        P(loop) at or above which an epoch counts as "loop" (>= MIN_P_LOOP_THRESHOLD, <= 1).
    confirm_epochs : int
        Consecutive loop epochs (each 30 s) needed before a session starts (1..10).
    min_stage_confidence : float
        Stage probability below which the stage is "uncertain" and nothing is stimulated
        (>= MIN_STAGE_CONFIDENCE, <= 1).
    stable_n2_epochs : int
        Consecutive N2 epochs after which sleep has deepened and a session stops (1..10).
    max_pause_epochs : int
        Consecutive bad-signal or uncertain-stage epochs a session may pause through (outputs off)
        before it is aborted (0..4; 0 = abort on the first).
    cue_volume : float
        Peak sound level of a cue burst (0 < v <= MAX_VOLUME).
    volume_ramp_per_s : float
        Fade-in rate of a burst, full scale per second (0 < r <= MAX_VOLUME_RAMP_PER_S).
    cue_tone_hz : float
        Tone of the bursts, Hz (MIN_TONE_HZ..MAX_TONE_HZ).
    cue_burst_s, cue_gap_s : float
        Burst length and silence between bursts, seconds (0.2..5 and 1..60).
    cue_s : float
        Length of the sound-only cue phase, seconds.
    light_brightness : float
        Light level the light phase ramps to (0 < b <= MAX_BRIGHTNESS).
    light_ramp_per_s : float
        Rise rate of the light, full scale per second (0 < r <= MAX_RAMP_PER_S).
    light_s : float
        Length of the light phase, seconds; ``cue_s + light_s <= MAX_SESSION_S``.
    sessions_per_night : int
        Most sessions per night (1..MAX_SESSIONS_PER_NIGHT).
    min_gap_s : float
        Time from the end of a session to the start of the next (MIN_GAP_BETWEEN_SESSIONS_S..12 h).
    escalate : bool
        Alert the parent when a session ends with the loop still under way.
    """

    p_loop_threshold: float = P_LOOP_THRESHOLD  # the loop model card's threshold
    confirm_epochs: int = 1
    min_stage_confidence: float = 0.6
    stable_n2_epochs: int = 2
    max_pause_epochs: int = 1
    cue_volume: float = 0.08
    volume_ramp_per_s: float = 0.2
    cue_tone_hz: float = 330.0
    cue_burst_s: float = 1.5
    cue_gap_s: float = 4.0
    cue_s: float = 60.0
    light_brightness: float = 0.15
    light_ramp_per_s: float = 0.005
    light_s: float = 120.0
    sessions_per_night: int = 2
    min_gap_s: float = 2400.0
    escalate: bool = True

    def __post_init__(self) -> None:
        _in_range("p_loop_threshold", self.p_loop_threshold, MIN_P_LOOP_THRESHOLD, 1.0)
        _int_in_range("confirm_epochs", self.confirm_epochs, 1, 10)
        _in_range("min_stage_confidence", self.min_stage_confidence, MIN_STAGE_CONFIDENCE, 1.0)
        _int_in_range("stable_n2_epochs", self.stable_n2_epochs, 1, 10)
        _int_in_range("max_pause_epochs", self.max_pause_epochs, 0, 4)
        _in_range("cue_volume", self.cue_volume, 0.0, MAX_VOLUME, lo_open=True)
        _in_range("volume_ramp_per_s", self.volume_ramp_per_s, 0.0, MAX_VOLUME_RAMP_PER_S, lo_open=True, unit="/s")
        _in_range("cue_tone_hz", self.cue_tone_hz, MIN_TONE_HZ, MAX_TONE_HZ, unit=" Hz")
        _in_range("cue_burst_s", self.cue_burst_s, 0.2, 5.0, unit=" s")
        _in_range("cue_gap_s", self.cue_gap_s, 1.0, 60.0, unit=" s")
        _in_range("cue_s", self.cue_s, 0.0, MAX_SESSION_S, unit=" s")
        _in_range("light_brightness", self.light_brightness, 0.0, MAX_BRIGHTNESS, lo_open=True)
        _in_range("light_ramp_per_s", self.light_ramp_per_s, 0.0, MAX_RAMP_PER_S, lo_open=True, unit="/s")
        _in_range("light_s", self.light_s, 0.0, MAX_SESSION_S, unit=" s")
        if self.cue_s + self.light_s > MAX_SESSION_S:
            raise SafetyEnvelopeError("light_s", f"cue_s + light_s = {self.cue_s + self.light_s:g} s exceeds "
                                                 f"MAX_SESSION_S = {MAX_SESSION_S:g} s")
        if self.cue_s + self.light_s <= 0:
            raise SafetyEnvelopeError("cue_s", "cue_s + light_s must be > 0")
        _int_in_range("sessions_per_night", self.sessions_per_night, 1, MAX_SESSIONS_PER_NIGHT)
        _in_range("min_gap_s", self.min_gap_s, MIN_GAP_BETWEEN_SESSIONS_S, 12 * 3600.0, unit=" s")
        if not isinstance(self.escalate, bool):
            raise SafetyEnvelopeError("escalate", f"must be true or false, got {self.escalate!r}")

    @property
    def session_s(self) -> float:
        """Planned session length, seconds."""
        return self.cue_s + self.light_s

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BreatherConfig":
        """Build from a mapping (e.g. the box config's ``[breather]`` table or an MQTT config message).

        Unknown keys are refused (a typo must not silently leave the default in force).
        """
        if not isinstance(data, Mapping):
            raise SafetyEnvelopeError("<config>", f"must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SafetyEnvelopeError(unknown[0], f"unknown field (known: {', '.join(sorted(known))})")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def envelope() -> dict[str, float]:
    """The hard limits, by name (for the audit log, the night report and the clinic console)."""
    return {name: globals()[name] for name in (
        "MAX_BRIGHTNESS", "MAX_VOLUME", "MAX_RAMP_PER_S", "MAX_VOLUME_RAMP_PER_S", "MAX_TICK_STEP_S",
        "MAX_SESSION_S", "MAX_SESSIONS_PER_NIGHT", "MIN_GAP_BETWEEN_SESSIONS_S", "MIN_P_LOOP_THRESHOLD",
        "MIN_STAGE_CONFIDENCE", "MIN_TONE_HZ", "MAX_TONE_HZ")}
