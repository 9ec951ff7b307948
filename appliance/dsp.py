"""Signal conditioning: the ONE preprocessing path from chip-rate microvolts to model-rate samples.

Training (``models/stager/train.py``), evaluation and the box all call the same
:class:`StreamingPreprocessor`; :func:`preprocess` is that class run over a whole recording in one call,
so the live path and the offline path cannot drift apart (``tests/test_dsp.py`` proves the parity).

The chain, every step causal and stateful so the box can run it chunk by chunk:

1. non-finite samples (a lost frame decoded as NaN) become 0 so they cannot poison filter state;
2. band-pass 0.3-35 Hz (Butterworth, second-order sections): removes electrode drift and DC offset and
   everything above the AASM EEG display band;
3. a mains notch (50 Hz by default) when the input rate can represent it;
4. rational resampling to :data:`MODEL_FS_HZ` with a polyphase FIR (``scipy.signal.upfirdn``) whose
   input history is carried across calls;
5. a pure delay line that brings the resampler's delay to :data:`ALIGN_DELAY_S` at every rate, so the
   same EEG recorded at 50, 100 or 250 Hz is cut into the same epochs;
6. clipping to +-:data:`CLIP_UV` so one movement artefact cannot dominate an epoch's features.

The chain's delay is about 0.25 s: epochs at model rate start that much later in the signal than their
chip-rate counterparts, which is irrelevant at 30-s resolution.

Besides the chain, :func:`epoch_quality` and :func:`arousal_features` judge one epoch of raw chip-rate
signal (before the band-pass, so clipping, flat lines and muscle power are still visible).
"""
from __future__ import annotations

import logging
from fractions import Fraction
from functools import lru_cache

import numpy as np

from appliance import filters as signal  # scipy.signal's designs stored, its filters native: not ~80 MB of scipy
from appliance.ads1299_frame import V_REF
from appliance.epoch import ArousalFeatures, SignalQuality

logger = logging.getLogger(__name__)

MODEL_FS_HZ = 100
"""Sampling rate the stage model sees (Hz); 30-s epochs are 3000 samples."""

BANDPASS_HZ = (0.3, 35.0)
"""Pass band of the staging channel (Hz), the AASM recommended EEG filter settings."""

ALIGN_DELAY_S = 0.24
"""Every input rate's chain delays its output by this much (s): the resampling FIR's own delay (0 at 100 Hz,
0.12 s at 200-512 Hz, 0.24 s at 50 Hz) topped up with a pure delay line, so epochs cut at model rate hold the
same stretch of EEG whatever the rate it was recorded at (rates under 50 Hz keep their own, longer delay)."""

CLIP_UV = 400.0
"""Preprocessed samples are clipped to +-CLIP_UV microvolts (real EEG rarely exceeds +-250 uV)."""

ADS1299_RAIL_UV = V_REF * 1e6 / 24
"""Full scale of the ADS1299 at the default gain 24: VREF / gain (datasheet SBAS499C, 9.4.1.3); the smallest
rail of any gain, so a signal past it is railed or impossible EEG at every gain."""

_ARTEFACT_PTP_UV = 500.0
_FLAT_STD_UV = 0.5


class StreamingPreprocessor:
    """Causal, stateful preprocessing of one EEG channel from chip rate to :data:`MODEL_FS_HZ`.

    Parameters
    ----------
    fs_hz : float
        Input sampling rate in Hz (250 SPS on the box; 50-512 Hz for recordings).
    notch_hz : float or None
        Mains frequency to notch out (None: no notch). Skipped when it is at or above the input's
        Nyquist rate or above the band-pass, where the band-pass and anti-alias filter already remove it.
    clip_uv : float
        Output clipping level in microvolts.

    Examples
    --------
    >>> pre = StreamingPreprocessor(fs_hz=250.0)
    >>> y = np.concatenate([pre.process(chunk) for chunk in np.array_split(x_uv, 10)])
    """

    def __init__(self, fs_hz: float = 250.0, *, notch_hz: float | None = 50.0, clip_uv: float = CLIP_UV) -> None:
        if not np.isfinite(fs_hz) or fs_hz < 20.0:
            raise ValueError(f"fs_hz must be >= 20 Hz, got {fs_hz}")
        self.fs_hz = float(fs_hz)
        self.clip_uv = float(clip_uv)
        nyq = self.fs_hz / 2
        hi = min(BANDPASS_HZ[1], 0.9 * nyq)
        self._sos = signal.butter(2, [BANDPASS_HZ[0], hi], btype="bandpass", fs=self.fs_hz, output="sos")
        # The notch only matters where mains can pass the band-pass before the anti-alias filter; at
        # 250 SPS, 50 Hz is just 1.4 octaves above 35 Hz and a second-order band-pass leaves it at -20 dB.
        if notch_hz is not None and notch_hz < nyq - 1.0:
            b, a = signal.iirnotch(notch_hz, Q=30.0, fs=self.fs_hz)
            self._sos = np.vstack([self._sos, signal.tf2sos(b, a)])
        ratio = Fraction(MODEL_FS_HZ / self.fs_hz).limit_denominator(1000)
        self.up, self.down = ratio.numerator, ratio.denominator
        if abs(self.up / self.down - MODEL_FS_HZ / self.fs_hz) > 1e-9:
            raise ValueError(f"cannot resample {fs_hz} Hz to {MODEL_FS_HZ} Hz by a small rational factor")
        if self.up == self.down == 1:
            self._h = np.ones(1)
        else:
            # Anti-alias/anti-image FIR at the up-sampled rate: pass to 35 Hz, stop by the model's Nyquist
            # (50 Hz). 24 taps per polyphase branch keeps the transition band under ~15 Hz.
            fs_up = self.fs_hz * self.up
            cutoff = 0.85 * min(self.fs_hz, MODEL_FS_HZ) / 2
            numtaps = 24 * max(self.up, self.down) + 1
            self._h = signal.firwin(numtaps, cutoff, fs=fs_up) * self.up
        fir_delay_s = (len(self._h) - 1) / 2 / (self.fs_hz * self.up)
        self.delay_samples = max(0, int(round((ALIGN_DELAY_S - fir_delay_s) * MODEL_FS_HZ)))
        # Input history needed so each output sees a full filter span, plus up to `down` samples so the
        # history can be aligned with the decimation phase (see _resample).
        self._hist_len = int(np.ceil((len(self._h) - 1) / self.up)) + self.down
        # The native kernels are called directly (appliance.filters' sosfilt and upfirdn, without their
        # per-call checks and copies: a third of a 10-s chunk's time): the coefficients checked and pinned once.
        from appliance._native import ffi, lib

        self._ffi, self._lib = ffi, lib
        self._sos = np.ascontiguousarray(self._sos, dtype=np.float64)
        if self._sos.ndim != 2 or self._sos.shape[1] != 6 or not (self._sos[:, 3] == 1).all():
            raise ValueError("sos must be shape (n_sections, 6) with sos[:, 3] == 1")
        self._h = np.ascontiguousarray(self._h, dtype=np.float64)
        self._sos_c = ffi.cast("const double *", ffi.from_buffer(self._sos))
        self._h_c = ffi.cast("const double *", ffi.from_buffer(self._h))
        # the decimation phase: q in [0, down) with (base + q) * up = g (mod down) is (g * up^-1 - base) mod down
        self._up_inv = pow(self.up, -1, self.down) if self.down > 1 else 0
        self.reset()

    def reset(self) -> None:
        """Forget all state (a new recording starts)."""
        self._zi = np.zeros((self._sos.shape[0], 2))  # C order, updated in place by the kernel
        self._zi_c = self._ffi.cast("double *", self._ffi.from_buffer(self._zi))
        self._hist = np.zeros(self._hist_len)
        self._n_in = 0  # input samples consumed so far
        self._n_out = 0  # output samples produced so far
        self._delay_line = np.zeros(self.delay_samples)

    def process(self, chunk_uv: np.ndarray) -> np.ndarray:
        """Filter, resample and clip the next chunk; returns the model-rate samples it completes.

        Parameters
        ----------
        chunk_uv : numpy.ndarray, shape (n,)
            Next samples of the channel in microvolts, at ``fs_hz``.

        Returns
        -------
        numpy.ndarray, shape (m,), float64 microvolts at :data:`MODEL_FS_HZ`. Over a whole recording the
        outputs add up to ``ceil(n_total * MODEL_FS_HZ / fs_hz)`` samples, whatever the chunking.
        """
        x = np.asarray(chunk_uv, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"process() takes one channel, a 1-D array; got shape {x.shape}")
        if x.size == 0:
            return np.empty(0)
        if not np.isfinite(x).all():
            x = np.where(np.isfinite(x), x, 0.0)
        # signal.sosfilt(self._sos, x, zi=self._zi): the same kernel on a copy of x, the state kept in place
        y = np.array(x, dtype=np.float64, order="C")
        self._lib.bedtime_sosfilt(self._sos_c, self._sos.shape[0], self._ffi.cast("double *", self._ffi.from_buffer(y)),
                                  1, y.size, self._zi_c)
        out = self._resample(y)
        if self.delay_samples:
            line = np.concatenate([self._delay_line, out])
            out, self._delay_line = line[:len(out)], line[len(out):]
        return np.clip(out, -self.clip_uv, self.clip_uv, out=out)

    def _resample(self, y: np.ndarray) -> np.ndarray:
        """Streaming polyphase resampling by up/down; identical to resampling the whole signal at once.

        Output sample k is the filtered, up-sampled stream at up-sampled index k*down. scipy's upfirdn
        is stateless, so each call prepends the last input samples and picks the history start so that
        its decimation grid lands on the global grid.
        """
        s, c = self._n_in, len(y)
        self._n_in += c
        if self.up == self.down == 1:
            self._n_out += c
            return y.copy()
        up, down = self.up, self.down
        k_end = ((s + c) * up - 1) // down + 1  # outputs whose up-sampled index is < (s+c)*up
        n_new = k_end - self._n_out
        full = np.concatenate([self._hist, y])
        base = s - self._hist_len  # global input index of full[0]
        if n_new > 0:
            g_first = self._n_out * down  # global up-sampled index of the first wanted output
            # Choose a start p in full so that (base + p) * up ≡ g_first (mod down), with p small (the one in
            # [0, down), up and down being coprime).
            p = (g_first * self._up_inv - base) % down
            first = (g_first - (base + p) * up) // down
            # signal.upfirdn(self._h, full[p:], up, down)[first:first + n_new]: each output is computed on its own,
            # so the kernel is asked for the outputs up to the last wanted one only
            x = full[p:]
            v = np.empty(min(first + n_new, ((x.size - 1) * up + self._h.size - 1) // down + 1))  # <= scipy's length
            ffi = self._ffi
            self._lib.bedtime_upfirdn(self._h_c, self._h.size, ffi.cast("const double *", ffi.from_buffer(x)), x.size,
                                      up, down, ffi.cast("double *", ffi.from_buffer(v)), v.size)
            out = v[first:]
        else:
            out = np.empty(0)
        self._n_out += max(n_new, 0)
        self._hist = full[-self._hist_len:]
        return out


def preprocess(x_uv: np.ndarray, *, fs_hz: float, notch_hz: float | None = 50.0) -> np.ndarray:
    """Preprocess a whole recording of one channel (offline); same code as the live path.

    Parameters
    ----------
    x_uv : numpy.ndarray, shape (n,)
        The channel in microvolts at ``fs_hz``.
    fs_hz : float
        Its sampling rate (Hz).
    notch_hz : float or None
        Mains frequency (Hz) to notch out.

    Returns
    -------
    numpy.ndarray, shape (ceil(n * MODEL_FS_HZ / fs_hz),), microvolts at :data:`MODEL_FS_HZ`.
    """
    return StreamingPreprocessor(fs_hz, notch_hz=notch_hz).process(np.asarray(x_uv, dtype=np.float64).ravel())


def _windows(x: np.ndarray, fs_hz: float, window_s: float = 1.0) -> np.ndarray:
    n = max(1, int(round(window_s * fs_hz)))
    m = len(x) // n
    return x[:m * n].reshape(m, n) if m else x.reshape(1, -1)


# ---- per-epoch building blocks -------------------------------------------------------------------
# The per-epoch features run once per 30 s on the box and ~1,000 times per night offline. scipy's
# generic routines (welch, detrend, sosfiltfilt) re-design their windows and filter initial states and
# loop over Welch segments in Python on every call; these helpers compute exactly the same quantities
# (equal to float rounding; tests/test_dsp.py and tests/test_stager.py keep a scipy reference) with the
# fixed parts cached, at a fraction of the cost.

@lru_cache(maxsize=16)
def _hann_periodic(n: int) -> np.ndarray:
    """``scipy.signal.get_window("hann", n)``: the periodic Hann window Welch uses."""
    return signal.get_window("hann", n)


@lru_cache(maxsize=16)
def _welch_constants(nperseg: int, fs_hz: float) -> tuple[np.ndarray, float, np.ndarray]:
    """Per segment length and rate: the window, the density scale ``1 / (fs * sum(win**2))``, the frequencies."""
    win = _hann_periodic(nperseg)
    freqs = np.fft.rfftfreq(nperseg, 1.0 / fs_hz)
    win.flags.writeable = False
    freqs.flags.writeable = False
    return win, 1.0 / (fs_hz * float((win * win).sum())), freqs


def mean_axis(a: np.ndarray, axis: int, *, keepdims: bool = False) -> np.ndarray:
    """``np.mean(a, axis=axis, keepdims=keepdims)`` of a float64 array, bit for bit: numpy's own steps (its sum
    along the axis, divided by the count) without the Python bookkeeping around them, which at epoch size costs
    as much as the sum (``tests/test_dsp.py`` compares with hypothesis-generated arrays)."""
    return np.add.reduce(a, axis=axis, keepdims=keepdims) / a.shape[axis]


def var_axis(a: np.ndarray, axis: int) -> np.ndarray:
    """``np.var(a, axis=axis)`` of a float64 array, bit for bit: numpy's steps (the mean, the deviations squared,
    their sum divided by the count) without its bookkeeping."""
    d = np.subtract(a, mean_axis(a, axis, keepdims=True))
    np.square(d, out=d)
    return np.add.reduce(d, axis=axis) / a.shape[axis]


def median_last_axis(a: np.ndarray) -> np.ndarray:
    """``np.median(a, axis=-1)`` of a float64 array, bit for bit, without its generic machinery.

    The same ``np.partition`` call (same kth, so the same order statistics), the same mean of the middle two and
    the same NaN rule (a NaN anywhere makes the median NaN). At epoch sizes ``np.median``'s own bookkeeping
    costs more than the partition (10 us against 2 for 30 values).

    Parameters
    ----------
    a : numpy.ndarray, shape (..., n), float64, n >= 1

    Returns
    -------
    numpy.ndarray, shape (...) (a numpy scalar for 1-D input)
    """
    n = a.shape[-1]
    h = n // 2
    even = n % 2 == 0
    part = np.partition(a, [h - 1, h, -1] if even else [h, -1], axis=-1)
    # np.mean of the middle one or two: numpy's sum of them (its reduction, so even the sign of a zero is
    # numpy's), divided by their count
    mid = np.add.reduce(part[..., h - 1:h + 1] if even else part[..., h:h + 1], axis=-1) / (2 if even else 1)
    last = part[..., -1]
    nan = np.isnan(last)
    if nan.any():
        mid = last if np.ndim(mid) == 0 else np.where(nan, last, mid)
    return mid


def welch_psd(x: np.ndarray, *, fs_hz: float, nperseg: int) -> tuple[np.ndarray, np.ndarray]:
    """Welch power spectral density, vectorised over segments (and over leading axes).

    Same result as ``scipy.signal.welch(x, fs=fs_hz, nperseg=nperseg, axis=-1)`` with its defaults
    (periodic Hann window, 50 % overlap, per-segment mean removed, one-sided density in uV^2/Hz, mean
    over segments), computed with one batched FFT instead of scipy's per-segment loop.

    Parameters
    ----------
    x : numpy.ndarray, shape (..., n)
        Signal(s) in microvolts, n >= nperseg.
    fs_hz : float
        Sampling rate (Hz).
    nperseg : int
        Segment length in samples.

    Returns
    -------
    f_hz : numpy.ndarray, shape (nperseg // 2 + 1,)
    psd : numpy.ndarray, shape (..., nperseg // 2 + 1), uV^2/Hz
    """
    x = np.asarray(x, dtype=np.float64)
    win, scale, freqs = _welch_constants(int(nperseg), float(fs_hz))
    step = nperseg - nperseg // 2
    n = x.shape[-1]
    if n < nperseg:
        raise ValueError(f"welch_psd needs at least nperseg={nperseg} samples, got {n}")
    # every step-th window of nperseg samples, as a strided view (sliding_window_view's checks cost more, and
    # as_strided's 4 us, more than the view of a contiguous array's buffer)
    st = x.strides
    shape, strides = (*x.shape[:-1], (n - nperseg) // step + 1, nperseg), (*st[:-1], step * st[-1], st[-1])
    if x.flags.c_contiguous:
        segs = np.ndarray(shape, np.float64, buffer=x, strides=strides)
    else:
        segs = np.lib.stride_tricks.as_strided(x, shape=shape, strides=strides, writeable=False)
    # scipy's steps (mean removed, windowed, |rfft|^2, scaled, doubled but at DC and Nyquist, averaged over the
    # segments), each into the previous step's buffer where it can: the same operations on the same values
    d = np.subtract(segs, mean_axis(segs, -1, keepdims=True))
    d *= win
    spec = np.fft.rfft(d, axis=-1)
    p = np.square(spec.real)
    p += np.square(spec.imag)
    p *= scale
    if nperseg % 2:
        p[..., 1:] *= 2.0
    else:
        p[..., 1:-1] *= 2.0
    return freqs, mean_axis(p, -2)


@lru_cache(maxsize=16)
def _centred_ramp(n: int) -> tuple[np.ndarray, float]:
    """``t = arange(n) - (n - 1) / 2`` and ``t @ t``: the regressor of :func:`_detrend_linear`, per length."""
    t = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    t.flags.writeable = False
    return t, float(t @ t)


def _detrend_linear(x: np.ndarray) -> np.ndarray:
    """Remove the least-squares line from each row (last axis): ``scipy.signal.detrend(type="linear")``
    in closed form, without a least-squares solver per call."""
    n = x.shape[-1]
    t, tt = _centred_ramp(n)
    xm = mean_axis(x, -1, keepdims=True)
    slope = (x @ t)[..., None] / tt if n > 1 else np.zeros_like(xm)
    return x - xm - slope * t


def _filtfilt_sos(kind: str, fs_hz: float) -> np.ndarray:
    """The second-order sections of one of the per-epoch zero-phase filters."""
    if kind == "quality_hp":
        return signal.butter(2, BANDPASS_HZ[0], btype="highpass", fs=fs_hz, output="sos")
    if kind == "emg_hp":
        return signal.butter(4, min(20.0, 0.8 * fs_hz / 2), btype="highpass", fs=fs_hz, output="sos")
    raise ValueError(kind)


@lru_cache(maxsize=16)
def _filtfilt_lanes(kinds: tuple[str, ...], fs_hz: float) -> signal.FilterLanes:
    """The per-epoch zero-phase filters ``kinds`` at ``fs_hz``, stacked to run side by side, per rate."""
    return signal.filter_lanes(*(_filtfilt_sos(k, fs_hz) for k in kinds), zero_phase=True)


def _sosfiltfilt(kind: str, fs_hz: float, x: np.ndarray) -> np.ndarray:
    """``scipy.signal.sosfiltfilt(sos, x)`` (odd padding, default pad length) for one of the per-epoch filters.

    In C (:func:`appliance.filters.sosfiltfilt_lanes`) with the design and its initial conditions cached: scipy
    re-solves them on every call, which costs more than the filtering itself at epoch length.
    """
    return signal.sosfiltfilt_lanes(_filtfilt_lanes((kind,), float(fs_hz)), x[None, :])[0]


# ---- epoch quality and arousal features -----------------------------------------------------------
# Both judge the same raw epoch, right after each other (appliance.night_pipeline calls epoch_checks). Each has a
# zero-phase high-pass filter, about half of their CPU: a filter is a chain of dependent operations, sample after
# sample, so run alone it keeps the CPU waiting; epoch_checks runs the two side by side for about the price of one.
# epoch_quality and arousal_features stay, each the same steps on its own.

def _finite_signal(x_uv_chip: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The epoch as 1-D float64 with non-finite samples set to 0, and the mask of finite samples (None: all are)."""
    x = np.asarray(x_uv_chip, dtype=np.float64).ravel()
    finite = np.isfinite(x)
    if finite.all():
        return x, None  # np.where(finite, x, 0.0) would be a copy of x: the same values
    return np.where(finite, x, 0.0), finite


def _quality_flags(lead_off: bool, frames_lost: int) -> set[str]:
    flags: set[str] = set()
    if lead_off:
        flags.add("lead_off")
    if frames_lost > 0:
        flags.add("frames_lost")
    return flags


def _quality_start(xf: np.ndarray, finite: np.ndarray | None, flags: set[str], *, rail_uv: float) -> None:
    """Flags from the samples themselves: non-finite ones, clipping."""
    if finite is not None:
        flags.add("artefact")
    if np.count_nonzero(np.abs(xf) >= 0.999 * rail_uv) / xf.size > 0.001:  # np.mean of the mask, exactly
        flags.add("clipping")


def _quality_finish(hp: np.ndarray, finite: np.ndarray | None, flags: set[str], *, fs_hz: float) -> SignalQuality:
    """The verdict from the high-passed epoch ``hp`` (see :func:`epoch_quality`)."""
    w = _windows(hp, fs_hz)
    ptp = np.subtract(w.max(axis=1), w.min(axis=1))  # np.ptp's own steps
    if median_last_axis(np.sqrt(var_axis(w, 1))) < _FLAT_STD_UV:  # w.std(axis=1)
        flags.add("flat")
    bad = ptp > _ARTEFACT_PTP_UV
    if finite is not None:
        bad |= _windows(finite, fs_hz).min(axis=1) < 1
    artefact_fraction = float(np.count_nonzero(bad)) / len(bad)  # bad.mean(), exactly (a Python float)
    if ptp.max() > _ARTEFACT_PTP_UV:
        flags.add("high_amplitude")
    if artefact_fraction > 0.1:
        flags.add("artefact")
    ok = not (flags & {"lead_off", "frames_lost", "clipping", "flat"}) and artefact_fraction <= 0.5
    return SignalQuality(ok=ok, flags=frozenset(flags), artefact_fraction=artefact_fraction)


def epoch_quality(x_uv_chip: np.ndarray, *, fs_hz: float, lead_off: bool = False, frames_lost: int = 0,
                  rail_uv: float = ADS1299_RAIL_UV) -> SignalQuality:
    """Judge whether one epoch of raw chip-rate signal can be trusted.

    Parameters
    ----------
    x_uv_chip : numpy.ndarray, shape (n,)
        The staging channel in microvolts at chip rate, not filtered (DC offset allowed).
    fs_hz : float
        Chip rate (Hz).
    lead_off : bool
        The ADS1299 lead-off comparators flagged this channel during the epoch.
    frames_lost : int
        Frames the acquisition dropped during the epoch.
    rail_uv : float
        Input full scale in microvolts (default: VREF/gain of the ADS1299 at gain 24).

    Returns
    -------
    SignalQuality
        ``ok`` is False on lead-off, lost frames, clipping, a flat line or when more than half the epoch
        is artefact. ``artefact_fraction`` counts 1-s windows whose peak-to-peak (after a 0.3 Hz
        zero-phase high-pass) exceeds 500 uV or that contain non-finite samples.
    """
    return epoch_checks(x_uv_chip, fs_hz=fs_hz, lead_off=lead_off, frames_lost=frames_lost, rail_uv=rail_uv,
                        arousal=False)[0]


_MOVEMENT_PTP_UV = 250.0
_MOVEMENT_EMG_RMS_UV = 8.0
_AROUSAL_BANDS_HZ = {"alpha": (8.0, 12.0), "beta": (16.0, 30.0)}
"""Numerators of ``alpha_rel`` and ``beta_rel`` (Hz); both over the 0.5-35 Hz power."""


@lru_cache(maxsize=16)
def _arousal_bins(fs_hz: float) -> dict[str, slice]:
    """Welch bins of each arousal band at ``fs_hz``, as slices: the bins with lo <= f < hi are consecutive, and a
    sum over a slice of the spectrum adds the same values in the same order as one over the boolean mask."""
    f = np.fft.rfftfreq(int(2 * fs_hz), 1.0 / fs_hz)
    top = min(45.0, 0.9 * fs_hz / 2)
    bands = {"total35": (0.5, min(35.0, top)), "total45": (0.5, top), "high": (20.0, top), **_AROUSAL_BANDS_HZ}
    out = {}
    for name, (lo, hi) in bands.items():
        idx = np.flatnonzero((f >= lo) & (f < hi))
        out[name] = slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else slice(0, 0)
    return out


def _arousal_start(xf: np.ndarray, *, fs_hz: float) -> tuple[ArousalFeatures | None, np.ndarray, dict[str, float]]:
    """The spectral half of :func:`arousal_features`: (the result when it needs no more, the detrended epoch, the
    band powers). The result is None when the movement fraction (the EMG high-pass) is still to be computed."""
    if xf.size < int(2 * fs_hz):
        return ArousalFeatures(), xf, {}
    x = _detrend_linear(xf)
    _, p = welch_psd(x, fs_hz=fs_hz, nperseg=int(2 * fs_hz))
    power = {name: float(p[bins].sum()) for name, bins in _arousal_bins(float(fs_hz)).items()}
    if power["total35"] <= 0 or power["total45"] <= 0:
        return ArousalFeatures(), x, power
    return None, x, power


def _arousal_finish(x: np.ndarray, hp: np.ndarray, power: dict[str, float], *, fs_hz: float) -> ArousalFeatures:
    """:func:`arousal_features` from the detrended epoch, its EMG high-pass and its band powers."""
    w_raw = _detrend_linear(_windows(x, fs_hz))
    w_hp = _windows(hp, fs_hz)
    ptp = np.subtract(w_raw.max(axis=1), w_raw.min(axis=1))  # np.ptp's own steps
    moving = (ptp > _MOVEMENT_PTP_UV) | (np.sqrt(mean_axis(w_hp * w_hp, 1)) > _MOVEMENT_EMG_RMS_UV)
    total35, total45 = power["total35"], power["total45"]
    return ArousalFeatures(
        alpha_rel=power["alpha"] / total35,
        beta_rel=power["beta"] / total35,
        high_freq_rel=power["high"] / total45,
        movement_fraction=float(np.count_nonzero(moving) / len(moving)),  # moving.mean(), exactly
    )


def arousal_features(x_uv_chip: np.ndarray, *, fs_hz: float) -> ArousalFeatures:
    """Spectral arousal markers of one epoch of raw chip-rate signal.

    Parameters
    ----------
    x_uv_chip : numpy.ndarray, shape (n,)
        The staging channel in microvolts at chip rate (unfiltered).
    fs_hz : float
        Chip rate (Hz). Muscle power (20-45 Hz) needs fs_hz >= 100; below that ``high_freq_rel`` uses
        20 Hz to 0.9 x Nyquist.

    Returns
    -------
    ArousalFeatures
        ``alpha_rel`` (8-12 Hz) and ``beta_rel`` (16-30 Hz) relative to 0.5-35 Hz power;
        ``high_freq_rel`` 20-45 Hz relative to 0.5-45 Hz (an EMG proxy); ``movement_fraction`` the
        fraction of 1-s windows with a movement-like swing (> 250 uV peak-to-peak) or strong muscle
        activity (> 8 uV RMS above 20 Hz).
    """
    return epoch_checks(x_uv_chip, fs_hz=fs_hz, quality=False)[1]


def epoch_checks(x_uv_chip: np.ndarray, *, fs_hz: float, lead_off: bool = False, frames_lost: int = 0,
                 rail_uv: float = ADS1299_RAIL_UV, quality: bool = True,
                 arousal: bool = True) -> tuple[SignalQuality | None, ArousalFeatures | None]:
    """:func:`epoch_quality` and :func:`arousal_features` of one epoch in one pass, what the pipeline calls.

    The same results as the two calls, for less CPU than either alone: the epoch is cleaned once and the two
    zero-phase high-pass filters (quality's 0.3 Hz, the EMG's 20 Hz) run side by side in C.

    Parameters
    ----------
    x_uv_chip : numpy.ndarray, shape (n,)
        The staging channel in microvolts at chip rate, not filtered (DC offset allowed).
    fs_hz : float
        Chip rate (Hz).
    lead_off, frames_lost, rail_uv
        As :func:`epoch_quality`'s.
    quality, arousal : bool
        Which of the two to compute (the other comes back as None).

    Returns
    -------
    (SignalQuality or None, ArousalFeatures or None)
    """
    xf, finite = _finite_signal(x_uv_chip)
    q: SignalQuality | None = None
    a: ArousalFeatures | None = None
    kinds: list[str] = []
    inputs: list[np.ndarray] = []
    if quality:
        flags = _quality_flags(lead_off, frames_lost)
        if xf.size == 0:
            q = SignalQuality(ok=False, flags=frozenset(flags | {"flat"}), artefact_fraction=1.0)
        else:
            _quality_start(xf, finite, flags, rail_uv=rail_uv)
            if xf.size > 3 * fs_hz:
                # Zero-phase high-pass at the band-pass corner removes the electrode offset and drift but keeps the
                # seconds-long swings of a movement, which per-window detrending would flatten.
                kinds.append("quality_hp")
                inputs.append(xf - median_last_axis(xf))
            else:
                q = _quality_finish(xf - xf.mean(), finite, flags, fs_hz=fs_hz)
    if arousal:
        a, detrended, power = _arousal_start(xf, fs_hz=fs_hz)
        if a is None:
            kinds.append("emg_hp")
            inputs.append(detrended)
    if kinds:
        hp = signal.sosfiltfilt_lanes(_filtfilt_lanes(tuple(kinds), float(fs_hz)), np.stack(inputs))
        for kind, y in zip(kinds, hp):
            if kind == "quality_hp":
                q = _quality_finish(y, finite, flags, fs_hz=fs_hz)
            else:
                a = _arousal_finish(detrended, y, power, fs_hz=fs_hz)
    return q, a
