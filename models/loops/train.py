"""Train the loop classifier, evaluate it on held-out real nights, export int8 TFLite and the model card.

``python -m models.loops.train`` (``make model``). TensorFlow is imported here and nowhere else
(the ``train`` extra); the box and the tests only load the exported ``loop.tflite``.

What it does
------------
1. Reads the real hypnograms in ``../shared`` (39 Sleep-EDF nights + 2 YASA nights), and observes each
   through the box's own DSP and stager on synthetic EEG (:mod:`models.loops.chain`; cached, ~10 min
   of CPU the first time; ``--no-chain`` skips it).
2. Subject-wise k-fold cross-validation: for each fold, trains on the other subjects' nights
   (each night several times: with fresh simulated stager noise, and with extra REM interruptions cut
   in by :func:`models.loops.simulate.insert_returns`; plus its chain observations), exports int8, and
   evaluates the int8 model on the held-out nights *unmodified* (one simulated stager output per night,
   and the chain observation) against the loop label of ``appliance/loops.py`` on the true hypnogram.
3. Trains the shipped model on all nights the same way, exports ``loop.tflite``, writes
   ``model_card.json`` (with the sha256 the runtime checks) and ``MODEL_CARD.md``.

Budget: about 6 min of training on two shared CPU cores once the chain cache is warm (run it under ``nice``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from appliance.hypnogram import real_hypnograms, subject_of
from appliance.loop_model import FEATURE_NAMES, N_FEATURES, WINDOW_EPOCHS, padded_window
from appliance.loops import DEFAULT_DEFINITION, loop_active
from appliance.protocol.stages import Stage
from models.loops.replay import DETECTION_THRESHOLD, argmax_rule_probability, event_metrics, summarise
from models.tflite_export import export_int8
from models.loops.simulate import DEFAULT_NOISE, EVAL_SEED, insert_returns, simulate_eval_night, simulate_night

logger = logging.getLogger("models.loops.train")

OUT_DIR = Path(__file__).resolve().parent
MODEL_VERSION = "1.0.0"
THRESHOLD = DETECTION_THRESHOLD


def night_windows(features: np.ndarray) -> np.ndarray:
    """All causal windows of a night, ``(n, WINDOW_EPOCHS, N_FEATURES)``, left-padded like the runtime."""
    n = len(features)
    pad = padded_window(features[:0], window=WINDOW_EPOCHS - 1)  # (W-1, F) of "unknown" rows
    full = np.concatenate([pad, features.astype(np.float32)], axis=0)
    win = np.lib.stride_tricks.sliding_window_view(full, (WINDOW_EPOCHS, N_FEATURES))[:, 0]
    assert win.shape == (n, WINDOW_EPOCHS, N_FEATURES)
    return win


def _keep_windows(s: np.ndarray, feats: np.ndarray, rng: np.random.Generator, keep_far: float):
    y = loop_active(s).astype(np.float32)
    win = night_windows(feats)
    rem_recent = np.convolve((s == Stage.REM).astype(float), np.ones(WINDOW_EPOCHS))[:len(s)] > 0
    keep = rem_recent | (y > 0) | (rng.random(len(s)) < keep_far)
    return np.array(win[keep]), y[keep]


def build_training_set(nights: dict[str, np.ndarray], rng: np.random.Generator, *, copies: int,
                       max_inserts: int, chain: dict[str, list[tuple[np.ndarray, np.ndarray]]] | None = None,
                       keep_far: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Windows and labels from several noisy, augmented copies of each night, plus its chain observations.

    Windows without any REM in them are easy negatives; only ``keep_far`` of them are kept.
    ``chain`` maps a night to its ``(stages, features)`` observations through the real upstream chain
    (:mod:`models.loops.chain`).
    """
    xs, ys = [], []
    for name, stages in nights.items():
        for c in range(copies):
            s = stages if c == 0 else insert_returns(stages, rng, n_inserts=int(rng.integers(0, max_inserts + 1)))
            x, y = _keep_windows(s, simulate_night(s, rng).features(), rng, keep_far)
            xs.append(x)
            ys.append(y)
        for s, feats in (chain or {}).get(name, []):
            x, y = _keep_windows(s, feats, rng, keep_far)
            xs.append(x)
            ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def make_model(*, filters: int = 16):
    import tensorflow as tf

    k = tf.keras
    inp = k.Input(shape=(WINDOW_EPOCHS, N_FEATURES), name="features")
    x = inp
    # Causal dilated convolutions: receptive field 1 + 2*(1+2+4+8) = 31 epochs, enough to see
    # REM, a 20-epoch interruption and REM again at every position.
    for d in (1, 2, 4, 8):
        x = k.layers.Conv1D(filters, 3, padding="causal", dilation_rate=d, activation="relu")(x)
    # Only returns inside the last 60 epochs (the loop window) count; average = a soft count.
    last = k.layers.Cropping1D((WINDOW_EPOCHS - DEFAULT_DEFINITION.loop_window_epochs, 0))(x)
    h = k.layers.Concatenate()([k.layers.GlobalAveragePooling1D()(last), k.layers.GlobalMaxPooling1D()(last)])
    h = k.layers.Dense(16, activation="relu")(h)
    out = k.layers.Dense(1, activation="sigmoid", name="p_loop")(h)
    model = k.Model(inp, out)
    model.compile(optimizer=k.optimizers.Adam(2e-3), loss="binary_crossentropy",
                  metrics=[k.metrics.AUC(name="auc")])
    return model


def fit(nights: dict[str, np.ndarray], *, seed: int, copies: int, max_inserts: int, epochs: int, filters: int,
        chain: dict | None = None):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x, y = build_training_set(nights, rng, copies=copies, max_inserts=max_inserts, chain=chain)
    pos = float(y.mean())
    logger.info("training set: %d windows, %.1f%% positive", len(y), 100 * pos)
    model = make_model(filters=filters)
    # Square-root balancing: full balancing buys little sensitivity and many false alarms at 0.5.
    w = {0: 1.0, 1: float(np.sqrt((1 - pos) / max(pos, 1e-6)))}
    model.fit(x, y, batch_size=256, epochs=epochs, class_weight=w, verbose=2, shuffle=True)
    return model, x


def predict_night(tflite_path: Path, features: np.ndarray) -> np.ndarray:
    """P(loop) for every epoch of a night with the int8 model (batched; same numbers as the runtime)."""
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_path=str(tflite_path))
    win = night_windows(features)
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    interp.resize_tensor_input(inp["index"], [len(win), WINDOW_EPOCHS, N_FEATURES])
    interp.allocate_tensors()
    s, z = inp["quantization"]
    interp.set_tensor(inp["index"], np.clip(np.round(win / s + z), -128, 127).astype(np.int8))
    interp.invoke()
    so, zo = out["quantization"]
    return ((interp.get_tensor(out["index"]).astype(np.float32) - zo) * so).reshape(-1)


def folds_by_subject(names: list[str], k: int) -> list[list[str]]:
    subjects = sorted({subject_of(n) for n in names})
    fold_of = {s: i % k for i, s in enumerate(subjects)}
    return [[n for n in names if fold_of[subject_of(n)] == f] for f in range(k)]


def _row(name: str, m: dict | None) -> str:
    if not m:
        return f"| {name} | - | - | - | - | - |"
    return (f"| {name} | {m['detected']}/{m['episodes']} ({m['event_sensitivity']}) | {m['false_detections_per_night']} "
            f"({m['false_detections']} in {m['nights']} nights) | {m['delay_epochs_median']} / {m['delay_epochs_max']} | "
            f"{m['epoch_precision']} | {m['epoch_recall']} |")


def render_model_card(card: dict) -> str:
    """MODEL_CARD.md from model_card.json, so the prose and the numbers cannot drift apart."""
    ev, td = card["evaluation"], card["training_data"]
    caveats = "\n".join(f"- {c}" for c in card["caveats"])
    return f"""# Model card: {card['name']} v{card['version']}

_Generated by `python -m models.loops.train` on {card['created_utc']}; the numbers are in `model_card.json`._

## What it does
Gives P(a nightmare loop is under way) every 30-s epoch from the last {card['input']['shape'][1]} epochs of
{card['input']['shape'][2]} per-epoch features ({', '.join(card['input']['features'])}). "Loop" is the operational
definition of `docs/loops.md` (>= 2 REM -> W/N1 -> REM returns within 30 min, each interruption <= 10 min), a
causal label; the model learns to reproduce it from noisy stager output. The breather acts at P >= {card['output']['threshold']}.

## Model
- File `{card['file']}`, {card['size_bytes']} bytes, sha256 `{card['sha256']}` (checked before loading).
- Causal dilated 1-D convolutions ({td.get('filters', 16)} channels x 4, receptive field 31 epochs), soft count over
  the last 60 epochs (average + max pooling), dense 16, sigmoid. {card['quantisation']}.
- TensorFlow {card['tensorflow']}; {td['epochs']} epochs; {td['copies_per_night']} noisy/augmented copies of each night.

## Data
- {td['source']}.
- Simulated stager: per true stage (W, N1, N2, N3, REM) probability of a wrong top stage {td['simulation']['p_confused']},
  confidence logit boost {td['simulation']['logit_boost']}, bad-signal probability {td['simulation']['p_bad_quality']},
  arousal-feature noise sd {td['simulation']['arousal_sd']} (`models/loops/simulate.py`).
- Evaluation: {ev['protocol']}.

## Metrics (measured by the training run; truth from real hypnograms, inputs simulated or from the box's chain)
An episode is *detected* when a run of P >= {card['output']['threshold']} overlaps it; delay = first detected epoch
minus the onset (the return that completed the loop), in 30-s epochs; a *false detection* is a run that
overlaps no episode.

| model | events detected (sensitivity) | false detections / night | delay median / max (epochs) | epoch precision | epoch recall |
|---|---|---|---|---|---|
{_row('held-out nights (cross-validation), simulated stager', ev['held_out'])}
{_row('baseline: the rule on the simulated stager argmax', ev['baseline_rule_on_stager_argmax'])}
{_row('shipped model, all nights (training nights included), simulated stager', ev['shipped_model_on_all_nights_incl_training'])}
{_row('held-out nights, REAL CHAIN (synthetic EEG -> dsp -> stager)', ev.get('held_out_real_chain'))}
{_row('baseline: the rule on the real chain stager argmax', ev.get('baseline_rule_on_real_chain_argmax'))}

With a noisy stager (simulated: independent errors, N1 wrong 45 % of the time) the definition applied to
its top stage fires on nearly every night; the model does not. With the box's own stager on synthetic EEG
(nearly right there, since it was trained on such EEG) the plain rule on its top stage does *better* than
the model: the model pays, in false detections, for its robustness to a noisy stager. Which the box
should trust depends on how good the stager is on real EEG, which these data cannot tell. "Simulated stager" rows feed the model inputs from `models/loops/simulate.py`
(independent per-epoch errors); "real chain" rows feed it what the box's own DSP and stager make of
synthetic EEG following the night ({ev.get('real_chain') or 'not run'}).

## Caveats
{caveats}

Size and per-epoch inference time on this machine: see `docs/benchmarks.md` (`make bench`).
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.loops.train", description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=4, help="subject-wise cross-validation folds (0 = skip)")
    ap.add_argument("--no-chain", action="store_true",
                    help="skip the real-chain observations (synthetic EEG -> dsp -> stager); simulated inputs only")
    ap.add_argument("--copies", type=int, default=3, help="noisy/augmented copies of each training night")
    ap.add_argument("--max-inserts", type=int, default=12, help="most REM interruptions cut into one copy")
    ap.add_argument("--epochs", type=int, default=6, help="training epochs")
    ap.add_argument("--filters", type=int, default=16, help="channels of each convolution")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t_start = time.time()

    nights = real_hypnograms()
    if not nights:
        print("no real hypnograms found (../shared missing); cannot train", file=sys.stderr)
        return 2
    names = sorted(nights)
    eval_sims = {n: simulate_eval_night(nights[n], i) for i, n in enumerate(names)}
    chain_train: dict[str, list] = {}
    chain_eval: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    stager_sha = None
    if not args.no_chain:
        from appliance.stager import Stager
        from models.loops.chain import chain_features, chain_jobs, default_cache_dir

        st = Stager()
        stager_sha = st.sha256
        for name, kind, s, seed in chain_jobs(nights):
            f = chain_features(s, seed=seed, stager=st, cache_dir=default_cache_dir())
            chain_train.setdefault(name, []).append((s, f))
            if kind == "real":
                chain_eval[name] = (s, f)
        logger.info("chain observations: %d (stager sha256 %s)", sum(map(len, chain_train.values())), stager_sha)

    cv: dict[str, dict] = {}
    baseline: dict[str, dict] = {}
    cv_chain: dict[str, dict] = {}
    baseline_chain: dict[str, dict] = {}
    if args.folds:
        for f, held in enumerate(folds_by_subject(names, args.folds)):
            train_n = {n: nights[n] for n in names if n not in held}
            logger.info("fold %d: %d train nights, %d held out", f, len(train_n), len(held))
            model, x = fit(train_n, seed=args.seed + 100 * f, copies=args.copies,
                           max_inserts=args.max_inserts, epochs=args.epochs, filters=args.filters,
                           chain={n: chain_train[n] for n in train_n if n in chain_train})
            tmp = args.out / f".fold{f}.tflite"
            export_int8(model, x, tmp, max_calibration=500)
            for n in held:
                p = predict_night(tmp, eval_sims[n].features())
                cv[n] = event_metrics(nights[n], p)
                baseline[n] = event_metrics(nights[n], argmax_rule_probability(eval_sims[n].probs))
                if n in chain_eval:
                    cs, cf = chain_eval[n]
                    cv_chain[n] = event_metrics(cs, predict_night(tmp, cf))
                    baseline_chain[n] = event_metrics(cs, argmax_rule_probability(cf[:, :5]))
            tmp.unlink()
    cv_summary = summarise(cv) if cv else None
    base_summary = summarise(baseline) if baseline else None
    logger.info("cross-validated (held-out nights): %s", cv_summary)
    logger.info("baseline rule on stager argmax:   %s", base_summary)
    cv_chain_summary = summarise(cv_chain) if cv_chain else None
    base_chain_summary = summarise(baseline_chain) if baseline_chain else None
    logger.info("cross-validated, real chain:      %s", cv_chain_summary)
    logger.info("baseline rule, real chain:        %s", base_chain_summary)

    model, x = fit(nights, seed=args.seed, copies=args.copies, max_inserts=args.max_inserts, epochs=args.epochs,
                   filters=args.filters, chain=chain_train)
    path = args.out / "loop.tflite"
    blob = export_int8(model, x, path, max_calibration=500)
    sha = hashlib.sha256(blob).hexdigest()
    train_fit = summarise({n: event_metrics(nights[n], predict_night(path, eval_sims[n].features())) for n in names})

    card = {
        "name": "bedtime loop classifier",
        "version": MODEL_VERSION,
        "file": "loop.tflite",
        "sha256": sha,
        "size_bytes": len(blob),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tensorflow": __import__("tensorflow").__version__,
        "quantisation": "full int8 (input, weights, activations, output)",
        "input": {"shape": [1, WINDOW_EPOCHS, N_FEATURES], "features": list(FEATURE_NAMES),
                  "epoch_s": 30, "order": "oldest first; missing history = uniform probs, quality_ok=0"},
        "output": {"shape": [1, 1], "meaning": "P(a loop is under way at the last epoch)",
                   "threshold": THRESHOLD},
        "label": "appliance.loops.loop_active with DEFAULT_DEFINITION on the true hypnogram (see docs/loops.md)",
        "training_data": {
            "nights": names,
            "source": "real expert hypnograms (Sleep-EDF Expanded SC, 39 nights; YASA, 2 nights); "
                      "stage probabilities, arousal features and signal quality SIMULATED around them "
                      "(models/loops/simulate.py); extra REM interruptions cut in for augmentation",
            "real_chain_observations": sum(map(len, chain_train.values())),
            "stager_sha256": stager_sha,
            "copies_per_night": args.copies, "max_inserts": args.max_inserts, "epochs": args.epochs,
            "filters": args.filters, "seed": args.seed,
            "simulation": {"p_confused": DEFAULT_NOISE.p_confused, "logit_boost": DEFAULT_NOISE.logit_boost,
                           "p_bad_quality": DEFAULT_NOISE.p_bad_quality, "arousal_sd": DEFAULT_NOISE.arousal_sd},
        },
        "evaluation": {
            "protocol": f"{args.folds}-fold subject-wise cross-validation; each fold's int8 model on its held-out "
                        "real nights (unmodified), with one simulated stager output per night (seed "
                        f"{EVAL_SEED}); truth = the loop definition on the true hypnogram",
            "held_out": cv_summary,
            "baseline_rule_on_stager_argmax": base_summary,
            "held_out_real_chain": cv_chain_summary,
            "baseline_rule_on_real_chain_argmax": base_chain_summary,
            "real_chain": "the night's sleep window (100 epochs margin) rendered as synthetic EEG "
                          "(appliance.synthetic_eeg, seed 1000 + night number) and run through appliance.dsp "
                          f"and appliance.stager (stager sha256 {stager_sha})" if stager_sha else None,
            "shipped_model_on_all_nights_incl_training": train_fit,
            "per_night_held_out": cv,
            "per_night_held_out_real_chain": cv_chain,
        },
        "caveats": [
            "No real nightmare is labelled in this data: these are healthy nights; the label is the operational "
            "loop definition (docs/loops.md), which healthy sleep meets in about 1 night in 6.",
            "Stage probabilities and arousal features are simulated, not measured; performance on the box "
            "depends on the real stager and DSP.",
            "Only 11 loop episodes exist in the 41 real nights; the sensitivity estimate is coarse.",
            "The real-chain figures use synthetic EEG, and the stager was trained on synthetic EEG rendered from "
            "these same hypnograms: its errors there are fewer than on real EEG.",
        ],
        "training_time_s": round(time.time() - t_start, 1),
    }
    (args.out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    (args.out / "MODEL_CARD.md").write_text(render_model_card(card))
    logger.info("wrote %s (%d bytes, sha256 %s) in %.0f s", path, len(blob), sha, time.time() - t_start)
    print(json.dumps({"held_out": cv_summary, "baseline": base_summary, "held_out_chain": cv_chain_summary,
                      "baseline_chain": base_chain_summary, "all_nights": train_fit}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
