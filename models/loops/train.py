"""Train the loop classifier, evaluate it on held-out real nights, export int8 TFLite and the model card.

``python -m models.loops.train`` (``make model``). TensorFlow is imported here and nowhere else
(the ``train`` extra); the box and the tests only load the exported ``loop.tflite``.

What it does
------------
1. Reads the real hypnograms in ``../shared`` (39 Sleep-EDF nights + 2 YASA nights).
2. Subject-wise k-fold cross-validation: for each fold, trains on the other subjects' nights
   (each night several times: with fresh simulated stager noise, and with extra REM interruptions cut
   in by :func:`models.loops.simulate.insert_returns`), exports int8, and evaluates the int8 model on
   the held-out nights *unmodified* (one simulated stager output per night) against the loop label of
   ``appliance/loops.py`` applied to the true hypnogram.
3. Trains the shipped model on all nights the same way, exports ``loop.tflite``, writes
   ``model_card.json`` (with the sha256 the runtime checks) and ``MODEL_CARD.md``.

Budget: about 10 min on two shared CPU cores (run it under ``nice``).
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

from appliance.hypnogram import Stage, real_hypnograms, subject_of
from appliance.loop_model import FEATURE_NAMES, N_FEATURES, WINDOW_EPOCHS, padded_window
from appliance.loops import DEFAULT_DEFINITION, find_loops, loop_active, runs_of_true
from models.loops.simulate import DEFAULT_NOISE, insert_returns, simulate_night

logger = logging.getLogger("models.loops.train")

OUT_DIR = Path(__file__).resolve().parent
MODEL_VERSION = "1.0.0"
THRESHOLD = 0.5
"""P(loop) at or above which the runtime (and this evaluation) counts a detection."""
EVAL_SEED = 20240601
"""Seed of the simulated stager noise on held-out nights; the replay test uses the same."""


def night_windows(features: np.ndarray) -> np.ndarray:
    """All causal windows of a night, ``(n, WINDOW_EPOCHS, N_FEATURES)``, left-padded like the runtime."""
    n = len(features)
    pad = padded_window(features[:0], window=WINDOW_EPOCHS - 1)  # (W-1, F) of "unknown" rows
    full = np.concatenate([pad, features.astype(np.float32)], axis=0)
    win = np.lib.stride_tricks.sliding_window_view(full, (WINDOW_EPOCHS, N_FEATURES))[:, 0]
    assert win.shape == (n, WINDOW_EPOCHS, N_FEATURES)
    return win


def build_training_set(nights: dict[str, np.ndarray], rng: np.random.Generator, *, copies: int,
                       max_inserts: int, keep_far: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Windows and labels from several noisy, augmented copies of each night.

    Windows without any REM in them are easy negatives; only ``keep_far`` of them are kept.
    """
    xs, ys = [], []
    for stages in nights.values():
        for c in range(copies):
            s = stages if c == 0 else insert_returns(stages, rng, n_inserts=int(rng.integers(0, max_inserts + 1)))
            sim = simulate_night(s, rng)
            y = loop_active(s).astype(np.float32)
            win = night_windows(sim.features())
            rem_recent = np.convolve((s == Stage.REM).astype(float), np.ones(WINDOW_EPOCHS))[:len(s)] > 0
            keep = rem_recent | (y > 0) | (rng.random(len(s)) < keep_far)
            xs.append(np.array(win[keep]))
            ys.append(y[keep])
    return np.concatenate(xs), np.concatenate(ys)


def make_model():
    import tensorflow as tf

    k = tf.keras
    inp = k.Input(shape=(WINDOW_EPOCHS, N_FEATURES), name="features")
    x = inp
    # Causal dilated convolutions: receptive field 1 + 2*(1+2+4+8) = 31 epochs, enough to see
    # REM, a 20-epoch interruption and REM again at every position.
    for d in (1, 2, 4, 8):
        x = k.layers.Conv1D(16, 3, padding="causal", dilation_rate=d, activation="relu")(x)
    # Only returns inside the last 60 epochs (the loop window) count; average = a soft count.
    last = k.layers.Cropping1D((WINDOW_EPOCHS - DEFAULT_DEFINITION.loop_window_epochs, 0))(x)
    h = k.layers.Concatenate()([k.layers.GlobalAveragePooling1D()(last), k.layers.GlobalMaxPooling1D()(last)])
    h = k.layers.Dense(16, activation="relu")(h)
    out = k.layers.Dense(1, activation="sigmoid", name="p_loop")(h)
    model = k.Model(inp, out)
    model.compile(optimizer=k.optimizers.Adam(2e-3), loss="binary_crossentropy",
                  metrics=[k.metrics.AUC(name="auc")])
    return model


def fit(nights: dict[str, np.ndarray], *, seed: int, copies: int, max_inserts: int, epochs: int):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x, y = build_training_set(nights, rng, copies=copies, max_inserts=max_inserts)
    pos = float(y.mean())
    logger.info("training set: %d windows, %.1f%% positive", len(y), 100 * pos)
    model = make_model()
    # Square-root balancing: full balancing buys little sensitivity and many false alarms at 0.5.
    w = {0: 1.0, 1: float(np.sqrt((1 - pos) / max(pos, 1e-6)))}
    model.fit(x, y, batch_size=256, epochs=epochs, class_weight=w, verbose=2, shuffle=True)
    return model, x


def export_int8(model, representative: np.ndarray, path: Path) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    rep = representative[np.random.default_rng(0).choice(len(representative), size=min(500, len(representative)),
                                                         replace=False)]
    conv.representative_dataset = lambda: ([r[None].astype(np.float32)] for r in rep)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    blob = conv.convert()
    path.write_bytes(blob)
    return blob


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


def event_metrics(stages: np.ndarray, p: np.ndarray, *, threshold: float = THRESHOLD) -> dict:
    """Compare detections (runs of ``p >= threshold``) with the definition's loop episodes.

    An episode is detected when a detection overlaps it; the delay is the first detected epoch minus
    the onset. A detection run that overlaps no episode is a false detection.
    """
    episodes = find_loops(stages)
    truth = loop_active(stages)
    det = p >= threshold
    delays = []
    for ep in episodes:
        hit = np.flatnonzero(det[ep.onset_epoch:ep.end_epoch + 1])
        if len(hit):
            delays.append(int(hit[0]))
    false = sum(1 for a, b in runs_of_true(det) if not truth[a:b + 1].any())
    return {"episodes": len(episodes), "detected": len(delays), "delays": delays, "false_detections": false,
            "epoch_tp": int((det & truth).sum()), "epoch_fp": int((det & ~truth).sum()),
            "epoch_fn": int((~det & truth).sum())}


def argmax_rule_probability(probs: np.ndarray) -> np.ndarray:
    """Baseline: the definition applied to the stager's argmax (1.0 where it says a loop is under way)."""
    return loop_active(np.argmax(probs, axis=1)).astype(np.float32)


def summarise(per_night: dict[str, dict]) -> dict:
    ep = sum(m["episodes"] for m in per_night.values())
    det = sum(m["detected"] for m in per_night.values())
    delays = [d for m in per_night.values() for d in m["delays"]]
    fd = sum(m["false_detections"] for m in per_night.values())
    tp = sum(m["epoch_tp"] for m in per_night.values())
    fp = sum(m["epoch_fp"] for m in per_night.values())
    fn = sum(m["epoch_fn"] for m in per_night.values())
    n = len(per_night)
    return {
        "nights": n, "episodes": ep, "detected": det,
        "event_sensitivity": round(det / ep, 3) if ep else None,
        "false_detections": fd, "false_detections_per_night": round(fd / n, 3) if n else None,
        "nights_with_false_detection": sum(1 for m in per_night.values() if m["false_detections"]),
        "delay_epochs_median": float(np.median(delays)) if delays else None,
        "delay_epochs_max": int(max(delays)) if delays else None,
        "epoch_precision": round(tp / (tp + fp), 3) if tp + fp else None,
        "epoch_recall": round(tp / (tp + fn), 3) if tp + fn else None,
    }


def folds_by_subject(names: list[str], k: int) -> list[list[str]]:
    subjects = sorted({subject_of(n) for n in names})
    fold_of = {s: i % k for i, s in enumerate(subjects)}
    return [[n for n in names if fold_of[subject_of(n)] == f] for f in range(k)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.loops.train", description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=4, help="subject-wise cross-validation folds (0 = skip)")
    ap.add_argument("--copies", type=int, default=5, help="noisy/augmented copies of each training night")
    ap.add_argument("--max-inserts", type=int, default=12, help="most REM interruptions cut into one copy")
    ap.add_argument("--epochs", type=int, default=6, help="training epochs")
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
    rng_eval = np.random.default_rng(EVAL_SEED)
    eval_sims = {n: simulate_night(nights[n], np.random.default_rng([EVAL_SEED, i])) for i, n in enumerate(names)}
    del rng_eval

    cv: dict[str, dict] = {}
    baseline: dict[str, dict] = {}
    if args.folds:
        for f, held in enumerate(folds_by_subject(names, args.folds)):
            train_n = {n: nights[n] for n in names if n not in held}
            logger.info("fold %d: %d train nights, %d held out", f, len(train_n), len(held))
            model, x = fit(train_n, seed=args.seed + 100 * f, copies=args.copies,
                           max_inserts=args.max_inserts, epochs=args.epochs)
            tmp = args.out / f".fold{f}.tflite"
            export_int8(model, x, tmp)
            for n in held:
                p = predict_night(tmp, eval_sims[n].features())
                cv[n] = event_metrics(nights[n], p)
                baseline[n] = event_metrics(nights[n], argmax_rule_probability(eval_sims[n].probs))
            tmp.unlink()
    cv_summary = summarise(cv) if cv else None
    base_summary = summarise(baseline) if baseline else None
    logger.info("cross-validated (held-out nights): %s", cv_summary)
    logger.info("baseline rule on stager argmax:   %s", base_summary)

    model, x = fit(nights, seed=args.seed, copies=args.copies, max_inserts=args.max_inserts, epochs=args.epochs)
    path = args.out / "loop.tflite"
    blob = export_int8(model, x, path)
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
            "copies_per_night": args.copies, "max_inserts": args.max_inserts, "epochs": args.epochs,
            "simulation": {"p_confused": DEFAULT_NOISE.p_confused, "logit_boost": DEFAULT_NOISE.logit_boost,
                           "p_bad_quality": DEFAULT_NOISE.p_bad_quality, "arousal_sd": DEFAULT_NOISE.arousal_sd},
        },
        "evaluation": {
            "protocol": f"{args.folds}-fold subject-wise cross-validation; each fold's int8 model on its held-out "
                        "real nights (unmodified), with one simulated stager output per night (seed "
                        f"{EVAL_SEED}); truth = the loop definition on the true hypnogram",
            "held_out": cv_summary,
            "baseline_rule_on_stager_argmax": base_summary,
            "shipped_model_on_all_nights_incl_training": train_fit,
            "per_night_held_out": cv,
        },
        "caveats": [
            "No real nightmare is labelled in this data: these are healthy nights; the label is the operational "
            "loop definition (docs/loops.md), which healthy sleep meets in about 1 night in 6.",
            "Stage probabilities and arousal features are simulated, not measured; performance on the box "
            "depends on the real stager and DSP.",
            "Only 11 loop episodes exist in the 41 real nights; the sensitivity estimate is coarse.",
        ],
        "training_time_s": round(time.time() - t_start, 1),
    }
    (args.out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    logger.info("wrote %s (%d bytes, sha256 %s) in %.0f s", path, len(blob), sha, time.time() - t_start)
    print(json.dumps({"held_out": cv_summary, "baseline": base_summary, "all_nights": train_fit}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
