"""Micro-benchmark: CPU per call of the three per-epoch feature calls, this tree against a git revision.

The box runs, once per 30-s epoch, :func:`appliance.dsp.epoch_quality` and :func:`appliance.dsp.arousal_features`
on the raw chip-rate epoch (250 SPS, microvolts) and :func:`appliance.stager.epoch_features` on the preprocessed
100-Hz epoch. This script loads the revision's ``appliance/dsp.py`` and ``appliance/stager.py`` (``git show``) as
modules beside this tree's, and times both on the same synthetic epochs (every stage, from
:mod:`appliance.synthetic_eeg`) in the same process, alternating base and new, so machine noise hits both alike.
Both then run on this tree's C kernels (``appliance._native``); ``--with-native`` counts those too: it exports the
revision, builds its extension and times each tree in its own child processes, alternating.

Each figure is the median over ``--runs`` runs of ``time.process_time()`` around ``--calls`` calls, per call.
Both versions' results are compared on the way (quality equal, arousal to 1e-9, stager features equal as float32).

Usage::

    python bench/epoch_calls.py [--base main] [--calls 300] [--runs 5] [--with-native]
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


def _cases(dsp: types.ModuleType, stager: types.ModuleType, chip: list[np.ndarray], model: list[np.ndarray],
           fs: float) -> list[tuple[str, Callable[[np.ndarray], object], list[np.ndarray]]]:
    """The timed calls of one tree's modules; quality + arousal as the pipeline calls them (one call if the tree has
    ``epoch_checks``)."""
    both = getattr(dsp, "epoch_checks", None)
    return [
        ("epoch_quality", lambda x: dsp.epoch_quality(x, fs_hz=fs), chip),
        ("arousal_features", lambda x: dsp.arousal_features(x, fs_hz=fs), chip),
        ("quality + arousal (as the pipeline calls them)",
         (lambda x: both(x, fs_hz=fs)) if both is not None
         else (lambda x: (dsp.epoch_quality(x, fs_hz=fs), dsp.arousal_features(x, fs_hz=fs))), chip),
        ("stager.epoch_features", stager.epoch_features, model),
    ]


def _child(calls: int) -> int:
    """One run of every case with the modules on sys.path (a tree with its own native extension); JSON out."""
    import json

    from appliance import dsp, stager

    chip, model = _epochs()
    out = {}
    for label, f, inputs in _cases(dsp, stager, chip, model, 250.0):
        f(inputs[0])  # warm caches (designs, windows)
        out[label] = _per_call_us(f, inputs, calls)
    print(json.dumps(out))
    return 0


def _with_native(args: argparse.Namespace) -> int:
    """The base revision exported and built (its own C kernels), each tree timed in its own processes, alternating."""
    import json
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="epoch-calls-") as tmp:
        base_tree = Path(tmp) / "base"
        base_tree.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.base], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base_tree)], input=archive, check=True)
        subprocess.run([sys.executable, "native/build_native.py"], cwd=base_tree, check=True, capture_output=True)
        runs: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
        for _ in range(args.runs):
            for name, tree in (("base", base_tree), ("new", REPO)):
                env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
                out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(tree), "--calls",
                                      str(args.calls)], cwd=tree, env=env, check=True, capture_output=True, text=True)
                runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"per call, us: median of {args.runs} runs x {args.calls} calls (process_time), base {args.base} (its own "
          "native extension, built) vs this tree, each in its own processes, alternating; min-max in brackets")
    for label in runs["new"][0]:
        base = [r[label] for r in runs["base"]]
        new = [r[label] for r in runs["new"]]
        mb, mn = statistics.median(base), statistics.median(new)
        print(f"{label:48s} base {mb:7.1f} [{min(base):6.1f}-{max(base):6.1f}]  "
              f"new {mn:7.1f} [{min(new):6.1f}-{max(new):6.1f}]  x{mb / mn:4.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/epoch_calls.py")
    ap.add_argument("--base", default="main", help="git revision to compare with (default main)")
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--with-native", action="store_true",
                    help="also count the C kernels: build the base's native extension and time each tree in its own "
                         "processes (the default, in one process, runs the base's Python on this tree's kernels)")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # time the tree at this path
    args = ap.parse_args(argv)
    sys.path.insert(0, str(args.child or REPO))
    if args.child:
        import appliance

        assert Path(appliance.__file__).resolve().parent.parent == args.child.resolve(), appliance.__file__
        return _child(args.calls)
    if args.with_native:
        return _with_native(args)

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

    print(f"per call, us: median of {args.runs} runs x {args.calls} calls (process_time), "
          f"base {args.base}'s Python vs this tree, in one process (both on this tree's C kernels), alternating; "
          "min-max in brackets")
    for (label, f_base, inputs), (_, f_new, _) in zip(_cases(base_dsp, base_stager, chip, model, fs),
                                                      _cases(dsp, stager, chip, model, fs)):
        for f in (f_base, f_new):  # warm caches (designs, windows)
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
