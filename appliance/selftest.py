"""``bedtime selftest``: is this box fit for a night? A pass/fail table a parent or a technician can read.

Checks, in the order a sample meets the hardware:

1. chip: the ADS1299 answers, its ID register says ADS1299 and how many channels (the driver's bring-up);
2. test signal: the chip's internal square wave (CONFIG2) measured on every channel, amplitude and frequency;
3. noise: inputs shorted, input-referred noise per channel;
4. lead-off: the DC lead-off comparators, per electrode (P and N of each channel);
5. impedance: per electrode, from the 6 nA / 31.2 Hz AC lead-off current;
6. light and sound: each driven briefly at a low level inside the safety caps and read back from its pin;
7. broker: an MQTT connection with the box's own settings (TLS, credentials).

The chip checks are the acquisition layer's (:class:`appliance.ads1299.ADS1299`); this module runs them, judges
them against the limits below and prints the table. ``--simulate`` runs the same checks on the chip simulator
and gpiozero mock pins.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from appliance.protocol.boxconfig import BoxConfig

logger = logging.getLogger(__name__)

NOISE_LIMIT_UV_RMS = 1.0
"""Input-shorted noise above this (uV rms, any channel) fails; the datasheet's typical at gain 24 is ~0.14."""
IMPEDANCE_LIMIT_KOHM = 20.0
"""Electrode impedance above this fails: the EEG would be too noisy to stage."""
OUTPUT_CHECK_LEVEL = 0.05
"""Level (fraction of full PWM) the light and sound are driven to during the check; below every cap."""


@dataclass
class CheckResult:
    """One row of the table."""

    name: str
    passed: bool | None  # None: skipped
    detail: str


SIM_SELFTEST_SPEED = 4.0
"""Chip-simulator speed of ``selftest --simulate`` (``--speed`` overrides it, e.g. under qemu: emulated Python
reads too few of the simulator's DRDY edges at 4x and the checks judge a thinned signal "host too slow")."""


def _chip(cfg: BoxConfig, *, simulate: bool, pin_factory: Any, speed: float = SIM_SELFTEST_SPEED) -> Any:
    from appliance.hardware import check_spi, gpio_pin_factory, open_chip

    if simulate:
        # 4x real time keeps the check short; faster, a loaded host misses DRDY edges (frames overwritten, as on
        # a real chip) and the measured test-signal frequency comes out high
        return open_chip(cfg, simulate=True, pin_factory=pin_factory, speed=speed)[0]
    check_spi(cfg)  # names /dev/spidevB.D and --simulate, instead of spidev's bare FileNotFoundError
    gpio_pin_factory()
    return open_chip(cfg, simulate=False)[0]


def _chans(mask: np.ndarray) -> str:
    idx = np.flatnonzero(mask) + 1
    return ",".join(str(i) for i in idx) if len(idx) else "none"


def run_selftest(cfg: BoxConfig, *, simulate: bool = False, check_broker: bool = True,
                 sim_speed: float = SIM_SELFTEST_SPEED) -> list[CheckResult]:
    """Run every check; never raises for a failing check (the row says why). ``sim_speed``: the chip
    simulator's speed (x real time) when ``simulate``."""
    results: list[CheckResult] = []
    pin_factory = None
    if simulate:
        from appliance.hardware import mock_pin_factory

        pin_factory = mock_pin_factory()

    from appliance.hardware import HardwareUnavailable, gpio_pin_factory

    def run(name: str, fn: Callable[[], tuple[bool, str]]) -> bool:
        try:
            ok, detail = fn()
        except HardwareUnavailable as e:  # already a sentence naming the device and what to do
            ok, detail = False, str(e)
        except Exception as e:  # a check that blows up is a failed check, with its reason
            ok, detail = False, f"{type(e).__name__}: {e}"
        results.append(CheckResult(name, ok, detail))
        return ok

    chip: Any = None

    def chip_id() -> tuple[bool, str]:
        nonlocal chip
        chip = _chip(cfg, simulate=simulate, pin_factory=pin_factory, speed=sim_speed)
        from appliance.ads1299 import REG_ID

        id_reg = None
        try:
            chip.stop_streaming()
            id_reg = chip.read_register(REG_ID)
            chip.start_streaming()
        except Exception as e:  # the bring-up already checked the ID; reading it again is only for the table
            logger.debug("could not re-read ID: %s", e)
        ok = chip.n_channels == cfg.acquisition.channels
        id_txt = f"ID 0x{id_reg:02X}, " if id_reg is not None else ""
        return ok, f"{id_txt}ADS1299-{chip.n_channels} (config expects {cfg.acquisition.channels})"

    if run("chip ID", chip_id):
        def test_signal() -> tuple[bool, str]:
            r = chip.test_signal()
            return bool(r.passed.all()), (f"{np.median(r.amplitude_uv):.0f} uV / {np.median(r.frequency_hz):.2f} Hz "
                                          f"(expected {r.expected_amplitude_uv:.0f} uV / {r.expected_frequency_hz:.2f} Hz);"
                                          f" failing channels: {_chans(~r.passed)}")

        def noise() -> tuple[bool, str]:
            r = chip.input_noise()
            bad = r.rms_uv > NOISE_LIMIT_UV_RMS
            return (not bad.any(), f"max {r.rms_uv.max():.2f} uV rms (limit {NOISE_LIMIT_UV_RMS}); "
                                   f"failing channels: {_chans(bad)}")

        def lead_off() -> tuple[bool, str]:
            r = chip.lead_off_status()
            off = r.positive_off | r.negative_off
            return (not off.any(), f"electrodes off: P {_chans(r.positive_off)}, N {_chans(r.negative_off)}")

        def impedance() -> tuple[bool, str]:
            z = chip.impedance_ohm() / 1e3
            bad = z > IMPEDANCE_LIMIT_KOHM
            per = " ".join(f"{i + 1}:{v:.0f}" for i, v in enumerate(z))
            return (not bad.any(), f"kOhm {per} (limit {IMPEDANCE_LIMIT_KOHM:.0f})")

        run("test signal", test_signal)
        run("noise (inputs shorted)", noise)
        run("lead-off", lead_off)
        run("impedance", impedance)
        # release the chip, each step on its own (best effort after the checks): the board's shutdown ends the
        # simulator's DRDY thread, which otherwise outlives the self-test
        closers = [chip.stop_streaming, chip.spi.close, chip.board.shutdown]
        if chip.drdy is not None:
            closers.append(chip.drdy.close)
        for close in closers:
            try:
                close()
            except Exception as e:  # the checks are done: a failed close only goes to the log
                logger.debug("closing the chip: %s", e)
    else:
        for name in ("test signal", "noise (inputs shorted)", "lead-off", "impedance"):
            results.append(CheckResult(name, None, "skipped: no chip"))

    def output_check(kind: str) -> Callable[[], tuple[bool, str]]:
        def check() -> tuple[bool, str]:
            from appliance.outputs import BedsideLight, Speaker

            o = cfg.outputs
            pins = pin_factory if pin_factory is not None else gpio_pin_factory()
            dev = (BedsideLight(o.light_pin, pin_factory=pins) if kind == "light"
                   else Speaker(o.sound_pin, pin_factory=pins))
            try:
                dev.level = OUTPUT_CHECK_LEVEL
                time.sleep(0.3)  # long enough for a person at the bedside to see the glow / hear the tone
                got = dev.level
                dev.off()
                off = dev.level
            finally:
                dev.close()
            ok = abs(got - OUTPUT_CHECK_LEVEL) < 1e-6 and off == 0.0
            return ok, f"driven to {got:.2f}, then off ({off:.2f})"
        return check

    run("light", output_check("light"))
    run("sound", output_check("sound"))

    if check_broker and cfg.mqtt.enabled:
        run("broker", lambda: _broker_check(cfg))
    else:
        results.append(CheckResult("broker", None, "skipped"))
    return results


def _broker_check(cfg: BoxConfig, timeout_s: float = 5.0) -> tuple[bool, str]:
    import ssl
    import threading
    from pathlib import Path

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    m = cfg.mqtt
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{cfg.box.id}-selftest", protocol=paho.MQTTv5)
    if m.username:
        pw = Path(m.password_file).read_text().strip() if m.password_file else None
        client.username_pw_set(m.username, pw)
    if m.tls_ca:
        client.tls_set(ca_certs=m.tls_ca, certfile=m.tls_cert or None, keyfile=m.tls_key or None,
                       tls_version=ssl.PROTOCOL_TLS_CLIENT)
    done = threading.Event()
    outcome: dict = {}

    def on_connect(c, u, flags, rc, props):
        outcome["rc"] = rc
        done.set()

    client.on_connect = on_connect
    t0 = time.monotonic()
    try:
        client.connect(m.host, m.port, keepalive=10)
    except OSError as e:
        return False, f"{m.host}:{m.port}: {e}"
    client.loop_start()
    try:
        if not done.wait(timeout_s):
            return False, f"{m.host}:{m.port}: no CONNACK within {timeout_s:.0f} s"
        rc = outcome["rc"]
        ok = not rc.is_failure
        return ok, f"{m.host}:{m.port} {'TLS ' if m.tls_ca else ''}{rc} in {1e3 * (time.monotonic() - t0):.0f} ms"
    finally:
        client.disconnect()
        client.loop_stop()


def format_table(results: list[CheckResult]) -> str:
    """The pass/fail table."""
    w = max(len(r.name) for r in results)
    lines = [f"{'check'.ljust(w)}  result  detail", f"{'-' * w}  ------  {'-' * 40}"]
    for r in results:
        verdict = "PASS" if r.passed else "skip" if r.passed is None else "FAIL"
        lines.append(f"{r.name.ljust(w)}  {verdict:6}  {r.detail}")
    failed = sum(1 for r in results if r.passed is False)
    lines.append(f"\n{'ALL CHECKS PASSED' if not failed else f'{failed} CHECK(S) FAILED'}")
    return "\n".join(lines)


def main_selftest(cfg: BoxConfig, *, simulate: bool = False, check_broker: bool = True,
                  sim_speed: float = SIM_SELFTEST_SPEED) -> int:
    """``bedtime selftest``: print the table; exit status 0 only when nothing failed."""
    results = run_selftest(cfg, simulate=simulate, check_broker=check_broker, sim_speed=sim_speed)
    print(format_table(results))
    return 0 if all(r.passed is not False for r in results) else 1
