"""`bedtime run --simulate --edf` takes a real PSG: the EEG is picked by unit and label (or --channels),
everything else is skipped and said so, and bad choices are a one-line error with exit status 2.

Before issue 13 DREAMS excerpt3.edf (20 signals; respiration in "ML", SaO2 in "%") was refused whole with a
traceback (ValueError: signal 'VAB' has unit 'ML', not a voltage).
"""
from __future__ import annotations

import json
import logging

import edfio
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.signal_sources import EdfSource, select_edf_signals
from appliance.cli import main

FS = 100.0


def _sig(label: str, unit: str, x: np.ndarray, fs: float = FS) -> edfio.EdfSignal:
    lo, hi = float(np.floor(x.min())) - 1.0, float(np.ceil(x.max())) + 1.0
    return edfio.EdfSignal(x, fs, label=label, physical_dimension=unit, physical_range=(lo, hi))


@pytest.fixture
def psg(tmp_path):
    """A generated multi-signal PSG: EEG in uV and mV, EOG, EMG, ECG, respiration, SaO2, a 1-Hz channel."""
    n = int(120 * FS)
    t = np.arange(n) / FS
    eeg = 30.0 * np.sin(2 * np.pi * 10.0 * t)
    sigs = [
        _sig("Resp nasal", "ML", 500.0 * np.sin(2 * np.pi * 0.25 * t)),
        _sig("SaO2", "%", 95.0 + 0.0 * t),
        _sig("EOG E1-M2", "uV", 80.0 * np.sin(2 * np.pi * 0.3 * t)),
        _sig("EEG O1-M2", "mV", eeg / 1000.0),
        _sig("EMG chin", "uV", 5.0 * np.sin(2 * np.pi * 40.0 * t)),
        _sig("ECG", "mV", np.sin(2 * np.pi * 1.2 * t)),
        _sig("EEG C4-M1", "uV", 2.0 * eeg),
        _sig("Position", "-", 0.0 * t + 1.0),
        _sig("Light", "lux", np.zeros(int(120 * 1.0)), fs=1.0),
    ]
    path = tmp_path / "psg.edf"
    edfio.Edf(sigs).write(path)
    return path


def test_psg_replays_its_eeg_central_first_and_logs_what_it_skipped(psg, caplog):
    with caplog.at_level(logging.INFO, logger="appliance.signal_sources"):
        src = EdfSource(psg, fs_hz=250.0, loop=False)
    assert src.labels == ["EEG C4-M1", "EEG O1-M2"]  # central first: the staging channel
    x = src.read(250 * 60)
    assert x.shape == (15000, 2)
    assert np.abs(x[2500:12500, 0]).max() == pytest.approx(60.0, rel=0.03)
    assert np.abs(x[2500:12500, 1]).max() == pytest.approx(30.0, rel=0.03)  # mV came back in uV
    skipped = dict(src.selection.skipped)
    assert set(skipped) == {"Resp nasal", "SaO2", "EOG E1-M2", "EMG chin", "ECG", "Position", "Light"}
    assert "not a voltage" in skipped["SaO2"] and "EOG" in skipped["EOG E1-M2"]
    text = caplog.text
    assert "replaying EEG C4-M1, EEG O1-M2" in text and "SaO2 (unit '%' is not a voltage)" in text


def test_channels_choose_and_order_the_signals(psg):
    src = EdfSource(psg, fs_hz=250.0, channels=["eeg o1-m2", 2])
    assert src.labels == ["EEG O1-M2", "EOG E1-M2"]
    with pytest.raises(ValueError, match="unit 'ML', not a voltage"):
        EdfSource(psg, channels=["Resp nasal"])
    with pytest.raises(ValueError, match="no signal labelled 'Fz'"):
        EdfSource(psg, channels=["Fz"])
    with pytest.raises(ValueError, match="no signal 42"):
        EdfSource(psg, channels=[42])


class _Sig:
    def __init__(self, label: str, unit: str) -> None:
        self.label, self.physical_dimension = label, unit


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.text(max_size=16), st.sampled_from(["uV", "UV", "mV", "V", "%", "ML", "-", "bpm", "",
                                                                  "µV", "nV", "degC"])), max_size=12))
def test_selection_of_any_header_is_voltages_or_a_one_line_refusal(sigs):
    signals = [_Sig(lab, unit) for lab, unit in sigs]
    try:
        sel = select_edf_signals(signals, source="x.edf")
    except ValueError as e:
        assert "\n" not in str(e) and str(e).startswith("x.edf: ")
        return
    assert sel.indices and len(set(sel.indices)) == len(sel.indices)
    assert all(signals[i].physical_dimension.lower() in ("uv", "mv", "v", "µv", "nv") for i in sel.indices)
    assert len(sel.indices) + len(sel.skipped) == len(signals)


def _config(tmp_path):
    cfg = tmp_path / "bedtime.toml"
    cfg.write_text(f'[box]\nid = "box-edf"\nstate_dir = "{tmp_path / "state"}"\n'
                   f'[recording]\ndir = "{tmp_path / "nights"}"\n[mqtt]\nenabled = false\n')
    return cfg


@pytest.mark.parametrize("extra, message", [
    (["--channels", "SaO2"], "unit '%', not a voltage"),
    (["--channels", "Fz"], "no signal labelled 'Fz'"),
    (["--channels", "99"], "no signal 99"),
])
def test_cli_refuses_a_bad_channel_choice_in_one_line(psg, tmp_path, capsys, extra, message):
    assert main(["run", "--simulate", "--edf", str(psg), "--config", str(_config(tmp_path)), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "nights").exists() and not (tmp_path / "state").exists()


def test_cli_refuses_a_missing_or_broken_file_in_one_line(tmp_path, capsys):
    cfg = _config(tmp_path)
    assert main(["run", "--simulate", "--edf", str(tmp_path / "absent.edf"), "--config", str(cfg)]) == 2
    assert "no such file" in capsys.readouterr().err
    junk = tmp_path / "junk.edf"
    junk.write_bytes(b"0       this is not an EDF header" * 3)
    assert main(["run", "--simulate", "--edf", str(junk), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a readable EDF file" in err and "\n" not in err
    assert main(["run", "--simulate", "--channels", "C3", "--config", str(cfg)]) == 2
    assert "--channels needs --edf" in capsys.readouterr().err


def _night_epochs(nights_dir):
    (night,) = [d for d in nights_dir.iterdir() if d.is_dir()]
    rows = [json.loads(ln) for ln in (night / "epochs.jsonl").read_text().splitlines()]
    return np.array([r["probs"] for r in rows])


@pytest.mark.slow
def test_cli_replays_a_generated_psg(psg, tmp_path):
    assert main(["run", "--simulate", "--edf", str(psg), "--speed", "inf", "--config", str(_config(tmp_path))]) == 0
    assert len(_night_epochs(tmp_path / "nights")) == 4


@pytest.mark.slow
def test_box_replay_of_real_psg_agrees_with_offline_and_evaluate(shared, tmp_path):
    """Offline path, live path and `make evaluate` agree on real EEG (DREAMS excerpt3, C3-A1 at 50 Hz).

    The box: the whole 20-signal PSG through `bedtime run --simulate --edf` (EEG picked by label, resampled to
    the chip's 250 SPS, quantised by the simulated ADS1299, staged live epoch by epoch). Offline: the very
    same C3-A1 samples from the .txt export, staged at their own 50 Hz and, as `make evaluate` does, at 100 Hz.
    """
    from appliance.dsp import StreamingPreprocessor
    from appliance.stager import EPOCH_SAMPLES, Stager
    from models.stager.evaluate import equal_input, read_dreams_excerpt

    folder = shared / "data" / "dreams-spindles"
    if not (folder / "excerpt3.edf").is_file() or not (folder / "excerpt3.txt").is_file():
        pytest.skip("DREAMS excerpt3 not in ../shared")
    assert main(["run", "--simulate", "--edf", str(folder / "excerpt3.edf"), "--speed", "inf",
                 "--config", str(_config(tmp_path))]) == 0
    box = _night_epochs(tmp_path / "nights").argmax(1)
    x, fs, channel = read_dreams_excerpt(folder / "excerpt3.txt")
    assert channel == "C3-A1" and fs == 50.0
    stager = Stager()
    offline = stager.stage_night(x, fs_hz=fs).argmax(1)
    evaluate = stager.stage_night(*equal_input(x, fs)[:1], fs_hz=equal_input(x, fs)[1]).argmax(1)
    stager.reset()
    pre, buf, live = StreamingPreprocessor(fs), np.empty(0), []
    for chunk in np.array_split(x, 37):
        buf = np.concatenate([buf, pre.process(chunk)])
        while len(buf) >= EPOCH_SAMPLES:
            live.append(int(np.argmax(stager.stage_epoch(buf[:EPOCH_SAMPLES]))))
            buf = buf[EPOCH_SAMPLES:]
    stager.reset()
    assert len(box) >= 59 and len(offline) == 60
    np.testing.assert_array_equal(live, offline)  # the live path is the offline path, epoch by epoch
    n = min(len(box), len(offline))
    agree_box = float(np.mean(box[:n] == offline[:n]))
    agree_eval = float(np.mean(evaluate[:60] == offline))
    print(f"\n[DREAMS excerpt3 replay] box vs offline {agree_box:.3f} over {n} epochs; evaluate (100 Hz) vs offline "
          f"(50 Hz) {agree_eval:.3f}")
    assert agree_box >= 0.95 and agree_eval >= 0.95
