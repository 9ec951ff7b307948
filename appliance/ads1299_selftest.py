"""What the ADS1299 self-tests conclude from the frames they captured: pure functions, no chip.

The driver (:class:`appliance.ads1299.ADS1299`) reconfigures the chip, streams and restores it
(``test_signal``, ``input_noise``, ``lead_off_status``, ``impedance_ohm``); the numbers come from here,
computed over what it captured: status words, input-referred microvolts of shape (n, n_channels) and each
frame's DRDY time in seconds. A busy host misses frames, so the times are uneven and every estimator works
at the frames' own times rather than on an assumed regular grid. Chip facts (test-signal amplitude and
frequency, lead-off current) are the driver's constants and reach these functions as arguments, so this
module knows nothing of registers; sources in ``../shared/reference/ads1299.md`` (ref 3, CONFIG2; ref 7,
lead-off).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from appliance.ads1299_frame import loff_statn, loff_statp

# the square-wave fit of the self-test: frequencies searched (Hz), their step, the share of frames a fit
# must explain, and how much better a frequency outside the tolerance must fit to overrule the expected one
SQUARE_FIT_RANGE_HZ = (0.25, 8.0)      # the chip's two test frequencies are 0.98 and 1.95 Hz
SQUARE_FIT_STEP_HZ = 0.005             # phase drift over a 3-s window stays under 1/60 of a cycle
SQUARE_FIT_MIN_AGREEMENT = 0.95
SQUARE_FIT_MARGIN = 0.01               # 1 % of the frames
SQUARE_FIT_PHASE_REFINE = np.linspace(-0.1, 0.1, 9)   # cycles around the fundamental's phase


@dataclass(frozen=True)
class SquareWaveFit:
    """How well square waves of each candidate frequency explain a channel's frames.

    ``agreement[i, c]``: share of channel ``c``'s frames that a square wave at ``freqs_hz[i]`` (phase
    fitted) predicts right, high or low, at their DRDY times.
    """

    freqs_hz: np.ndarray        # (f,)
    agreement: np.ndarray       # (f, channels), 0.5 = chance, 1 = every frame

    def frequency_hz(self, *, expected_hz: float = 0.0, tolerance: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """Per channel: (frequency in Hz, whether it matches ``expected_hz`` within ``tolerance``).

        Missed frames can leave several frequencies fitting equally well, so the expected frequency is
        tested as a hypothesis rather than compared with one estimate: it matches when a square wave
        within the tolerance explains at least ``SQUARE_FIT_MIN_AGREEMENT`` of the frames and none
        outside it explains clearly more (``SQUARE_FIT_MARGIN``). The frequency reported is the best
        one inside the tolerance when it matches, else the best anywhere (0 when nothing fits).
        """
        f, a = self.freqs_hz, self.agreement
        n_ch = a.shape[1]
        freq, ok = np.zeros(n_ch), np.zeros(n_ch, bool)
        inside = np.abs(f - expected_hz) <= tolerance * expected_hz if expected_hz > 0 else np.zeros(f.size, bool)
        for c in range(n_ch):
            best_in = a[inside, c].max() if inside.any() else 0.0
            best_out = a[~inside, c].max() if (~inside).any() else 0.0
            ok[c] = best_in >= SQUARE_FIT_MIN_AGREEMENT and best_in >= best_out - SQUARE_FIT_MARGIN
            pool = inside if ok[c] else np.ones(f.size, bool)
            top = a[pool, c].max()
            if top >= SQUARE_FIT_MIN_AGREEMENT:
                # the middle of the best-fitting plateau: with few cycles in view it is several steps wide
                freq[c] = f[pool][a[pool, c] >= top - 1e-9].mean()
        return freq, ok


def fit_square_wave(t_s: np.ndarray, high: np.ndarray) -> SquareWaveFit:
    """Fit square waves of every candidate frequency to frames sampled at uneven times.

    Counting edges fails when the host misses frames for longer than a period: whole edges vanish in
    the gap (CI saw 1.17 Hz for 1.95 Hz with 40 % of frames missed). Here, for every frequency in
    ``SQUARE_FIT_RANGE_HZ`` the phase is fitted (least squares on the square wave's fundamental) and
    the frames it predicts right are counted; gaps only remove votes.

    Parameters
    ----------
    t_s : ndarray, shape (n,)
        DRDY times of the frames that reached the host, in seconds.
    high : ndarray of bool, shape (n, n_channels)
        Whether each frame is above the channel's mid level.

    Returns
    -------
    SquareWaveFit
        The agreement of every candidate frequency with every channel.
    """
    t_s = np.asarray(t_s, np.float64)
    t_s = t_s - t_s[0] if t_s.size else t_s
    up = np.asarray(high, bool)
    freqs = np.arange(SQUARE_FIT_RANGE_HZ[0], SQUARE_FIT_RANGE_HZ[1], SQUARE_FIT_STEP_HZ)
    if t_s.size < 4:
        return SquareWaveFit(freqs, np.full((freqs.size, up.shape[1]), 0.5))
    cycles = freqs[:, None] * t_s[None, :]                             # (f, n)
    # sign(sin(2 pi (c - phi))) has the fundamental sin(2 pi (c - phi)); its phase by least squares
    z = np.exp(-2j * np.pi * cycles) @ np.where(up, 1.0, -1.0)        # (f, channels)
    phi = -(np.angle(z) + np.pi / 2) / (2 * np.pi)
    predicted = ((cycles[:, :, None] - phi[:, None, :]) % 1.0) < 0.5    # (f, n, channels)
    agreement = (predicted == up[None]).mean(axis=1)
    # uneven sampling lets the harmonics pull that phase a little (a phase off by d cycles costs 2d of
    # the agreement): refine it over nearby phases, only where the fit is already close
    fi, ci = np.nonzero(agreement >= 1 - 2 * abs(SQUARE_FIT_PHASE_REFINE).max() - 0.05)
    for dphi in SQUARE_FIT_PHASE_REFINE:
        pred = ((cycles[fi] - (phi[fi, ci] + dphi)[:, None]) % 1.0) < 0.5            # (candidates, n)
        agreement[fi, ci] = np.maximum(agreement[fi, ci], (pred == up[:, ci].T).mean(axis=1))
    return SquareWaveFit(freqs, agreement)


@dataclass(frozen=True)
class TestSignalResult:
    """Internal test signal as measured on each channel (amplitudes in uV, frequencies in Hz)."""

    __test__ = False   # a result, not a pytest test class

    amplitude_uv: np.ndarray
    frequency_hz: np.ndarray
    expected_amplitude_uv: float
    expected_frequency_hz: float
    passed: np.ndarray


@dataclass(frozen=True)
class NoiseResult:
    """Input-shorted noise per channel, input-referred, in uV."""

    rms_uv: np.ndarray
    peak_to_peak_uv: np.ndarray
    offset_uv: np.ndarray


@dataclass(frozen=True)
class LeadOffStatus:
    """Electrodes flagged off by the DC lead-off comparators (True = off), per channel."""

    positive_off: np.ndarray
    negative_off: np.ndarray


def analyse_test_signal(uv: np.ndarray, t_s: np.ndarray, *, expected_amplitude_uv: float,
                        expected_frequency_hz: float, tolerance: float = 0.1) -> TestSignalResult:
    """Judge a captured square test signal: amplitude from its plateaus, frequency by :func:`fit_square_wave`.

    Parameters
    ----------
    uv : ndarray, shape (n, n_channels)
        Input-referred microvolts while the test signal was routed to every channel.
    t_s : ndarray, shape (n,)
        The frames' DRDY times, seconds.
    expected_amplitude_uv : float
        Half the peak-to-peak the chip should show (1875 uV for the 1x test signal).
    expected_frequency_hz : float
        The square wave's frequency (1.95 or 0.98 Hz); 0 for the DC test signal (frequency not judged).
    tolerance : float
        Relative tolerance on both amplitude and frequency.

    Returns
    -------
    TestSignalResult
        Per channel amplitude (uV), frequency (Hz, 0 where no square wave fits) and pass/fail.
    """
    # square wave: amplitude = half the distance between the upper and lower plateaus
    hi = np.percentile(uv, 90, axis=0)
    lo = np.percentile(uv, 10, axis=0)
    amp = (hi - lo) / 2
    fit = fit_square_wave(t_s, uv > (hi + lo) / 2)
    ok_amp = np.abs(amp - expected_amplitude_uv) <= tolerance * expected_amplitude_uv
    if expected_frequency_hz > 0:
        freq, ok_f = fit.frequency_hz(expected_hz=expected_frequency_hz, tolerance=tolerance)
    else:
        freq, ok_f = fit.frequency_hz()[0], np.ones_like(ok_amp)
    return TestSignalResult(amp, freq, expected_amplitude_uv, expected_frequency_hz, ok_amp & ok_f)


def analyse_noise(uv: np.ndarray) -> NoiseResult:
    """Input-referred noise of inputs shorted to each other: rms, peak-to-peak and offset per channel.

    Parameters
    ----------
    uv : ndarray, shape (n, n_channels)
        Input-referred microvolts with MUX = input shorted.

    Returns
    -------
    NoiseResult
        Per channel, uV.
    """
    return NoiseResult(rms_uv=uv.std(axis=0), peak_to_peak_uv=np.ptp(uv, axis=0), offset_uv=uv.mean(axis=0))


def analyse_lead_off(status: np.ndarray, *, n_channels: int) -> LeadOffStatus:
    """Which electrodes the DC lead-off comparators flagged in any frame of the window.

    Parameters
    ----------
    status : ndarray of uint32, shape (n,)
        The frames' 24-bit status words (LOFF_STATP and LOFF_STATN, ``appliance.ads1299_frame``).
    n_channels : int
        Channels of the chip.

    Returns
    -------
    LeadOffStatus
        True = off, per channel, for the positive and the negative electrode; nothing is off without frames.
    """
    p = int(np.bitwise_or.reduce(loff_statp(status))) if status.size else 0
    m = int(np.bitwise_or.reduce(loff_statn(status))) if status.size else 0
    bits = 1 << np.arange(n_channels)
    return LeadOffStatus(positive_off=(p & bits) != 0, negative_off=(m & bits) != 0)


def impedance_from_lead_off(uv: np.ndarray, t_s: np.ndarray, *, excitation_a: float, excitation_hz: float,
                            series_resistance_ohm: float = 0.0) -> np.ndarray:
    """Electrode impedance from the voltage an AC lead-off square-wave current makes across it.

    The excitation's fundamental is measured by least squares against a sine and a cosine at the frames'
    DRDY times, with an offset and a slow drift (a lock-in; missed frames only thin the fit). OpenBCI uses
    ``sqrt(2) * rms / 6 nA`` after a band-pass, i.e. the fundamental's amplitude; the excitation is a square
    wave, whose amplitude is pi/4 of its fundamental's, so that factor is applied [square-wave shape:
    UNVERIFIED in our datasheet copy; the simulator draws a square wave].

    Parameters
    ----------
    uv : ndarray, shape (n, n_channels)
        Input-referred microvolts with the excitation on every P electrode.
    t_s : ndarray, shape (n,)
        The frames' DRDY times, seconds.
    excitation_a : float
        Lead-off current, amperes (6 nA).
    excitation_hz : float
        Its frequency, Hz (31.25 Hz).
    series_resistance_ohm : float
        Known resistance in series with each electrode (2200 on a Cyton), subtracted.

    Returns
    -------
    ndarray of float64, shape (n_channels,)
        Impedance per channel, ohms, never negative.
    """
    w = 2 * math.pi * excitation_hz * t_s
    basis = np.column_stack([np.sin(w), np.cos(w), np.ones_like(w), t_s])   # + offset and slow drift
    coef, *_ = np.linalg.lstsq(basis, uv, rcond=None)
    fundamental_uv = np.hypot(coef[0], coef[1])
    square_uv = fundamental_uv * math.pi / 4
    z = square_uv * 1e-6 / excitation_a - series_resistance_ohm
    return np.clip(z, 0.0, None)
