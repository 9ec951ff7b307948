"""The few ``scipy.signal`` functions the box's DSP and stager use, without importing scipy in the daemon.

``from scipy import signal`` alone costs ~80 MB of resident memory (it pulls in scipy.sparse, linalg, special,
optimize...), more than the rest of the daemon together. The box needs from it only:

* filter *designs* (``butter``, ``iirnotch``, ``tf2sos``, ``firwin``, ``sosfilt_zi``, ``get_window``), computed
  once per configuration: served from :mod:`appliance.filter_designs`, scipy's own results stored exactly (as
  hex floats) for every chip data rate and the model rate; a design not stored there is computed by scipy,
  imported then and only then;
* ``sosfilt``, the per-sample IIR filter: ``bedtime_sosfilt`` in ``native/filter.c`` (through the cffi
  extension ``appliance._native``), scipy's kernel's arithmetic in the same order;
* ``upfirdn``, the polyphase resampler: ``bedtime_upfirdn`` in C, summing each output's taps in scipy's order;
* for the per-epoch features, :func:`sosfilt_lanes` and :func:`sosfiltfilt_lanes` (``sosfiltfilt``'s odd padding,
  initial states and two passes, in C): several independent filters run side by side, each one's arithmetic
  ``sosfilt``'s, for about the CPU of one (see :class:`FilterLanes`).

Every result is bit-identical to scipy's (``tests/test_filters.py`` compares with hypothesis-generated inputs,
and the daemon's outputs on the demo night are pinned by the end-to-end tests). The signatures are scipy's, for
the arguments this package uses, so ``from appliance import filters as signal`` is a drop-in replacement.

``python -m appliance.filters`` (needs scipy) regenerates :mod:`appliance.filter_designs`.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_RECORD: dict[str, np.ndarray] | None = None
"""While regenerating the stored designs: every design computed, by key."""


def _key(name: str, *args: Any) -> str:
    def norm(a: Any) -> Any:
        if isinstance(a, np.ndarray):
            return tuple(norm(v) for v in a.tolist())
        if isinstance(a, (list, tuple)):
            return tuple(norm(v) for v in a)
        if isinstance(a, (float, np.floating)):
            return float(a).hex()
        if isinstance(a, (int, np.integer)) and not isinstance(a, bool):
            return int(a)
        return a

    return f"{name}{norm(args)!r}"


def _design(name: str, args: tuple, compute: Any) -> np.ndarray:
    """A stored design by its call, else scipy's (imported only now)."""
    key = _key(name, *args)
    if _RECORD is None:
        from appliance.filter_designs import DESIGNS

        stored = DESIGNS.get(key)
        if stored is not None:
            shape, values = stored
            return np.array([float.fromhex(v) for v in values], dtype=np.float64).reshape(shape)
        logger.info("filter design %s not stored; computing it with scipy", key)
    from scipy import signal

    out = np.asarray(compute(signal), dtype=np.float64)
    if _RECORD is not None:
        _RECORD[key] = out.copy()
    return out


def butter(N: int, Wn: float | Sequence[float], btype: str = "low", *, fs: float, output: str = "sos") -> np.ndarray:
    """``scipy.signal.butter(N, Wn, btype, fs=fs, output="sos")``: Butterworth second-order sections.

    Parameters
    ----------
    N : int
        Filter order.
    Wn : float or sequence of float
        Corner frequency or band edges, Hz.
    btype : str
        ``"lowpass"``, ``"highpass"``, ``"bandpass"`` (scipy's names).
    fs : float
        Sampling rate, Hz.
    output : str
        Only ``"sos"``.

    Returns
    -------
    numpy.ndarray, shape (n_sections, 6)
    """
    if output != "sos":
        raise ValueError("only output='sos' is provided")
    wn = tuple(float(w) for w in Wn) if isinstance(Wn, (list, tuple, np.ndarray)) else float(Wn)
    return _design("butter", (int(N), wn, btype, float(fs)),
                   lambda s: s.butter(N, list(wn) if isinstance(wn, tuple) else wn, btype=btype, fs=fs, output="sos"))


def iirnotch(w0: float, Q: float, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """``scipy.signal.iirnotch(w0, Q, fs=fs)``: (b, a) of a second-order notch at ``w0`` Hz."""
    ba = _design("iirnotch", (float(w0), float(Q), float(fs)), lambda s: np.vstack(s.iirnotch(w0, Q=Q, fs=fs)))
    return ba[0], ba[1]


def tf2sos(b: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``scipy.signal.tf2sos(b, a)``: second-order sections of a transfer function."""
    return _design("tf2sos", (np.asarray(b, float), np.asarray(a, float)), lambda s: s.tf2sos(b, a))


def firwin(numtaps: int, cutoff: float, *, fs: float) -> np.ndarray:
    """``scipy.signal.firwin(numtaps, cutoff, fs=fs)``: a Hamming-windowed low-pass FIR, shape (numtaps,)."""
    return _design("firwin", (int(numtaps), float(cutoff), float(fs)), lambda s: s.firwin(numtaps, cutoff, fs=fs))


def sosfilt_zi(sos: np.ndarray) -> np.ndarray:
    """``scipy.signal.sosfilt_zi(sos)``: the step response's steady state, shape (n_sections, 2)."""
    return _design("sosfilt_zi", (np.asarray(sos, float),), lambda s: s.sosfilt_zi(sos))


def get_window(window: str, Nx: int) -> np.ndarray:
    """``scipy.signal.get_window(window, Nx)`` (periodic), shape (Nx,).

    The Hann window is computed here, with scipy's own steps (``general_cosine`` over ``Nx + 1`` points of
    ``linspace(-pi, pi)``, the last dropped), so no window of every size needs storing; others are designs.
    """
    if window == "hann":
        n = int(Nx)
        if n < 1:
            raise ValueError(f"Parameter Nx={n} is not a positive integer")  # scipy's refusal
        if n == 1:
            return np.ones(1)
        fac = np.linspace(-np.pi, np.pi, n + 1)
        w = np.zeros(n + 1)
        for k, a in enumerate((0.5, 0.5)):
            w += a * np.cos(k * fac)
        return w[:-1]
    return _design("get_window", (str(window), int(Nx)), lambda s: s.get_window(window, Nx))


def sosfilt(sos: np.ndarray, x: np.ndarray, axis: int = -1,
            zi: np.ndarray | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``scipy.signal.sosfilt(sos, x, axis, zi)`` for float64 data, in C (``native/filter.c``).

    Parameters
    ----------
    sos : numpy.ndarray, shape (n_sections, 6)
        Second-order sections, ``sos[:, 3] == 1``.
    x : numpy.ndarray
        Signal; filtered along ``axis``.
    axis : int
        Axis to filter along.
    zi : numpy.ndarray or None, shape (n_sections, ..., 2, ...)
        Initial state: ``x.shape`` with ``axis`` replaced by 2, behind a leading n_sections axis.

    Returns
    -------
    y : numpy.ndarray, shape of ``x``, float64
    zf : numpy.ndarray, shape of ``zi`` (only when ``zi`` is given)
        The final state.
    """
    from appliance._native import ffi, lib

    sos = np.ascontiguousarray(sos, dtype=np.float64)
    x = np.asarray(x)
    if x.dtype == np.float64 and x.ndim >= 1 and axis in (-1, x.ndim - 1) and (
            zi is None or (x.ndim == 1 and getattr(zi, "dtype", None) == np.float64)):
        return _sosfilt_last_axis(ffi, lib, sos, x, zi)
    if sos.ndim != 2 or sos.shape[1] != 6 or not (sos[:, 3] == 1).all():
        raise ValueError("sos must be shape (n_sections, 6) with sos[:, 3] == 1")
    if x.ndim == 0:
        raise ValueError("x must be at least 1-D")
    if np.result_type(x, sos, *(() if zi is None else (np.asarray(zi),))) != np.float64:
        raise TypeError("only float64 (or integer) input is provided")
    n_sections = sos.shape[0]
    axis = axis % x.ndim
    zi_shape = (n_sections, *x.shape[:axis], 2, *x.shape[axis + 1:])
    if zi is not None:
        z = np.array(zi, dtype=np.float64)
        if z.shape != zi_shape:
            raise ValueError(f"invalid zi shape {z.shape}, expected {zi_shape}")
    else:
        z = np.zeros(zi_shape)
    xm = np.moveaxis(x, axis, -1)
    zm = np.moveaxis(z, [0, axis + 1], [-2, -1])
    x_shape, z_shape = xm.shape, zm.shape
    y = np.array(xm.reshape(-1, xm.shape[-1]), dtype=np.float64, order="C")
    state = np.ascontiguousarray(zm.reshape(-1, n_sections, 2))
    lib.bedtime_sosfilt(ffi.cast("const double *", ffi.from_buffer(sos)), n_sections,
                        ffi.cast("double *", ffi.from_buffer(y)), y.shape[0], y.shape[1],
                        ffi.cast("double *", ffi.from_buffer(state)))
    y = np.moveaxis(y.reshape(x_shape), -1, axis)
    if zi is None:
        return y
    return y, np.moveaxis(state.reshape(z_shape), [-2, -1], [0, axis + 1])


def _sosfilt_last_axis(ffi: Any, lib: Any, sos: np.ndarray, x: np.ndarray,
                       zi: np.ndarray | None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """:func:`sosfilt` of float64 signal(s) along the last axis (``zi`` only for one 1-D signal): the same
    kernel call on the same rows, without the axis bookkeeping.

    The live path filters 1-D chunks and single epochs about ten times per epoch; ``np.moveaxis`` and the
    general checks cost more than filtering a 2,500-sample chunk does.
    """
    if sos.ndim != 2 or sos.shape[1] != 6 or not (sos[:, 3] == 1).all():
        raise ValueError("sos must be shape (n_sections, 6) with sos[:, 3] == 1")
    n_sections = sos.shape[0]
    y = np.array(x.reshape(-1, x.shape[-1]), dtype=np.float64, order="C")
    if zi is None:
        state = np.zeros((y.shape[0], n_sections, 2))
    else:
        state = np.array(zi, dtype=np.float64, order="C")
        if state.shape != (n_sections, 2):
            raise ValueError(f"invalid zi shape {state.shape}, expected {(n_sections, 2)}")
    lib.bedtime_sosfilt(ffi.cast("const double *", ffi.from_buffer(sos)), n_sections,
                        ffi.cast("double *", ffi.from_buffer(y)), y.shape[0], y.shape[1],
                        ffi.cast("double *", ffi.from_buffer(state)))
    y = y.reshape(x.shape)
    return y if zi is None else (y, state)


_SOSFILTFILT_MAX_LANES = 8
"""``BEDTIME_SOSFILTFILT_MAX_LANES`` of ``native/filter.h``."""


@dataclass(frozen=True, eq=False)
class FilterLanes:
    """Several second-order-section filters stacked for the side-by-side kernels (:func:`sosfilt_lanes`,
    :func:`sosfiltfilt_lanes`); build once per set of designs with :func:`filter_lanes`.

    A single IIR filter is a chain of dependent multiplications and additions, one sample after the other: at epoch
    length it keeps the CPU waiting on its own results. Independent filters run sample by sample side by side fill
    those waits, for about the cost of one, with each filter's arithmetic unchanged.

    Attributes
    ----------
    sos : numpy.ndarray, shape (total sections, 6)
        The filters' sections, one filter after the other.
    n_sections : numpy.ndarray of uintp, shape (n_filters,)
    zi : numpy.ndarray, shape (total sections, 2), or None
        Each filter's :func:`sosfilt_zi`, the zero-phase kernel's initial states (None: built for
        :func:`sosfilt_lanes` only).
    pad : numpy.ndarray of uintp, shape (n_filters,), or None
        ``scipy.signal.sosfiltfilt``'s default pad length of each filter (3 x its number of taps).
    """

    sos: np.ndarray
    n_sections: np.ndarray
    zi: np.ndarray | None = None
    pad: np.ndarray | None = None

    @property
    def n_filters(self) -> int:
        """Number of filters stacked."""
        return len(self.n_sections)


def filter_lanes(*sos: np.ndarray, zero_phase: bool = False) -> FilterLanes:
    """Stack second-order-section filters for :func:`sosfilt_lanes` or (``zero_phase``) :func:`sosfiltfilt_lanes`.

    Parameters
    ----------
    *sos : numpy.ndarray, shape (n_sections, 6) each
        The filters (``sos[:, 3] == 1``), in lane order.
    zero_phase : bool
        Also compute what :func:`sosfiltfilt_lanes` needs (each filter's :func:`sosfilt_zi`, a stored design).

    Returns
    -------
    FilterLanes
    """
    if not sos:
        raise ValueError("filter_lanes needs at least one filter")
    designs = [np.ascontiguousarray(s, dtype=np.float64) for s in sos]
    for s in designs:
        if s.ndim != 2 or s.shape[1] != 6 or not (s[:, 3] == 1).all():
            raise ValueError("sos must be shape (n_sections, 6) with sos[:, 3] == 1")
    stacked = np.ascontiguousarray(np.vstack(designs))
    n_sections = np.array([len(s) for s in designs], dtype=np.uintp)
    if not zero_phase:
        return FilterLanes(sos=stacked, n_sections=n_sections)
    # scipy.signal.sosfiltfilt's default pad length (its _validate_pad): 3 x the taps of the equivalent filter,
    # less the trailing zeros of b or a
    pad = [3 * (2 * len(s) + 1 - min(int((s[:, 2] == 0).sum()), int((s[:, 5] == 0).sum()))) for s in designs]
    return FilterLanes(sos=stacked, n_sections=n_sections,
                       zi=np.ascontiguousarray(np.vstack([sosfilt_zi(s) for s in designs]), dtype=np.float64),
                       pad=np.array(pad, dtype=np.uintp))


@lru_cache(maxsize=32)
def _lane_layout(n_lanes: int, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and lengths of ``n_lanes`` contiguous rows of ``n_samples`` (the live path asks for the same few)."""
    return (np.arange(n_lanes, dtype=np.uintp) * np.uintp(n_samples),
            np.full(n_lanes, n_samples, dtype=np.uintp))


def sosfilt_lanes(lanes: FilterLanes, x: np.ndarray) -> np.ndarray:
    """Every filter of ``lanes`` over every signal of ``x``: ``scipy.signal.sosfilt(sos_f, x, axis=-1)`` for each
    filter f, bit for bit, the filters run side by side.

    Parameters
    ----------
    lanes : FilterLanes
        The filters (:func:`filter_lanes`).
    x : numpy.ndarray, shape (n_signals, n), float64

    Returns
    -------
    numpy.ndarray, shape (n_signals, n_filters, n): ``out[i, f]`` is signal i through filter f from rest.
    """
    from appliance._native import ffi, lib

    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"sosfilt_lanes takes a 2-D array of signals, got shape {x.shape}")
    n_signals, n = x.shape
    nf = lanes.n_filters
    y = np.empty((n_signals, nf, n))
    y[...] = x[:, None, :]
    n_lanes = n_signals * nf
    offset, length = _lane_layout(n_lanes, n)
    state = np.zeros(2 * n_signals * int(lanes.n_sections.sum()))
    lib.bedtime_sosfilt_lanes(ffi.cast("const double *", ffi.from_buffer(lanes.sos)),
                              ffi.cast("const size_t *", ffi.from_buffer(lanes.n_sections)), nf,
                              ffi.cast("double *", ffi.from_buffer(y)), n_lanes,
                              ffi.cast("const size_t *", ffi.from_buffer(offset)),
                              ffi.cast("const size_t *", ffi.from_buffer(length)),
                              ffi.cast("double *", ffi.from_buffer(state)))
    return y


def sosfiltfilt_lanes(lanes: FilterLanes, x: np.ndarray) -> np.ndarray:
    """``scipy.signal.sosfiltfilt(sos_j, x[j])`` (default odd padding) for each filter j of ``lanes`` and row j of
    ``x``, bit for bit, the filters run side by side.

    Parameters
    ----------
    lanes : FilterLanes
        The filters (:func:`filter_lanes`), one per row of ``x``.
    x : numpy.ndarray, shape (n_filters, n), float64
        The signals, each longer than its filter's pad length.

    Returns
    -------
    numpy.ndarray, shape (n_filters, n)

    Raises
    ------
    ValueError
        scipy's own, for a signal not longer than its filter's pad length.
    """
    from appliance._native import ffi, lib

    x = np.ascontiguousarray(x, dtype=np.float64)
    nf = lanes.n_filters
    if lanes.zi is None or lanes.pad is None:
        raise ValueError("sosfiltfilt_lanes needs filter_lanes(..., zero_phase=True)")
    if x.ndim != 2 or x.shape[0] != nf:
        raise ValueError(f"sosfiltfilt_lanes takes one signal per filter, shape ({nf}, n); got {x.shape}")
    n = x.shape[1]
    if nf > _SOSFILTFILT_MAX_LANES:
        raise ValueError(f"at most {_SOSFILTFILT_MAX_LANES} filters side by side, got {nf}")
    if n <= int(lanes.pad.max()):
        first = 0
        for j in range(nf):  # scipy's refusal of too-short input, in its words
            k = int(lanes.n_sections[j])
            sosfiltfilt(lanes.sos[first:first + k], x[j])
            first += k
    out = np.empty_like(x)
    work = np.empty(nf * n + 2 * int(lanes.pad.sum()))
    state = np.empty(2 * int(lanes.n_sections.sum()))
    rc = lib.bedtime_sosfiltfilt(ffi.cast("const double *", ffi.from_buffer(lanes.sos)),
                                 ffi.cast("const double *", ffi.from_buffer(lanes.zi)),
                                 ffi.cast("const size_t *", ffi.from_buffer(lanes.n_sections)),
                                 ffi.cast("const size_t *", ffi.from_buffer(lanes.pad)), nf,
                                 ffi.cast("const double *", ffi.from_buffer(x)), n,
                                 ffi.cast("double *", ffi.from_buffer(out)),
                                 ffi.cast("double *", ffi.from_buffer(work)),
                                 ffi.cast("double *", ffi.from_buffer(state)))
    if rc != 0:
        raise ValueError(f"sosfiltfilt_lanes: the kernel refused {nf} signals of {n} samples")
    return out


def upfirdn(h: np.ndarray, x: np.ndarray, up: int = 1, down: int = 1) -> np.ndarray:
    """``scipy.signal.upfirdn(h, x, up, down)`` for a 1-D float64 signal: upsample, FIR filter, downsample.

    Each output is ``sum_j h[j] * x_up[g - j]`` at up-sampled index ``g = k * down``, accumulated from the
    oldest input sample to the newest as scipy's kernel does, so the rounding is the same.

    Parameters
    ----------
    h : numpy.ndarray, shape (n_taps,)
        FIR filter at the up-sampled rate.
    x : numpy.ndarray, shape (n,)
        Signal.
    up, down : int
        Up- and down-sampling factors.

    Returns
    -------
    numpy.ndarray, shape (((n - 1) * up + n_taps - 1) // down + 1,)
    """
    from appliance._native import ffi, lib

    h = np.ascontiguousarray(h, dtype=np.float64)
    x = np.ascontiguousarray(x, dtype=np.float64)
    if h.ndim != 1 or x.ndim != 1 or h.size == 0 or x.size == 0 or up < 1 or down < 1:
        raise ValueError("upfirdn takes 1-D non-empty h and x and up, down >= 1")
    n_out = ((x.size - 1) * up + h.size - 1) // down + 1  # scipy's length: the unpadded filter's full span
    out = np.empty(n_out)
    lib.bedtime_upfirdn(ffi.cast("const double *", ffi.from_buffer(h)), h.size,
                        ffi.cast("const double *", ffi.from_buffer(x)), x.size, int(up), int(down),
                        ffi.cast("double *", ffi.from_buffer(out)), n_out)
    return out


def sosfiltfilt(sos: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``scipy.signal.sosfiltfilt(sos, x)``; used only for its error on too-short input, so it is scipy's own."""
    from scipy import signal

    return signal.sosfiltfilt(sos, x)


def _regenerate() -> str:
    """Source of :mod:`appliance.filter_designs`: scipy's designs for every chip rate, notch and the model rate.

    Records every design the DSP and the stager ask for while they set up and compute one epoch's features at
    each rate, so the stored keys are exactly the calls the box makes.
    """
    global _RECORD
    import dataclasses
    import importlib

    from appliance import dsp
    from appliance.protocol.boxconfig import AcquisitionSection

    rates = next(f.metadata["choices"] for f in dataclasses.fields(AcquisitionSection) if f.name == "sample_rate_sps")
    _RECORD = {}
    # dsp caches its per-rate designs: a design an earlier caller (a test in the same process) already asked
    # for would come from the cache and never be recorded
    dsp._hann_periodic.cache_clear()
    dsp._filtfilt_lanes.cache_clear()
    try:
        import appliance.stager as stager

        importlib.reload(stager)  # its module-level designs
        for fs in (*rates, dsp.MODEL_FS_HZ):
            fs = float(fs)
            for notch in (None, 50.0, 60.0):
                dsp.StreamingPreprocessor(fs, notch_hz=notch)
            x = np.random.default_rng(0).normal(0.0, 20.0, int(30 * fs))
            dsp.epoch_quality(x, fs_hz=fs)
            dsp.arousal_features(x, fs_hz=fs)
        stager.epoch_features(np.random.default_rng(0).normal(0.0, 20.0, 30 * dsp.MODEL_FS_HZ))
        lines = ['"""Filter designs computed by scipy, stored exactly: generated by ``python -m appliance.filters``.',
                 "", "Key: the call (``appliance.filters._key``); value: (shape, ``float.hex`` of each value, C order).",
                 '"""', "DESIGNS: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {"]
        for k in sorted(_RECORD):
            v = _RECORD[k]
            vals = ", ".join(repr(float(f).hex()) for f in v.ravel())
            lines.append(f"    {k!r}: ({tuple(v.shape)!r}, ({vals},)),")
        lines.append("}")
        return "\n".join(lines) + "\n"
    finally:
        _RECORD = None


if __name__ == "__main__":
    from pathlib import Path

    from appliance import filters  # the module the DSP imports, not this __main__ copy

    out = Path(filters.__file__).with_name("filter_designs.py")
    out.write_text(filters._regenerate())
    print(f"wrote {out}")
