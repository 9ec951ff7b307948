"""The breather's hardware: the bedside light, the speaker and the "I'm OK" button, over gpiozero.

Small classes named for what they drive, in gpiozero's style: each wraps one gpiozero device, takes its
pin and an optional ``pin_factory`` (gpiozero's ``MockFactory(pin_class=MockPWMPin)`` in tests and on a
laptop), and exposes only what the breather needs. Each output refuses a level above its hard cap from
``appliance/protocol/safety.py`` (a second line of defence behind the breather's own checks): it switches itself
off and raises :class:`OutputLimitError` rather than clamping.

The pins (BCM numbering) are the configuration's ``[outputs]`` table, whose defaults in
:class:`appliance.protocol.boxconfig.OutputsSection` are the one place they are written down; these classes take them as
given and have no defaults of their own.
"""
from __future__ import annotations

import logging
from typing import Callable

from gpiozero import Button, PWMLED, PWMOutputDevice

from appliance.protocol.safety import MAX_BRIGHTNESS, MAX_TONE_HZ, MAX_VOLUME, MIN_TONE_HZ

logger = logging.getLogger(__name__)


class OutputLimitError(ValueError):
    """A level above an output's hard cap was requested; the output has been switched off."""


class BedsideLight:
    """The warm bedside LED, dimmed by PWM (gpiozero ``PWMLED``).

    Parameters
    ----------
    pin : int or str
        GPIO pin (BCM number or gpiozero pin name).
    pin_factory : gpiozero.Factory or None
        gpiozero pin factory (None = gpiozero's default, i.e. the real GPIO on a Pi).
    frequency_hz : int
        PWM frequency; well above flicker perception.
    """

    cap = MAX_BRIGHTNESS

    def __init__(self, pin: int | str, *, pin_factory=None, frequency_hz: int = 1000):
        self._led = PWMLED(pin, initial_value=0.0, frequency=frequency_hz, pin_factory=pin_factory)

    @property
    def level(self) -> float:
        """Current brightness, fraction of full PWM duty (0..MAX_BRIGHTNESS)."""
        return float(self._led.value)

    @level.setter
    def level(self, value: float) -> None:
        value = float(value)
        if not 0.0 <= value <= self.cap:
            self.off()
            raise OutputLimitError(f"bedside light level {value!r} outside 0..{self.cap} (MAX_BRIGHTNESS); light off")
        self._led.value = value

    def off(self) -> None:
        self._led.value = 0.0

    def close(self) -> None:
        self.off()
        self._led.close()


class Speaker:
    """The small speaker, driven by PWM at the tone frequency (gpiozero ``PWMOutputDevice``).

    The level is the PWM duty cycle: a square wave at the tone's frequency whose duty sets loudness (more
    duty up to 50 % = louder fundamental). GPIO PWM cannot play pink noise, so the cue is soft tone bursts.

    Parameters
    ----------
    pin : int or str
        GPIO pin.
    tone_hz : float
        Tone frequency (MIN_TONE_HZ..MAX_TONE_HZ).
    pin_factory : gpiozero.Factory or None
        gpiozero pin factory.
    """

    cap = MAX_VOLUME

    def __init__(self, pin: int | str, *, tone_hz: float = 330.0, pin_factory=None):
        if not MIN_TONE_HZ <= tone_hz <= MAX_TONE_HZ:
            raise OutputLimitError(f"speaker tone {tone_hz} Hz outside {MIN_TONE_HZ}..{MAX_TONE_HZ} Hz")
        self._dev = PWMOutputDevice(pin, initial_value=0.0, frequency=int(round(tone_hz)), pin_factory=pin_factory)

    @property
    def tone_hz(self) -> float:
        return float(self._dev.frequency)

    @tone_hz.setter
    def tone_hz(self, hz: float) -> None:
        if not MIN_TONE_HZ <= hz <= MAX_TONE_HZ:
            raise OutputLimitError(f"speaker tone {hz} Hz outside {MIN_TONE_HZ}..{MAX_TONE_HZ} Hz")
        self._dev.frequency = int(round(hz))

    @property
    def level(self) -> float:
        """Current volume, fraction of full PWM duty (0..MAX_VOLUME)."""
        return float(self._dev.value)

    @level.setter
    def level(self, value: float) -> None:
        value = float(value)
        if not 0.0 <= value <= self.cap:
            self.off()
            raise OutputLimitError(f"speaker level {value!r} outside 0..{self.cap} (MAX_VOLUME); speaker off")
        self._dev.value = value

    def off(self) -> None:
        self._dev.value = 0.0

    def close(self) -> None:
        self.off()
        self._dev.close()


class OkButton:
    """The box's "I'm OK / stop" button (gpiozero ``Button``, to ground with the internal pull-up).

    Parameters
    ----------
    pin : int or str
        GPIO pin.
    pin_factory : gpiozero.Factory or None
        gpiozero pin factory.
    bounce_time_s : float or None
        Debounce time handed to gpiozero.
    """

    def __init__(self, pin: int | str, *, pin_factory=None, bounce_time_s: float | None = 0.05):
        self._button = Button(pin, pull_up=True, bounce_time=bounce_time_s, pin_factory=pin_factory)

    @property
    def is_pressed(self) -> bool:
        return bool(self._button.is_pressed)

    @property
    def when_pressed(self) -> Callable[[], None] | None:
        return self._button.when_pressed

    @when_pressed.setter
    def when_pressed(self, fn: Callable[[], None] | None) -> None:
        # gpiozero passes the device when the callback takes one argument; ours takes none.
        self._button.when_pressed = fn

    def close(self) -> None:
        self._button.close()


def all_off(*outputs: BedsideLight | Speaker | None) -> list[str]:
    """Switch every given output off; keeps going past a failing one (a fault must not stop the others).

    Returns
    -------
    list of str
        Errors met, as text (empty when all went off).
    """
    errors = []
    for out in outputs:
        if out is None:
            continue
        try:
            out.off()
        except Exception as e:  # noqa: BLE001 - on a fault path every other output must still go off
            logger.error("could not switch off %s: %r", type(out).__name__, e)
            errors.append(f"{type(out).__name__}: {e!r}")
    return errors
