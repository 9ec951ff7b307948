"""Staging speed: model size, one epoch's latency, and a whole night against YASA on the same signal.

The accuracy figures (real DREAMS EEG vs YASA) come from ``python -m models.stager.evaluate``, which
writes its own section of docs/benchmarks.md.
"""
from __future__ import annotations

import time

import numpy as np

from appliance.dsp import StreamingPreprocessor
from appliance.hypnogram import real_hypnograms
from appliance.stager import EPOCH_SAMPLES, Stager
from appliance.synthetic_eeg import SyntheticSleepEEG

BUDGET_MS = 2.0
"""Issue 3's latency goal for one epoch's inference."""


def _night(hours: float) -> np.ndarray:
    """A synthetic night at 250 SPS following a real hypnogram (or a plain cycle without ../shared)."""
    n = int(hours * 120)
    hyps = real_hypnograms()
    if hyps:
        hyp = hyps.get("SC4001E0", next(iter(hyps.values())))
        start = int(np.flatnonzero(hyp > 0)[0]) - 10
        hyp = hyp[max(0, start):][:n]
    else:
        hyp = np.resize(np.repeat([0, 1, 2, 3, 2, 4], 15), n)
    return SyntheticSleepEEG(hyp, n_channels=1, seed=7).render_channel(0)


def _median_ms(fn, n: int) -> float:
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(t))


def _yasa_cpu_s(x_uv: np.ndarray, fs_hz: float) -> float | None:
    try:
        import mne
        import yasa
    except ImportError:
        return None
    mne.set_log_level("ERROR")
    raw = mne.io.RawArray(x_uv[None, :] * 1e-6, mne.create_info(["C3"], fs_hz, ch_types="eeg"), verbose=False)
    t0 = time.process_time()
    yasa.SleepStaging(raw, eeg_name="C3").predict()
    return time.process_time() - t0


def run(*, quick: bool = False) -> str:
    stager = Stager()
    hours = 1.0 if quick else 8.0
    x = _night(hours)
    n_epochs = len(x) // 7500

    window = np.zeros((1, stager.context_epochs * len(stager._mean)), dtype=np.float32)
    stager.model.predict(window)
    infer_ms = _median_ms(lambda: stager.model.predict(window), 200 if quick else 1000)
    epoch = x[:7500]
    pre = StreamingPreprocessor(250.0)
    live_ms = _median_ms(lambda: stager.stage_epoch(pre.process(epoch)[:EPOCH_SAMPLES]), 30 if quick else 100)
    fft_ms = _median_ms(lambda: np.fft.rfft(epoch), 200)  # baseline: one FFT of the raw epoch

    t0 = time.process_time()
    probs = stager.stage_night(x, fs_hz=250.0)
    ours_cpu = time.process_time() - t0
    _yasa_cpu_s(x[: 250 * 600], 250.0)  # warm-up (imports, numba compilation), so YASA's timing is fair
    yasa_cpu = _yasa_cpu_s(x, 250.0)

    lines = [
        "## Staging",
        "",
        f"Synthetic {hours:g}-h night ({n_epochs} epochs, 250 SPS, `appliance.synthetic_eeg`); CPU seconds by "
        "`time.process_time` (all threads).",
        "",
        "| measure | value | ratio |",
        "|---|---|---|",
        f"| model size | {stager.model.path.stat().st_size / 1024:.1f} KiB | {stager.model.path.stat().st_size / (150 * 1024):.2f} of the 150 KiB limit |",
        f"| one epoch's inference (TFLite int8, 1 thread) | {infer_ms:.3f} ms | {infer_ms / BUDGET_MS:.3f} of the 2 ms budget |",
        f"| one live epoch: preprocess 30 s + features + inference | {live_ms:.2f} ms | {live_ms / fft_ms:.0f}x one FFT of the epoch ({fft_ms:.3f} ms) |",
        f"| whole night, ours (preprocessing included, causal) | {ours_cpu:.2f} CPU s | 1 |",
    ]
    if yasa_cpu is not None:
        lines.append(f"| whole night, YASA `SleepStaging` (EEG only) | {yasa_cpu:.2f} CPU s | "
                     f"**ours is {yasa_cpu / ours_cpu:.1f}x faster** (goal >= 3x) |")
    else:
        lines.append("| whole night, YASA | not installed (`pip install -e '.[bench]'`) | |")
    lines += ["", f"(Stages on this synthetic night: {np.bincount(probs.argmax(1), minlength=5).tolist()} "
                  "epochs of W, N1, N2, N3, REM.)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(run(quick=True))
