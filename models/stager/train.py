"""Train the causal stage model and export it as an int8 TFLite file with its model card.

Usage (``make model`` runs the first form)::

    python -m models.stager.train                                  # synthetic nights from ../shared hypnograms
    python -m models.stager.train --sleep-edf /data/sleep-edf/sleep-cassette   # + real Sleep-EDF EEG
    python -m models.stager.train --sleep-edf DIR --no-synthetic   # real EEG only

Data
----
* Synthetic: one synthetic night (:class:`appliance.synthetic_eeg.SyntheticSleepEEG`, 250 SPS, artefacts
  on) per real expert hypnogram in ``../shared/data/hypnograms`` (Sleep-EDF SC + YASA), trimmed to
  30 min before sleep onset .. 30 min after the last sleep epoch. Training subjects get
  ``--renders`` renders each with different subject traits.
* Sleep-EDF Expanded (:mod:`models.stager.sleepedf`): channel Fpz-Cz at 100 Hz, R&K mapped to AASM,
  trimmed the same way.

Every recording goes through :func:`appliance.dsp.preprocess` and :func:`appliance.stager.epoch_features`,
the very code the box runs. Splits are by subject (:data:`TEST_SUBJECTS`, :data:`VAL_SUBJECTS`); no
subject is in two splits. The DREAMS data are never read here.

Needs TensorFlow (``pip install -e '.[train]'``). Run it with ``nice``: about 10 min of CPU.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.dsp import preprocess
from appliance.hypnogram import real_hypnograms, subject_of
from appliance.protocol.stages import STAGE_NAMES, Stage
from appliance.stager import (
    FEATURE_NAMES, MODEL_FEATURE_NAMES, N_FEATURES, N_MODEL_FEATURES, NORM_PRIOR_EPOCHS, context_windows, model_inputs,
    night_features,
)
from appliance.synthetic_eeg import SyntheticSleepEEG
from models.tflite_export import export_int8

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
MODEL_PATH = HERE / "stager.tflite"
CARD_PATH = HERE / "model_card.json"

CONTEXT_EPOCHS = 10
"""Epochs the model sees: the current one and the 9 before it (5 min of past, no future)."""

TRIM_EPOCHS = 60
"""Wake kept before sleep onset and after the last sleep epoch (30 min), as usual for Sleep-EDF."""

# Held out by subject: these subjects' nights are never seen in training. The YASA full-night file is
# from yet another (anonymous) subject.
TEST_SUBJECTS = ("sleep-edf-03", "sleep-edf-08", "sleep-edf-13", "sleep-edf-18", "data_full_6hrs_100Hz_hypno_30s")
VAL_SUBJECTS = ("sleep-edf-05", "sleep-edf-15")


@dataclass
class Night:
    """One recording's features and labels."""

    name: str
    subject: str
    source: str  # "synthetic" or "sleep-edf"
    features: np.ndarray  # (n_epochs, N_FEATURES)
    labels: np.ndarray  # (n_epochs,) Stage values, UNSCORED allowed


def trim_to_sleep(hyp: np.ndarray, *, margin: int = TRIM_EPOCHS) -> slice:
    """Slice of a hypnogram from ``margin`` epochs before sleep onset to ``margin`` after the last sleep."""
    asleep = np.flatnonzero(np.isin(hyp, [Stage.N1, Stage.N2, Stage.N3, Stage.REM]))
    if len(asleep) == 0:
        return slice(0, len(hyp))
    return slice(max(0, asleep[0] - margin), min(len(hyp), asleep[-1] + 1 + margin))


def synthetic_seed(name: str, render: int) -> int:
    """A stable generator seed per (recording, render); sha256 so it does not depend on Python's hash()."""
    return int.from_bytes(hashlib.sha256(f"{name}/{render}".encode()).digest()[:4], "little")


SYNTHETIC_RATES_HZ = (100.0, 128.0, 200.0, 250.0, 256.0, 500.0, 512.0)
"""Rates ``--population wide`` nights are drawn at (PSG systems record EEG at 100-512 Hz; the box at 250 SPS)."""


def synthetic_rate(name: str, render: int) -> float:
    """The sampling rate of one wide-population night, fixed by (recording, render) like its seed."""
    return SYNTHETIC_RATES_HZ[synthetic_seed(name, render) % len(SYNTHETIC_RATES_HZ)]


def synthetic_night(name: str, hyp: np.ndarray, *, render: int = 0, population: str = "typical") -> Night:
    """Render one synthetic night that follows ``hyp`` and compute its features.

    ``population="typical"``: drawn at 250 Hz (the shipped model's recipe); ``"wide"``: the real world's
    spread of sleepers (:meth:`appliance.synthetic_eeg.SubjectTraits.draw_wide`) at :func:`synthetic_rate`.
    """
    hyp = hyp[trim_to_sleep(hyp)]
    fs_hz = synthetic_rate(name, render) if population == "wide" else 250.0
    gen = SyntheticSleepEEG(hyp, fs_hz=fs_hz, n_channels=1, seed=synthetic_seed(name, render), population=population)
    x = gen.render_channel(0)
    feats = night_features(preprocess(x, fs_hz=fs_hz))
    return Night(f"{name}#{render}", subject_of(name), "synthetic", feats, hyp[:len(feats)])


def synthetic_nights(*, renders: int = 2, max_nights: int | None = None, population: str = "typical") -> list[Night]:
    """Synthetic nights for every real hypnogram in ../shared (extra renders only for training subjects)."""
    hyps = real_hypnograms()
    if not hyps:
        raise SystemExit("no hypnograms found in ../shared/data/hypnograms: cannot build synthetic nights")
    nights = []
    items = sorted(hyps.items())[:max_nights]
    for i, (name, hyp) in enumerate(items):
        subj = subject_of(name)
        n_r = renders if subj not in TEST_SUBJECTS + VAL_SUBJECTS else 1
        for r in range(n_r):
            t0 = time.process_time()
            nights.append(synthetic_night(name, hyp, render=r, population=population))
            logger.info("[%d/%d] %s render %d: %d epochs, %.1f s CPU", i + 1, len(items), name, r,
                        len(nights[-1].labels), time.process_time() - t0)
    return nights


def sleep_edf_nights(directory: Path) -> list[Night]:
    """Real Sleep-EDF recordings from a PhysioNet-layout directory."""
    from models.stager.sleepedf import find_recordings, load_recording

    nights = []
    for psg, hyp_path in find_recordings(directory):
        rec = load_recording(psg, hyp_path)
        sl = trim_to_sleep(rec.hypnogram)
        spe = int(round(30.0 * rec.fs_hz))
        x = rec.eeg_uv[sl.start * spe:sl.stop * spe]
        feats = night_features(preprocess(x, fs_hz=rec.fs_hz))
        nights.append(Night(rec.name, rec.subject, "sleep-edf", feats, rec.hypnogram[sl][:len(feats)]))
        logger.info("%s: %d epochs", rec.name, len(feats))
    return nights


MID_NIGHT_STARTS = 2
"""``--mid-night-starts``' usual value: extra copies of each training night that start part-way through it (a
box restarted at 3 am, a PSG excerpt), so the per-recording normalisation sees nights that did not begin
with wake. Off by default (the shipped model's recipe)."""

MIN_CROP_EPOCHS = 120


def night_starts(night: Night, crops: int) -> list[int]:
    """Where the copies of a night start: 0, then ``crops`` random epochs (seeded by the night's name)."""
    n = len(night.features)
    if crops <= 0 or n <= MIN_CROP_EPOCHS:
        return [0]
    rng = np.random.default_rng(synthetic_seed(night.name, 0xC0))
    return [0] + sorted(int(v) for v in rng.integers(1, n - MIN_CROP_EPOCHS, size=crops))


def windows_and_labels(nights: list[Night], prior_mean: np.ndarray | None, *,
                       crops: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Causal context windows (flattened) of the model inputs, and labels, of all scored epochs of the nights.

    The model inputs are each epoch's features, and with a ``prior_mean`` also their deviation from the
    night-so-far mean (:func:`appliance.stager.model_inputs`), as the box computes them; with ``crops``, also
    of that many copies of each night started part-way (:func:`night_starts`).
    """
    xs, ys = [], []
    for n in nights:
        for start in night_starts(n, crops):
            feats, labels = n.features[start:], n.labels[start:]
            inputs = feats if prior_mean is None else model_inputs(feats, prior_mean)
            w = context_windows(inputs, CONTEXT_EPOCHS)
            keep = labels >= 0
            xs.append(w[keep].reshape(int(keep.sum()), -1))
            ys.append(labels[keep])
    if not xs:
        n_in = N_FEATURES if prior_mean is None else N_MODEL_FEATURES
        return np.empty((0, CONTEXT_EPOCHS * n_in), np.float32), np.empty(0, np.int64)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def transition_matrix(nights: list[Night]) -> tuple[np.ndarray, np.ndarray]:
    """Stage transition probabilities and stage prior counted on training hypnograms (add-one smoothed)."""
    counts = np.ones((5, 5))
    prior = np.ones(5)
    for n in nights:
        lab = n.labels
        for a, b in zip(lab[:-1], lab[1:]):
            if a >= 0 and b >= 0:
                counts[a, b] += 1
        for s in range(5):
            prior[s] += np.sum(lab == s)
    return counts / counts.sum(axis=1, keepdims=True), prior / prior.sum()


def evaluation_summary(card: dict) -> dict:
    """The headline numbers of a card's evaluation, to keep once the model is replaced."""
    ev = card.get("evaluation", {})
    out = {"model_sha256": card.get("sha256"), "evaluated_utc": ev.get("run_utc"),
           "synthetic_causal_accuracy": ev.get("synthetic", {}).get("causal", {}).get("accuracy")}
    for who in ("ours", "yasa"):
        for subset in ("majority_5class", "majority_4class", "unanimous_5class", "unanimous_4class"):
            s = ev.get("dreams", {}).get(who, {}).get(subset)
            if s:
                out[f"dreams_{who}_{subset}"] = {k: round(s[k], 3) for k in ("accuracy", "kappa", "macro_f1")}
        for name, by in ev.get("dreams", {}).get("by_set", {}).items():
            s = by.get(who, {}).get("majority_5class")
            if s:
                out[f"dreams_{who}_{name}_majority_5class"] = {k: round(s[k], 3) for k in ("accuracy", "kappa")}
    out["dreams_excerpts_scored"] = ev.get("dreams", {}).get("excerpt_ids")
    return out


def build_model(n_inputs: int, *, seed: int = 0):
    """A small MLP over the flattened causal window: 10 epochs x 32 inputs -> 64 -> 32 -> 5."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    inp = tf.keras.Input(shape=(n_inputs,), name="features")
    x = tf.keras.layers.GaussianNoise(0.25)(inp)  # features of real EEG are noisier than synthetic ones
    x = tf.keras.layers.Dense(64, activation="relu")(x)
    x = tf.keras.layers.Dropout(0.3)(x)
    x = tf.keras.layers.Dense(32, activation="relu")(x)
    out = tf.keras.layers.Dense(5, activation="softmax", name="stage_probs")(x)
    model = tf.keras.Model(inp, out)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.stager.train", description=__doc__.split("\n")[0])
    ap.add_argument("--sleep-edf", type=Path, help="directory with Sleep-EDF *-PSG.edf + *-Hypnogram.edf files")
    ap.add_argument("--no-synthetic", action="store_true", help="train on --sleep-edf recordings only")
    ap.add_argument("--renders", type=int, default=2, help="synthetic renders per training night (default 2)")
    ap.add_argument("--max-nights", type=int, help="use only the first N hypnograms (smoke test)")
    ap.add_argument("--population", choices=("typical", "wide"), default="typical",
                    help="synthetic sleepers: typical (default, the shipped model) or wide (the real world's spread)")
    ap.add_argument("--normalise", action="store_true",
                    help="add causal per-recording normalisation (each feature's deviation from the night-so-far mean)")
    ap.add_argument("--mid-night-starts", type=int, default=0,
                    help=f"with --normalise: extra copies of each training night started part-way (tried: {MID_NIGHT_STARTS})")
    ap.add_argument("--epochs", type=int, default=40, help="training epochs (early stopping on validation)")
    ap.add_argument("--out", type=Path, default=MODEL_PATH, help="where to write the .tflite (card beside it)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        import tensorflow as tf
    except ImportError:
        print("TensorFlow is not installed: pip install -e '.[train]'", file=sys.stderr)
        return 2
    t_start = time.process_time()

    nights: list[Night] = []
    if not args.no_synthetic:
        nights += synthetic_nights(renders=args.renders, max_nights=args.max_nights, population=args.population)
    if args.sleep_edf:
        nights += sleep_edf_nights(args.sleep_edf)
    if not nights:
        print("no training data", file=sys.stderr)
        return 2
    split = {"train": [], "val": [], "test": []}
    for n in nights:
        key = "test" if n.subject in TEST_SUBJECTS else "val" if n.subject in VAL_SUBJECTS else "train"
        split[key].append(n)
    if not split["val"] and split["train"]:  # tiny runs (smoke tests): hold out the last training subject
        last = split["train"][-1].subject
        split["val"] = [n for n in split["train"] if n.subject == last]
        split["train"] = [n for n in split["train"] if n.subject != last] or split["val"]
    subjects = {k: sorted({n.subject for n in v}) for k, v in split.items()}
    if split["train"] is not split["val"]:
        assert not set(subjects["train"]) & (set(subjects["val"]) | set(subjects["test"])), "subject leak"

    # The population mean the per-night running mean starts from: every training epoch's raw features.
    prior_mean = (np.concatenate([n.features for n in split["train"]]).astype(np.float64).mean(axis=0)
                  if args.normalise else None)
    x_tr, y_tr = windows_and_labels(split["train"], prior_mean, crops=args.mid_night_starts)
    x_va, y_va = windows_and_labels(split["val"], prior_mean)
    n_in = N_MODEL_FEATURES if args.normalise else N_FEATURES
    mean = x_tr.reshape(-1, CONTEXT_EPOCHS, n_in).mean(axis=(0, 1))
    std = x_tr.reshape(-1, CONTEXT_EPOCHS, n_in).std(axis=(0, 1)) + 1e-3
    tile_m, tile_s = np.tile(mean, CONTEXT_EPOCHS), np.tile(std, CONTEXT_EPOCHS)
    z_tr, z_va = (x_tr - tile_m) / tile_s, (x_va - tile_m) / tile_s
    counts = np.bincount(y_tr, minlength=5).astype(float)
    # sqrt-inverse-frequency weights: N1 is rare but must not be ignored, without drowning W/N2 accuracy.
    cw = np.sqrt(counts.sum() / np.maximum(counts, 1.0))
    cw = cw / cw[y_tr].mean() if len(y_tr) else cw
    logger.info("train %d windows %s, val %d; class weights %s", len(y_tr), counts.astype(int).tolist(), len(y_va),
                np.round(cw, 2).tolist())

    model = build_model(z_tr.shape[1])
    stop = tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=4, restore_best_weights=True)
    hist = model.fit(z_tr, y_tr, validation_data=(z_va, y_va), epochs=args.epochs, batch_size=256,
                     class_weight={i: float(w) for i, w in enumerate(cw)}, callbacks=[stop], verbose=2)
    rng = np.random.default_rng(0)
    rep = z_tr[rng.choice(len(z_tr), size=min(2000, len(z_tr)), replace=False)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    blob = export_int8(model, rep, args.out)
    transition, prior = transition_matrix(split["train"])

    card = {
        "name": "bedtime causal sleep stager",
        "version": dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d"),
        "file": args.out.name,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "size_bytes": len(blob),
        "format": "TFLite, int8 weights and activations, int8 input and output",
        "input": (f"({CONTEXT_EPOCHS} epochs x {N_MODEL_FEATURES} inputs: {N_FEATURES} features and their deviation "
                  f"from the night-so-far mean) flattened, standardised with feature_mean/std; current epoch last"
                  if args.normalise else
                  f"({CONTEXT_EPOCHS} epochs x {N_FEATURES} features) flattened, standardised with feature_mean/std; "
                  "current epoch last"),
        "output": "probabilities of W, N1, N2, N3, REM for the last epoch",
        "stage_names": list(STAGE_NAMES),
        "context_epochs": CONTEXT_EPOCHS,
        "future_epochs": 0,
        "feature_names": list(FEATURE_NAMES),
        "input_feature_names": list(MODEL_FEATURE_NAMES if args.normalise else FEATURE_NAMES),
        **({"norm_prior_mean": [float(v) for v in prior_mean], "norm_prior_epochs": NORM_PRIOR_EPOCHS}
           if args.normalise else {}),
        "feature_mean": [float(v) for v in mean],
        "feature_std": [float(v) for v in std],
        "transition_matrix": transition.round(6).tolist(),
        "class_prior": prior.round(6).tolist(),
        "training": {
            "data": sorted({n.source for n in nights}),
            "synthetic_renders_per_training_night": None if args.no_synthetic else args.renders,
            "synthetic_population": args.population,
            "mid_night_starts_per_training_night": args.mid_night_starts,
            "synthetic_rates_hz": list(SYNTHETIC_RATES_HZ) if args.population == "wide" else [250.0],
            "sleep_edf_dir": str(args.sleep_edf) if args.sleep_edf else None,
            "subjects": subjects,
            "nights": {k: [n.name for n in v] for k, v in split.items()},
            "windows": {"train": int(len(y_tr)), "val": int(len(y_va))},
            "class_counts_train": counts.astype(int).tolist(),
            "epochs_run": len(hist.history["loss"]),
            "val_accuracy_keras_float": float(max(hist.history["val_accuracy"])),
            "cpu_seconds": round(time.process_time() - t_start, 1),
            "command": "python -m models.stager.train " + " ".join(argv if argv is not None else sys.argv[1:]),
            "never_used": "DREAMS (evaluation only)",
        },
    }
    card_path = args.out.with_name("model_card.json")
    old = json.loads(card_path.read_text()) if card_path.is_file() else {}
    # Keep the record of earlier models' evaluations: a later model's real-EEG numbers are only
    # meaningful beside what came before (and whether anyone looked at them before retraining).
    card["evaluation_history"] = old.get("evaluation_history", [])
    card["development_log"] = old.get("development_log", [])  # what was looked at, when (MODEL_CARD.md)
    if "evaluation" in old and old.get("sha256") == card["sha256"]:
        card["evaluation"] = old["evaluation"]
    elif "evaluation" in old:
        card["evaluation_history"].append(evaluation_summary(old))
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    logger.info("wrote %s (%d bytes, sha256 %s) and %s", args.out, len(blob), card["sha256"][:12], card_path)
    print(f"model: {args.out} {len(blob)} bytes; run `python -m models.stager.evaluate` for the metrics")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
