"""The per-epoch record that flows down the pipeline, DSP -> stager -> loop model -> breather.

Each stage of the pipeline adds what it knows with :func:`dataclasses.replace`; nothing downstream
recomputes what an upstream module already measured.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from appliance.protocol.stages import Stage


@dataclass(frozen=True)
class SignalQuality:
    """How far an epoch's signal can be trusted.

    Attributes
    ----------
    ok : bool
        False when the epoch must not drive any decision (electrode off, rail/clipping, flat line,
        heavy artefact, frames lost). The breather never stimulates on an epoch that is not ok.
    flags : frozenset of str
        Why, from: ``lead_off``, ``clipping``, ``flat``, ``artefact``, ``frames_lost``, ``high_amplitude``.
    artefact_fraction : float
        Fraction (0..1) of the epoch's samples inside artefact segments.
    """

    ok: bool = True
    flags: frozenset[str] = frozenset()
    artefact_fraction: float = 0.0


@dataclass(frozen=True)
class ArousalFeatures:
    """Spectral arousal markers of one epoch, from the chip-rate signal (before model resampling).

    All powers are relative to the 0.5-35 Hz total of the same epoch (dimensionless, 0..1)
    except ``high_freq_rel`` (20-45 Hz over 0.5-45 Hz), a proxy for muscle (EMG) activity.
    """

    alpha_rel: float = 0.0
    beta_rel: float = 0.0
    high_freq_rel: float = 0.0
    movement_fraction: float = 0.0


@dataclass(frozen=True)
class Epoch:
    """One 30-s epoch as the pipeline knows it.

    Attributes
    ----------
    index : int
        Epoch number since the recording started (0-based).
    start_sample : int
        Chip sample index (ring-buffer index) of the epoch's first sample.
    end_time_s : float
        Seconds since the recording started at the epoch's end.
    stage_probs : numpy.ndarray or None
        Stage probabilities, shape (5,), order ``STAGE_NAMES`` (W, N1, N2, N3, REM); set by the stager.
    p_loop : float or None
        Probability (0..1) that a nightmare loop is under way; set by the loop model.
    """

    index: int
    start_sample: int
    end_time_s: float
    quality: SignalQuality = field(default_factory=SignalQuality)
    arousal: ArousalFeatures = field(default_factory=ArousalFeatures)
    stage_probs: np.ndarray | None = None
    p_loop: float | None = None

    @property
    def stage(self) -> Stage:
        """Most probable stage (UNSCORED before the stager has run)."""
        if self.stage_probs is None:
            return Stage.UNSCORED
        return Stage(int(np.argmax(self.stage_probs)))

    @property
    def confidence(self) -> float:
        """Probability of the most probable stage (0 before the stager has run)."""
        return 0.0 if self.stage_probs is None else float(np.max(self.stage_probs))
