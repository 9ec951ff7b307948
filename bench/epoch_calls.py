"""Micro-benchmark: CPU per call of the three per-epoch feature calls, this tree against a git revision.

The box runs, once per 30-s epoch, :func:`appliance.dsp.epoch_quality` and :func:`appliance.dsp.arousal_features`
on the raw chip-rate epoch (250 SPS, microvolts) and :func:`appliance.stager.epoch_features` on the preprocessed
100-Hz epoch. This script loads the revision's ``appliance/dsp.py`` and ``appliance/stager.py`` (``git show``) as
modules beside this tree's, and times both on the same synthetic epochs (every stage, from
:mod:`appliance.synthetic_eeg`) in the same process, alternating base and new, so machine noise hits both alike.

Each figure is the median over ``--runs`` runs of ``time.process_time()`` around ``--calls`` calls, per call.
Both versions' results are compared on the way (quality equal, arousal to 1e-9, stager features equal as float32).

Usage::

    python bench/epoch_calls.py [--base main] [--calls 300] [--runs 5]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _load_base(rev: str) -> tuple[types.ModuleType, types.ModuleType]:
    """The revision's dsp and stager modules (this tree's everything else: filters, the native extension)."""
    def source(path: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], check=True, capture_output=True,
                              text=True).stdout

    import appliance.dsp

    dsp = types.ModuleType("appliance.dsp")
    dsp.__file__ = f"{rev}:appliance/dsp.py"
    exec(compile(source("appliance/dsp.py"), dsp.__file__, "exec"), dsp.__dict__)
    stager = types.ModuleType("appliance.stager")
    stager.__file__ = f"{rev}:appliance/stager.py"
    sys.modules["appliance.dsp"] = dsp  # the base stager imports the base dsp's helpers
    try:
        exec(compile(source("appliance/stager.py"), stager.__file__, "exec"), stager.__dict__)
    finally:
        sys.modules["appliance.dsp"] = appliance.dsp
    return dsp, stager


def _epochs(fs_hz: float = 250.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Raw chip-rate epochs (every stage, a distressed arousal) and the same epochs preprocessed to 100 Hz."""
    from appliance.dsp import preprocess
    from appliance.synthetic_eeg import SyntheticSleepEEG

    hyp = np.array([0, 1, 2, 3, 2, 4, 0, 0, 4, 0, 2, 3])
    gen = SyntheticSleepEEG(hyp, fs_hz=fs_hz, seed=3, n_channels=1)
    raw = gen.render_channel(0)
    n = int(30 * fs_hz)
    chip = [np.ascontiguousarray(raw[i * n:(i + 1) * n], dtype=np.float64) for i in range(len(hyp))]
    y = preprocess(raw, fs_hz=fs_hz)
    model = [np.ascontiguousarray(y[i * 3000:(i + 1) * 3000]) for i in range(len(y) // 3000)]
    return chip, model


def _per_call_us(f: Callable[[np.ndarray], object], inputs: list[np.ndarray], calls: int) -> float:
    t0 = time.process_time()
    for i in range(calls):
        f(inputs[i % len(inputs)])
    return (time.process_time() - t0) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/epoch_calls.py")
    ap.add_argument("--base", default="main", help="git revision to compare with (default main)")
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)

    from appliance import dsp, stager

    base_dsp, base_stager = _load_base(args.base)
    chip, model = _epochs()
    fs = 250.0
    for x in chip:
        assert dsp.epoch_quality(x, fs_hz=fs) == base_dsp.epoch_quality(x, fs_hz=fs)
        a, b = dsp.arousal_features(x, fs_hz=fs), base_dsp.arousal_features(x, fs_hz=fs)
        assert np.allclose(dataclasses.astuple(a), dataclasses.astuple(b), rtol=1e-9, atol=0)
        if hasattr(dsp, "epoch_checks"):
            assert dsp.epoch_checks(x, fs_hz=fs) == (base_dsp.epoch_quality(x, fs_hz=fs), b)
    for y in model:
        assert np.array_equal(stager.epoch_features(y), base_stager.epoch_features(y))

    both = getattr(dsp, "epoch_checks", None)
    cases: list[tuple[str, Callable, Callable | None, list[np.ndarray]]] = [
        ("epoch_quality", lambda x: base_dsp.epoch_quality(x, fs_hz=fs), lambda x: dsp.epoch_quality(x, fs_hz=fs),
         chip),
        ("arousal_features", lambda x: base_dsp.arousal_features(x, fs_hz=fs),
         lambda x: dsp.arousal_features(x, fs_hz=fs), chip),
        ("quality + arousal (as the pipeline calls them)",
         lambda x: (base_dsp.epoch_quality(x, fs_hz=fs), base_dsp.arousal_features(x, fs_hz=fs)),
         (lambda x: both(x, fs_hz=fs)) if both is not None
         else (lambda x: (dsp.epoch_quality(x, fs_hz=fs), dsp.arousal_features(x, fs_hz=fs))), chip),
        ("stager.epoch_features", base_stager.epoch_features, stager.epoch_features, model),
    ]
    print(f"per call, us: median of {args.runs} runs x {args.calls} calls (process_time), "
          f"base {args.base} vs this tree, alternating; min-max in brackets")
    for label, f_base, f_new, inputs in cases:
        for f in (f_base, f_new):  # warm caches (designs, windows, FFT plans)
            f(inputs[0])
        base, new = [], []
        for _ in range(args.runs):
            base.append(_per_call_us(f_base, inputs, args.calls))
            new.append(_per_call_us(f_new, inputs, args.calls))
        mb, mn = statistics.median(base), statistics.median(new)
        print(f"{label:48s} base {mb:7.1f} [{min(base):6.1f}-{max(base):6.1f}]  "
              f"new {mn:7.1f} [{min(new):6.1f}-{max(new):6.1f}]  x{mb / mn:4.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
