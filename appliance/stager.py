"""Causal sleep staging: one 30-s epoch in, five stage probabilities out, using only the past.

How it works
------------
1. :func:`epoch_features` turns one model-rate epoch (3000 samples at 100 Hz, from
   :mod:`appliance.dsp`) into a short vector of spectral and waveform features, all band-limited to
   0.5-:data:`FEATURE_MAX_HZ` Hz (what a 50-Hz recording carries too): log relative power in
   10 bands, log total power, Hjorth mobility and complexity, spindle-band
   burstiness, power variability within the epoch and the fraction of high-amplitude slow-wave seconds.
   The model card's ``features_used`` says which of them the model takes (all, for cards without it).
2. Optional (the model card says; the shipped model does not use it): causal per-recording normalisation
   (:func:`causal_relative`): each feature's deviation from the mean of the night so far, which starts from
   the training population's mean (:data:`NORM_PRIOR_EPOCHS`). A sleeper's gain, montage and spectral slope
   shift every epoch alike and cancel out; the model gets both.
3. The stager keeps these inputs for the last ``context_epochs`` epochs (5 min by default). Before the
   first epochs exist, the earliest epoch's stand in for them (:func:`context_windows`).
4. The int8 TFLite model (``models/stager/stager.tflite``, trained by ``models/stager/train.py``) maps
   that window, standardised with the constants in its model card, to probabilities of W, N1, N2, N3,
   REM for the **last** epoch. No future epoch is ever used: this is what runs at the bedside.

For the morning report, :meth:`Stager.smooth_night` adds look-ahead: a forward-backward pass of a
hidden Markov model whose transition matrix was counted on the training hypnograms (stored in the card).

The model file is verified against the sha256 in ``model_card.json`` before it is loaded
(:class:`appliance.tflite.TFLiteModel`).
"""
from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

import numpy as np
from appliance import filters as signal  # scipy.signal's designs stored, its filters native: not ~80 MB of scipy

from appliance.dsp import MODEL_FS_HZ, mean_axis, median_last_axis, preprocess, var_axis, welch_psd
from appliance.protocol.stages import EPOCH_S, STAGE_NAMES

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "models" / "stager" / "stager.tflite"
"""The committed stage model; its card (``model_card.json``) sits beside it."""

EPOCH_SAMPLES = int(EPOCH_S * MODEL_FS_HZ)
"""Samples in one epoch at the model rate (3000)."""

FEATURE_MAX_HZ = 18.0
"""Highest frequency any feature sees (Hz). Recordings come at 50-512 Hz; a 50-Hz recording carries nothing
above its anti-alias roll-off (DREAMS excerpt3: nothing above ~22 Hz, and the preprocessor's resampler passes
50-Hz input flat only to ~18 Hz). Features band-limited to what every supported rate has give the same
stages for the same EEG whatever the input rate (``tests/test_stager.py``, rate parity)."""

FEATURE_BANDS_HZ: tuple[tuple[float, float], ...] = (
    (0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 8.0), (8.0, 10.0),
    (10.0, 12.0), (12.0, 14.0), (14.0, 16.0), (16.0, FEATURE_MAX_HZ),
)
"""Bands (Hz) of the relative-power features; 8-12 is alpha, 12-16 spindles, 0.5-2 slow waves."""

FEATURE_NAMES: tuple[str, ...] = tuple(f"logrel_{lo:g}_{hi:g}" for lo, hi in FEATURE_BANDS_HZ) + (
    "log_total_power", "hjorth_mobility", "hjorth_complexity", "sigma_burstiness", "power_variability",
    "slow_wave_fraction",
)
N_FEATURES = len(FEATURE_NAMES)

MODEL_FEATURE_NAMES: tuple[str, ...] = FEATURE_NAMES + tuple(f"rel_{name}" for name in FEATURE_NAMES)
"""What a normalised model sees per epoch: the features, then each one's deviation from the night-so-far mean."""
N_MODEL_FEATURES = len(MODEL_FEATURE_NAMES)

ABSOLUTE_AMPLITUDE_FEATURES: tuple[str, ...] = ("log_total_power", "slow_wave_fraction")
"""The features that depend on the recording's gain in microvolts (every other one is a ratio or a shape).
A model card may leave them out (``features_used``): amplifier gain, electrode distance and the sleeper's
skull change them more than sleep does, and our synthetic sleepers' amplitudes are the generator's."""


def feature_columns(names: "list[str] | tuple[str, ...]") -> list[int]:
    """Columns of :data:`FEATURE_NAMES` a model uses, in the model's order.

    Raises
    ------
    ValueError
        When a name is not one of :data:`FEATURE_NAMES` (a card from another feature set).
    """
    unknown = [n for n in names if n not in FEATURE_NAMES]
    if unknown:
        raise ValueError(f"unknown stager features {unknown}; known: {', '.join(FEATURE_NAMES)}")
    return [FEATURE_NAMES.index(n) for n in names]

NORM_PRIOR_EPOCHS = 10
"""Start-up of the per-recording normalisation, in epochs: the running mean starts as the training
population's mean weighted as if 10 epochs (5 min) of it had been seen, so the first minutes of a night are
compared with the population, and after 30 min the night's own statistics weigh 6/7. (30 was tried first:
on the DREAMS development excerpts the same model scored kappa 0.433 with 30, 0.459 with 10, 0.337 with no
per-recording term at all.)"""

_SIGMA_SOS = signal.butter(4, [11.0, 16.0], btype="bandpass", fs=MODEL_FS_HZ, output="sos")
_DELTA_SOS = signal.butter(4, 2.0, btype="lowpass", fs=MODEL_FS_HZ, output="sos")
# Both filtered from rest over the same epochs, side by side (appliance.filters.sosfilt_lanes): each one alone is a
# chain of dependent operations that leaves the CPU waiting, the two together cost about one.
_SIGMA_DELTA_LANES = signal.filter_lanes(_SIGMA_SOS, _DELTA_SOS)
_SLOW_WAVE_PTP_UV = 75.0  # AASM: N3 slow waves are 0.5-2 Hz with > 75 uV peak to peak
_WELCH_NPERSEG = 2 * MODEL_FS_HZ
_F_HZ = np.fft.rfftfreq(_WELCH_NPERSEG, 1.0 / MODEL_FS_HZ)
# Welch bins -> feature bands as one 0/1 matrix: one matrix product instead of 12 masked sums per epoch.
_BAND_MATRIX = np.stack([((_F_HZ >= lo) & (_F_HZ < hi)).astype(np.float64) for lo, hi in FEATURE_BANDS_HZ], axis=1)
# The epoch's own spectrum cut at FEATURE_MAX_HZ (zero phase, within the epoch): the time-domain features
# (Hjorth, power variability) see the same band as the spectral ones, at every input rate.
_EPOCH_F_HZ = np.fft.rfftfreq(EPOCH_SAMPLES, 1.0 / MODEL_FS_HZ)
_EPOCH_LOWPASS = (_EPOCH_F_HZ <= FEATURE_MAX_HZ).astype(np.float64)


def epoch_features(epoch_model_rate: np.ndarray) -> np.ndarray:
    """Features of one preprocessed epoch (see the module docstring), float32, shape (N_FEATURES,).

    Parameters
    ----------
    epoch_model_rate : numpy.ndarray, shape (3000,)
        One 30-s epoch in microvolts at :data:`~appliance.dsp.MODEL_FS_HZ`, from :mod:`appliance.dsp`.
    """
    x = np.asarray(epoch_model_rate, dtype=np.float64)
    if x.shape != (EPOCH_SAMPLES,):
        raise ValueError(f"an epoch at {MODEL_FS_HZ} Hz has {EPOCH_SAMPLES} samples, got {x.shape}")
    return _features(x[None, :])[0]


def _features(epochs: np.ndarray) -> np.ndarray:
    """Features of a stack of epochs, shape (n, 3000) -> (n, N_FEATURES). Each row is independent.

    The live path calls it with one epoch, :func:`night_features` with blocks of many (vectorised:
    several times faster per epoch); both give the same numbers.
    """
    # Each step is the straightforward numpy expression's own operations on the same values (np.mean, np.var,
    # np.diff, np.ptp spelled out; tests/test_stager.py keeps that version as the reference): at one epoch,
    # numpy's Python bookkeeping around them costs as much as the arithmetic.
    finite = np.isfinite(epochs)
    x = epochs if finite.all() else np.where(finite, epochs, 0.0)
    x = x - mean_axis(x, 1, keepdims=True)
    x = np.fft.irfft(np.fft.rfft(x, axis=1) * _EPOCH_LOWPASS, n=EPOCH_SAMPLES, axis=1)
    n = len(x)
    eps = 1e-6
    _, p = welch_psd(x, fs_hz=MODEL_FS_HZ, nperseg=_WELCH_NPERSEG)
    band_power = p @ _BAND_MATRIX
    total = band_power.sum(axis=1) + eps
    out = np.empty((n, N_FEATURES), dtype=np.float32)  # float64 results rounded once on assignment, as astype
    out[:, :len(FEATURE_BANDS_HZ)] = np.log10(band_power / total[:, None] + eps)
    out[:, len(FEATURE_BANDS_HZ)] = np.log10(total)
    dx = x[:, 1:] - x[:, :-1]
    ddx = dx[:, 1:] - dx[:, :-1]
    var0, var1, var2 = var_axis(x, 1) + eps, var_axis(dx, 1) + eps, var_axis(ddx, 1) + eps
    mobility = np.sqrt(var1 / var0)
    out[:, len(FEATURE_BANDS_HZ) + 1] = mobility
    out[:, len(FEATURE_BANDS_HZ) + 2] = np.sqrt(var2 / var1) / mobility
    # Spindles and K-complexes are transients: compare each 2-s window with the epoch's typical one.
    filtered = signal.sosfilt_lanes(_SIGMA_DELTA_LANES, x)
    sigma = filtered[:, 0].reshape(n, 15, -1)
    sigma_rms = np.sqrt(mean_axis(sigma * sigma, 2)) + eps
    out[:, len(FEATURE_BANDS_HZ) + 3] = np.log10(sigma_rms.max(axis=1) / median_last_axis(sigma_rms))
    windows = x.reshape(n, 15, -1)
    win_power = mean_axis(windows * windows, 2) + eps
    out[:, len(FEATURE_BANDS_HZ) + 4] = np.sqrt(var_axis(np.log10(win_power), 1))
    slow = filtered[:, 1].reshape(n, 30, -1)
    swings = np.subtract(slow.max(axis=2), slow.min(axis=2)) > _SLOW_WAVE_PTP_UV
    out[:, len(FEATURE_BANDS_HZ) + 5] = np.count_nonzero(swings, axis=1) / swings.shape[1]
    return out


def night_features(x_model_rate: np.ndarray) -> np.ndarray:
    """Features of every whole epoch of a preprocessed night, shape (n_epochs, N_FEATURES)."""
    n = len(x_model_rate) // EPOCH_SAMPLES
    if n == 0:
        return np.empty((0, N_FEATURES), dtype=np.float32)
    epochs = np.asarray(x_model_rate, dtype=np.float64)[:n * EPOCH_SAMPLES].reshape(n, -1)
    # Blocks of 32 epochs keep each block's Welch segments (about 1.5 MB) in cache; 256 was slower.
    return np.concatenate([_features(epochs[i:i + 32]) for i in range(0, n, 32)])


def causal_relative(features: np.ndarray, prior_mean: np.ndarray, *,
                    prior_epochs: float = NORM_PRIOR_EPOCHS) -> np.ndarray:
    """Each epoch's features minus the mean of the recording so far (that epoch included): causal.

    A person's or a montage's offsets (gain in ``log_total_power``, a flatter or steeper spectrum in every
    ``logrel_*``) cancel out; what is left is how this epoch differs from this sleeper's night so far.

    Parameters
    ----------
    features : numpy.ndarray, shape (n_epochs, N_FEATURES)
        One recording's features, in time order.
    prior_mean : numpy.ndarray, shape (N_FEATURES,)
        The training population's mean: where the running mean starts.
    prior_epochs : float
        How many epochs the prior counts for (:data:`NORM_PRIOR_EPOCHS`).

    Returns
    -------
    numpy.ndarray, float32, same shape as ``features``.
    """
    f = np.asarray(features, dtype=np.float64)
    seen = np.arange(1, len(f) + 1, dtype=np.float64)[:, None]
    running = (prior_epochs * np.asarray(prior_mean, dtype=np.float64) + np.cumsum(f, axis=0)) / (prior_epochs + seen)
    return (f - running).astype(np.float32)


def model_inputs(features: np.ndarray, prior_mean: np.ndarray, *,
                 prior_epochs: float = NORM_PRIOR_EPOCHS) -> np.ndarray:
    """The model's per-epoch inputs: features and :func:`causal_relative`, shape (n_epochs, N_MODEL_FEATURES)."""
    f = np.asarray(features, dtype=np.float32)
    return np.concatenate([f, causal_relative(f, prior_mean, prior_epochs=prior_epochs)], axis=1)


def context_windows(features: np.ndarray, context_epochs: int) -> np.ndarray:
    """Causal windows over a night's features: window i holds epochs i-K+1 .. i, current epoch last.

    Epochs before the recording started are stood in for by the first epoch (as the live stager does
    after :meth:`Stager.reset`). Training uses this very function.

    Returns
    -------
    numpy.ndarray, shape (n_epochs, context_epochs, n_features)
    """
    f = np.asarray(features)
    if len(f) == 0:
        return np.empty((0, context_epochs, f.shape[-1]), dtype=f.dtype)
    padded = np.concatenate([np.repeat(f[:1], context_epochs - 1, axis=0), f])
    idx = np.arange(len(f))[:, None] + np.arange(context_epochs)[None, :]
    return padded[idx]


def forward_backward(probs: np.ndarray, transition: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Posterior stage probabilities of an HMM given per-epoch classifier posteriors.

    The classifier's posteriors divided by the class prior serve as scaled emission likelihoods (the
    usual hybrid HMM trick); ``transition[i, j]`` is P(next = j | now = i).
    """
    p = np.asarray(probs, dtype=np.float64)
    n, k = p.shape
    if n == 0:
        return p.copy()
    like = np.clip(p, 1e-6, None) / np.clip(prior, 1e-6, None)
    alpha = np.empty((n, k))
    beta = np.ones((n, k))
    a = prior * like[0]
    alpha[0] = a / a.sum()
    for t in range(1, n):
        a = (alpha[t - 1] @ transition) * like[t]
        alpha[t] = a / a.sum()
    for t in range(n - 2, -1, -1):
        b = transition @ (like[t + 1] * beta[t + 1])
        beta[t] = b / b.sum()
    post = alpha * beta
    return post / post.sum(axis=1, keepdims=True)


class Stager:
    """The causal sleep stager the box runs, one epoch at a time.

    Parameters
    ----------
    model_path : str or Path, optional
        The ``.tflite`` model (default :data:`DEFAULT_MODEL_PATH`). Its ``model_card.json`` must sit
        beside it: it holds the sha256 (checked before loading), the feature standardisation, the context
        length and the HMM used by :meth:`smooth_night`.
    expected_sha256 : str, optional
        Overrides the card's sha256 (e.g. a digest pinned in the box's config).
    num_threads : int
        TFLite interpreter threads.

    Raises
    ------
    appliance.tflite.ModelIntegrityError
        When the model file does not match its expected sha256.
    """

    def __init__(self, model_path: str | Path | None = None, *, expected_sha256: str | None = None,
                 num_threads: int = 1) -> None:
        from appliance.tflite import TFLiteModel, load_model_card

        self.model_path = Path(model_path) if model_path is not None else DEFAULT_MODEL_PATH
        card_path = self.model_path.with_name("model_card.json")
        if not card_path.is_file():
            raise FileNotFoundError(f"{card_path}: the stage model needs its model card beside it")
        self.card = load_model_card(card_path)
        try:
            self.context_epochs = int(self.card["context_epochs"])
            self._mean = np.asarray(self.card["feature_mean"], dtype=np.float32)
            self._std = np.asarray(self.card["feature_std"], dtype=np.float32)
            # Per-recording normalisation is the card's choice: a model trained with it carries the population
            # mean it starts from; one trained without it (the shipped model, see its card) sees the features only.
            self.normalised = "norm_prior_mean" in self.card
            # Which features the model takes (cards from before the choice: all of them, in FEATURE_NAMES order).
            self._columns = feature_columns(self.card.get("features_used", FEATURE_NAMES))
            self._prior_mean = np.asarray(self.card.get("norm_prior_mean", np.zeros(len(self._columns))),
                                          dtype=np.float64)
            self._prior_epochs = float(self.card.get("norm_prior_epochs", NORM_PRIOR_EPOCHS))
            self._transition = np.asarray(self.card["transition_matrix"], dtype=np.float64)
            self._prior = np.asarray(self.card["class_prior"], dtype=np.float64)
        except KeyError as e:
            raise ValueError(f"{card_path}: missing key {e}") from None
        n_used = len(self._columns)
        self.n_inputs = 2 * n_used if self.normalised else n_used
        if self._mean.shape != (self.n_inputs,) or self._std.shape != (self.n_inputs,):
            raise ValueError(f"{card_path}: feature_mean/std must have {self.n_inputs} values (features changed?)")
        if self._prior_mean.shape != (n_used,):
            raise ValueError(f"{card_path}: norm_prior_mean must have {n_used} values (features changed?)")
        self.model = TFLiteModel(self.model_path, expected_sha256=expected_sha256 or self.card.get("sha256"),
                                 num_threads=num_threads)
        expected_shape = (1, self.context_epochs * self.n_inputs)
        if self.model.input_shape != expected_shape:
            raise ValueError(f"{self.model_path}: input shape {self.model.input_shape}, expected {expected_shape}")
        self.sha256 = self.model.sha256
        self._history: deque[np.ndarray] = deque(maxlen=self.context_epochs)
        self._night_sum = np.zeros(n_used)
        self._night_epochs = 0

    def reset(self) -> None:
        """Forget the context and the night's running statistics (a new night starts)."""
        self._history.clear()
        self._night_sum = np.zeros(len(self._columns))
        self._night_epochs = 0

    def stage_epoch(self, epoch_model_rate: np.ndarray) -> np.ndarray:
        """Stage the epoch that just ended.

        Parameters
        ----------
        epoch_model_rate : numpy.ndarray, shape (3000,)
            The epoch in microvolts at 100 Hz, from :class:`appliance.dsp.StreamingPreprocessor`.

        Returns
        -------
        numpy.ndarray, shape (5,)
            Probabilities of W, N1, N2, N3, REM (sum 1), from this and the previous epochs only.
        """
        feats = raw = epoch_features(epoch_model_rate)[self._columns]
        if self.normalised:
            # The running mean as causal_relative computes it offline, kept as a sum over the night so far.
            self._night_sum += raw.astype(np.float64)
            self._night_epochs += 1
            running = ((self._prior_epochs * self._prior_mean + self._night_sum)
                       / (self._prior_epochs + self._night_epochs))
            feats = np.concatenate([raw, (raw.astype(np.float64) - running).astype(np.float32)])
        if not self._history:
            self._history.extend([feats] * (self.context_epochs - 1))
        self._history.append(feats)
        return self._predict_window(np.stack(self._history))

    def _predict_window(self, window: np.ndarray) -> np.ndarray:
        z = (window - self._mean) / self._std
        p = np.asarray(self.model.predict(z.reshape(1, -1)), dtype=np.float64).ravel()
        p = np.clip(p, 0.0, None)
        s = p.sum()
        return p / s if s > 0 else np.full(len(STAGE_NAMES), 1.0 / len(STAGE_NAMES))

    def stage_night(self, x_uv: np.ndarray, *, fs_hz: float) -> np.ndarray:
        """Stage a whole recording offline with the causal model (same code as the live path).

        The live context is left untouched.

        Parameters
        ----------
        x_uv : numpy.ndarray, shape (n,)
            The staging channel in microvolts.
        fs_hz : float
            Its sampling rate (Hz).

        Returns
        -------
        numpy.ndarray, shape (n_epochs, 5): probabilities per whole 30-s epoch.
        """
        y = preprocess(np.asarray(x_uv, dtype=np.float64).ravel(), fs_hz=fs_hz)
        inputs = night_features(y)[:, self._columns]
        if self.normalised:
            inputs = model_inputs(inputs, self._prior_mean, prior_epochs=self._prior_epochs)
        windows = context_windows(inputs, self.context_epochs)
        if len(windows) == 0:
            return np.empty((0, len(STAGE_NAMES)))
        return np.stack([self._predict_window(w) for w in windows])

    def smooth_night(self, probs: np.ndarray) -> np.ndarray:
        """Look-ahead smoothing of a night's causal probabilities, for the morning report only.

        Returns
        -------
        numpy.ndarray, same shape: posterior probabilities given the whole night.
        """
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != len(STAGE_NAMES):
            raise ValueError(f"probs must have shape (n_epochs, {len(STAGE_NAMES)}), got {p.shape}")
        return forward_backward(p, self._transition, self._prior)


def smooth_hypnogram(probs: np.ndarray, *, model_path: str | Path | None = None) -> np.ndarray:
    """The morning report's hypnogram: look-ahead smoothed stages of a night's causal probabilities.

    A convenience for code that has the stored probabilities but no :class:`Stager` (the report): it
    reads only the model card (transition matrix and prior), not the model.

    Parameters
    ----------
    probs : numpy.ndarray, shape (n_epochs, 5)
        Causal stage probabilities (W, N1, N2, N3, REM) as the live stager produced them.
    model_path : str or Path, optional
        The model whose card to use (default :data:`DEFAULT_MODEL_PATH`).

    Returns
    -------
    numpy.ndarray of int8, shape (n_epochs,): one :class:`~appliance.protocol.stages.Stage` per epoch.
    """
    from appliance.tflite import load_model_card

    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(STAGE_NAMES):
        raise ValueError(f"probs must have shape (n_epochs, {len(STAGE_NAMES)}), got {p.shape}")
    path = Path(model_path) if model_path is not None else DEFAULT_MODEL_PATH
    card = load_model_card(path.with_name("model_card.json"))
    post = forward_backward(p, np.asarray(card["transition_matrix"], dtype=np.float64),
                            np.asarray(card["class_prior"], dtype=np.float64))
    return post.argmax(axis=1).astype(np.int8)
