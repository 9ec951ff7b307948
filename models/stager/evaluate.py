"""Evaluate the committed stage model on held-out synthetic nights and on REAL EEG, beside YASA.

``make evaluate`` runs ``python -m models.stager.evaluate``. It

1. renders the synthetic nights of the test subjects named in ``model_card.json`` (never trained on)
   and stages them with :meth:`appliance.stager.Stager.stage_night`, the box's own causal code path;
2. stages the 8 REAL DREAMS Spindles excerpts (``../shared/data/dreams-spindles``; 30 min of C3-A1 or
   Cz-A1 each) with the same causal stager, and with YASA's pre-trained classifier
   (``yasa.SleepStaging``, EEG only) on the very same 30-s epochs;
3. scores both against the experts: all epochs with a scored majority of the 5-s labels, and the subset
   where all 5-s labels in the epoch agree; 5 classes and 4 classes (W/N1/N2/N3, each stager's
   most probable of those four), since REM is almost absent from DREAMS;
4. writes the metrics into ``model_card.json`` (key ``evaluation``), regenerates ``MODEL_CARD.md``,
   confusion-matrix PNGs beside the model, and the ``staging-accuracy`` section of docs/benchmarks.md.

The DREAMS data are read from ``../shared`` for evaluation only; nothing derived from them is used for
training or tuning, and no copy of them is written anywhere.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from appliance.hypnogram import dreams_to_epochs, read_dreams_codes, real_hypnograms, shared_dir
from appliance.protocol.stages import STAGE_NAMES
from appliance.stager import Stager
from appliance.synthetic_eeg import SyntheticSleepEEG

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CARD_PATH = HERE / "model_card.json"
MODEL_CARD_MD = HERE / "MODEL_CARD.md"
BENCHMARKS_MD = REPO / "docs" / "benchmarks.md"

DREAMS_FS_HZ = {1: 100.0, 3: 50.0}
"""Sampling rates of the DREAMS Spindles excerpts (shared/README.md): 200 Hz unless listed here."""
DREAMS_EXCERPT_S = 1800.0
NIGHT_S = 8 * 3600.0


# ---- metrics (scikit-learn's, the reference implementation) ------------------------------------------
def scores(y_true: np.ndarray, y_pred: np.ndarray, *, labels: list[int]) -> dict:
    """Accuracy, macro-F1, Cohen's kappa, per-class F1 and confusion matrix over ``labels``."""
    from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    present = [lab for lab in labels if np.any(y_true == lab)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes absent from a subset make sklearn warn about 0/0 F1
        per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
        return {
            "n_epochs": int(len(y_true)),
            "accuracy": float(accuracy_score(y_true, y_pred)),
            # macro-F1 over the classes the experts actually scored in this subset
            "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
            "kappa": float(cohen_kappa_score(y_true, y_pred, labels=labels)),
            "f1": {STAGE_NAMES[lab]: round(float(f), 4) for lab, f in zip(labels, per_class)},
            "support": {STAGE_NAMES[lab]: int(np.sum(y_true == lab)) for lab in labels},
            "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        }


def confusion_markdown(conf: list[list[int]], labels: list[int]) -> str:
    names = [STAGE_NAMES[lab] for lab in labels]
    rows = ["| expert \\ predicted | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, row in zip(names, conf):
        rows.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(rows)


def plot_confusions(panels: list[tuple[str, list[list[int]], list[int]]], path: Path) -> None:
    """Row-normalised confusion matrices side by side, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (title, conf, labels) in zip(axes[0], panels):
        c = np.asarray(conf, dtype=float)
        norm = c / np.maximum(c.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        names = [STAGE_NAMES[lab] for lab in labels]
        ax.set_xticks(range(len(names)), names)
        ax.set_yticks(range(len(names)), names)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{int(c[i, j])}", ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("expert")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---- data ---------------------------------------------------------------------------------------------
def read_dreams_excerpt(path: Path) -> tuple[np.ndarray, float, str]:
    """One DREAMS Spindles excerpt: (microvolts, sampling rate in Hz, channel name)."""
    with open(path) as f:
        channel = f.readline().strip().strip("[]")
        x = np.loadtxt(f, dtype=np.float64)
    k = int(path.stem.replace("excerpt", ""))
    fs = DREAMS_FS_HZ.get(k, 200.0)
    if abs(len(x) / fs - DREAMS_EXCERPT_S) > 2.0:
        raise ValueError(f"{path}: {len(x)} samples do not make {DREAMS_EXCERPT_S:.0f} s at {fs} Hz")
    return x, fs, channel


EQUAL_INPUT_MIN_FS_HZ = 100.0
"""Both stagers get every excerpt at >= this rate: YASA refuses rates under 80 Hz (DREAMS excerpt3 is 50 Hz),
so excerpt3 is up-sampled to 100 Hz once, here, and both score that same signal (equal inputs)."""

DEVELOPMENT_EXCERPTS = (1, 2, 3, 4)
"""DREAMS excerpts used to choose between designs (look as often as needed; ../shared/README.md)."""
HELD_OUT_EXCERPTS = (5, 6, 7, 8)
"""DREAMS excerpts scored once, at the end, for the model that ships."""


def equal_input(x_uv: np.ndarray, fs_hz: float) -> tuple[np.ndarray, float]:
    """The excerpt as both stagers see it: up-sampled to :data:`EQUAL_INPUT_MIN_FS_HZ` when slower.

    Up-sampling adds no information; it only lets YASA run at all, and gives ours the very same samples.
    """
    if fs_hz >= EQUAL_INPUT_MIN_FS_HZ:
        return x_uv, fs_hz
    from fractions import Fraction

    from scipy.signal import resample_poly

    ratio = Fraction(EQUAL_INPUT_MIN_FS_HZ / fs_hz).limit_denominator(1000)
    return resample_poly(x_uv, ratio.numerator, ratio.denominator), EQUAL_INPUT_MIN_FS_HZ


def yasa_stage(x_uv: np.ndarray, fs_hz: float, channel: str) -> tuple[np.ndarray, float]:
    """YASA's pre-trained EEG-only stager on one recording: (probabilities (n, 5) W..REM, CPU seconds).

    ``fs_hz`` must be >= 80 Hz (YASA's own limit; see :func:`equal_input`).
    """
    import mne
    import yasa

    mne.set_log_level("ERROR")
    t0 = time.process_time()
    raw = mne.io.RawArray(x_uv[None, :] * 1e-6, mne.create_info([channel], fs_hz, ch_types="eeg"), verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hyp = yasa.SleepStaging(raw, eeg_name=channel).predict()
    proba = hyp.proba
    cols = {c.upper(): c for c in proba.columns}
    order = [cols.get(k) or cols.get(alt) for k, alt in (("WAKE", "W"), ("N1", "N1"), ("N2", "N2"), ("N3", "N3"), ("REM", "R"))]
    p = proba[order].to_numpy(dtype=float)
    return p, time.process_time() - t0


def synthetic_test_nights(card: dict) -> list[tuple[str, np.ndarray, int, float]]:
    """(name, trimmed hypnogram, generator seed, sampling rate) of the held-out synthetic test nights in the card.

    Drawn as the card's training drew its nights: the same population, and the rate :func:`synthetic_rate`
    gives (250 Hz for models trained before the rates varied).
    """
    from models.stager.train import synthetic_seed, trim_to_sleep

    hyps = real_hypnograms()
    varied = card.get("training", {}).get("synthetic_population") == "wide"
    out = []
    for entry in card.get("training", {}).get("nights", {}).get("test", []):
        name, _, render = entry.partition("#")
        if name in hyps:
            hyp = hyps[name]
            r = int(render or 0)
            if varied:
                from models.stager.train import synthetic_rate
            out.append((entry, hyp[trim_to_sleep(hyp)], synthetic_seed(name, r),
                        synthetic_rate(name, r) if varied else 250.0))
    return out


# ---- evaluation -----------------------------------------------------------------------------------
def evaluate_synthetic(stager: Stager, card: dict, *, max_nights: int | None = None) -> dict:
    y_true, y_pred, y_smooth, cpu, n_ep = [], [], [], 0.0, 0
    nights = synthetic_test_nights(card)[:max_nights]
    population = card.get("training", {}).get("synthetic_population", "typical")
    for name, hyp, seed, fs in nights:
        wide = {"population": population} if population != "typical" else {}  # models from before the knob
        x = SyntheticSleepEEG(hyp, fs_hz=fs, n_channels=1, seed=seed, **wide).render_channel(0)
        t0 = time.process_time()
        p = stager.stage_night(x, fs_hz=fs)
        cpu += time.process_time() - t0
        n_ep += len(p)
        keep = hyp[:len(p)] >= 0
        y_true.append(hyp[:len(p)][keep])
        y_pred.append(p.argmax(1)[keep])
        y_smooth.append(stager.smooth_night(p).argmax(1)[keep])
        logger.info("synthetic %s (%g Hz): %d epochs", name, fs, len(p))
    if not nights:
        return {}
    yt = np.concatenate(y_true)
    labels = list(range(5))
    return {
        "data": f"SYNTHETIC (appliance.synthetic_eeg, population {population!r}, following real Sleep-EDF "
                "hypnograms of held-out subjects)",
        "population": population,
        "nights": [n for n, _, _, _ in nights],
        "causal": scores(yt, np.concatenate(y_pred), labels=labels),
        "smoothed_offline": scores(yt, np.concatenate(y_smooth), labels=labels),
        "cpu_s_per_8h_night": round(cpu / n_ep * NIGHT_S / 30.0, 2),
    }


def _dreams_scores(rows: dict, n_excerpts: int) -> dict:
    """Scores of the concatenated epochs of some excerpts (``rows``: per-excerpt probs and labels)."""
    p, yt, un = np.concatenate(rows["p"]), np.concatenate(rows["true"]), np.concatenate(rows["unan"])
    scored = yt >= 0
    res = {"cpu_s_total": round(rows["cpu"], 2),
           "cpu_s_per_8h_night_extrapolated": round(rows["cpu"] / (n_excerpts * DREAMS_EXCERPT_S) * NIGHT_S, 2)}
    for subset, mask in (("majority", scored), ("unanimous", un & scored)):
        res[f"{subset}_5class"] = scores(yt[mask], p[mask].argmax(1), labels=list(range(5)))
        four = mask & (yt <= 3)
        res[f"{subset}_4class"] = scores(yt[four], p[four][:, :4].argmax(1), labels=list(range(4)))
    return res


def evaluate_dreams(stager: Stager, *, with_yasa: bool = True,
                    excerpts: tuple[int, ...] = DEVELOPMENT_EXCERPTS + HELD_OUT_EXCERPTS) -> dict:
    """Score ours (and YASA) on DREAMS ``excerpts``; results for them all and per set (development, held out).

    Every excerpt goes through :func:`equal_input` first, so both stagers score the very same samples.
    """
    root = shared_dir()
    folder = root / "data" / "dreams-spindles" if root else None
    if folder is None or not folder.is_dir():
        logger.warning("../shared/data/dreams-spindles not found: no real-EEG evaluation")
        return {}
    if with_yasa:  # warm-up: YASA's first call pays for imports and numba compilation; do not time that
        yasa_stage(np.random.default_rng(0).standard_normal(100 * 600) * 20.0, 100.0, "C3-A1")
    per: dict[int, dict] = {}
    info = []
    for k in excerpts:
        x, fs_file, channel = read_dreams_excerpt(folder / f"excerpt{k}.txt")
        x, fs = equal_input(x, fs_file)
        majority, unanimous = dreams_to_epochs(read_dreams_codes(folder / f"Hypnogram_excerpt{k}.txt"))
        t0 = time.process_time()
        p_ours = stager.stage_night(x, fs_hz=fs)
        entries = {"ours": (p_ours, time.process_time() - t0)}
        n = min(len(p_ours), len(majority))
        if with_yasa:
            p_y, cpu_y = yasa_stage(x, fs, channel)
            n = min(n, len(p_y))
            entries["yasa"] = (p_y, cpu_y)
        per[k] = {key: (p[:n], majority[:n], unanimous[:n], c) for key, (p, c) in entries.items()}
        info.append({"excerpt": k, "channel": channel, "fs_hz_file": fs_file, "fs_hz_scored": fs, "epochs": n,
                     "set": "development" if k in DEVELOPMENT_EXCERPTS else "held_out"})
        logger.info("DREAMS excerpt%d (%s, %g Hz, scored at %g Hz): %d epochs", k, channel, fs_file, fs, n)

    def combine(ks: list[int]) -> dict:
        res = {}
        for key in ("ours", "yasa"):
            got = [per[k][key] for k in ks if key in per[k]]
            if got:
                rows = {"p": [g[0] for g in got], "true": [g[1] for g in got], "unan": [g[2] for g in got],
                        "cpu": sum(g[3] for g in got)}
                res[key] = _dreams_scores(rows, len(got))
        return res

    out = {"data": f"REAL EEG: DREAMS Spindles database, excerpts {', '.join(map(str, excerpts))} (30 min each), one "
                   "central channel, every excerpt at >= 100 Hz for both stagers (excerpt3 up-sampled from 50 Hz); "
                   "expert stages from 5-s codes (majority per 30-s epoch; 'unanimous' = all 5-s codes agree)",
           "excerpts": info, "excerpt_ids": list(excerpts)}
    out.update(combine(list(excerpts)))
    out["by_set"] = {}
    for name, ids in (("development", DEVELOPMENT_EXCERPTS), ("held_out", HELD_OUT_EXCERPTS)):
        ks = [k for k in ids if k in per]
        if ks:
            out["by_set"][name] = {"excerpts": ks, **combine(ks)}
    out["per_excerpt"] = {str(k): {key: {m: round(v, 4) for m, v in _dreams_scores(
        {"p": [per[k][key][0]], "true": [per[k][key][1]], "unan": [per[k][key][2]], "cpu": per[k][key][3]}, 1
    )["majority_5class"].items() if m in ("accuracy", "kappa")} for key in per[k]} for k in per}
    return out


def _row(name: str, s: dict, cpu: float | None = None) -> str:
    cpu_s = f" {cpu:.2f} |" if cpu is not None else " |"
    return f"| {name} | {s['n_epochs']} | {s['accuracy']:.3f} | {s['kappa']:.3f} | {s['macro_f1']:.3f} |{cpu_s}"


def report_markdown(ev: dict) -> str:
    """The comparison tables, as they go into docs/benchmarks.md and the model card."""
    lines = []
    d = ev.get("dreams", {})
    if d.get("ours"):
        ids = d.get("excerpt_ids", list(range(1, 9)))
        lines += [f"### REAL EEG: DREAMS Spindles (excerpts {', '.join(map(str, ids))}: {len(ids)} x 30 min, central "
                  "channel), causal stager vs YASA", "",
                  "Both score the very same 30-s epochs (every excerpt at >= 100 Hz for both). CPU seconds per 8-h "
                  f"night are extrapolated from the {len(ids) * 60} DREAMS epochs (preprocessing and features "
                  "included).", ""]
        for subset in ("majority_5class", "majority_4class", "unanimous_5class", "unanimous_4class"):
            lines += [f"**{subset.replace('_', ', ')}**", "",
                      "| stager | epochs | accuracy | kappa | macro-F1 | CPU s / 8-h night |", "|---|---|---|---|---|---|"]
            lines.append(_row("bedtime causal (no future)", d["ours"][subset], d["ours"]["cpu_s_per_8h_night_extrapolated"]))
            if d.get("yasa"):
                lines.append(_row("YASA 0.8 (EEG only, sees the future)", d["yasa"][subset],
                                  d["yasa"]["cpu_s_per_8h_night_extrapolated"]))
            lines.append("")
        by_set = d.get("by_set", {})
        if by_set:
            lines += ["**By set, majority, 5 classes** (development = excerpts 1-4, used to choose designs; "
                      "held out = 5-8, scored once for the shipped model)", "",
                      "| set | epochs | ours acc | ours kappa | YASA acc | YASA kappa |", "|---|---|---|---|---|---|"]
            for name in ("development", "held_out"):
                if name in by_set:
                    o, y = by_set[name]["ours"]["majority_5class"], by_set[name].get("yasa", {}).get("majority_5class")
                    ys = f"{y['accuracy']:.3f} | {y['kappa']:.3f}" if y else "- | -"
                    lines.append(f"| {name.replace('_', ' ')} ({', '.join(map(str, by_set[name]['excerpts']))}) | "
                                 f"{o['n_epochs']} | {o['accuracy']:.3f} | {o['kappa']:.3f} | {ys} |")
            o, y = d["ours"]["majority_5class"], d.get("yasa", {}).get("majority_5class")
            ys = f"{y['accuracy']:.3f} | {y['kappa']:.3f}" if y else "- | -"
            lines += [f"| all scored ({', '.join(map(str, d.get('excerpt_ids', [])))}) | {o['n_epochs']} | "
                      f"{o['accuracy']:.3f} | {o['kappa']:.3f} | {ys} |", ""]
        if d.get("per_excerpt"):
            lines += ["Per excerpt (majority, 5 classes; kappa is undefined-ish on 60 epochs of one or two stages):", "",
                      "| excerpt | ours acc / kappa | YASA acc / kappa |", "|---|---|---|"]
            for k, r in d["per_excerpt"].items():
                y = r.get("yasa")
                lines.append(f"| {k} | {r['ours']['accuracy']:.3f} / {r['ours']['kappa']:.3f} | "
                             + (f"{y['accuracy']:.3f} / {y['kappa']:.3f} |" if y else "- |"))
            lines.append("")
        lines += ["Per-class F1, majority, 5 classes: "
                  + "; ".join(f"{k}: ours {d['ours']['majority_5class']['f1'][st]:.2f}"
                              + (f" / YASA {d['yasa']['majority_5class']['f1'][st]:.2f}" if d.get("yasa") else "")
                              + f" (n={d['ours']['majority_5class']['support'][st]})"
                              for k, st in zip(STAGE_NAMES, STAGE_NAMES)), ""]
        lines += ["Confusion, ours, majority, 5 classes:", "",
                  confusion_markdown(d["ours"]["majority_5class"]["confusion"], list(range(5))), ""]
        if d.get("yasa"):
            lines += ["Confusion, YASA, majority, 5 classes:", "",
                      confusion_markdown(d["yasa"]["majority_5class"]["confusion"], list(range(5))), ""]
    s = ev.get("synthetic", {})
    if s:
        lines += ["### SYNTHETIC held-out nights (not real EEG)", "",
                  f"{len(s['nights'])} nights of held-out subjects ({', '.join(s['nights'])}).", "",
                  "| stager | epochs | accuracy | kappa | macro-F1 | CPU s / 8-h night |", "|---|---|---|---|---|---|",
                  _row("bedtime causal", s["causal"], s.get("cpu_s_per_8h_night", s.get("cpu_s_per_8h_night_from_250sps"))),
                  _row("bedtime + offline look-ahead smoothing", s["smoothed_offline"]), "",
                  "Per-class F1 (causal): " + ", ".join(f"{k} {v:.2f}" for k, v in s["causal"]["f1"].items()), "",
                  confusion_markdown(s["causal"]["confusion"], list(range(5))), ""]
    return "\n".join(lines)


def _history_markdown(history: list[dict]) -> str:
    if not history:
        return "None: this is the first evaluated model."

    def ak(h: dict, key: str) -> str:
        v = h.get(key) or {}
        return f"{v['accuracy']:.3f} / {v['kappa']:.3f}" if v else "-"

    lines = ["DREAMS, majority labels, 5 classes, accuracy / kappa. Development = excerpts 1-4, held out = 5-8.", "",
             "| model sha256 | evaluated | ours, all scored | ours, development | ours, held out | YASA, all scored "
             "| synthetic acc | note |", "|---|---|---|---|---|---|---|---|"]
    for h in history:
        syn = h.get("synthetic_causal_accuracy")
        lines.append(f"| `{str(h.get('model_sha256'))[:12]}` | {h.get('evaluated_utc')} | "
                     f"{ak(h, 'dreams_ours_majority_5class')} | {ak(h, 'dreams_ours_development_majority_5class')} | "
                     f"{ak(h, 'dreams_ours_held_out_majority_5class')} | {ak(h, 'dreams_yasa_majority_5class')} | "
                     f"{'-' if syn is None else f'{syn:.3f}'} | {h.get('note', '')} |")
    return "\n".join(lines)


def _log_markdown(log: list[dict]) -> str:
    if not log:
        return "Nothing recorded."
    return "\n".join(f"- {e.get('utc', '?')}: {e.get('text', '')}" for e in log)


def _norm_row(card: dict) -> str:
    if "norm_prior_mean" not in card:
        return "none: the features are standardised with fixed training constants only"
    return (f"causal, per recording: each feature also enters as its deviation from the mean of the night so far "
            f"(`appliance.stager.causal_relative`), which starts from the training population's mean weighted as "
            f"{card.get('norm_prior_epochs')} epochs")


def _population_text(tr: dict) -> str:
    if tr.get("synthetic_population") != "wide":
        return " (young adults on a central lead, drawn at 250 Hz)"
    return (": adults 18-85 on C3-A2, Cz-A1, Fpz-Cz or forehead derivations, amplitude, 1/f slope, alpha "
            "frequency and reactivity, spindle density/frequency/amplitude, age-dependent slow waves, mains, muscle, "
            "movements and electrode pops each drawn over its published range "
            "(`appliance.synthetic_eeg.SubjectTraits.draw_wide`, ranges cited there), at "
            f"{', '.join(f'{r:g}' for r in tr.get('synthetic_rates_hz', []))} Hz")


def write_model_card_md(card: dict) -> str:
    """MODEL_CARD.md from model_card.json (the JSON is the source of truth)."""
    tr = card.get("training", {})
    ev = card.get("evaluation", {})
    lat = ev.get("latency", {})
    text = f"""# Model card: bedtime causal sleep stager

**What it does.** Every 30 s, from the one central EEG channel the box records, it gives the probabilities
of W, N1, N2, N3 and REM for the epoch that just ended, using only that epoch and the
{card['context_epochs'] - 1} before it ({card['context_epochs'] * 30 // 60} min of past, **no future**). A separate
offline pass (`Stager.smooth_night`, HMM forward-backward) adds look-ahead for the morning report only.

| | |
|---|---|
| file | `models/stager/{card['file']}` |
| sha256 | `{card['sha256']}` (checked before loading) |
| size | {card['size_bytes']} bytes ({card['size_bytes'] / 1024:.1f} KiB) |
| format | {card['format']} |
| input | {card['input']} |
| output | {card['output']} |
| features | {', '.join(card['feature_names'])} (`appliance.stager.epoch_features`) |
| preprocessing | `appliance.dsp.StreamingPreprocessor`: band-pass 0.3-35 Hz, 50 Hz notch, resample to 100 Hz, the same 0.24-s delay at every input rate, clip +-400 uV; features band-limited to 0.5-18 Hz (what a 50-Hz recording carries) |
| normalisation | {_norm_row(card)} |
| one epoch's inference | {lat.get('inference_ms_median', 'n/a')} ms median (model only); {lat.get('stage_epoch_ms_median', 'n/a')} ms with feature extraction |

## Training data: SYNTHETIC only (this file)

The committed model was trained **only on synthetic EEG** (sources: {', '.join(tr.get('data', []))}): one night of
`appliance.synthetic_eeg.SyntheticSleepEEG` per real expert hypnogram in `../shared/data/hypnograms`
(Sleep-EDF SC and YASA; {tr.get('synthetic_renders_per_training_night')} renders per training night with different
subject traits), trimmed to 30 min of wake around the sleep period. Synthetic population:
**{tr.get('synthetic_population', 'typical')}**{_population_text(tr)}. No real EEG was available for
training. Splits are by subject:

- train: {', '.join(tr.get('subjects', {}).get('train', []))}
- validation (early stopping): {', '.join(tr.get('subjects', {}).get('val', []))}
- test (held out): {', '.join(tr.get('subjects', {}).get('test', []))}

{tr.get('windows', {}).get('train', '?')} training windows; class counts (W, N1, N2, N3, REM):
{tr.get('class_counts_train')}; {tr.get('epochs_run')} epochs of Adam; {tr.get('cpu_seconds')} CPU s in all.
The DREAMS data were **never** used for training or tuning.

Command: `{tr.get('command', 'python -m models.stager.train')}`

## Retraining on real data (Sleep-EDF Expanded or your own in that layout)

```
pip install -e '.[train]'
python -m models.stager.train --sleep-edf /path/to/sleep-edf/sleep-cassette            # real + synthetic
python -m models.stager.train --sleep-edf /path/to/sleep-edf/sleep-cassette --no-synthetic
python -m models.stager.evaluate
```

The directory holds PhysioNet's `*-PSG.edf` + `*-Hypnogram.edf` pairs; channel `EEG Fpz-Cz` is read,
R&K stages are mapped to AASM (3+4 -> N3; `?` and movement time unscored), and subjects listed in
`models/stager/train.py` (`TEST_SUBJECTS`, `VAL_SUBJECTS`) are held out. The new `.tflite` and
`model_card.json` (with its sha256) replace the committed ones; commit both together.

## Evaluation

Run by `python -m models.stager.evaluate` ({ev.get('run_utc', 'not run yet')}).
**Real** = DREAMS EEG recorded from patients and scored by experts. **Synthetic** = our generator; synthetic
numbers say the pipeline works, not that it stages real people well.

{report_markdown(ev)}
![confusion matrices](confusion_dreams.png)
![synthetic confusion](confusion_synthetic.png)

## Earlier models

{_history_markdown(card.get('evaluation_history', []))}

## What was looked at, and when

{_log_markdown(card.get('development_log', []))}

## Target: kappa >= 0.50 on all eight DREAMS excerpts (majority labels, 5 classes)

{card.get('target_note', 'Not assessed for this model.')}

## Limits, honestly

{ev.get('verdict', 'Not evaluated yet.')}

- Trained on synthetic signals only: its notion of each stage is our generator's. The wide population spans
  the published ranges of each knob, but they are drawn independently, the waveforms are still textbook
  shapes, and the real sleepers' spectra differ (see the development log). Retrain on real EEG (Sleep-EDF
  command above) before trusting it with sleepers.
- The DREAMS test set is small (8 patients x 30 min), N2-heavy, and has almost no REM.
- Electrode montage differs: the box's central channel, Sleep-EDF's Fpz-Cz, DREAMS' C3-A1/Cz-A1.
- Not a medical device.
"""
    MODEL_CARD_MD.write_text(text)
    return text


def measure_latency(stager: Stager, *, n: int = 300) -> dict:
    rng = np.random.default_rng(0)
    epoch = rng.standard_normal(3000) * 20.0
    window = np.zeros((1, stager.context_epochs * len(stager._mean)), dtype=np.float32)
    stager.model.predict(window)
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        stager.model.predict(window)
        t.append(time.perf_counter() - t0)
    s = []
    stager.reset()
    for _ in range(n // 3):
        t0 = time.perf_counter()
        stager.stage_epoch(epoch)
        s.append(time.perf_counter() - t0)
    stager.reset()
    return {"inference_ms_median": round(1e3 * float(np.median(t)), 3),
            "stage_epoch_ms_median": round(1e3 * float(np.median(s)), 3)}


def verdict(ev: dict) -> str:
    d = ev.get("dreams", {})
    if not d.get("ours") or not d.get("yasa"):
        return "The real-EEG comparison with YASA was not run (no ../shared or no yasa)."
    parts = []
    for subset in ("majority_5class", "majority_4class"):
        o, y = d["ours"][subset], d["yasa"][subset]
        da, dk = o["accuracy"] - y["accuracy"], o["kappa"] - y["kappa"]
        parts.append(f"{subset.replace('_', ', ')}: accuracy {o['accuracy']:.3f} vs YASA {y['accuracy']:.3f} "
                     f"({da:+.3f}), kappa {o['kappa']:.3f} vs {y['kappa']:.3f} ({dk:+.3f})")
    o, y = d["ours"]["majority_5class"], d["yasa"]["majority_5class"]
    where = f"DREAMS excerpts {', '.join(map(str, d.get('excerpt_ids', range(1, 9))))}"
    if o["accuracy"] >= y["accuracy"] and o["kappa"] >= y["kappa"]:
        head = f"On the real {where} the causal stager is at least as accurate as YASA."
    else:
        head = (f"On the real {where} the causal stager LOSES to YASA. Why: it has never seen real EEG "
                "(trained on synthetic nights only), while YASA's classifier was trained on thousands of real "
                "nights; and YASA sees 7.5 min of future context while ours sees none.")
    conf = np.asarray(o["confusion"])
    off = [(conf[i, j], STAGE_NAMES[i], STAGE_NAMES[j]) for i in range(5) for j in range(5) if i != j and conf[i, j]]
    worst = ", ".join(f"expert {a} read as {b}: {n}" for n, a, b in sorted(off, reverse=True)[:4])
    return head + " " + "; ".join(parts) + f". Largest confusions of ours (majority, 5 classes): {worst}."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.stager.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--no-yasa", action="store_true", help="skip YASA (when the bench extra is absent)")
    ap.add_argument("--max-synthetic-nights", type=int, help="evaluate only the first N synthetic test nights")
    ap.add_argument("--no-write", action="store_true", help="print only; leave the card and docs as they are")
    ap.add_argument("--excerpts", choices=("development", "held-out", "all"), default="all",
                    help="DREAMS excerpts to score: development (1-4, for choosing designs), held-out (5-8) or all "
                         "(default; score the held-out excerpts once, for the model that ships)")
    ap.add_argument("--json", type=Path, help="also write the evaluation (as it would go into the card) here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stager = Stager()
    card = json.loads(CARD_PATH.read_text())
    with_yasa = not args.no_yasa
    if with_yasa:
        try:
            import yasa  # noqa: F401
        except ImportError:
            logger.warning("yasa is not installed (pip install -e '.[bench]'): YASA rows skipped")
            with_yasa = False
    ev = {"run_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model_sha256": stager.sha256,
          "latency": measure_latency(stager),
          "synthetic": evaluate_synthetic(stager, card, max_nights=args.max_synthetic_nights),
          "dreams": evaluate_dreams(stager, with_yasa=with_yasa, excerpts={
              "development": DEVELOPMENT_EXCERPTS, "held-out": HELD_OUT_EXCERPTS,
              "all": DEVELOPMENT_EXCERPTS + HELD_OUT_EXCERPTS}[args.excerpts])}
    ev["verdict"] = verdict(ev)
    body = report_markdown(ev)
    print(body)
    print(ev["verdict"])
    if args.json:
        args.json.write_text(json.dumps(ev, indent=1) + "\n")
    if args.no_write:
        return 0
    card["evaluation"] = ev
    CARD_PATH.write_text(json.dumps(card, indent=1) + "\n")
    write_model_card_md(card)
    d = ev.get("dreams", {})
    if d.get("ours"):
        panels = [("ours (causal), DREAMS majority", d["ours"]["majority_5class"]["confusion"], list(range(5)))]
        if d.get("yasa"):
            panels.append(("YASA, DREAMS majority", d["yasa"]["majority_5class"]["confusion"], list(range(5))))
        plot_confusions(panels, HERE / "confusion_dreams.png")
    if ev["synthetic"]:
        plot_confusions([("ours (causal), synthetic test", ev["synthetic"]["causal"]["confusion"], list(range(5))),
                         ("ours + smoothing, synthetic test", ev["synthetic"]["smoothed_offline"]["confusion"],
                          list(range(5)))], HERE / "confusion_synthetic.png")
    if BENCHMARKS_MD.is_file():
        from bench.__main__ import _replace_section

        section = ("## Staging accuracy (real DREAMS EEG and synthetic)\n\n"
                   f"_Written by `python -m models.stager.evaluate`, {ev['run_utc']}, model sha256 "
                   f"{stager.sha256[:12]}._\n\n" + body + "\n" + ev["verdict"] + "\n")
        BENCHMARKS_MD.write_text(_replace_section(BENCHMARKS_MD.read_text(), "staging-accuracy", section))
    logger.info("wrote %s, %s, confusion PNGs and docs/benchmarks.md", CARD_PATH.name, MODEL_CARD_MD.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
