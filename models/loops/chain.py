"""Loop-model inputs from the box's real upstream chain, run on synthetic EEG that follows a real hypnogram.

:mod:`models.loops.simulate` invents stager output with independent per-epoch errors. The real stager's
errors are not independent: it tends to call short N1 runs after wake "REM", which looks like a return.
So the trainer also observes each night through the chain the box runs:
``SyntheticSleepEEG`` (the sleeper stand-in, with distressed arousals after REM) -> ``appliance.dsp``
(``epoch_quality``, ``arousal_features`` on the raw chip-rate signal) -> ``appliance.stager.Stager``
(causal stage probabilities). Only the EEG is synthetic; the code after it is the box's.

Caveat, stated in the model card: the stager was itself trained on synthetic EEG rendered from these same
hypnograms, so its output here is better than it would be on real EEG.

Observations are cached (``.npz`` per night, seed and stager sha256) because rendering and staging a
night costs ~10-20 s of CPU.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from appliance.protocol.stages import Stage

logger = logging.getLogger(__name__)

FS_HZ = 250.0
"""Chip rate the synthetic EEG is rendered at (the box's default)."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bedtime" / "loops-chain"


def sleep_window(stages: np.ndarray, *, margin_epochs: int = 100) -> tuple[int, int]:
    """``(start, stop)`` epoch slice from ``margin_epochs`` before the first sleep epoch to that many after the last."""
    asleep = np.flatnonzero(np.asarray(stages) > 0)
    if not len(asleep):
        return 0, len(stages)
    return max(0, int(asleep[0]) - margin_epochs), min(len(stages), int(asleep[-1]) + 1 + margin_epochs)


def chain_features(stages: np.ndarray, *, seed: int, stager=None, cache_dir: Path | None = None) -> np.ndarray:
    """The loop model's features for every epoch of ``stages``, through the real chain.

    Parameters
    ----------
    stages : numpy.ndarray
        The (true) stage sequence to render; UNSCORED epochs are rendered as wake.
    seed : int
        Seed of the synthetic sleeper.
    stager : appliance.stager.Stager or None
        Reused when given (it is reset here).
    cache_dir : Path or None
        Where to cache; None = no cache.

    Returns
    -------
    numpy.ndarray, shape (len(stages), N_FEATURES), float32
    """
    from appliance.dsp import arousal_features, epoch_quality
    from appliance.epoch import Epoch
    from appliance.loop_model import epoch_features
    from appliance.stager import Stager
    from appliance.synthetic_eeg import SyntheticSleepEEG

    st = stager or Stager()
    hyp = np.where(np.asarray(stages) < 0, int(Stage.W), np.asarray(stages)).astype(np.int8)
    key = hashlib.sha256(hyp.tobytes() + f"{seed}:{st.sha256}".encode()).hexdigest()[:24]
    path = cache_dir / f"{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        return np.load(path)["features"]
    x = SyntheticSleepEEG(hyp, fs_hz=FS_HZ, n_channels=1, seed=seed).render_channel(0)
    st.reset()
    probs = st.stage_night(x, fs_hz=FS_HZ)
    spe = int(round(30.0 * FS_HZ))
    rows = []
    for i in range(len(hyp)):
        seg = x[i * spe:(i + 1) * spe]
        e = Epoch(index=i, start_sample=i * spe, end_time_s=(i + 1) * 30.0,
                  quality=epoch_quality(seg, fs_hz=FS_HZ), arousal=arousal_features(seg, fs_hz=FS_HZ),
                  stage_probs=probs[i])
        rows.append(epoch_features(e))
    feats = np.stack(rows).astype(np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, features=feats)
    return feats


def chain_jobs(nights: dict[str, np.ndarray], *, augment_every: int = 2) -> list[tuple[str, str, np.ndarray, int]]:
    """The chain observations the trainer uses: ``(night, kind, stages, seed)``.

    Every night's sleep window as scored ("real"), and for every ``augment_every``-th night one copy with
    extra REM interruptions cut in ("augmented", training only). Deterministic, so the cache is reused.
    """
    from models.loops.simulate import insert_returns

    jobs = []
    for i, name in enumerate(sorted(nights)):
        a, b = sleep_window(nights[name])
        s = np.asarray(nights[name][a:b])
        jobs.append((name, "real", s, 1000 + i))
        if augment_every and i % augment_every == 0:
            aug = insert_returns(s, np.random.default_rng([7, i]), n_inserts=10)
            jobs.append((name, "augmented", aug, 2000 + i))
    return jobs


def warm_cache(cache_dir: Path | None = None) -> None:
    """Compute and cache every chain observation (``python -m models.loops.chain``)."""
    import time

    from appliance.hypnogram import real_hypnograms
    from appliance.stager import Stager

    cache_dir = cache_dir or default_cache_dir()
    st = Stager()
    jobs = chain_jobs(real_hypnograms())
    t0 = time.time()
    for k, (name, kind, s, seed) in enumerate(jobs):
        chain_features(s, seed=seed, stager=st, cache_dir=cache_dir)
        logger.info("chain %d/%d %s %s (%d epochs) %.0f s", k + 1, len(jobs), name, kind, len(s), time.time() - t0)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    warm_cache()
