"""The shipped loop model on the box's own chain with the shipped stager, over every real night.

``python -m models.loops.chain_check`` (no TensorFlow: the box's TFLite runtime and code).

Why: the loop model's card measures its "real chain" rows with the stager of the day it was trained
(``model_card.json``: ``evaluation.real_chain`` names that stager's sha256). When a new stager ships, the box
feeds the loop model another stager's probabilities. This check measures what the box runs today: each real
night's sleep window rendered as synthetic EEG (:func:`models.loops.chain.chain_features`, the trainer's
seeds), staged by the committed stager, its features fed to the committed loop model window by window exactly
as :meth:`appliance.loop_model.LoopDetector.predict_window` gets them in the daemon, and scored against the loop
definition on the true hypnogram (:func:`models.loops.replay.event_metrics`). The rule applied to the stager's
top stage is the baseline, as in the card.

Caveats, printed with the table: the loop model was trained on these 41 nights (its cross-validated figures
are in its card), and the stager was trained on synthetic EEG rendered from the same hypnograms, so both see
familiar nights here: this measures the chain's agreement with itself, not its accuracy on real EEG.
Observations are cached like the trainer's (``~/.cache/bedtime/loops-chain``, keyed by night, seed and the
stager's sha256).

``--dreams``: the same chain on REAL EEG, the 8 DREAMS Spindles excerpts (8 patients x 30 min, the evaluation's
channel and its equal inputs, :func:`models.stager.evaluate.equal_input`): how often would the box have seen a
loop in real sleep? The truth is the loop definition on the experts' majority hypnogram. Each excerpt starts
the model's window empty, as a night does, and is only 60 epochs of the 96 the window holds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from appliance.hypnogram import real_hypnograms
from models.loops.chain import chain_features, chain_jobs, default_cache_dir
from models.loops.replay import argmax_rule_probability, event_metrics, summarise


def night_probabilities(detector, features: np.ndarray) -> np.ndarray:
    """P(loop) at every epoch of a night, each from the window ending there, as the daemon computes it.

    Parameters
    ----------
    detector : appliance.loop_model.LoopDetector
    features : numpy.ndarray, shape (n_epochs, N_FEATURES)
        The night's loop-model features (:func:`appliance.loop_model.epoch_features` of each epoch).

    Returns
    -------
    numpy.ndarray, shape (n_epochs,), P(loop) in 0..1
    """
    from appliance.loop_model import WINDOW_EPOCHS

    return np.array([detector.predict_window(features[max(0, k + 1 - WINDOW_EPOCHS):k + 1])
                     for k in range(len(features))], dtype=np.float64)


def run(*, max_nights: int | None = None) -> dict:
    """Score the committed loop model and the argmax rule on every real night's chain; the summaries and shas."""
    from appliance.loop_model import LoopDetector
    from appliance.stager import Stager

    nights = real_hypnograms()
    jobs = [j for j in chain_jobs(nights, augment_every=0) if j[1] == "real"][:max_nights]
    stager, detector = Stager(), LoopDetector()
    model, rule = {}, {}
    t0 = time.process_time()
    for name, _, stages, seed in jobs:
        feats = chain_features(stages, seed=seed, stager=stager, cache_dir=default_cache_dir())
        model[name] = event_metrics(stages, night_probabilities(detector, feats))
        rule[name] = event_metrics(stages, argmax_rule_probability(feats[:, :5]))
    return {"nights": len(jobs), "stager_sha256": stager.sha256, "loop_model_sha256": detector.model.sha256,
            "model": summarise(model), "rule_on_stager_argmax": summarise(rule),
            "cpu_s": round(time.process_time() - t0, 1)}


def dreams_features(x_uv: np.ndarray, fs_hz: float, stager) -> np.ndarray:
    """The loop model's features for every whole 30-s epoch of one real recording, through the box's chain.

    Parameters
    ----------
    x_uv : numpy.ndarray, shape (n,)
        The recording in microvolts.
    fs_hz : float
        Its sampling rate (Hz).
    stager : appliance.stager.Stager
        The committed stager (reset here).

    Returns
    -------
    numpy.ndarray, shape (n_epochs, N_FEATURES), float32
    """
    from appliance.dsp import epoch_checks
    from appliance.epoch import Epoch
    from appliance.loop_model import epoch_features

    stager.reset()
    probs = stager.stage_night(x_uv, fs_hz=fs_hz)
    spe = int(round(30.0 * fs_hz))
    rows = []
    for i in range(len(probs)):
        quality, arousal = epoch_checks(x_uv[i * spe:(i + 1) * spe], fs_hz=fs_hz)
        rows.append(epoch_features(Epoch(index=i, start_sample=i * spe, end_time_s=(i + 1) * 30.0,
                                         quality=quality, arousal=arousal, stage_probs=probs[i])))
    return np.stack(rows).astype(np.float32)


def run_dreams() -> dict:
    """The committed stager and loop model on the 8 real DREAMS excerpts; per excerpt and summed."""
    from appliance.hypnogram import dreams_to_epochs, read_dreams_codes, shared_dir
    from appliance.loop_model import FEATURE_NAMES, LoopDetector
    from appliance.protocol.stages import Stage
    from appliance.stager import Stager
    from models.stager.evaluate import (DEVELOPMENT_EXCERPTS, HELD_OUT_EXCERPTS, equal_input,
                                        read_dreams_excerpt)

    folder = shared_dir() / "data" / "dreams-spindles"
    stager, detector = Stager(), LoopDetector()
    per = {}
    for k in DEVELOPMENT_EXCERPTS + HELD_OUT_EXCERPTS:
        x, fs = equal_input(*read_dreams_excerpt(folder / f"excerpt{k}.txt")[:2])
        feats = dreams_features(x, fs, stager)
        expert, _ = dreams_to_epochs(read_dreams_codes(folder / f"Hypnogram_excerpt{k}.txt"))
        n = min(len(expert), len(feats))
        expert, feats = expert[:n], feats[:n]
        p = night_probabilities(detector, feats)
        m = event_metrics(expert, p)
        m["epochs"] = n
        m["epochs_p_loop_ge_05"] = int(np.count_nonzero(p >= 0.5))
        m["max_p_loop"] = round(float(p.max()), 3)
        m["expert_rem_epochs"] = int(np.count_nonzero(expert == Stage.REM))
        m["stager_rem_epochs"] = int(np.count_nonzero(np.argmax(feats[:, :5], axis=1) == Stage.REM))
        m["quality_ok_epochs"] = int(np.count_nonzero(feats[:, FEATURE_NAMES.index("quality_ok")] > 0.5))
        per[f"excerpt{k}"] = m
    total = summarise(per)
    total["epochs"] = sum(m["epochs"] for m in per.values())
    return {"excerpts": per, "total": total, "stager_sha256": stager.sha256,
            "loop_model_sha256": detector.model.sha256}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.loops.chain_check", description=__doc__.split("\n")[0])
    ap.add_argument("--max-nights", type=int, help="only the first N nights (a smoke check)")
    ap.add_argument("--dreams", action="store_true",
                    help="the same chain on the 8 real DREAMS excerpts instead (4 h of real EEG)")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = ap.parse_args(argv)
    if args.dreams and args.max_nights is not None:
        print("chain_check: --max-nights is for the synthetic nights, not --dreams", file=sys.stderr)
        return 2
    if args.max_nights is not None and args.max_nights < 1:
        print("chain_check: --max-nights needs at least 1", file=sys.stderr)
        return 2
    if not real_hypnograms():
        print("chain_check: no real hypnograms (../shared is not present beside the checkout)", file=sys.stderr)
        return 2
    if args.dreams:
        from appliance.hypnogram import shared_dir

        if not (shared_dir() / "data" / "dreams-spindles").is_dir():
            print("chain_check: no DREAMS excerpts (../shared/data/dreams-spindles is missing)", file=sys.stderr)
            return 2
        return _print_dreams(run_dreams(), as_json=args.json)
    r = run(max_nights=args.max_nights)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['nights']} real nights through the box's chain: stager {r['stager_sha256'][:12]}, loop model "
          f"{r['loop_model_sha256'][:12]} ({r['cpu_s']} CPU s)")
    print("| detector | loops detected | false detections / night | delay median / max (epochs) |")
    print("|---|---|---|---|")
    for label, key in (("loop model (P >= 0.5)", "model"), ("the rule on the stager's top stage", "rule_on_stager_argmax")):
        m = r[key]
        print(f"| {label} | {m['detected']}/{m['episodes']} | {m['false_detections_per_night']} "
              f"({m['false_detections']} in {m['nights']} nights) | {m['delay_epochs_median']} / {m['delay_epochs_max']} |")
    print("Both models have seen these nights' hypnograms in training: agreement of the chain with itself, not "
          "accuracy on real EEG.")
    return 0


def _print_dreams(r: dict, *, as_json: bool) -> int:
    if as_json:
        print(json.dumps(r))
        return 0
    t = r["total"]
    print(f"8 real DREAMS excerpts ({t['epochs']} epochs, {t['epochs'] / 120:.1f} h) through the box's chain: stager "
          f"{r['stager_sha256'][:12]}, loop model {r['loop_model_sha256'][:12]}")
    print("| excerpt | epochs | signal ok | REM epochs: experts / stager | loops (definition) | "
          "loop detections (P >= 0.5) | epochs P >= 0.5 | max P(loop) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, m in r["excerpts"].items():
        print(f"| {name} | {m['epochs']} | {m['quality_ok_epochs']} | {m['expert_rem_epochs']} / "
              f"{m['stager_rem_epochs']} | {m['episodes']} | "
              f"{m['detected'] + m['false_detections']} ({m['false_detections']} false) | {m['epochs_p_loop_ge_05']} | "
              f"{m['max_p_loop']} |")
    print(f"In all: {t['episodes']} loops by the definition, {t['false_detections']} false detections in "
          f"{t['epochs'] / 120:.1f} h of real sleep.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
