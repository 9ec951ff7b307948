"""A synthetic sleep-EEG generator whose nights follow a given (real) hypnogram.

It is the signal source behind the ADS1299 chip simulator and the demo, and the training data of the
stage model when no real EEG is at hand. Each 30-s epoch carries its stage's textbook signature (AASM
scoring manual; Iber et al. 2007, and Rechtschaffen & Kales 1968 for the waveform shapes):

======  =========================================================================================
stage   what is drawn on the central (staging) channel
======  =========================================================================================
W       posterior-dominant alpha (8-12 Hz, waxing and waning), beta, muscle (EMG) noise, blinks
N1      theta (4-7 Hz), little alpha, vertex sharp waves, slow rolling eye movements
N2      theta background, sleep spindles (11-16 Hz, 0.5-2 s) and K-complexes
N3      high-amplitude delta (0.5-2 Hz, > 75 uV peak to peak)
REM     low-amplitude mixed frequency, sawtooth waves (2-6 Hz bursts), rapid eye movements
======  =========================================================================================

Everything sits on a 1/f ("pink-ish") background; amplitudes and peak frequencies vary per subject
(``seed``), and artefacts (movement, electrode pops, mains hum) are optional.

A wake epoch that follows REM within ``DISTRESS_WINDOW_EPOCHS`` can be a *distressed arousal* (an arousal
out of a nightmare): more beta, strong EMG-like high-frequency power and movement. The nightmare-loop
detector relies on these markers.

Every epoch is drawn from its own random stream (``seed``, epoch index), so :meth:`SyntheticSleepEEG.read`
(streaming) and :meth:`SyntheticSleepEEG.render_epochs` (bulk) return the very same samples.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from appliance.protocol.stages import Stage

logger = logging.getLogger(__name__)

DISTRESS_WINDOW_EPOCHS = 2
"""A W epoch at most this many epochs after a REM epoch may be drawn as a distressed arousal."""


MONTAGES: dict[str, tuple[float, float, float]] = {
    # name: (cortical gain, eye pick-up, muscle pick-up) relative to a central referential lead.
    # Central leads (C3-A2, Cz-A1) are the AASM staging derivations (Iber et al. 2007). Amplitude falls with
    # inter-electrode distance for bipolar pairs: Fpz-Cz (Sleep-EDF) shows sleep EEG at roughly 0.5-0.8 of
    # C3-A2's amplitude (Kemp et al. 2000 record ~ half the delta power), sees the eyes strongly, and
    # forehead headbands (Fp1-Fp2 / Fpz-M; e.g. Dreem, Muse, Zmax: Arnal et al. 2020, Sleep 43) carry
    # little cortical signal, strong EOG and frontalis EMG (Lucey et al. 2016, J Sleep Res 25).
    "C3-A2": (1.0, 0.15, 1.0),
    "Cz-A1": (1.05, 0.15, 0.8),
    "Fpz-Cz": (0.65, 0.8, 1.5),
    "forehead": (0.45, 1.6, 2.5),
}
"""Derivations the wide population draws from (:meth:`SubjectTraits.draw_wide`)."""


@dataclass(frozen=True)
class SubjectTraits:
    """Per-subject variation of the synthetic EEG (drawn once from the generator's ``seed``).

    Attributes
    ----------
    amplitude_scale : float
        Overall gain (skull thickness, electrode placement, age); 1.0 is a typical young adult.
    alpha_hz, spindle_hz, theta_hz : float
        Peak frequencies of the alpha rhythm, sleep spindles and theta (Hz).
    delta_scale : float
        Extra gain of slow waves (deep-sleep amplitude falls with age).
    background_exponent : float
        Exponent b of the 1/f^b background power spectrum (in wake).
    alpha_strength : float
        Gain of the waking alpha rhythm (some people have hardly any).
    exponent_sleep_shift : float
        How much steeper (larger b) the background gets from wake to N3; N1, N2 and REM take a share.
    spindles_per_epoch, n3_spindles_per_epoch : float
        Mean number of spindles in an N2 and in an N3 epoch.
    spindle_uv : tuple of float
        Range (uV) spindle amplitudes are drawn from.
    eyes_open_p : float
        Probability that a wake epoch is eyes open (alpha blocked: alpha reactivity).
    eyes_open_alpha : float
        Fraction of the alpha amplitude left with eyes open.
    emg_scale, eye_scale : float
        Gains of the muscle and eye components (montage, chin tension).
    mains_uv, mains_hz : float
        Mains hum amplitude (uV) and frequency (Hz) when artefacts are on.
    artefact_scale : float
        Multiplies the rate of movements and electrode pops.
    montage : str
        Name of the derivation (:data:`MONTAGES`), for the record.
    age_years : float
        The subject's age, for the record (it sets ``delta_scale`` in the wide population).
    """

    amplitude_scale: float
    alpha_hz: float
    spindle_hz: float
    theta_hz: float
    delta_scale: float
    background_exponent: float
    alpha_strength: float = 1.0
    exponent_sleep_shift: float = 0.0
    spindles_per_epoch: float = 2.2
    n3_spindles_per_epoch: float = 0.6
    spindle_uv: tuple[float, float] = (18.0, 40.0)
    eyes_open_p: float = 0.35
    eyes_open_alpha: float = 0.15
    emg_scale: float = 1.0
    eye_scale: float = 1.0
    mains_uv: float = 2.0
    mains_hz: float | None = None
    artefact_scale: float = 1.0
    montage: str = "C3-A2"
    age_years: float = 30.0

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "SubjectTraits":
        """The "typical" population: young adults on a central lead, mild variation (the demo's sleepers)."""
        return cls(
            amplitude_scale=float(np.exp(rng.normal(0.0, 0.25))),
            alpha_hz=float(rng.uniform(8.5, 11.5)),
            spindle_hz=float(rng.uniform(11.5, 14.5)),
            theta_hz=float(rng.uniform(4.5, 6.5)),
            delta_scale=float(np.exp(rng.normal(-0.1, 0.3))),
            background_exponent=float(rng.uniform(1.6, 2.2)),
            alpha_strength=float(np.exp(rng.normal(0.0, 0.5))),
        )

    @classmethod
    def draw_wide(cls, rng: np.random.Generator) -> "SubjectTraits":
        """The "wide" population: adults 18-85 on any of :data:`MONTAGES`, every knob over its published range.

        Ranges and where they come from:

        - amplitude: sleep-EEG amplitude varies about 2-3x between adults (skull thickness, sex, age; Carrier
          et al. 2011, Sleep 34:1511 report slow-wave amplitude of 60-120+ uV across ages on C3): log-normal,
          sd 0.35, times the montage gain.
        - 1/f exponent: fitted aperiodic exponents of scalp EEG are about 1-2.5 in wake and grow by ~0.5-1.5
          towards N3 (Lendner et al. 2020, eLife 9:e55092; Donoghue et al. 2020, Nat Neurosci 23:1655):
          wake b ~ U(1.0, 2.2), sleep shift ~ U(0.2, 1.2).
        - alpha: individual alpha frequency 10 +- 1 Hz in adults, falling with age (Klimesch 1999, Brain Res
          Rev 29:169): U(8, 12) minus 0.02 Hz/year over 40; about 10 % of adults have a low-voltage alpha
          (Niedermeyer's EEG, 6th ed., ch. 9): log-normal strength with sd 0.7; reactivity (eyes-open
          blocking) to 5-50 % of the eyes-closed amplitude (Barry et al. 2007, Clin Neurophysiol 118:2765).
        - spindles: density 1-8 per min of N2 (Purcell et al. 2017, Nat Commun 8:15930; Warby et al. 2014,
          Nat Methods 11:385) = 0.5-4 per epoch; frequency 11-16 Hz (AASM), subject peak U(11, 15);
          amplitude 10-50 uV on central leads (Purcell 2017), subject range lower bound U(6, 18).
        - slow waves: amplitude falls ~ 25-50 % from young to old adults (Carrier 2011; Mander et al. 2017,
          Neuron 94:19): delta_scale = exp(N(0, 0.25)) x (1 - 0.008 x (age - 20)), age U(18, 85).
        - montage: :data:`MONTAGES` (C3-A2, Cz-A1, Fpz-Cz, forehead), with their eye and muscle pick-up.
        - mains: 50 or 60 Hz, 0-20 uV at the amplifier input with dry or loose electrodes (Usakli 2010,
          Comput Intell Neurosci 630649); muscle x exp(N(0, 0.5)) (chin and frontalis tone vary widely).
        - movements and electrode pops: x U(0.3, 3) of the typical rates.
        """
        age = float(rng.uniform(18.0, 85.0))
        montage = str(rng.choice(list(MONTAGES)))
        gain, eye, muscle = MONTAGES[montage]
        return cls(
            amplitude_scale=gain * float(np.exp(rng.normal(0.0, 0.35))),
            alpha_hz=float(rng.uniform(8.0, 12.0) - 0.02 * max(0.0, age - 40.0)),
            spindle_hz=float(rng.uniform(11.0, 15.0)),
            theta_hz=float(rng.uniform(4.0, 7.0)),
            delta_scale=float(np.exp(rng.normal(0.0, 0.25)) * (1.0 - 0.008 * (age - 20.0))),
            background_exponent=float(rng.uniform(1.0, 2.2)),
            alpha_strength=float(np.exp(rng.normal(0.0, 0.7))),
            exponent_sleep_shift=float(rng.uniform(0.2, 1.2)),
            spindles_per_epoch=(spe := float(rng.uniform(0.5, 4.0))),
            n3_spindles_per_epoch=spe * float(rng.uniform(0.15, 0.35)),
            spindle_uv=(lambda lo: (lo, lo * float(rng.uniform(1.5, 3.0))))(float(rng.uniform(6.0, 18.0))),
            eyes_open_p=float(rng.uniform(0.1, 0.6)),
            eyes_open_alpha=float(rng.uniform(0.05, 0.5)),
            emg_scale=muscle * float(np.exp(rng.normal(0.0, 0.5))),
            eye_scale=eye / 0.15 * float(np.exp(rng.normal(0.0, 0.3))) if eye > 0.15 else 1.0,
            mains_uv=float(rng.uniform(0.0, 20.0)),
            mains_hz=float(rng.choice([50.0, 60.0])),
            artefact_scale=float(rng.uniform(0.3, 3.0)),
            montage=montage,
            age_years=age,
        )


# Share of the wake-to-N3 steepening of the 1/f background per stage (Lendner et al. 2020, fig. 2:
# the exponent orders W ~ REM < N1 < N2 < N3).
_EXPONENT_SHARE = {Stage.W: 0.0, Stage.N1: 0.3, Stage.N2: 0.7, Stage.N3: 1.0, Stage.REM: 0.1}


def _spectral_noise(rng: np.random.Generator, n: int, fs_hz: float, shape: tuple) -> np.ndarray:
    """Gaussian noise with the amplitude spectrum ``shape`` (see :func:`_amplitude`), normalised to unit RMS.

    Shaping white noise in the frequency domain is the standard way to draw a stationary process with a
    chosen spectrum (one FFT per component; cheap at 30-s epochs).
    """
    amp = _amplitude(shape, int(n), float(fs_hz))
    spec = (rng.standard_normal(len(amp)) + 1j * rng.standard_normal(len(amp))) * amp
    spec[0] = 0.0
    x = np.fft.irfft(spec, n)
    rms = float(np.sqrt(np.mean(x**2)))
    return x / rms if rms > 0 else x


@lru_cache(maxsize=256)
def _amplitude(shape: tuple, n: int, fs_hz: float) -> np.ndarray:
    """Amplitude spectrum on the ``rfft`` grid of ``n`` samples at ``fs_hz``, cached (read-only).

    ``shape`` is ``("band", centre_hz, width_hz)`` (Gaussian bump), ``("box", lo_hz, hi_hz)`` (flat band,
    ends included) or ``("pink", exponent)`` (1/f^(exponent/2) amplitude, flat below 0.5 Hz, no DC). The
    same few spectra are drawn for every epoch of a subject; computing them once saves a third of an
    epoch's drawing time.
    """
    f = np.fft.rfftfreq(n, 1.0 / fs_hz)
    kind = shape[0]
    if kind == "band":
        a = np.exp(-0.5 * ((f - shape[1]) / shape[2]) ** 2)
    elif kind == "box":
        a = ((f >= shape[1]) & (f <= shape[2])).astype(float)
    elif kind == "pink":
        a = np.where(f > 0, np.maximum(f, 0.5) ** (-shape[1] / 2), 0.0)
    else:
        raise ValueError(f"unknown spectral shape {shape!r}")
    a.setflags(write=False)
    return a


def _band(centre_hz: float, width_hz: float) -> tuple:
    return ("band", float(centre_hz), float(width_hz))


def _box(lo_hz: float, hi_hz: float) -> tuple:
    return ("box", float(lo_hz), float(hi_hz))


def _pink(exponent: float) -> tuple:
    return ("pink", float(exponent))


def _slow_envelope(rng: np.random.Generator, n: int, fs_hz: float, *, rate_hz: float = 0.1) -> np.ndarray:
    """A smooth 0..1 envelope that waxes and wanes (alpha comes and goes with drowsiness)."""
    e = _spectral_noise(rng, n, fs_hz, _box(0.0, rate_hz))
    return 1.0 / (1.0 + np.exp(-2.0 * e))


def _add_events(x: np.ndarray, rng: np.random.Generator, fs_hz: float, rate_per_epoch: float, make) -> None:
    """Add a Poisson number of transient waveforms ``make(rng) -> array`` at random places in ``x``."""
    for _ in range(rng.poisson(rate_per_epoch)):
        w = make(rng)
        if len(w) >= len(x):
            continue
        start = int(rng.integers(0, len(x) - len(w)))
        x[start:start + len(w)] += w


class SyntheticSleepEEG:
    """Synthetic multichannel sleep EEG that follows a hypnogram, in microvolts.

    Parameters
    ----------
    hypnogram : numpy.ndarray
        One :class:`~appliance.protocol.stages.Stage` value per epoch. UNSCORED epochs are drawn as wake.
    fs_hz : float
        Sampling rate in Hz (the ADS1299 default is 250 SPS).
    n_channels : int
        Number of channels. Channel 0 is the central staging channel; the others are mixtures of it with
        their own background (1 and 2 are "frontal" and see eye movements more strongly).
    seed : int
        Subject seed: sets the subject's traits and every epoch's random stream.
    epoch_s : float
        Epoch length in seconds.
    artefacts : bool
        Draw movement artefacts, blinks, electrode pops and mains hum.
    distressed_arousals : bool or numpy.ndarray
        True (default): every W epoch within ``DISTRESS_WINDOW_EPOCHS`` after a REM epoch is a distressed
        arousal. False: none are. A boolean array (one per epoch) chooses them explicitly.
    mains_hz : float
        Mains frequency of the hum drawn when ``artefacts`` is True (50 Hz in Europe, 60 Hz in America);
        the wide population draws its own.
    population : {"typical", "wide"}
        "typical" (default): young adults on a central lead (:meth:`SubjectTraits.draw`), the demo's sleepers.
        "wide": the real world's spread of amplitude, spectral slope, alpha, spindles, age, montage, mains,
        muscle and artefacts (:meth:`SubjectTraits.draw_wide`); what the stage model trains on.

    Attributes
    ----------
    n_samples : int
        Samples in the whole night (``len(hypnogram) * epoch_s * fs_hz``).
    distressed : numpy.ndarray of bool
        Which epochs are drawn as distressed arousals.
    traits : SubjectTraits
        The subject's drawn traits.

    Notes
    -----
    :meth:`read` streams the night: it always returns ``n_samples`` rows; rows after the end of the
    hypnogram are zeros (a flat line, which :func:`appliance.dsp.epoch_quality` flags) and
    :attr:`exhausted` becomes True. Use :attr:`remaining` to stop exactly at the end.
    """

    def __init__(self, hypnogram: np.ndarray, *, fs_hz: float = 250.0, n_channels: int = 8, seed: int = 0,
                 epoch_s: float = 30.0, artefacts: bool = True,
                 distressed_arousals: bool | np.ndarray = True, mains_hz: float = 50.0,
                 population: str = "typical") -> None:
        hyp = np.asarray(hypnogram).astype(np.int8).ravel()
        if hyp.size == 0:
            raise ValueError("hypnogram is empty")
        bad = ~np.isin(hyp, [s.value for s in Stage])
        if bad.any():
            raise ValueError(f"hypnogram has unknown stage values {sorted(set(hyp[bad].tolist()))}")
        if fs_hz <= 0 or n_channels < 1 or epoch_s <= 0:
            raise ValueError("fs_hz and epoch_s must be > 0 and n_channels >= 1")
        self.hypnogram = hyp
        self.fs_hz = float(fs_hz)
        self.n_channels = int(n_channels)
        self.seed = int(seed)
        self.epoch_s = float(epoch_s)
        self.artefacts = bool(artefacts)
        self.mains_hz = float(mains_hz)
        self.samples_per_epoch = int(round(self.epoch_s * self.fs_hz))
        self.n_samples = len(hyp) * self.samples_per_epoch
        if population not in ("typical", "wide"):
            raise ValueError(f"population must be 'typical' or 'wide', got {population!r}")
        self.population = population
        trait_rng = np.random.default_rng([self.seed, 0x5EED])
        self.traits = SubjectTraits.draw(trait_rng) if population == "typical" else SubjectTraits.draw_wide(trait_rng)
        if self.traits.mains_hz is not None:
            self.mains_hz = float(self.traits.mains_hz)
        self.distressed = self._distressed_mask(distressed_arousals)
        # Fixed per-subject channel mixing: every channel shares the cortical source with its own gain.
        mix_rng = np.random.default_rng([self.seed, 0x313])
        self._mix = np.concatenate([[1.0], mix_rng.uniform(0.5, 1.0, self.n_channels - 1)])
        self._eye_gain = np.full(self.n_channels, 0.15)
        self._eye_gain[1:3] = 1.0  # channels 1 and 2 play frontal leads near the eyes
        self._pos = 0
        self._cache_index = -1
        self._cache: np.ndarray | None = None
        self._own_table: np.ndarray | None = None  # drawn on first use, see _own_background

    # ---- public API -----------------------------------------------------------------------------
    @property
    def remaining(self) -> int:
        """Samples left before the end of the hypnogram."""
        return max(0, self.n_samples - self._pos)

    @property
    def exhausted(self) -> bool:
        """True once :meth:`read` has gone past the end of the hypnogram."""
        return self._pos >= self.n_samples

    def read(self, n_samples: int) -> np.ndarray:
        """Return the next ``n_samples`` samples, shape (n_samples, n_channels), float64 microvolts.

        Samples past the end of the hypnogram are zeros (see the class notes).
        """
        n_samples = int(n_samples)
        if n_samples < 0:
            raise ValueError("n_samples must be >= 0")
        out = np.zeros((n_samples, self.n_channels))
        filled = 0
        while filled < n_samples and self._pos < self.n_samples:
            e, off = divmod(self._pos, self.samples_per_epoch)
            data = self._epoch_cached(e)
            take = min(n_samples - filled, self.samples_per_epoch - off)
            out[filled:filled + take] = data[off:off + take]
            filled += take
            self._pos += take
        self._pos += n_samples - filled  # past the end: zeros, but keep counting time
        return out

    def rewind(self) -> None:
        """Start streaming from the first sample again."""
        self._pos = 0

    def render_epochs(self, indices: np.ndarray | list[int] | None = None, *,
                      channels: tuple[int, ...] | list[int] | None = (0,)) -> np.ndarray:
        """Draw whole epochs in bulk (for training), identical to what :meth:`read` streams.

        Parameters
        ----------
        indices : array of int, optional
            Epoch indices (default: all).
        channels : sequence of int, optional
            Channels to return (default: only the staging channel 0; None for all).

        Returns
        -------
        numpy.ndarray, shape (n_epochs, samples_per_epoch, n_selected_channels), microvolts.
        """
        idx = np.arange(len(self.hypnogram)) if indices is None else np.asarray(indices, dtype=int)
        chans = list(range(self.n_channels)) if channels is None else list(channels)
        out = np.empty((len(idx), self.samples_per_epoch, len(chans)))
        for k, e in enumerate(idx):
            out[k] = self._render_epoch(int(e), channels=chans)
        return out

    def render_channel(self, channel: int = 0) -> np.ndarray:
        """The whole night of one channel as a 1-D array in microvolts."""
        return self.render_epochs(channels=(channel,))[:, :, 0].reshape(-1)

    # ---- drawing --------------------------------------------------------------------------------
    def _distressed_mask(self, spec: bool | np.ndarray) -> np.ndarray:
        hyp = self.hypnogram
        if isinstance(spec, np.ndarray):
            mask = np.asarray(spec, dtype=bool)
            if mask.shape != hyp.shape:
                raise ValueError("distressed_arousals mask must have one value per epoch")
            return mask & (hyp == Stage.W)
        mask = np.zeros(len(hyp), dtype=bool)
        if not spec:
            return mask
        last_rem = -10**9
        for i, s in enumerate(hyp):
            if s == Stage.REM:
                last_rem = i
            elif s == Stage.W and i - last_rem <= DISTRESS_WINDOW_EPOCHS:
                mask[i] = True
        return mask

    def _epoch_cached(self, e: int) -> np.ndarray:
        if e != self._cache_index:
            self._cache = self._render_epoch(e, channels=list(range(self.n_channels)))
            self._cache_index = e
        return self._cache

    def _render_epoch(self, e: int, *, channels: list[int]) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, e])
        stage = int(self.hypnogram[e])
        if stage == Stage.UNSCORED:
            stage = Stage.W
        cortex, eyes, emg, movement = self._sources(rng, Stage(stage), bool(self.distressed[e]))
        n, fs = self.samples_per_epoch, self.fs_hz
        # Scorers label an epoch by its majority: near a stage change, part of the epoch already (or still)
        # looks like the neighbouring stage. Draw that part from the neighbour's sources.
        neighbours = [(side, int(self.hypnogram[i])) for side, i in (("before", e - 1), ("after", e + 1))
                      if 0 <= i < len(self.hypnogram) and self.hypnogram[i] not in (stage, Stage.UNSCORED)]
        if neighbours and rng.random() < 0.5:
            side, other = neighbours[int(rng.integers(len(neighbours)))]
            frac = rng.uniform(0.15, 0.45)
            o_cortex, o_eyes, o_emg, o_move = self._sources(rng, Stage(other), False)
            ramp = np.clip((np.arange(n) / fs - (1 - frac) * self.epoch_s) / 2.0 + 0.5, 0.0, 1.0)
            w = ramp if side == "after" else ramp[::-1]
            cortex = (1 - w) * cortex + w * o_cortex
            eyes = (1 - w) * eyes + w * o_eyes
            emg = (1 - w) * emg + w * o_emg
            movement = (1 - w) * movement + w * o_move
        t = (e * n + np.arange(n)) / fs  # absolute time keeps the mains hum phase-continuous
        hum = (self.traits.mains_uv * np.sin(2 * np.pi * self.mains_hz * t)
               if self.artefacts and self.mains_hz < fs / 2 else 0.0)
        chans = np.asarray(channels, dtype=int)
        # Same operations in the same order for every channel as a per-channel sum, so channel 0 (the
        # staging channel, whose statistics the models were trained and evaluated on) is unchanged.
        out = cortex[:, None] * self._mix[None, chans]
        out += self._own_background(e, chans)
        out += eyes[:, None] * self._eye_gain[None, chans]
        out += emg[:, None]
        out += movement[:, None]
        out += hum[:, None] if isinstance(hum, np.ndarray) else hum
        return out

    def _own_background(self, e: int, chans: np.ndarray) -> np.ndarray:
        """Each non-staging channel's own 1/f background for epoch ``e``, shape (n, len(chans)); zero for 0.

        Drawing a fresh spectrally shaped noise per channel and epoch cost more than the whole staging
        channel, for signals nothing downstream analyses. Instead each channel reads a random 30-s window
        of a long unit-RMS 1/f noise drawn once per subject, from its own stripe of that table, so two
        channels never share samples within an epoch. A channel may reuse stretches of its stripe (about
        2.5 min at 8 channels) at random offsets over the night; its spectrum is the same 1/f^b.
        """
        n = self.samples_per_epoch
        own = np.zeros((n, len(chans)))
        others = chans != 0
        if not others.any():
            return own
        n_other = self.n_channels - 1
        if self._own_table is None:
            size = 1 << int(np.ceil(np.log2(4 * n_other * n)))
            self._own_table = _spectral_noise(np.random.default_rng([self.seed, 2]), size, self.fs_hz,
                                              _pink(self.traits.background_exponent))
        stripe = len(self._own_table) // n_other
        starts = (np.arange(n_other) * stripe
                  + np.random.default_rng([self.seed, 2, e]).integers(0, stripe - n + 1, size=n_other))
        gain = 4.0 * self.traits.amplitude_scale
        for k in np.flatnonzero(others):
            s0 = starts[chans[k] - 1]
            own[:, k] = gain * self._own_table[s0:s0 + n]
        return own

    def _sources(self, rng: np.random.Generator, stage: Stage, distressed: bool):
        """Draw one epoch's cortical EEG, eye, muscle and movement components (microvolts)."""
        n, fs, tr = self.samples_per_epoch, self.fs_hz, self.traits
        # Epoch-to-epoch variation of every component: real epochs of one stage are far from identical.
        a = tr.amplitude_scale * float(np.exp(rng.normal(0.0, 0.15)))

        def j() -> float:
            return float(np.exp(rng.normal(0.0, 0.3)))

        exponent = tr.background_exponent + tr.exponent_sleep_shift * _EXPONENT_SHARE[stage]
        pink = _spectral_noise(rng, n, fs, _pink(exponent))
        x = np.zeros(n)
        eyes = np.zeros(n)
        # Background RMS per stage (uV): deeper sleep is more synchronised, hence larger.
        background_uv = {Stage.W: 9.0, Stage.N1: 11.0, Stage.N2: 14.0, Stage.N3: 16.0, Stage.REM: 9.0}[stage]
        x += background_uv * j() * pink
        emg_uv = {Stage.W: 3.0, Stage.N1: 1.5, Stage.N2: 1.0, Stage.N3: 1.0, Stage.REM: 0.4}[stage]
        beta_uv = {Stage.W: 4.0, Stage.N1: 2.0, Stage.N2: 1.5, Stage.N3: 1.0, Stage.REM: 2.5}[stage]
        movement = np.zeros(n)

        if stage == Stage.W:
            # Alpha is an eyes-closed rhythm; with eyes open wake is low-amplitude, mixed and beta-rich.
            eyes_open = rng.random() < tr.eyes_open_p
            alpha_uv = 14.0 * tr.alpha_strength * (tr.eyes_open_alpha if eyes_open else 1.0)
            x += alpha_uv * j() * _slow_envelope(rng, n, fs) * _spectral_noise(rng, n, fs, _band(tr.alpha_hz, 0.7))
            if eyes_open:
                beta_uv *= 1.5
                _add_events(eyes, rng, fs, 4.0, lambda r: self._rapid_eye_movement(r))  # saccades
            _add_events(eyes, rng, fs, 6.0 if eyes_open else 3.0, lambda r: self._blink(r))
        elif stage == Stage.N1:
            x += 10.0 * j() * _spectral_noise(rng, n, fs, _band(tr.theta_hz, 1.0))
            # Drowsy alpha fades out over N1 (less than half the epoch by definition).
            x += rng.uniform(0.0, 8.0) * tr.alpha_strength * _slow_envelope(rng, n, fs) * _spectral_noise(
                rng, n, fs, _band(tr.alpha_hz, 0.7))
            _add_events(x, rng, fs, 2.0, lambda r: self._vertex_wave(r))
            eyes += 40.0 * _spectral_noise(rng, n, fs, _box(0.1, 0.5))  # slow rolling eye movements
        elif stage == Stage.N2:
            x += 7.0 * j() * _spectral_noise(rng, n, fs, _band(tr.theta_hz, 1.2))
            x += 6.0 * j() * _spectral_noise(rng, n, fs, _box(0.5, 2.0))
            x += self._slow_waves(rng, rng.uniform(0.0, 0.2))  # N2 may hold slow waves, < 20 % of the epoch
            _add_events(x, rng, fs, tr.spindles_per_epoch, lambda r: self._spindle(r))
            _add_events(x, rng, fs, 0.9, lambda r: self._k_complex(r))
        elif stage == Stage.N3:
            # AASM N3 / R&K S3+S4: slow waves over 20 % (S3) to more than 50 % (S4) of the epoch.
            x += self._slow_waves(rng, rng.uniform(0.2, 1.0))
            x += 8.0 * j() * _spectral_noise(rng, n, fs, _box(0.5, 2.0))
            x += 5.0 * j() * _spectral_noise(rng, n, fs, _band(tr.theta_hz, 1.2))
            _add_events(x, rng, fs, tr.n3_spindles_per_epoch, lambda r: self._spindle(r))
        elif stage == Stage.REM:
            x += 5.0 * j() * _spectral_noise(rng, n, fs, _band(tr.theta_hz, 1.2))
            x += 2.5 * j() * _spectral_noise(rng, n, fs, _band(tr.alpha_hz - 1.0, 0.8))
            _add_events(x, rng, fs, 1.5, lambda r: self._sawtooth_burst(r))
            _add_events(eyes, rng, fs, 6.0, lambda r: self._rapid_eye_movement(r))

        if distressed:
            beta_uv *= 4.0
            emg_uv = 20.0
            _add_events(movement, rng, fs, 1.0, lambda r: 0.5 * self._movement(r))
        x += beta_uv * _spectral_noise(rng, n, fs, _box(16.0, 30.0))
        emg = emg_uv * _spectral_noise(rng, n, fs, _box(20.0, min(120.0, fs / 2)))
        if self.artefacts:
            # Ordinary sleepers move too, mostly while awake.
            if rng.random() < (0.15 if stage == Stage.W else 0.02) * tr.artefact_scale:
                _add_events(movement, rng, fs, 1.0, lambda r: self._movement(r))
            if rng.random() < 0.01 * tr.artefact_scale:
                movement += self._electrode_pop(rng)
        else:
            eyes[:] = 0.0
        return a * x, a * tr.eye_scale * eyes, tr.emg_scale * emg, movement

    # ---- transient waveforms (shapes after R&K 1968 / AASM 2007 descriptions) ------------------------
    def _t(self, duration_s: float) -> np.ndarray:
        return np.arange(int(duration_s * self.fs_hz)) / self.fs_hz

    def _slow_waves(self, rng: np.random.Generator, fraction: float) -> np.ndarray:
        """0.5-2 Hz waves of > 75 uV peak to peak, present over about ``fraction`` of the epoch."""
        n, fs = self.samples_per_epoch, self.fs_hz
        if fraction <= 0.0:
            return np.zeros(n)
        env = _slow_envelope(rng, n, fs, rate_hz=0.15)
        threshold = np.quantile(env, 1.0 - fraction)
        mask = np.clip((env - threshold) / 0.05 + 0.5, 0.0, 1.0)
        amp_uv = 38.0 * self.traits.delta_scale * float(np.exp(rng.normal(0.0, 0.2)))
        return amp_uv * mask * _spectral_noise(rng, n, fs, _box(0.5, 2.0))

    def _spindle(self, rng: np.random.Generator) -> np.ndarray:
        t = self._t(rng.uniform(0.5, 1.8))
        f = self.traits.spindle_hz + rng.normal(0.0, 0.4)
        return rng.uniform(*self.traits.spindle_uv) * np.hanning(len(t)) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))

    def _k_complex(self, rng: np.random.Generator) -> np.ndarray:
        # A sharp negative wave followed by a slower positive one; >= 0.5 s in all (AASM).
        t = self._t(rng.uniform(0.8, 1.2))
        d = t[-1] if len(t) else 1.0
        amp = rng.uniform(80.0, 160.0)
        return amp * (-np.exp(-0.5 * ((t - 0.2 * d) / (0.08 * d)) ** 2) * 1.0
                      + 0.6 * np.exp(-0.5 * ((t - 0.55 * d) / (0.15 * d)) ** 2))

    def _vertex_wave(self, rng: np.random.Generator) -> np.ndarray:
        t = self._t(0.3)
        return -rng.uniform(40.0, 90.0) * np.exp(-0.5 * ((t - 0.15) / 0.04) ** 2)

    def _sawtooth_burst(self, rng: np.random.Generator) -> np.ndarray:
        t = self._t(rng.uniform(1.0, 3.0))
        f = rng.uniform(2.0, 5.0)
        phase = (f * t) % 1.0
        saw = np.where(phase < 0.8, phase / 0.8, (1.0 - phase) / 0.2) - 0.5  # slow rise, fast fall
        return rng.uniform(20.0, 40.0) * np.hanning(len(t)) * saw

    def _rapid_eye_movement(self, rng: np.random.Generator) -> np.ndarray:
        t = self._t(rng.uniform(0.3, 0.8))
        return rng.choice([-1.0, 1.0]) * rng.uniform(60.0, 150.0) * np.sin(np.pi * t / t[-1]) ** 2

    def _blink(self, rng: np.random.Generator) -> np.ndarray:
        t = self._t(0.4)
        return rng.uniform(100.0, 250.0) * np.exp(-0.5 * ((t - 0.2) / 0.06) ** 2)

    def _movement(self, rng: np.random.Generator) -> np.ndarray:
        t = self._t(rng.uniform(1.0, 3.0))
        swing = rng.uniform(100.0, 300.0) * np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * t) * np.hanning(len(t))
        burst = rng.uniform(15.0, 40.0) * rng.standard_normal(len(t)) * np.hanning(len(t))
        return swing + burst

    def _electrode_pop(self, rng: np.random.Generator) -> np.ndarray:
        n = self.samples_per_epoch
        out = np.zeros(n)
        start = int(rng.integers(0, n - 1))
        tau = rng.uniform(0.2, 1.0) * self.fs_hz
        out[start:] = rng.choice([-1.0, 1.0]) * rng.uniform(100.0, 400.0) * np.exp(-np.arange(n - start) / tau)
        return out
