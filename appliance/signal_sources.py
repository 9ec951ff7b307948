"""Signal sources the simulated ADS1299 converts: what the electrodes would see, in microvolts.

Every source follows one protocol: attributes ``fs_hz`` and ``n_channels`` and ``read(n_samples)``
returning float64 microvolts of shape (n_samples, n_channels). :class:`SineSource` and :class:`NoiseSource`
are test signals; :class:`EdfSource` replays the EEG signals of an EDF/EDF+ recording (chosen by
:func:`select_edf_signals`); :class:`appliance.synthetic_eeg.SyntheticSleepEEG` (a hypnogram-driven night)
fits the same protocol. The chip model that converts them is :mod:`appliance.ads1299_sim`.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


class SineSource:
    """Sine waves, one per channel, in microvolts (phase continues across reads)."""

    def __init__(self, *, fs_hz: float = 250.0, n_channels: int = 8, frequency_hz: float | list = 10.0,
                 amplitude_uv: float | list = 50.0, offset_uv: float = 0.0) -> None:
        self.fs_hz = float(fs_hz)
        self.n_channels = int(n_channels)
        self.frequency_hz = np.broadcast_to(np.asarray(frequency_hz, float), (self.n_channels,))
        self.amplitude_uv = np.broadcast_to(np.asarray(amplitude_uv, float), (self.n_channels,))
        self.offset_uv = float(offset_uv)
        self._n = 0

    def read(self, n_samples: int) -> np.ndarray:
        t = (self._n + np.arange(n_samples))[:, None] / self.fs_hz
        self._n += n_samples
        return self.offset_uv + self.amplitude_uv * np.sin(2 * np.pi * self.frequency_hz * t)


class NoiseSource:
    """White Gaussian noise, ``rms_uv`` microvolts on every channel."""

    def __init__(self, *, fs_hz: float = 250.0, n_channels: int = 8, rms_uv: float = 10.0, seed: int = 0) -> None:
        self.fs_hz = float(fs_hz)
        self.n_channels = int(n_channels)
        self.rms_uv = float(rms_uv)
        self._rng = np.random.default_rng(seed)

    def read(self, n_samples: int) -> np.ndarray:
        return self._rng.normal(0.0, self.rms_uv, (n_samples, self.n_channels))


_SCALE_TO_UV = {"uv": 1.0, "µv": 1.0, "μv": 1.0, "mv": 1e3, "v": 1e6, "nv": 1e-3}
"""Voltage units an EDF signal may carry (case-insensitive) and their factor to microvolts."""

# 10-20 / 10-10 electrode names (and the mastoid/ear references) that make a signal label an EEG derivation.
_EEG_ELECTRODES = frozenset(
    "FP1 FP2 FPZ AF3 AF4 AF7 AF8 AFZ F1 F2 F3 F4 F5 F6 F7 F8 FZ FC1 FC2 FC3 FC4 FC5 FC6 FCZ C1 C2 C3 C4 C5 C6 CZ "
    "CP1 CP2 CP3 CP4 CP5 CP6 CPZ P1 P2 P3 P4 P5 P6 P7 P8 PZ PO3 PO4 POZ O1 O2 OZ T3 T4 T5 T6 T7 T8 "
    "A1 A2 M1 M2".split())
_CENTRAL = frozenset({"C3", "C4", "CZ", "C1", "C2"})  # AASM's recommended staging derivations come first
_OTHER_MODALITY = ("EOG", "EMG", "ECG", "EKG", "LOC", "ROC", "CHIN", "LEG", "RESP", "SAO2", "SPO2", "PULSE")


def _label_tokens(label: str) -> list[str]:
    return [t for t in re.split(r"[^A-Z0-9]+", label.upper()) if t]


def _eeg_kind(label: str) -> str | None:
    """``"central"``, ``"eeg"`` or None (not recognisably EEG) for a signal label such as ``C3-A1``."""
    tokens = _label_tokens(label)
    if any(t.startswith(_OTHER_MODALITY) for t in tokens):
        return None
    if any(t in _CENTRAL for t in tokens):
        return "central"
    if "EEG" in tokens or any(t in _EEG_ELECTRODES for t in tokens):
        return "eeg"
    return None


@dataclass(frozen=True)
class EdfSelection:
    """Which signals of an EDF file are replayed as EEG, and why the others are not.

    Attributes
    ----------
    indices : tuple of int
        Signal indices (in the file, annotations excluded) to replay, in replay order: the first goes to
        chip channel 0, the staging channel by default.
    labels : tuple of str
        Their labels.
    skipped : tuple of (str, str)
        ``(label, reason)`` of every signal left out.
    """

    indices: tuple[int, ...]
    labels: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]


def select_edf_signals(signals: list, *, channels: list[str | int] | None = None,
                       source: str = "EDF") -> EdfSelection:
    """Choose the EEG signals of a recording (a PSG carries respiration, SaO2, ECG... beside its EEG).

    Parameters
    ----------
    signals : list of edfio.EdfSignal
        The file's signals (``edf.signals``).
    channels : list of str or int, optional
        Explicit choice: labels (case-insensitive) or 0-based indices, replayed in this order. Each must be
        a voltage (uV, mV, V). Default: every voltage signal whose label names an EEG derivation (``EEG``
        or a 10-20 electrode such as C3, Cz, Fp1, O1, A1), central ones (C3/C4/Cz) first; EOG, EMG and ECG
        are left out. A file with no such label falls back to all its voltage signals that are not EOG,
        EMG or ECG.
    source : str
        Name used in error messages (the file's path).

    Returns
    -------
    EdfSelection

    Raises
    ------
    ValueError
        A one-line reason: an unknown label or index, a chosen signal that is not a voltage, or no
        EEG-like signal at all.
    """
    def unit(s) -> str:
        return str(s.physical_dimension).strip().lower()

    labels = [str(s.label).strip() for s in signals]
    shown = [" ".join(lab.split()) or repr(lab) for lab in labels]  # one line, whatever a header holds
    if channels:
        chosen = []
        for c in channels:
            if isinstance(c, int) or (isinstance(c, str) and c.strip().isdigit()):
                i = int(c)
                if not 0 <= i < len(signals):
                    raise ValueError(f"{source}: no signal {i} (the file has {len(signals)}: {', '.join(shown)})")
            else:
                matches = [i for i, lab in enumerate(labels) if lab.upper() == str(c).strip().upper()]
                if not matches:
                    raise ValueError(f"{source}: no signal labelled {c!r} (signals: {', '.join(shown)})")
                i = matches[0]
            if unit(signals[i]) not in _SCALE_TO_UV:
                raise ValueError(f"{source}: signal {shown[i]!r} has unit {signals[i].physical_dimension!r}, "
                                 "not a voltage")
            chosen.append(i)
        skipped = tuple((labels[i], "not in --channels") for i in range(len(signals)) if i not in chosen)
        return EdfSelection(tuple(chosen), tuple(labels[i] for i in chosen), skipped)
    central, eeg, other_voltage, skipped = [], [], [], []
    for i, s in enumerate(signals):
        if unit(s) not in _SCALE_TO_UV:
            skipped.append((labels[i], f"unit {s.physical_dimension!r} is not a voltage"))
            continue
        kind = _eeg_kind(labels[i])
        if kind == "central":
            central.append(i)
        elif kind == "eeg":
            eeg.append(i)
        elif any(t.startswith(_OTHER_MODALITY) for t in _label_tokens(labels[i])):
            skipped.append((labels[i], "not EEG (EOG/EMG/ECG)"))
        else:
            other_voltage.append(i)
    chosen = central + eeg
    if chosen:
        skipped += [(labels[i], "voltage, but its label names no EEG electrode") for i in other_voltage]
    else:
        chosen = other_voltage  # an unlabelled montage ("ch1", "ch2"): all that is left is EEG-like
    if not chosen:
        raise ValueError(f"{source}: no EEG signal (voltage signals labelled EEG or by a 10-20 electrode); "
                         f"signals: {', '.join(shown) or 'none'}; choose with --channels")
    return EdfSelection(tuple(chosen), tuple(labels[i] for i in chosen), tuple(skipped))


class EdfSource:
    """Replay the EEG signals of an EDF/EDF+ file (e.g. a whole PSG), resampled to ``fs_hz``, in microvolts.

    Parameters
    ----------
    path : str or Path
        EDF or EDF+ file (read with edfio).
    fs_hz : float
        Output rate (the chip's, 250 SPS by default).
    channels : list of str or int, optional
        Signal labels or indices to replay; default: its EEG signals (:func:`select_edf_signals`), the
        others (respiration, SaO2, ECG...) skipped and logged.
    loop : bool
        Start again at the end; otherwise zeros follow and :attr:`exhausted` turns True.

    Raises
    ------
    ValueError
        When the file holds no usable EEG signal or ``channels`` names one it does not have.
    """

    def __init__(self, path: str | Path, *, fs_hz: float = 250.0, channels: list | None = None,
                 loop: bool = True) -> None:
        import edfio
        from scipy.signal import resample_poly
        from fractions import Fraction

        edf = edfio.read_edf(str(path))
        signals = list(edf.signals)
        self.selection = select_edf_signals(signals, channels=channels, source=str(path))
        logger.info("%s: replaying %s", path, ", ".join(self.selection.labels))
        if self.selection.skipped:
            logger.info("%s: skipped %s", path, "; ".join(f"{lab} ({why})" for lab, why in self.selection.skipped))
        data = []
        for i in self.selection.indices:
            s = signals[i]
            x = np.asarray(s.data, dtype=np.float64) * _SCALE_TO_UV[str(s.physical_dimension).strip().lower()]
            ratio = Fraction(float(fs_hz) / s.sampling_frequency).limit_denominator(1000)
            if ratio != 1:
                x = resample_poly(x, ratio.numerator, ratio.denominator)
            data.append(x)
        n = min(len(x) for x in data)
        self.samples = np.stack([x[:n] for x in data], axis=1)
        self.labels = list(self.selection.labels)
        self.fs_hz = float(fs_hz)
        self.n_channels = self.samples.shape[1]
        self.loop = loop
        self._pos = 0
        self.exhausted = False

    def read(self, n_samples: int) -> np.ndarray:
        out = np.zeros((n_samples, self.n_channels))
        done = 0
        total = self.samples.shape[0]
        while done < n_samples:
            if self._pos >= total:
                if not self.loop:
                    self.exhausted = True
                    break
                self._pos = 0
            k = min(n_samples - done, total - self._pos)
            out[done:done + k] = self.samples[self._pos:self._pos + k]
            done += k
            self._pos += k
        return out
