"""Load Sleep-EDF Expanded recordings as PhysioNet distributes them, for retraining the stage model.

Layout (https://physionet.org/content/sleep-edfx/1.0.0/): a directory with pairs of files

* ``SC4001E0-PSG.edf``: the polysomnogram (EDF); the EEG channel ``EEG Fpz-Cz`` at 100 Hz, microvolts;
* ``SC4001EC-Hypnogram.edf``: an EDF+ file with only annotations, one per run of equal stages:
  ``Sleep stage W|1|2|3|4|R|?`` and ``Movement time`` with onset and duration in seconds.

A PSG and its hypnogram share the first seven characters of their names (``SC4001E``); the last letter
of the hypnogram names the scorer. Rechtschaffen & Kales stages map to AASM: 3 and 4 merge into N3;
``?`` and movement time are UNSCORED. Subject ids follow :func:`appliance.hypnogram.subject_of`
(``SC4ssN``: ss is the subject, N the night), so the two nights of one subject stay in one split.

EDF parsing is edfio's (the project's EDF+ library); this module only pairs files and maps labels.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.hypnogram import subject_of
from appliance.protocol.stages import EPOCH_S, Stage

logger = logging.getLogger(__name__)

EEG_CHANNEL = "EEG Fpz-Cz"
"""The Sleep-EDF channel the stager trains on (the closest to the box's single central channel)."""

RK_TO_AASM: dict[str, Stage] = {
    "Sleep stage W": Stage.W,
    "Sleep stage 1": Stage.N1,
    "Sleep stage 2": Stage.N2,
    "Sleep stage 3": Stage.N3,
    "Sleep stage 4": Stage.N3,
    "Sleep stage R": Stage.REM,
    "Sleep stage ?": Stage.UNSCORED,
    "Movement time": Stage.UNSCORED,
}
"""Sleep-EDF hypnogram annotation texts -> AASM stages."""

_UNIT_TO_UV = {"uv": 1.0, "µv": 1.0, "mv": 1e3, "v": 1e6, "nv": 1e-3}


@dataclass(frozen=True)
class SleepEDFRecording:
    """One Sleep-EDF night: the EEG channel and the AASM hypnogram over its whole 30-s epochs.

    Attributes
    ----------
    name : str
        Recording name, e.g. ``SC4001E0``.
    subject : str
        Subject id for subject-wise splits.
    eeg_uv : numpy.ndarray
        The EEG channel in microvolts.
    fs_hz : float
        Its sampling rate (Hz).
    hypnogram : numpy.ndarray of int8
        One :class:`~appliance.protocol.stages.Stage` per 30-s epoch of ``eeg_uv`` (UNSCORED where no label).
    """

    name: str
    subject: str
    eeg_uv: np.ndarray
    fs_hz: float
    hypnogram: np.ndarray


def find_recordings(directory: str | Path) -> list[tuple[Path, Path]]:
    """Pair every ``*-PSG.edf`` in ``directory`` (recursively) with its ``*-Hypnogram.edf``.

    Raises
    ------
    FileNotFoundError
        When the directory does not exist or holds no PSG with a matching hypnogram.
    """
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: not a directory")
    hyps: dict[str, Path] = {}
    for h in sorted(d.rglob("*-Hypnogram.edf")):
        hyps.setdefault(h.name[:7], h)
    pairs = []
    for psg in sorted(d.rglob("*-PSG.edf")):
        h = hyps.get(psg.name[:7])
        if h is None:
            logger.warning("%s: no matching *-Hypnogram.edf; skipped", psg.name)
            continue
        pairs.append((psg, h))
    if not pairs:
        raise FileNotFoundError(f"{d}: no *-PSG.edf with a matching *-Hypnogram.edf")
    return pairs


def read_hypnogram_edf(path: str | Path, *, n_epochs: int | None = None, offset_s: float = 0.0) -> np.ndarray:
    """Read a Sleep-EDF ``*-Hypnogram.edf`` into one AASM stage per 30-s epoch.

    Parameters
    ----------
    path : str or Path
        The EDF+ hypnogram.
    n_epochs : int, optional
        Length of the result (the PSG's whole epochs). Default: up to the end of the last annotation.
    offset_s : float
        Seconds from the PSG's start to the hypnogram's start (0 in Sleep-EDF; read from the headers).

    Raises
    ------
    ValueError
        On an annotation text that is not a Sleep-EDF stage label, naming the file and the label.
    """
    import edfio

    edf = edfio.read_edf(path)
    spans = []
    for ann in edf.annotations:
        text = ann.text.strip()
        if text not in RK_TO_AASM:
            raise ValueError(f"{path}: unknown hypnogram annotation {text!r} at {ann.onset} s")
        dur = ann.duration if ann.duration is not None else EPOCH_S
        spans.append((ann.onset + offset_s, dur, RK_TO_AASM[text]))
    if n_epochs is None:
        n_epochs = int(max((o + d for o, d, _ in spans), default=0.0) // EPOCH_S)
    out = np.full(n_epochs, Stage.UNSCORED, dtype=np.int8)
    for onset, dur, stage in spans:
        first = int(round(onset / EPOCH_S))
        last = min(n_epochs, first + int(round(dur / EPOCH_S)))
        if first < n_epochs and last > max(first, 0):
            out[max(first, 0):last] = stage
    return out


def load_recording(psg_path: str | Path, hypnogram_path: str | Path, *, channel: str = EEG_CHANNEL) -> SleepEDFRecording:
    """Load the EEG channel of a PSG and its hypnogram, aligned on 30-s epochs.

    Raises
    ------
    ValueError
        When the channel is missing (listing the channels present) or its unit is not a voltage.
    """
    import edfio

    psg_path, hypnogram_path = Path(psg_path), Path(hypnogram_path)
    psg = edfio.read_edf(psg_path)
    labels = [s.label for s in psg.signals]
    if channel not in labels:
        raise ValueError(f"{psg_path}: no channel {channel!r} (has {labels})")
    sig = psg.get_signal(channel)
    unit = sig.physical_dimension.strip().lower()
    if unit not in _UNIT_TO_UV:
        raise ValueError(f"{psg_path}: channel {channel!r} has unit {sig.physical_dimension!r}, expected a voltage")
    eeg_uv = np.asarray(sig.data, dtype=np.float64) * _UNIT_TO_UV[unit]
    fs_hz = float(sig.sampling_frequency)
    n_epochs = int(len(eeg_uv) // round(EPOCH_S * fs_hz))
    try:
        hyp_edf = edfio.read_edf(hypnogram_path)
        offset_s = (hyp_edf.startdatetime - psg.startdatetime).total_seconds()
    except (TypeError, ValueError, AttributeError):  # anonymised dates: assume both start together
        offset_s = 0.0
    hyp = read_hypnogram_edf(hypnogram_path, n_epochs=n_epochs, offset_s=offset_s)
    name = psg_path.name.split("-")[0]
    subject = subject_of(name) if name.startswith("SC4") else f"sleep-edf-{name[:2].lower()}-{name[3:5]}"
    return SleepEDFRecording(name=name, subject=subject, eeg_uv=eeg_uv[:n_epochs * int(round(EPOCH_S * fs_hz))],
                             fs_hz=fs_hz, hypnogram=hyp)
