"""appliance.filters against scipy.signal itself: bit-identical results, so the box's stages do not move."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

scipy_signal = pytest.importorskip("scipy.signal")

from appliance import dsp, filters  # noqa: E402
from appliance.protocol.boxconfig import AcquisitionSection  # noqa: E402

FINITE = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=64)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.array_equal(a, b), f"max difference {np.max(np.abs(a - b))}"


@settings(max_examples=200, deadline=None)
@given(x=hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 400)), elements=FINITE),
       which=st.sampled_from(["band", "band+notch", "sigma", "hp"]), with_zi=st.booleans(), axis=st.sampled_from([-1, 0]),
       z=FINITE)
def test_sosfilt_is_scipys(x: np.ndarray, which: str, with_zi: bool, axis: int, z: float) -> None:
    sos = {"band": scipy_signal.butter(2, [0.3, 35.0], btype="bandpass", fs=250.0, output="sos"),
           "band+notch": np.vstack([scipy_signal.butter(2, [0.3, 35.0], btype="bandpass", fs=250.0, output="sos"),
                                    scipy_signal.tf2sos(*scipy_signal.iirnotch(50.0, Q=30.0, fs=250.0))]),
           "sigma": scipy_signal.butter(4, [11.0, 16.0], btype="bandpass", fs=100.0, output="sos"),
           "hp": scipy_signal.butter(4, 20.0, btype="highpass", fs=250.0, output="sos")}[which]
    if with_zi:
        shape = list(x.shape)
        shape[axis] = 2
        zi = np.full((len(sos), *shape), z)
        y, zf = filters.sosfilt(sos, x, axis=axis, zi=zi)
        y0, zf0 = scipy_signal.sosfilt(sos, x, axis=axis, zi=zi)
        _same(y, y0)
        _same(zf, zf0)
    else:
        _same(filters.sosfilt(sos, x, axis=axis), scipy_signal.sosfilt(sos, x, axis=axis))


@settings(max_examples=200, deadline=None)
@given(x=hnp.arrays(np.float64, st.integers(1, 400), elements=FINITE), with_zi=st.booleans(), z=FINITE)
def test_sosfilt_of_one_signal_is_scipys(x: np.ndarray, with_zi: bool, z: float) -> None:
    """The live path's shortcut (one 1-D signal, state carried between chunks) is scipy's sosfilt too."""
    sos = np.vstack([scipy_signal.butter(2, [0.3, 35.0], btype="bandpass", fs=250.0, output="sos"),
                     scipy_signal.tf2sos(*scipy_signal.iirnotch(50.0, Q=30.0, fs=250.0))])
    if with_zi:
        zi = np.full((len(sos), 2), z)
        y, zf = filters.sosfilt(sos, x, zi=zi)
        y0, zf0 = scipy_signal.sosfilt(sos, x, zi=zi)
        _same(y, y0)
        _same(zf, zf0)
        assert np.array_equal(zi, np.full((len(sos), 2), z)), "the caller's state must not be changed"
    else:
        _same(filters.sosfilt(sos, x), scipy_signal.sosfilt(sos, x))


def test_sosfilt_refuses_a_wrong_state_shape_for_one_signal() -> None:
    sos = scipy_signal.butter(2, [0.3, 35.0], btype="bandpass", fs=250.0, output="sos")
    with pytest.raises(ValueError, match="invalid zi shape"):
        filters.sosfilt(sos, np.zeros(10), zi=np.zeros((3, 2)))


@settings(max_examples=300, deadline=None)
@given(x=hnp.arrays(np.float64, st.integers(1, 300), elements=FINITE), n_taps=st.integers(1, 130),
       up=st.integers(1, 7), down=st.integers(1, 11), seed=st.integers(0, 2**32 - 1))
def test_upfirdn_is_scipys(x: np.ndarray, n_taps: int, up: int, down: int, seed: int) -> None:
    h = np.random.default_rng(seed).normal(size=n_taps)
    _same(filters.upfirdn(h, x, up=up, down=down), scipy_signal.upfirdn(h, x, up=up, down=down))


@pytest.mark.parametrize("n", [*range(1, 40), 199, 200, 500, 4000, 32000])
def test_hann_window_is_scipys(n: int) -> None:
    _same(filters.get_window("hann", n), scipy_signal.get_window("hann", n))


def test_an_empty_window_is_refused_as_scipy_does() -> None:
    for f in (filters.get_window, scipy_signal.get_window):
        with pytest.raises(ValueError):
            f("hann", 0)


def test_stored_designs_are_scipys_and_complete() -> None:
    # regenerating with this scipy gives the committed designs: every design the box asks for at every chip
    # rate and notch is there (same keys, same shapes), and each value is scipy's to within a few ulps: scipy
    # releases and CPUs (SIMD paths in the pole placement) differ in the last bit, which is why the box
    # stores the designs instead of asking the installed scipy (the box's output cannot drift with scipy)
    from appliance import filter_designs

    fresh: dict = {}
    exec(compile(filters._regenerate(), "regenerated filter_designs", "exec"), fresh)
    stored = filter_designs.DESIGNS
    assert sorted(fresh["DESIGNS"]) == sorted(stored), "run python -m appliance.filters"
    for key, (shape, values) in fresh["DESIGNS"].items():
        assert stored[key][0] == shape, key
        now = np.array([float.fromhex(v) for v in values])
        kept = np.array([float.fromhex(v) for v in stored[key][1]])
        np.testing.assert_allclose(kept, now, rtol=1e-12, atol=1e-15 * np.abs(now).max(), err_msg=key)


def test_an_unstored_design_falls_back_to_scipy() -> None:
    _same(filters.butter(3, [1.0, 7.0], btype="bandpass", fs=123.0),
          scipy_signal.butter(3, [1.0, 7.0], btype="bandpass", fs=123.0, output="sos"))
    _same(filters.firwin(31, 5.0, fs=77.0), scipy_signal.firwin(31, 5.0, fs=77.0))


@pytest.mark.parametrize("fs", [*next(f.metadata["choices"] for f in dataclasses.fields(AcquisitionSection)
                                      if f.name == "sample_rate_sps")])
def test_preprocessing_at_every_chip_rate_is_scipys(fs: int) -> None:
    # the whole preprocessor (stored designs + native filter + numpy resampler) against the same steps in scipy
    x = np.random.default_rng(fs).normal(0.0, 30.0, fs * 7)
    pre = dsp.StreamingPreprocessor(float(fs), notch_hz=50.0)
    got = np.concatenate([pre.process(c) for c in np.array_split(x, 5)])
    sos = scipy_signal.butter(2, [dsp.BANDPASS_HZ[0], min(dsp.BANDPASS_HZ[1], 0.9 * fs / 2)], btype="bandpass",
                              fs=float(fs), output="sos")
    sos = np.vstack([sos, scipy_signal.tf2sos(*scipy_signal.iirnotch(50.0, Q=30.0, fs=float(fs)))])
    _same(pre._sos, sos)
    up, down = pre.up, pre.down
    h = scipy_signal.firwin(24 * max(up, down) + 1, 0.85 * min(fs, dsp.MODEL_FS_HZ) / 2, fs=fs * up) * up
    _same(pre._h, h)
    y = scipy_signal.sosfilt(sos, x)
    want = scipy_signal.upfirdn(h, y, up=up, down=down)[: len(got) + pre.delay_samples]
    want = np.clip(np.concatenate([np.zeros(pre.delay_samples), want])[: len(got)], -pre.clip_uv, pre.clip_uv)
    _same(got, want)


def test_the_box_runtime_does_not_import_scipy() -> None:
    code = ("import sys, numpy as np\n"
            "from appliance import dsp, stager\n"
            "pre = dsp.StreamingPreprocessor(250.0, notch_hz=50.0)\n"
            "y = pre.process(np.random.default_rng(0).normal(0, 20, 250 * 60))\n"
            "dsp.epoch_quality(np.zeros(7500) + 1.0, fs_hz=250.0); dsp.arousal_features(np.ones(7500), fs_hz=250.0)\n"
            "dsp.epoch_checks(np.random.default_rng(1).normal(0, 20, 7500), fs_hz=250.0)\n"
            "stager.epoch_features(y[:3000])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


# ---- the side-by-side kernels: each lane is scipy's filter, bit for bit ------------------------------------------
_LANE_DESIGNS = {
    "hp1": lambda: scipy_signal.butter(2, 0.3, btype="highpass", fs=250.0, output="sos"),  # 1 section
    "hp2": lambda: scipy_signal.butter(4, 20.0, btype="highpass", fs=250.0, output="sos"),  # 2
    "band+notch": lambda: np.vstack([scipy_signal.butter(2, [0.3, 35.0], btype="bandpass", fs=250.0, output="sos"),
                                     scipy_signal.tf2sos(*scipy_signal.iirnotch(50.0, Q=30.0, fs=250.0))]),  # 3
    "sigma": lambda: scipy_signal.butter(4, [11.0, 16.0], btype="bandpass", fs=100.0, output="sos"),  # 4
    "band6": lambda: scipy_signal.butter(6, [1.0, 30.0], btype="bandpass", fs=100.0, output="sos"),  # 6: not unrolled
    "fir-like": lambda: np.array([[0.5, 0.25, 0.0, 1.0, 0.0, 0.0]]),  # trailing zeros: a shorter default pad
}
LANE_VALUES = st.one_of(FINITE, st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -0.0]))


def _scipy_sosfiltfilt_with_stored_zi(sos: np.ndarray, x: np.ndarray) -> np.ndarray:
    """scipy's own ``sosfiltfilt``, starting from the box's stored ``sosfilt_zi`` (what the lanes use) instead of
    the one this scipy solves for: that one differs from release to release (and LAPACK build) in its last bits
    (see test_stored_designs_are_scipys_and_complete), and on a flat input the output is nothing but that
    rounding (1e-26 from a constant 1.0 here on 2026-12-03, bits apart)."""
    from unittest import mock

    from scipy.signal import _signaltools

    with mock.patch.object(_signaltools, "sosfilt_zi", filters.sosfilt_zi):
        return scipy_signal.sosfiltfilt(sos, x)


@settings(max_examples=200, deadline=None)
@given(which=st.lists(st.sampled_from(sorted(_LANE_DESIGNS)), min_size=1, max_size=4),
       n=st.integers(1, 300), data=st.data())
def test_sosfiltfilt_lanes_is_scipys_sosfiltfilt(which, n, data) -> None:
    sos = [_LANE_DESIGNS[w]() for w in which]
    x = data.draw(hnp.arrays(np.float64, (len(sos), n), elements=LANE_VALUES), label="x")
    lanes = filters.filter_lanes(*sos, zero_phase=True)
    with np.errstate(all="ignore"):
        try:
            want = [_scipy_sosfiltfilt_with_stored_zi(s, row) for s, row in zip(sos, x)]
        except ValueError as e:  # too short for scipy: refused alike
            with pytest.raises(ValueError, match="padlen"):
                filters.sosfiltfilt_lanes(lanes, x)
            assert "padlen" in str(e)
            return
        got = filters.sosfiltfilt_lanes(lanes, x)
    for g, w in zip(got, want):
        assert np.array_equal(g, w, equal_nan=True)
        assert np.array_equal(np.signbit(g), np.signbit(w))


@settings(max_examples=200, deadline=None)
@given(which=st.lists(st.sampled_from(sorted(_LANE_DESIGNS)), min_size=1, max_size=3),
       n_signals=st.integers(1, 4), n=st.integers(1, 300), data=st.data())
def test_sosfilt_lanes_is_scipys_sosfilt_for_every_filter_and_signal(which, n_signals, n, data) -> None:
    sos = [_LANE_DESIGNS[w]() for w in which]
    x = data.draw(hnp.arrays(np.float64, (n_signals, n), elements=LANE_VALUES), label="x")
    with np.errstate(all="ignore"):
        got = filters.sosfilt_lanes(filters.filter_lanes(*sos), x)
        assert got.shape == (n_signals, len(sos), n)
        for f, s in enumerate(sos):
            want = scipy_signal.sosfilt(s, x, axis=-1)
            assert np.array_equal(got[:, f], want, equal_nan=True)
            assert np.array_equal(np.signbit(got[:, f]), np.signbit(want))


def test_filter_lanes_refuse_what_the_kernels_cannot_take() -> None:
    hp = _LANE_DESIGNS["hp1"]()
    with pytest.raises(ValueError):
        filters.filter_lanes()
    with pytest.raises(ValueError):
        filters.filter_lanes(np.array([[1.0, 0.0, 0.0, 2.0, 0.0, 0.0]]))  # a0 != 1
    with pytest.raises(ValueError, match="zero_phase"):
        filters.sosfiltfilt_lanes(filters.filter_lanes(hp), np.zeros((1, 100)))
    with pytest.raises(ValueError, match="one signal per filter"):
        filters.sosfiltfilt_lanes(filters.filter_lanes(hp, zero_phase=True), np.zeros((2, 100)))
    with pytest.raises(ValueError, match="at most"):
        filters.sosfiltfilt_lanes(filters.filter_lanes(*[hp] * 9, zero_phase=True), np.zeros((9, 100)))


def test_a_flat_signal_through_the_lanes_is_scipys_bit_for_bit() -> None:
    # the example hypothesis found on 2026-12-03 (a fresh clone, so a fresh example database)
    sos = _LANE_DESIGNS["hp1"]()
    got = filters.sosfiltfilt_lanes(filters.filter_lanes(sos, zero_phase=True), np.ones((1, 10)))
    assert np.array_equal(got[0], _scipy_sosfiltfilt_with_stored_zi(sos, np.ones(10)))
