"""Noisy stage probabilities, arousal features and signal quality simulated around real hypnograms.

The loop classifier must work on what the box gives it: a stager's probabilities (sometimes wrong, often
unsure in N1) and DSP arousal markers (noisy), not on an expert hypnogram. We have real hypnograms but
no EEG for them, so we simulate the stager's output around each true stage. The numbers are assumptions,
chosen to be at least as bad as a single-channel stager (N1 is the stage it gets wrong most); they are
listed in :class:`SimNoise` and in the model card.

Also here: :func:`insert_returns`, which makes extra training positives by cutting short W/N1
interruptions into the REM periods of real nights. Only training uses it; evaluation and the replay test
use the real nights unmodified.

Pure numpy: the tests and the bench use this module without TensorFlow.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from appliance.epoch import ArousalFeatures, Epoch, SignalQuality
from appliance.protocol.stages import EPOCH_S, Stage

# Rows: true stage W, N1, N2, N3, REM; columns: the stage a confused stager believes.
_CONFUSION = np.array([
    [0.00, 0.60, 0.10, 0.00, 0.30],  # W mistaken mostly for N1
    [0.35, 0.00, 0.35, 0.00, 0.30],  # N1 for W, N2 or REM
    [0.05, 0.30, 0.00, 0.45, 0.20],  # N2 for N1, N3 or REM
    [0.00, 0.00, 1.00, 0.00, 0.00],  # N3 for N2
    [0.15, 0.55, 0.30, 0.00, 0.00],  # REM for N1, N2 or W
])


@dataclass(frozen=True)
class SimNoise:
    """Assumed stager and DSP behaviour (all probabilities per 30-s epoch).

    Attributes
    ----------
    p_confused : tuple of float
        Probability, per true stage (W, N1, N2, N3, REM), that the stager's top stage is wrong.
    logit_boost : tuple of float
        (low, high) range of the extra logit given to the believed stage (higher = more confident).
    p_bad_quality : tuple of float
        Probability per true stage that the epoch's signal quality is not ok (artefact, lead-off).
    arousal_mean : dict
        Mean of each arousal feature per true stage.
    arousal_sd : float
        Standard deviation of the Gaussian noise on every arousal feature (before clipping to 0..1).
    """

    p_confused: tuple[float, ...] = (0.10, 0.45, 0.12, 0.15, 0.12)
    logit_boost: tuple[float, float] = (1.0, 4.0)
    p_bad_quality: tuple[float, ...] = (0.10, 0.03, 0.01, 0.01, 0.02)
    arousal_mean: dict = field(default_factory=lambda: {
        #               W     N1    N2    N3    REM
        "alpha_rel": (0.25, 0.12, 0.07, 0.04, 0.09),
        "beta_rel": (0.32, 0.16, 0.10, 0.05, 0.15),
        "high_freq_rel": (0.25, 0.10, 0.06, 0.04, 0.04),
        "movement_fraction": (0.15, 0.03, 0.01, 0.005, 0.01),
    })
    arousal_sd: float = 0.05


DEFAULT_NOISE = SimNoise()
ARRAY_FEATURES = ("alpha_rel", "beta_rel", "high_freq_rel", "movement_fraction")


@dataclass
class SimulatedNight:
    """A real hypnogram with simulated per-epoch observations (arrays, one row per epoch)."""

    stages: np.ndarray          # (n,) int8, the true stages
    probs: np.ndarray           # (n, 5) float32, simulated stager output
    arousal: np.ndarray         # (n, 4) float32, ARRAY_FEATURES
    quality_ok: np.ndarray      # (n,) bool
    artefact_fraction: np.ndarray  # (n,) float32

    def features(self) -> np.ndarray:
        """The loop model's features, ``(n, N_FEATURES)`` float32 (order of ``appliance.loop_model.FEATURE_NAMES``)."""
        return np.concatenate([self.probs, self.arousal, self.quality_ok[:, None].astype(np.float32),
                               self.artefact_fraction[:, None]], axis=1).astype(np.float32)

    def epochs(self) -> list[Epoch]:
        """The same night as the pipeline's :class:`~appliance.epoch.Epoch` records (for replay)."""
        out = []
        for i in range(len(self.stages)):
            flags = frozenset() if self.quality_ok[i] else frozenset({"artefact"})
            a = self.arousal[i]
            out.append(Epoch(
                index=i, start_sample=int(i * EPOCH_S * 250), end_time_s=(i + 1) * EPOCH_S,
                quality=SignalQuality(ok=bool(self.quality_ok[i]), flags=flags,
                                      artefact_fraction=float(self.artefact_fraction[i])),
                arousal=ArousalFeatures(alpha_rel=float(a[0]), beta_rel=float(a[1]),
                                        high_freq_rel=float(a[2]), movement_fraction=float(a[3])),
                stage_probs=self.probs[i].astype(np.float64)))
        return out


def simulate_night(stages: np.ndarray, rng: np.random.Generator, *,
                   noise: SimNoise = DEFAULT_NOISE) -> SimulatedNight:
    """Simulate the stager's and DSP's output for a true stage sequence.

    Unscored epochs are treated as wake with bad signal quality (they are mostly lights-on or
    movement in Sleep-EDF).
    """
    s = np.asarray(stages, dtype=np.int64)
    n = len(s)
    unscored = s < 0
    true = np.where(unscored, int(Stage.W), s)
    believed = true.copy()
    confused = rng.random(n) < np.asarray(noise.p_confused)[true]
    for i in np.flatnonzero(confused):
        believed[i] = rng.choice(5, p=_CONFUSION[true[i]])
    logits = rng.normal(0.0, 0.6, size=(n, 5))
    logits[np.arange(n), believed] += rng.uniform(*noise.logit_boost, size=n)
    # A confused stager still keeps some belief in the truth.
    logits[np.arange(n), true] += np.where(confused, rng.uniform(0.0, 1.5, size=n), 0.0)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)

    means = np.stack([np.asarray(noise.arousal_mean[k])[true] for k in ARRAY_FEATURES], axis=1)
    arousal = np.clip(means + rng.normal(0.0, noise.arousal_sd, size=means.shape), 0.0, 1.0)

    bad = (rng.random(n) < np.asarray(noise.p_bad_quality)[true]) | unscored
    artefact = np.where(bad, rng.uniform(0.3, 1.0, size=n), rng.uniform(0.0, 0.05, size=n))
    return SimulatedNight(stages=np.asarray(stages, dtype=np.int8), probs=probs.astype(np.float32),
                          arousal=arousal.astype(np.float32), quality_ok=~bad,
                          artefact_fraction=artefact.astype(np.float32))


EVAL_SEED = 20240601
"""Seed of the simulated stager output on evaluation/replay nights (training uses other seeds)."""


def simulate_eval_night(stages: np.ndarray, night_number: int) -> SimulatedNight:
    """The fixed simulated observation of real night number ``night_number`` (its index in sorted names).

    The trainer's held-out evaluation, the replay test and the bench all use this, so they see the same inputs.
    """
    return simulate_night(stages, np.random.default_rng([EVAL_SEED, night_number]))


def insert_returns(stages: np.ndarray, rng: np.random.Generator, *, n_inserts: int,
                   max_len: int = 8, decoy_fraction: float = 0.35) -> np.ndarray:
    """Cut short interruptions into REM periods of a real night (training augmentation).

    Each insert replaces 1..``max_len`` epochs inside a REM run (keeping REM on both sides) with either
    a W/N1 arousal (a return, by the definition) or, for ``decoy_fraction`` of them, a decoy the
    definition rejects (N1 only, or one with an N2 epoch) so the model learns the difference.

    Returns
    -------
    numpy.ndarray
        A new stage sequence of the same length; labels must be recomputed from it.
    """
    s = np.array(stages, dtype=np.int8, copy=True)
    W, N1, N2, R = int(Stage.W), int(Stage.N1), int(Stage.N2), int(Stage.REM)
    for _ in range(n_inserts):
        rem_idx = np.flatnonzero(s == R)
        if len(rem_idx) < 3:
            break
        # Choose a REM epoch with REM before it, then cut an interruption that ends before the next non-REM.
        start = int(rng.choice(rem_idx))
        if start == 0 or s[start - 1] != R:
            continue
        end = start
        limit = start + int(rng.integers(1, max_len + 1))
        while end < min(limit, len(s) - 1) and s[end + 1] == R:
            end += 1
        if end + 1 >= len(s) or s[end + 1] != R or end < start:
            continue
        length = end - start + 1
        if rng.random() < decoy_fraction:
            seg = np.full(length, N1, dtype=np.int8)
            if rng.random() < 0.5:
                seg[int(rng.integers(0, length))] = N2
                seg[int(rng.integers(0, length))] = W
        else:
            seg = rng.choice(np.array([W, N1], dtype=np.int8), size=length, p=[0.6, 0.4])
            seg[int(rng.integers(0, length))] = W
        s[start:end + 1] = seg
    return s
