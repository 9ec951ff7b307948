"""The Sleep-EDF loader on small PhysioNet-layout EDF files the test writes itself with edfio."""
from __future__ import annotations

import datetime as dt

import edfio
import numpy as np
import pytest

from appliance.protocol.stages import Stage
from models.stager.sleepedf import find_recordings, load_recording, read_hypnogram_edf

FS = 100.0


def _write_pair(folder, name="SC4011E0", scorer="H", *, labels, unit="uV", channel="EEG Fpz-Cz", seconds=None):
    """A PSG with an EEG and an EOG channel plus an annotations-only hypnogram, as PhysioNet ships them."""
    seconds = seconds or 30 * sum(n for _, n in labels)
    t = np.arange(int(seconds * FS)) / FS
    eeg = 40.0 * np.sin(2 * np.pi * 2.0 * t)
    scale = {"uV": 1.0, "mV": 1e-3}[unit]
    start = dt.time(22, 15, 0)
    psg = edfio.Edf(
        [edfio.EdfSignal(eeg * scale, FS, label=channel, physical_dimension=unit,
                         physical_range=(-200 * scale, 200 * scale)),
         edfio.EdfSignal(np.zeros_like(eeg), FS, label="EOG horizontal", physical_dimension="uV",
                         physical_range=(-200, 200))],
        starttime=start, data_record_duration=30.0,
    )
    psg_path = folder / f"{name}-PSG.edf"
    psg.write(psg_path)
    anns, onset = [], 0.0
    for text, n in labels:
        anns.append(edfio.EdfAnnotation(onset, 30.0 * n, text))
        onset += 30.0 * n
    hyp = edfio.Edf([], annotations=anns, starttime=start)
    hyp_path = folder / f"{name[:7]}{scorer}-Hypnogram.edf"
    hyp.write(hyp_path)
    return psg_path, hyp_path


LABELS = [("Sleep stage W", 2), ("Sleep stage 1", 1), ("Sleep stage 2", 2), ("Sleep stage 3", 1),
          ("Sleep stage 4", 1), ("Sleep stage R", 2), ("Movement time", 1), ("Sleep stage ?", 1)]
EXPECTED = [Stage.W, Stage.W, Stage.N1, Stage.N2, Stage.N2, Stage.N3, Stage.N3, Stage.REM, Stage.REM,
            Stage.UNSCORED, Stage.UNSCORED]


def test_loads_eeg_and_maps_rk_to_aasm(tmp_path):
    psg, hyp = _write_pair(tmp_path, labels=LABELS)
    rec = load_recording(psg, hyp)
    assert rec.name == "SC4011E0"
    assert rec.subject == "sleep-edf-01"
    assert rec.fs_hz == FS
    assert rec.hypnogram.tolist() == [int(s) for s in EXPECTED]
    assert len(rec.eeg_uv) == len(EXPECTED) * 30 * FS
    # edfio stores 16-bit digital values: the sine comes back within one quantisation step.
    t = np.arange(len(rec.eeg_uv)) / FS
    assert np.allclose(rec.eeg_uv, 40.0 * np.sin(2 * np.pi * 2.0 * t), atol=400 / 65535 * 2)


def test_millivolt_channels_are_scaled_to_microvolts(tmp_path):
    psg, hyp = _write_pair(tmp_path, labels=LABELS, unit="mV")
    rec = load_recording(psg, hyp)
    assert np.max(np.abs(rec.eeg_uv)) == pytest.approx(40.0, rel=0.01)


def test_hypnogram_shorter_than_psg_leaves_tail_unscored(tmp_path):
    psg, hyp = _write_pair(tmp_path, labels=[("Sleep stage W", 1), ("Sleep stage 2", 2)], seconds=150)
    rec = load_recording(psg, hyp)
    assert rec.hypnogram.tolist() == [Stage.W, Stage.N2, Stage.N2, Stage.UNSCORED, Stage.UNSCORED]


def test_find_recordings_pairs_by_recording_not_scorer(tmp_path):
    _write_pair(tmp_path, name="SC4011E0", scorer="H", labels=LABELS)
    _write_pair(tmp_path, name="SC4012E0", scorer="C", labels=LABELS)
    (tmp_path / "SC4021E0-PSG.edf").write_bytes(b"")  # no hypnogram: skipped with a warning
    pairs = find_recordings(tmp_path)
    assert [(p.name, h.name) for p, h in pairs] == [
        ("SC4011E0-PSG.edf", "SC4011EH-Hypnogram.edf"), ("SC4012E0-PSG.edf", "SC4012EC-Hypnogram.edf")]


def test_missing_channel_and_bad_label_give_clear_errors(tmp_path):
    psg, hyp = _write_pair(tmp_path, labels=LABELS, channel="EEG Pz-Oz")
    with pytest.raises(ValueError, match="no channel 'EEG Fpz-Cz'.*EEG Pz-Oz"):
        load_recording(psg, hyp)
    bad = edfio.Edf([], annotations=[edfio.EdfAnnotation(0.0, 30.0, "Lights off")])
    bad.write(tmp_path / "bad-Hypnogram.edf")
    with pytest.raises(ValueError, match="unknown hypnogram annotation 'Lights off'"):
        read_hypnogram_edf(tmp_path / "bad-Hypnogram.edf")
    with pytest.raises(FileNotFoundError):
        find_recordings(tmp_path / "nowhere")
