"""The self-tests' conclusions (appliance.ads1299_selftest) on frames made up here, without a chip: known
signals at uneven DRDY times (a busy host misses frames), so each estimator is checked against the truth."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.ads1299 import LOFF_AC_31HZ2_HZ, LOFF_EXCITATION_A, TEST_SIGNAL_AMPLITUDE_V
from appliance.ads1299_frame import LOFF_STATN_SHIFT, LOFF_STATP_SHIFT, STATUS_SYNC
from appliance.ads1299_selftest import (
    analyse_lead_off, analyse_noise, analyse_test_signal, fit_square_wave, impedance_from_lead_off,
)

FAST_HZ = 1.953125   # fCLK / 2^20, the "fast" test signal


def _received_frames(seed: int, missed_share: float, n: int = 500) -> np.ndarray:
    """DRDY times (s) of ``n`` frames that reached a busy host: bursts of 10 ms .. 1 s go missing, as when
    the reading thread is descheduled; like the self-test, it keeps reading until ``n`` frames arrived."""
    rng = np.random.default_rng(seed)
    k, times = 0, []
    while len(times) < n:
        if rng.random() < missed_share / (1 - missed_share) / 60:    # a burst starts about every 60 frames
            k += int(rng.integers(2, 250))
        times.append(k)
        k += 1
    return np.array(times) / 250.0


@settings(max_examples=150, deadline=None)
@given(f_hz=st.floats(0.9, 4.0), phase=st.floats(0, 1), seed=st.integers(0, 2**31 - 1),
       missed_share=st.floats(0.0, 0.7), wrong=st.sampled_from([0.5, 0.75, 1.3, 2.0]))
def test_square_wave_fit_through_any_gaps(f_hz, phase, seed, missed_share, wrong):
    """Whatever frames go missing, a chip at the expected frequency passes (no false alarm on a busy host)
    with a frequency within 5 % (half the self-test's tolerance), and a chip at another frequency (wrong
    CAL_FREQ bits, wrong clock) fails."""
    t = _received_frames(seed, missed_share)
    fit = fit_square_wave(t, ((f_hz * t + phase) % 1.0 < 0.5)[:, None])
    f, ok = fit.frequency_hz(expected_hz=f_hz)
    assert ok[0] and f[0] == pytest.approx(f_hz, rel=0.05)
    assert not fit.frequency_hz(expected_hz=wrong * f_hz)[1][0]


def test_square_wave_fit_reports_zero_for_noise():
    rng = np.random.default_rng(1)
    t = np.arange(750) / 250.0
    f, ok = fit_square_wave(t, rng.random((750, 2)) < 0.5).frequency_hz(expected_hz=1.953125)
    assert f.tolist() == [0.0, 0.0] and not ok.any()


def _square(t_s: np.ndarray, f_hz: float, amp: float) -> np.ndarray:
    return np.where((f_hz * t_s) % 1.0 < 0.5, amp, -amp)


def test_test_signal_passes_the_right_square_wave_and_fails_a_wrong_one():
    rng = np.random.default_rng(3)
    t = _received_frames(4, 0.3)
    amp = TEST_SIGNAL_AMPLITUDE_V * 1e6
    uv = np.column_stack([_square(t, FAST_HZ, amp), _square(t, FAST_HZ, 0.8 * amp), _square(t, FAST_HZ / 2, amp)])
    uv += rng.normal(0, 0.2, uv.shape) + 40.0                    # noise and an offset do not matter
    r = analyse_test_signal(uv, t, expected_amplitude_uv=amp, expected_frequency_hz=FAST_HZ)
    assert r.amplitude_uv == pytest.approx([amp, 0.8 * amp, amp], rel=0.01)
    assert r.frequency_hz[0] == pytest.approx(FAST_HZ, rel=0.05)
    assert r.passed.tolist() == [True, False, False]             # 20 % low; half the frequency


def test_dc_test_signal_judges_the_amplitude_only():
    t = np.arange(500) / 250.0
    uv = np.tile(np.where(np.arange(500) < 250, 1875.0, -1875.0), (2, 1)).T
    r = analyse_test_signal(uv, t, expected_amplitude_uv=1875.0, expected_frequency_hz=0.0)
    assert r.passed.all() and r.expected_frequency_hz == 0.0


def test_noise_is_rms_peak_to_peak_and_offset_per_channel():
    rng = np.random.default_rng(5)
    uv = rng.normal(0, [0.14, 0.3], (5000, 2)) + [2.0, -1.0]
    n = analyse_noise(uv)
    assert n.rms_uv == pytest.approx([0.14, 0.3], rel=0.05)
    assert n.offset_uv == pytest.approx([2.0, -1.0], abs=0.02)
    assert np.all(n.peak_to_peak_uv > 6 * n.rms_uv)


def test_lead_off_flags_an_electrode_seen_off_in_any_frame():
    status = np.full(50, STATUS_SYNC, np.uint32)
    status[17] |= 1 << (LOFF_STATP_SHIFT + 5)                   # channel 6, P electrode, in one frame only
    status[30] |= 1 << (LOFF_STATN_SHIFT + 0)                   # channel 1, N electrode
    s = analyse_lead_off(status, n_channels=8)
    assert s.positive_off.tolist() == [False] * 5 + [True] + [False] * 2
    assert s.negative_off.tolist() == [True] + [False] * 7
    empty = analyse_lead_off(np.zeros(0, np.uint32), n_channels=4)
    assert not empty.positive_off.any() and not empty.negative_off.any() and empty.positive_off.size == 4


@pytest.mark.parametrize("missed_share", [0.0, 0.4])
def test_impedance_from_the_ac_lead_off_square_wave_at_uneven_times(missed_share):
    rng = np.random.default_rng(7)
    t = _received_frames(11, missed_share, n=500) + rng.uniform(0, 1e-4, 500)   # DRDY jitter
    z_true = np.array([5e3, 20e3, 100e3])
    # the excitation current's square wave across each electrode, on an offset and a slow drift, plus noise
    uv = _square(t, LOFF_AC_31HZ2_HZ, 1.0)[:, None] * (LOFF_EXCITATION_A * z_true * 1e6)
    uv += 300.0 + 50.0 * t[:, None] + rng.normal(0, 0.1, uv.shape)
    z = impedance_from_lead_off(uv, t, excitation_a=LOFF_EXCITATION_A, excitation_hz=LOFF_AC_31HZ2_HZ)
    assert z == pytest.approx(z_true, rel=0.03)
    z_series = impedance_from_lead_off(uv, t, excitation_a=LOFF_EXCITATION_A, excitation_hz=LOFF_AC_31HZ2_HZ,
                                       series_resistance_ohm=10e3)
    assert z_series == pytest.approx([0.0, z[1] - 10e3, z[2] - 10e3])    # never negative
