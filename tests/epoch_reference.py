"""Reference oracles for the per-epoch calls: the straightforward computations the box ran before they were made
cheaper (``epoch_quality``, ``arousal_features`` in appliance/dsp.py, ``_features`` in appliance/stager.py as of
the revision before), written with scipy's filters and numpy's generic reductions.

The optimised code must give exactly these results: SignalQuality equal, ArousalFeatures to 1e-9 relative (in
fact to the bit), the stager's float32 features bit for bit (they feed the stage model). Needs scipy (tests only).
"""
from __future__ import annotations

import numpy as np
from scipy import signal

from appliance.dsp import ADS1299_RAIL_UV as RAIL_UV  # a constant, not code under test
from appliance.epoch import ArousalFeatures, SignalQuality


def windows(x: np.ndarray, fs_hz: float) -> np.ndarray:
    n = max(1, int(round(fs_hz)))
    m = len(x) // n
    return x[:m * n].reshape(m, n) if m else x.reshape(1, -1)


def detrend_linear(x: np.ndarray) -> np.ndarray:
    """The least-squares line removed from each row in closed form (what the box used; ``scipy.signal.detrend`` differs
    from it in the last bits)."""
    n = x.shape[-1]
    t = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    xm = x.mean(axis=-1, keepdims=True)
    slope = (x @ t)[..., None] / float(t @ t) if n > 1 else np.zeros_like(xm)
    return x - xm - slope * t


def welch(x: np.ndarray, fs_hz: float, nperseg: int) -> tuple[np.ndarray, np.ndarray]:
    """``scipy.signal.welch`` with its defaults, batched as the box computed it (scipy's loop differs in the last
    bits)."""
    win = signal.get_window("hann", nperseg)
    step = nperseg - nperseg // 2
    segs = np.lib.stride_tricks.sliding_window_view(x, nperseg, axis=-1)[..., ::step, :]
    segs = segs - segs.mean(axis=-1, keepdims=True)
    spec = np.fft.rfft(segs * win, axis=-1)
    p = spec.real ** 2 + spec.imag ** 2
    p *= 1.0 / (fs_hz * float((win * win).sum()))
    if nperseg % 2:
        p[..., 1:] *= 2.0
    else:
        p[..., 1:-1] *= 2.0
    return np.fft.rfftfreq(nperseg, 1.0 / fs_hz), p.mean(axis=-2)


def epoch_quality(x_uv_chip: np.ndarray, *, fs_hz: float, lead_off: bool = False, frames_lost: int = 0,
                  rail_uv: float = RAIL_UV) -> SignalQuality:
    x = np.asarray(x_uv_chip, dtype=np.float64).ravel()
    flags: set[str] = set()
    if lead_off:
        flags.add("lead_off")
    if frames_lost > 0:
        flags.add("frames_lost")
    if x.size == 0:
        return SignalQuality(ok=False, flags=frozenset(flags | {"flat"}), artefact_fraction=1.0)
    finite = np.isfinite(x)
    if not finite.all():
        flags.add("artefact")
    xf = np.where(finite, x, 0.0)
    if np.mean(np.abs(xf) >= 0.999 * rail_uv) > 0.001:
        flags.add("clipping")
    if len(xf) > 3 * fs_hz:
        sos = signal.butter(2, 0.3, btype="highpass", fs=fs_hz, output="sos")
        hp = signal.sosfiltfilt(sos, xf - np.median(xf))
    else:
        hp = xf - xf.mean()
    w = windows(hp, fs_hz)
    wf = windows(finite.astype(float), fs_hz)
    ptp = np.ptp(w, axis=1)
    std = w.std(axis=1)
    if np.median(std) < 0.5:
        flags.add("flat")
    bad = (ptp > 500.0) | (wf.min(axis=1) < 1)
    artefact_fraction = float(bad.mean())
    if ptp.max() > 500.0:
        flags.add("high_amplitude")
    if artefact_fraction > 0.1:
        flags.add("artefact")
    ok = not (flags & {"lead_off", "frames_lost", "clipping", "flat"}) and artefact_fraction <= 0.5
    return SignalQuality(ok=ok, flags=frozenset(flags), artefact_fraction=artefact_fraction)


def arousal_features(x_uv_chip: np.ndarray, *, fs_hz: float) -> ArousalFeatures:
    x = np.asarray(x_uv_chip, dtype=np.float64).ravel()
    x = np.where(np.isfinite(x), x, 0.0)
    if x.size < int(2 * fs_hz):
        return ArousalFeatures()
    x = detrend_linear(x)
    f, p = welch(x, fs_hz, int(2 * fs_hz))
    top = min(45.0, 0.9 * fs_hz / 2)

    def band(lo: float, hi: float) -> float:
        return float(p[(f >= lo) & (f < hi)].sum())

    total35, total45 = band(0.5, min(35.0, top)), band(0.5, top)
    if total35 <= 0 or total45 <= 0:
        return ArousalFeatures()
    sos = signal.butter(4, min(20.0, 0.8 * fs_hz / 2), btype="highpass", fs=fs_hz, output="sos")
    hp = signal.sosfiltfilt(sos, x)
    w_raw = detrend_linear(windows(x, fs_hz))
    w_hp = windows(hp, fs_hz)
    moving = (np.ptp(w_raw, axis=1) > 250.0) | (np.sqrt(np.mean(w_hp**2, axis=1)) > 8.0)
    return ArousalFeatures(alpha_rel=band(8.0, 12.0) / total35, beta_rel=band(16.0, 30.0) / total35,
                           high_freq_rel=band(20.0, top) / total45, movement_fraction=float(moving.mean()))


def stager_features(epochs: np.ndarray) -> np.ndarray:
    """The stager's features of a stack of 100-Hz epochs, shape (n, 3000) -> (n, 16) float32."""
    from appliance.stager import _BAND_MATRIX, _EPOCH_LOWPASS

    sigma_sos = signal.butter(4, [11.0, 16.0], btype="bandpass", fs=100, output="sos")
    delta_sos = signal.butter(4, 2.0, btype="lowpass", fs=100, output="sos")
    x = np.where(np.isfinite(epochs), epochs, 0.0)
    x = x - x.mean(axis=1, keepdims=True)
    x = np.fft.irfft(np.fft.rfft(x, axis=1) * _EPOCH_LOWPASS, n=3000, axis=1)
    _, p = welch(x, 100.0, 200)
    return features_from_bands(x, p @ _BAND_MATRIX, sigma_sos=sigma_sos, delta_sos=delta_sos)


def features_from_bands(x: np.ndarray, band_power: np.ndarray, *, sigma_sos: np.ndarray,
                        delta_sos: np.ndarray) -> np.ndarray:
    """The stager's 16 features of band-limited 100-Hz epochs ``x`` (n, 3000) given their band powers (n, 5), as
    the model was trained on them: relative log band powers, log total, Hjorth mobility and complexity, the
    sigma-burst ratio, the spread of 2-s window powers and the fraction of 1-s windows with a slow wave."""
    n, eps = len(x), 1e-6
    total = band_power.sum(axis=1) + eps
    logrel = np.log10(band_power / total[:, None] + eps)
    dx = np.diff(x, axis=1)
    ddx = np.diff(dx, axis=1)
    var0, var1, var2 = x.var(axis=1) + eps, dx.var(axis=1) + eps, ddx.var(axis=1) + eps
    mobility = np.sqrt(var1 / var0)
    complexity = np.sqrt(var2 / var1) / mobility
    sigma = signal.sosfilt(sigma_sos, x, axis=-1).reshape(n, 15, -1)
    sigma_rms = np.sqrt((sigma**2).mean(axis=2)) + eps
    win_power = (x.reshape(n, 15, -1) ** 2).mean(axis=2) + eps
    slow = signal.sosfilt(delta_sos, x, axis=-1).reshape(n, 30, -1)
    slow_frac = np.mean(np.ptp(slow, axis=2) > 75.0, axis=1)
    return np.column_stack([
        logrel, np.log10(total), mobility, complexity,
        np.log10(sigma_rms.max(axis=1) / np.median(sigma_rms, axis=1)), np.std(np.log10(win_power), axis=1), slow_frac,
    ]).astype(np.float32)


def raw_epoch(data, *, fs_hz: float, n: int) -> np.ndarray:
    """A raw chip-rate epoch of ``n`` samples drawn with hypothesis's ``data``: EEG-like noise, rhythms and drift at
    an amplitude from nanovolts to 1e300 uV, with any of lost samples (NaN, +-inf), flat stretches, railed
    stretches, movement swings and muscle bursts; sometimes all flat or all lost; float32-rounded like the ring's."""
    from hypothesis import strategies as st

    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    t = np.arange(n) / fs_hz
    scale = data.draw(st.sampled_from([1e-3, 0.3, 1.0, 10.0, 30.0, 100.0, 1e4, 1e6, 1e150, 1e300]), label="scale")
    offset = data.draw(st.sampled_from([0.0, 300.0, -5e4, 1e5]), label="offset")
    x = (rng.standard_normal(n) + 2.0 * np.sin(2 * np.pi * rng.uniform(0.5, 45) * t)) * scale + offset
    if data.draw(st.booleans(), label="drift"):
        x += rng.standard_normal(n).cumsum() * scale * 0.1
    for _ in range(data.draw(st.integers(0, 4 if n else 0), label="n_events")):  # an empty epoch has no stretch
        kind = data.draw(st.sampled_from(["nan", "inf", "flat", "rail", "swing", "emg", "spike"]), label="event")
        lo = data.draw(st.integers(0, max(n - 1, 0)), label="start")
        hi = min(n, lo + data.draw(st.integers(1, int(3 * fs_hz)), label="length"))
        if kind == "nan":
            x[lo:hi] = np.nan
        elif kind == "inf":
            x[lo:hi] = data.draw(st.sampled_from([np.inf, -np.inf]), label="sign")
        elif kind == "flat":
            x[lo:hi] = x[lo] if np.isfinite(x[lo]) else 0.0
        elif kind == "rail":
            x[lo:hi] = data.draw(st.sampled_from([1.0, -1.0]), label="sign") * RAIL_UV
        elif kind == "swing":
            x[lo:hi] += data.draw(st.sampled_from([200.0, 600.0, 5e3]), label="swing") * np.sin(
                2 * np.pi * 0.7 * t[lo:hi])
        elif kind == "emg":
            x[lo:hi] += rng.standard_normal(hi - lo) * data.draw(st.sampled_from([3.0, 10.0, 60.0]), label="emg")
        else:
            x[lo] = data.draw(st.sampled_from([1e3, -1e5, 1e308, -1e308]), label="spike")
    whole = data.draw(st.sampled_from(["as drawn"] * 6 + ["constant", "zeros", "all lost"]), label="whole")
    if whole == "constant":
        x[:] = data.draw(st.sampled_from([123.0, -7.5, RAIL_UV]), label="level")
    elif whole == "zeros":
        x[:] = 0.0
    elif whole == "all lost":
        x[:] = np.nan
    with np.errstate(over="ignore"):
        return x.astype(np.float32).astype(np.float64) if data.draw(st.booleans(), label="float32") else x
