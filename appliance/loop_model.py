"""The loop classifier at run time: keeps the last N epochs of features and gives P(loop) every epoch.

The model (``models/loops/loop.tflite``, int8, trained by ``models/loops/train.py``) is a small causal
1-D convolution over the last :data:`WINDOW_EPOCHS` epochs of the features below. It was trained to
reproduce the causal label of ``appliance/loops.py`` (a loop is under way) from *noisy* stage
probabilities and arousal features, so on the box it sees what the stager and DSP give it, not a
hypnogram. Its sha256 is checked against ``models/loops/model_card.json`` before it is loaded.
"""
from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

import numpy as np

from appliance.epoch import Epoch

logger = logging.getLogger(__name__)

WINDOW_EPOCHS = 96
"""Epochs of history the model sees (48 min: the 30-min loop window + the longest 10-min interruption + margin)."""

FEATURE_NAMES: tuple[str, ...] = (
    "p_W", "p_N1", "p_N2", "p_N3", "p_REM",
    "alpha_rel", "beta_rel", "high_freq_rel", "movement_fraction",
    "quality_ok", "artefact_fraction",
)
"""Per-epoch features, in model input order."""

N_FEATURES = len(FEATURE_NAMES)

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "models" / "loops" / "loop.tflite"

# Before the stager has run (or for a missing epoch) we feed "unknown": flat probabilities, bad quality.
# Uniform rather than zeros so the model sees the same kind of vector it was trained on.
_UNKNOWN = np.array([0.2] * 5 + [0.0, 0.0, 0.0, 0.0, 0.0, 1.0], dtype=np.float32)


def epoch_features(epoch: Epoch) -> np.ndarray:
    """The model's feature vector for one epoch, shape ``(N_FEATURES,)``, float32.

    An epoch without stage probabilities is fed as "unknown" (uniform probabilities, quality not ok).
    """
    if epoch.stage_probs is None:
        return _UNKNOWN.copy()
    p = np.asarray(epoch.stage_probs, dtype=np.float32).reshape(5)
    a, q = epoch.arousal, epoch.quality
    return np.concatenate([p, np.array([a.alpha_rel, a.beta_rel, a.high_freq_rel, a.movement_fraction,
                                        1.0 if q.ok else 0.0, q.artefact_fraction], dtype=np.float32)])


def padded_window(history: np.ndarray, *, window: int = WINDOW_EPOCHS) -> np.ndarray:
    """Left-pad a ``(n, N_FEATURES)`` history with "unknown" rows to ``(window, N_FEATURES)``.

    Used both at run time (the first 48 min of a night) and in training, so the two agree.
    """
    h = np.asarray(history, dtype=np.float32)[-window:]
    if len(h) == window:
        return h
    pad = np.repeat(_UNKNOWN[None, :], window - len(h), axis=0)
    return np.concatenate([pad, h], axis=0)


class LoopDetector:
    """P(loop) every epoch from the last :data:`WINDOW_EPOCHS` epochs.

    Parameters
    ----------
    model_path : str or Path or None
        The ``.tflite`` file; default ``models/loops/loop.tflite``, verified against the sha256 in the
        ``model_card.json`` beside it.
    expected_sha256 : str or None
        Overrides the card's digest (e.g. from the box config).

    Examples
    --------
    >>> det = LoopDetector()                      # doctest: +SKIP
    >>> p = det.update(epoch)                     # once per 30-s epoch, in order  # doctest: +SKIP
    """

    def __init__(self, model_path: str | Path | None = None, *, expected_sha256: str | None = None):
        from appliance.tflite import TFLiteModel

        self.model = TFLiteModel(model_path or DEFAULT_MODEL_PATH, expected_sha256=expected_sha256)
        shape = self.model.input_shape
        if shape[1:] != (WINDOW_EPOCHS, N_FEATURES):
            raise ValueError(f"{self.model.path}: input shape {shape}, expected (1, {WINDOW_EPOCHS}, {N_FEATURES})")
        self._history: deque[np.ndarray] = deque(maxlen=WINDOW_EPOCHS)
        self._last_index: int | None = None

    @property
    def sha256(self) -> str:
        return self.model.sha256

    def reset(self) -> None:
        """Forget the history (a new night)."""
        self._history.clear()
        self._last_index = None

    def update(self, epoch: Epoch) -> float:
        """Add one epoch and return P(loop) (0..1) for the window ending at it.

        Epochs skipped in the index (lost to a fault) are filled with "unknown" rows so the model's
        time axis stays in real 30-s steps.
        """
        if self._last_index is not None and epoch.index > self._last_index + 1:
            missing = min(epoch.index - self._last_index - 1, WINDOW_EPOCHS)
            logger.warning("loop model: %d epoch(s) missing before %d, fed as unknown", missing, epoch.index)
            for _ in range(missing):
                self._history.append(_UNKNOWN)
        self._last_index = epoch.index
        self._history.append(epoch_features(epoch))
        return self.predict_window(np.stack(self._history))

    def predict_window(self, history: np.ndarray) -> float:
        """P(loop) for a ``(n, N_FEATURES)`` history (padded on the left when shorter than the window)."""
        y = self.model.predict(padded_window(history)[None, :, :])
        return float(np.clip(y.reshape(-1)[0], 0.0, 1.0))
