"""The one preprocessing path: streaming == offline, filter behaviour, epoch quality, arousal features."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal

from appliance.dsp import (
    ADS1299_RAIL_UV, CLIP_UV, MODEL_FS_HZ, StreamingPreprocessor, _sosfiltfilt, _windows, arousal_features,
    epoch_checks, epoch_quality, mean_axis, median_last_axis, preprocess, var_axis, welch_psd,
)
from appliance.epoch import ArousalFeatures

RNG = np.random.default_rng(42)
LONG = RNG.standard_normal(250 * 40) * 30.0  # 40 s of noise at 250 SPS


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(LONG)), max_size=30),
       fs=st.sampled_from([250.0, 200.0, 100.0, 50.0, 256.0, 500.0]))
def test_streaming_in_any_chunks_equals_offline(cuts, fs):
    x = LONG[: int(fs * 20)]
    offline = preprocess(x, fs_hz=fs)
    pre = StreamingPreprocessor(fs)
    streamed = np.concatenate([pre.process(c) for c in np.split(x, sorted(c for c in cuts if c <= len(x)))])
    assert len(offline) == int(np.ceil(len(x) * MODEL_FS_HZ / fs))
    np.testing.assert_allclose(streamed, offline, rtol=0, atol=1e-9)


@pytest.mark.parametrize("fs", [250.0, 200.0, 50.0, 256.0])
def test_resampler_matches_textbook_zero_stuff_filter_decimate(fs):
    """Independent reference: up-sample by zero stuffing, convolve with the FIR, keep every down-th."""
    x = LONG[: int(fs * 10)]
    pre = StreamingPreprocessor(fs)
    y = signal.sosfilt(pre._sos, x)
    u = np.zeros(len(y) * pre.up)
    u[:: pre.up] = y
    ref = np.convolve(u, pre._h)[: len(u)][:: pre.down]
    ref = np.concatenate([np.zeros(pre.delay_samples), ref])[: len(ref)]  # the alignment delay line
    np.testing.assert_allclose(preprocess(x, fs_hz=fs), np.clip(ref, -CLIP_UV, CLIP_UV), atol=1e-9)


@pytest.mark.parametrize("fs", [50.0, 100.0, 128.0, 200.0, 250.0, 256.0, 500.0, 512.0])
def test_every_rate_delays_the_signal_alike(fs):
    """An impulse comes out at the same model-rate sample whatever the input rate (epochs hold the same EEG)."""
    from appliance.dsp import ALIGN_DELAY_S

    t_s = 5.0
    x = np.zeros(int(10 * fs))
    x[int(t_s * fs)] = 1000.0
    y = preprocess(x, fs_hz=fs, notch_hz=None)
    peak_s = np.argmax(np.abs(y[int(4 * MODEL_FS_HZ):])) / MODEL_FS_HZ + 4.0
    assert abs(peak_s - t_s - ALIGN_DELAY_S) <= 0.03, (fs, peak_s)


def _gain(freq_hz: float, fs: float = 250.0) -> float:
    t = np.arange(int(fs * 20)) / fs
    y = preprocess(50.0 * np.sin(2 * np.pi * freq_hz * t), fs_hz=fs)
    tail = y[len(y) // 2:]  # after the filters settle
    return float(np.sqrt(2) * tail.std() / 50.0)


def test_passes_eeg_band_and_removes_drift_and_mains():
    for f in (1.0, 5.0, 10.0, 14.0, 25.0):
        assert 0.8 < _gain(f) < 1.1, f
    assert _gain(0.03) < 0.05  # electrode drift
    assert _gain(50.0) < 0.01  # mains: notch + band-pass + anti-alias
    assert _gain(45.0) < 0.1  # above the band; would alias at 100 Hz
    y = preprocess(np.full(250 * 60, 20000.0), fs_hz=250.0)  # a 20 mV electrode offset
    assert np.abs(y[-1000:]).max() < 1.0


def test_nan_does_not_poison_the_filter_state_and_output_is_clipped():
    pre = StreamingPreprocessor(250.0)
    bad = np.full(500, np.nan)
    out = np.concatenate([pre.process(bad), pre.process(LONG[:2500])])
    assert np.all(np.isfinite(out))
    spike = np.zeros(2500)
    spike[1000:1100] = 5000.0
    assert np.abs(preprocess(spike, fs_hz=250.0)).max() == pytest.approx(CLIP_UV)


def test_refuses_what_it_cannot_handle():
    with pytest.raises(ValueError, match="1-D"):
        StreamingPreprocessor(250.0).process(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="fs_hz"):
        StreamingPreprocessor(5.0)
    assert StreamingPreprocessor(250.0).process(np.empty(0)).shape == (0,)


# ---- epoch quality ---------------------------------------------------------------------------------------
def _clean_epoch(fs: float = 250.0) -> np.ndarray:
    t = np.arange(int(30 * fs)) / fs
    return 300.0 + 20.0 * np.sin(2 * np.pi * 10 * t) + 10.0 * RNG.standard_normal(len(t))  # with a DC offset


def test_clean_epoch_is_ok():
    q = epoch_quality(_clean_epoch(), fs_hz=250.0)
    assert q.ok and not q.flags and q.artefact_fraction == 0.0


def test_lead_off_lost_frames_flat_and_clipping_make_an_epoch_unusable():
    x = _clean_epoch()
    assert epoch_quality(x, fs_hz=250.0, lead_off=True).flags == {"lead_off"}
    assert not epoch_quality(x, fs_hz=250.0, frames_lost=3).ok
    flat = epoch_quality(np.full(7500, 123.0), fs_hz=250.0)
    assert not flat.ok and "flat" in flat.flags
    railed = x.copy()
    railed[:500] = ADS1299_RAIL_UV
    q = epoch_quality(railed, fs_hz=250.0)
    assert not q.ok and "clipping" in q.flags


def test_artefact_fraction_counts_high_amplitude_seconds():
    x = _clean_epoch()
    x[250 * 5:250 * 8] += 400.0 * np.sin(2 * np.pi * np.arange(750) / 250)  # 3 s of 1-Hz movement swings
    q = epoch_quality(x, fs_hz=250.0)
    assert 3 / 30 <= q.artefact_fraction <= 5 / 30
    assert q.ok and "high_amplitude" in q.flags
    x[: 250 * 20] += 1000.0 * np.sin(2 * np.pi * 0.7 * np.arange(250 * 20) / 250)
    q = epoch_quality(x, fs_hz=250.0)
    assert not q.ok and "artefact" in q.flags and q.artefact_fraction > 0.5
    q = epoch_quality(np.where(np.arange(7500) < 10, np.nan, _clean_epoch()), fs_hz=250.0)
    assert "artefact" in q.flags and q.artefact_fraction == pytest.approx(1 / 30)


# ---- arousal features ------------------------------------------------------------------------------------
def test_arousal_features_see_alpha_muscle_and_movement():
    fs = 250.0
    t = np.arange(int(30 * fs)) / fs
    alpha = 30.0 * np.sin(2 * np.pi * 10 * t) + 3.0 * RNG.standard_normal(len(t))
    a = arousal_features(alpha, fs_hz=fs)
    assert a.alpha_rel > 0.8 and a.high_freq_rel < 0.1 and a.movement_fraction == 0.0
    emg = signal.sosfilt(signal.butter(4, [25, 100], btype="bandpass", fs=fs, output="sos"),
                         RNG.standard_normal(len(t))) * 60.0
    m = arousal_features(alpha + emg, fs_hz=fs)
    assert m.high_freq_rel > 0.5 and m.beta_rel > a.beta_rel and m.movement_fraction > 0.9
    assert arousal_features(np.zeros(10), fs_hz=fs).alpha_rel == 0.0


# ---- the fast per-epoch features equal the scipy-based originals ------------------------------------------
# The stage and loop models were trained on these exact features, so the optimised code in appliance/dsp.py
# must reproduce what the original scipy calls computed. The originals are kept here, slow, as references.
def _reference_arousal_features(x_uv_chip, *, fs_hz):
    x = np.asarray(x_uv_chip, dtype=np.float64).ravel()
    x = np.where(np.isfinite(x), x, 0.0)
    if x.size < int(2 * fs_hz):
        return ArousalFeatures()
    x = signal.detrend(x, type="linear")
    f, p = signal.welch(x, fs=fs_hz, nperseg=int(2 * fs_hz))
    top = min(45.0, 0.9 * fs_hz / 2)

    def band(lo, hi):
        return float(p[(f >= lo) & (f < hi)].sum())

    total35, total45 = band(0.5, min(35.0, top)), band(0.5, top)
    if total35 <= 0 or total45 <= 0:
        return ArousalFeatures()
    hp = signal.sosfiltfilt(signal.butter(4, min(20.0, 0.8 * fs_hz / 2), btype="highpass", fs=fs_hz, output="sos"), x)
    w_raw = signal.detrend(_windows(x, fs_hz), axis=1)
    w_hp = _windows(hp, fs_hz)
    moving = (np.ptp(w_raw, axis=1) > 250.0) | (np.sqrt(np.mean(w_hp**2, axis=1)) > 8.0)
    return ArousalFeatures(alpha_rel=band(8.0, 12.0) / total35, beta_rel=band(16.0, 30.0) / total35,
                           high_freq_rel=band(20.0, top) / total45, movement_fraction=float(moving.mean()))


def _reference_quality_highpass(x, fs_hz):
    sos = signal.butter(2, 0.3, btype="highpass", fs=fs_hz, output="sos")
    return signal.sosfiltfilt(sos, x - np.median(x))


def _feature_epochs():
    """(signal, fs) pairs: synthetic epochs of every stage (artefacts, distressed arousals) and random ones."""
    from appliance.synthetic_eeg import SyntheticSleepEEG

    hyp = np.array([0, 1, 2, 3, 2, 4, 0, 0, 4, 0])
    gen = SyntheticSleepEEG(hyp, seed=21, n_channels=2)
    out = [(e[:, c], 250.0) for e in gen.render_epochs(channels=None) for c in (0, 1)]
    rng = np.random.default_rng(5)
    for fs in (250.0, 200.0, 256.0, 100.0, 500.0, 50.0):
        n = int(30 * fs)
        t = np.arange(n) / fs
        out.append((rng.standard_normal(n) * 20 + 300 + 40 * t, fs))  # noise on an offset and drift
        x = rng.standard_normal(n).cumsum() + 50 * np.sin(2 * np.pi * 11 * t)  # random walk + alpha
        x[rng.integers(0, n, 20)] = np.nan
        out.append((x, fs))
    out.append((rng.standard_normal(7499) * 400, 250.0))  # not a whole number of windows
    return out


@pytest.mark.parametrize("k", range(len(_feature_epochs())))
def test_fast_arousal_features_and_quality_equal_the_scipy_reference(k):
    x, fs = _feature_epochs()[k]
    got, ref = arousal_features(x, fs_hz=fs), _reference_arousal_features(x, fs_hz=fs)
    for name in ("alpha_rel", "beta_rel", "high_freq_rel"):
        assert np.isclose(getattr(got, name), getattr(ref, name), rtol=1e-9, atol=1e-12), name
    assert got.movement_fraction == ref.movement_fraction
    xf = np.where(np.isfinite(x), x, 0.0)
    np.testing.assert_allclose(_sosfiltfilt("quality_hp", fs, xf - np.median(xf)), _reference_quality_highpass(xf, fs),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("nperseg", [200, 500, 64, 101])
def test_welch_psd_equals_scipy_welch(nperseg):
    x = np.random.default_rng(nperseg).standard_normal((3, 3000)) * 10 + 5
    f_ref, p_ref = signal.welch(x, fs=100.0, nperseg=nperseg, axis=-1)
    f, p = welch_psd(x, fs_hz=100.0, nperseg=nperseg)
    np.testing.assert_array_equal(f, f_ref)
    np.testing.assert_allclose(p, p_ref, rtol=1e-10, atol=1e-14)


def test_welch_psd_of_a_non_contiguous_view_equals_that_of_a_copy():
    x = np.random.default_rng(3).standard_normal((3, 6000)) * 10 + 5
    view = x[:, ::2]  # not contiguous: the as_strided path
    f, p = welch_psd(view, fs_hz=100.0, nperseg=200)
    f_copy, p_copy = welch_psd(np.ascontiguousarray(view), fs_hz=100.0, nperseg=200)
    np.testing.assert_array_equal(p, p_copy)
    np.testing.assert_allclose(p, signal.welch(view, fs=100.0, nperseg=200, axis=-1)[1], rtol=1e-10, atol=1e-14)


_MEDIAN_VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                           st.sampled_from([0.0, -0.0, 1.0, -1.0]))


@settings(max_examples=300, deadline=None)
@given(a=st.one_of(
    st.lists(_MEDIAN_VALUES, min_size=1, max_size=40).map(np.array),
    st.integers(1, 4).flatmap(lambda rows: st.integers(1, 20).flatmap(lambda n: st.lists(
        _MEDIAN_VALUES, min_size=rows * n, max_size=rows * n).map(lambda v: np.array(v).reshape(rows, n))))))
def test_median_last_axis_is_np_median_bit_for_bit(a):
    """The epoch features' median (quality's flat-line test, the stager's spindle burstiness) is np.median's,
    to the bit: the same value, the same sign of a zero, the same NaN."""
    got, want = median_last_axis(a), np.median(a, axis=-1)
    assert np.shape(got) == np.shape(want)
    g, w = np.atleast_1d(got), np.atleast_1d(want)
    assert np.array_equal(np.isnan(g), np.isnan(w))
    assert np.array_equal(g[~np.isnan(g)].view(np.int64), w[~np.isnan(w)].view(np.int64))


# ---- the cheaper per-epoch calls equal the straightforward computation ------------------------------------
# tests/epoch_reference.py keeps epoch_quality and arousal_features as they were before they were made cheaper
# (scipy's sosfiltfilt, np.median/std/ptp/mean, masks): the oracle. Generated epochs cover lost samples, flat and
# railed stretches, huge amplitudes, short and ragged epochs at the box's rates and recordings' rates.
def _same_quality(got, want) -> None:
    assert got == want
    # the same Python types too: the pipeline writes them to JSON (a numpy bool is not serialisable)
    assert [type(v) for v in vars(got).values()] == [type(v) for v in vars(want).values()]


def _same_arousal(got: ArousalFeatures, want: ArousalFeatures) -> None:
    assert [type(v) for v in vars(got).values()] == [type(v) for v in vars(want).values()]
    for name in ("alpha_rel", "beta_rel", "high_freq_rel", "movement_fraction"):
        g, w = getattr(got, name), getattr(want, name)
        assert (np.isnan(g) and np.isnan(w)) or np.isclose(g, w, rtol=1e-9, atol=0.0), (name, g, w)
    assert got.movement_fraction == want.movement_fraction


@settings(max_examples=250, deadline=None)
@given(data=st.data(), fs=st.sampled_from([250.0, 500.0, 1000.0, 256.0, 200.0, 100.0, 50.0]),
       shape=st.sampled_from(["epoch"] * 5 + ["short", "ragged"]), lead_off=st.booleans(),
       frames_lost=st.sampled_from([0, 0, 0, 2]))
def test_epoch_checks_equal_the_straightforward_reference(data, fs, shape, lead_off, frames_lost):
    from tests import epoch_reference as ref

    n = {"epoch": int(30 * fs), "short": data.draw(st.integers(0, int(4 * fs)), label="n"),
         "ragged": int(30 * fs) - data.draw(st.integers(1, int(fs) - 1), label="missing")}[shape]
    x = ref.raw_epoch(data, fs_hz=fs, n=n)
    kw = dict(fs_hz=fs, lead_off=lead_off, frames_lost=frames_lost)
    with np.errstate(all="ignore"):
        want_q, want_a = ref.epoch_quality(x, **kw), ref.arousal_features(x, fs_hz=fs)
        q, a = epoch_checks(x, **kw)
        alone_q, alone_a = epoch_quality(x, **kw), arousal_features(x, fs_hz=fs)
    _same_quality(q, want_q)
    _same_quality(alone_q, want_q)
    _same_arousal(a, want_a)
    _same_arousal(alone_a, want_a)


@pytest.mark.parametrize("k", range(len(_feature_epochs())))
def test_epoch_checks_equal_the_reference_on_synthetic_and_random_epochs(k):
    from tests import epoch_reference as ref

    x, fs = _feature_epochs()[k]
    q, a = epoch_checks(x, fs_hz=fs)
    _same_quality(q, ref.epoch_quality(x, fs_hz=fs))
    _same_arousal(a, ref.arousal_features(x, fs_hz=fs))


def test_epoch_checks_computes_only_what_is_asked():
    x = _clean_epoch()
    assert epoch_checks(x, fs_hz=250.0, arousal=False)[1] is None
    assert epoch_checks(x, fs_hz=250.0, quality=False)[0] is None
    assert epoch_checks(x, fs_hz=250.0, quality=False, arousal=False) == (None, None)


_REDUCE_VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                           st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e300, -1e300]))


@settings(max_examples=300, deadline=None)
@given(a=st.integers(1, 4).flatmap(lambda rows: st.integers(1, 40).flatmap(lambda n: st.lists(
    _REDUCE_VALUES, min_size=rows * n, max_size=rows * n).map(lambda v: np.array(v).reshape(rows, n)))),
    axis=st.sampled_from([0, 1, -1]), keepdims=st.booleans())
def test_mean_axis_and_var_axis_are_numpys_bit_for_bit(a, axis, keepdims):
    with np.errstate(all="ignore"):
        got, want = mean_axis(a, axis, keepdims=keepdims), np.mean(a, axis=axis, keepdims=keepdims)
        got_v, want_v = var_axis(a, axis), np.var(a, axis=axis)
    for g, w in ((got, want), (got_v, want_v)):
        assert g.shape == w.shape
        assert np.array_equal(np.isnan(g), np.isnan(w))
        assert np.array_equal(g[~np.isnan(g)].view(np.int64), w[~np.isnan(w)].view(np.int64))


def _edge_epochs():
    """Hand-made epochs at the corners the generated ones reach rarely (name, signal, fs)."""
    fs = 250.0
    n = int(30 * fs)
    rng = np.random.default_rng(11)
    noise = rng.standard_normal(n)
    two_spikes = noise * 10.0
    two_spikes[[100, 5000]] = 1e308  # their sum overflows: a mean of the epoch is inf, its median is not
    near_flat = noise / noise.std() * 0.5  # the flat-line threshold, std 0.5 uV
    near_swing = np.sin(2 * np.pi * 0.5 * np.arange(n) / fs) * 250.0  # 500 uV peak to peak: the artefact threshold
    one_rail = _clean_epoch()
    one_rail[:8] = ADS1299_RAIL_UV  # 8 of 7500 railed samples: just over 0.1 %
    return [("two 1e308 spikes", two_spikes, fs), ("near flat", near_flat, fs), ("near 500 uV", near_swing, fs),
            ("railed 0.1 %", one_rail, fs), ("all zeros", np.zeros(n), fs), ("all NaN", np.full(n, np.nan), fs),
            ("one sample", np.array([3.0]), fs), ("just over 3 s", noise[:751] * 30.0, fs),
            ("exactly 2 s", noise[:500] * 30.0, fs), ("huge", noise * 1e300, fs), ("+inf", np.full(n, np.inf), fs)]


@pytest.mark.parametrize("name", [e[0] for e in _edge_epochs()])
def test_epoch_checks_equal_the_reference_on_edge_epochs(name):
    from tests import epoch_reference as ref

    _, x, fs = next(e for e in _edge_epochs() if e[0] == name)
    with np.errstate(all="ignore"):
        q, a = epoch_checks(x, fs_hz=fs)
        _same_quality(q, ref.epoch_quality(x, fs_hz=fs))
        _same_arousal(a, ref.arousal_features(x, fs_hz=fs))


def _reference_stream(pre: StreamingPreprocessor, chunks: list[np.ndarray]) -> np.ndarray:
    """The streaming preprocessor done the straightforward way, through the filters module's sosfilt and
    upfirdn (as it was written before it called the native kernels directly): state, history and decimation
    phase by search."""
    from appliance import filters

    zi, hist, n_in, n_out = np.zeros((pre._sos.shape[0], 2)), np.zeros(pre._hist_len), 0, 0
    delay, outs = np.zeros(pre.delay_samples), []
    up, down = pre.up, pre.down
    for chunk in chunks:
        x = np.asarray(chunk, dtype=np.float64)
        if x.size == 0:
            continue
        x = np.where(np.isfinite(x), x, 0.0)
        y, zi = filters.sosfilt(pre._sos, x, zi=zi)
        s, c = n_in, len(y)
        n_in += c
        if up == down == 1:
            out, n_out = y.copy(), n_out + c
        else:
            n_new = ((s + c) * up - 1) // down + 1 - n_out
            full = np.concatenate([hist, y])
            base = s - pre._hist_len
            out = np.empty(0)
            if n_new > 0:
                g_first = n_out * down
                p = next(q for q in range(down) if ((base + q) * up - g_first) % down == 0)
                v = filters.upfirdn(pre._h, full[p:], up=up, down=down)
                first = (g_first - (base + p) * up) // down
                out = v[first:first + n_new]
            n_out += max(n_new, 0)
            hist = full[-pre._hist_len:]
        if pre.delay_samples:
            line = np.concatenate([delay, out])
            out, delay = line[:len(out)], line[len(out):]
        outs.append(np.clip(out, -pre.clip_uv, pre.clip_uv))
    return np.concatenate(outs) if outs else np.empty(0)


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(LONG)), max_size=30),
       fs=st.sampled_from([250.0, 200.0, 100.0, 50.0, 256.0, 500.0, 128.0, 1000.0]),
       notch=st.sampled_from([None, 50.0, 60.0]), scale=st.sampled_from([1.0, 100.0]))
def test_streaming_is_bit_for_bit_the_straightforward_stream(cuts, fs, notch, scale):
    """The preprocessor's direct kernel calls give exactly what the filters module's sosfilt and upfirdn give,
    chunk by chunk, whatever the chunking, rate and notch (and with samples clipped)."""
    x = LONG[: int(fs * 20)] * scale
    x[7] = np.nan
    chunks = np.split(x, sorted(c for c in cuts if c <= len(x)))
    pre = StreamingPreprocessor(fs, notch_hz=notch)
    got = [pre.process(c) for c in chunks]
    want = _reference_stream(StreamingPreprocessor(fs, notch_hz=notch), chunks)
    assert np.array_equal(np.concatenate(got), want)
