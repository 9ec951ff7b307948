"""The stager gives the same stages for the same EEG whatever the rate it was recorded at (issue 13).

Recordings reach the stager at 50-512 Hz (DREAMS excerpt3 is 50 Hz, most PSG 100-512 Hz, the box 250 SPS).
The same EEG, resampled to each rate, must come out with the same most-probable stage on at least
``MIN_AGREEMENT`` of its epochs. Before the features were band-limited (appliance.stager.FEATURE_MAX_HZ),
DREAMS excerpt3 staged at its own 50 Hz came out N3 on 58 of 60 epochs, and ~0.6 agreement with 250 Hz.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from scipy.signal import resample_poly

from appliance.protocol.stages import Stage
from appliance.stager import Stager
from appliance.synthetic_eeg import SyntheticSleepEEG

RATES_HZ = (50, 100, 128, 200, 250, 256, 500, 512)
REFERENCE_HZ = 250  # the box's chip rate
MIN_AGREEMENT = 0.95

W, N1, N2, N3, REM = (int(s) for s in (Stage.W, Stage.N1, Stage.N2, Stage.N3, Stage.REM))
HYP = np.array([W] * 6 + [N1] * 3 + [N2] * 12 + [N3] * 12 + [N2] * 5 + [REM] * 10 + [W] * 2 + [N2] * 6)


def resample(x: np.ndarray, fs_from: float, fs_to: float) -> np.ndarray:
    """The same signal at another rate (polyphase, scipy's own anti-alias filter)."""
    r = Fraction(fs_to / fs_from).limit_denominator(1000)
    return x if r == 1 else resample_poly(x, r.numerator, r.denominator)


@pytest.fixture(scope="module")
def stager():
    return Stager()


def _agreements(stager: Stager, x: np.ndarray, fs: float) -> dict[int, float]:
    ref = stager.stage_night(resample(x, fs, REFERENCE_HZ), fs_hz=REFERENCE_HZ).argmax(1)
    out = {}
    for rate in RATES_HZ:
        got = stager.stage_night(resample(x, fs, rate), fs_hz=rate).argmax(1)
        n = min(len(got), len(ref))
        out[rate] = float(np.mean(got[:n] == ref[:n]))
    return out


def test_same_stages_at_every_rate_synthetic(stager):
    # Drawn at 512 Hz so that every rate is the same EEG, down-sampled (muscle noise reaches 120 Hz).
    x = SyntheticSleepEEG(HYP, seed=424242, n_channels=1, fs_hz=512.0).render_channel(0)
    agree = _agreements(stager, x, 512.0)
    print(f"\n[rate parity, synthetic] agreement with {REFERENCE_HZ} Hz: {agree}")
    assert min(agree.values()) >= MIN_AGREEMENT, agree


@pytest.mark.parametrize("excerpt", [2, 3])
def test_same_stages_at_every_rate_real_dreams(stager, shared, excerpt):
    from models.stager.evaluate import read_dreams_excerpt

    path = shared / "data" / "dreams-spindles" / f"excerpt{excerpt}.txt"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    x, fs, _ = read_dreams_excerpt(path)
    agree = _agreements(stager, x, fs)
    print(f"\n[rate parity, DREAMS excerpt{excerpt} at {fs:g} Hz] agreement with {REFERENCE_HZ} Hz: {agree}")
    assert min(agree.values()) >= MIN_AGREEMENT, agree
