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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.loops.chain_check", description=__doc__.split("\n")[0])
    ap.add_argument("--max-nights", type=int, help="only the first N nights (a smoke check)")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = ap.parse_args(argv)
    if args.max_nights is not None and args.max_nights < 1:
        print("chain_check: --max-nights needs at least 1", file=sys.stderr)
        return 2
    if not real_hypnograms():
        print("chain_check: no real hypnograms (../shared is not present beside the checkout)", file=sys.stderr)
        return 2
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


if __name__ == "__main__":
    sys.exit(main())
