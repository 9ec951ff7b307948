"""The breather's gpiozero outputs on MockFactory(pin_class=MockPWMPin): real pin states, hard caps."""
from __future__ import annotations

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from appliance.outputs import BedsideLight, OkButton, OutputLimitError, Speaker, all_off
from appliance.protocol.safety import MAX_BRIGHTNESS, MAX_VOLUME


@pytest.fixture
def factory():
    f = MockFactory(pin_class=MockPWMPin)
    yield f
    f.reset()


def test_light_drives_its_pin(factory):
    light = BedsideLight(pin=18, pin_factory=factory)
    assert factory.pin(18).state == 0
    light.level = 0.12
    assert factory.pin(18).state == pytest.approx(0.12)
    light.off()
    assert factory.pin(18).state == 0


def test_light_refuses_above_cap_and_goes_dark(factory):
    light = BedsideLight(pin=18, pin_factory=factory)
    light.level = MAX_BRIGHTNESS
    with pytest.raises(OutputLimitError, match="MAX_BRIGHTNESS"):
        light.level = MAX_BRIGHTNESS + 0.01
    assert factory.pin(18).state == 0


def test_speaker_tone_and_level(factory):
    spk = Speaker(pin=13, tone_hz=330, pin_factory=factory)
    assert factory.pin(13).frequency == 330
    spk.level = 0.05
    assert factory.pin(13).state == pytest.approx(0.05)
    with pytest.raises(OutputLimitError, match="MAX_VOLUME"):
        spk.level = MAX_VOLUME * 2
    assert factory.pin(13).state == 0
    with pytest.raises(OutputLimitError):
        Speaker(pin=12, tone_hz=20000, pin_factory=factory)


def test_button_calls_back_on_press(factory):
    btn = OkButton(pin=17, pin_factory=factory, bounce_time_s=None)
    pressed = []
    btn.when_pressed = lambda: pressed.append(True)
    factory.pin(17).drive_low()
    assert btn.is_pressed and pressed == [True]


def test_all_off_switches_every_output_even_if_one_fails(factory):
    light = BedsideLight(pin=18, pin_factory=factory)
    spk = Speaker(pin=13, pin_factory=factory)
    light.level, spk.level = 0.2, 0.1

    class Broken:
        def off(self):
            raise OSError("gpio gone")

    errors = all_off(Broken(), light, spk)
    assert factory.pin(18).state == 0 and factory.pin(13).state == 0
    assert len(errors) == 1 and "gpio gone" in errors[0]


def test_the_pins_are_defined_once_in_the_config_on_separate_pwm_channels():
    """outputs.py once had defaults of its own (18/13/17) disagreeing with the config's (12/13/16)."""
    import inspect

    from appliance import outputs
    from appliance.protocol.boxconfig import validate_config

    for cls in (BedsideLight, Speaker, OkButton):
        assert inspect.signature(cls).parameters["pin"].default is inspect.Parameter.empty, cls
    assert not [name for name in dir(outputs) if name.startswith("DEFAULT_") and name.endswith("_PIN")]
    o = validate_config({}).outputs
    assert o.light_pin in (12, 18) and o.sound_pin in (13, 19)  # hardware PWM0 and PWM1: one channel each
    assert o.light_pin != 18  # GPIO18 is also the PCM/I2S clock an audio DAC needs
    assert o.button_pin not in (7, 8, 9, 10, 11, o.light_pin, o.sound_pin)  # not SPI0, not an output
