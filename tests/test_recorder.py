"""EDF+ recording: read-back with edfio, annotations (the TAL encoder/decoder), crash-cut files, recovery and
retention."""
from __future__ import annotations

import datetime as dt
import os
import shutil
import warnings

import edfio
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.edfplus import EdfPlusRecorder, decode_tals, encode_tal, read_annotations, recover_edf, tal_text
from appliance.nightfolder import enforce_retention, list_nights, recover_nights

FS = 250


def _signal(seconds: float, ch: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 40, (int(seconds * FS), ch)).astype(np.float32)


def test_read_back_in_microvolts_with_annotations(tmp_path):
    x = _signal(61.3)
    x[100, 1] = 5000.0  # beyond the recorded range: saturated and counted
    start = dt.datetime(2026, 11, 23, 21, 30, 5, tzinfo=dt.timezone.utc)
    with EdfPlusRecorder(tmp_path / "n.edf", channel_labels=["EEG Fpz-Cz", "EEG C3", "EEG C4"], fs_hz=FS,
                         start=start) as rec:
        rec.annotate(0, "Sleep stage W", 30)
        for i in range(0, len(x), 777):  # odd block sizes, as the ring buffer delivers them
            rec.write(x[i:i + 777])
        rec.annotate(30, "Sleep stage 2", 30)
        rec.annotate(45.25, "Loop detected p_loop=0.91")
        rec.annotate(50, "Fault: DRDY stall")
    assert rec.clipped_samples == 1
    edf = edfio.read_edf(tmp_path / "n.edf")
    assert edf.num_data_records == 62  # 61 full records + the padded partial one
    assert edf.startdate == start.date() and edf.starttime == start.time().replace(tzinfo=None)
    sig = edf.signals[0]
    assert sig.label == "EEG Fpz-Cz" and sig.physical_dimension == "uV" and sig.sampling_frequency == FS
    assert (sig.physical_min, sig.physical_max, sig.digital_min, sig.digital_max) == (-3276.8, 3276.7, -32768, 32767)
    for c in range(3):
        got = edf.signals[c].data[:len(x)]
        ref = np.clip(x[:, c], -3276.8, 3276.7)
        assert np.max(np.abs(got - ref)) <= 0.05 + 1e-6  # half a count of 0.1 uV
    texts = [(a.onset, a.text) for a in edf.annotations]
    assert (0.0, "Sleep stage W") in texts and (30.0, "Sleep stage 2") in texts
    assert (45.25, "Loop detected p_loop=0.91") in texts and (50.0, "Fault: DRDY stall") in texts


def test_crash_cut_file_is_readable_and_recovered(tmp_path):
    p = tmp_path / "n.edf"
    rec = EdfPlusRecorder(p, channel_labels=["a", "b", "c"], fs_hz=FS, flush_interval_s=0.5)
    rec.annotate(0, "Sleep stage W", 30)
    rec.write(_signal(20.0))
    rec.flush()
    # simulate a power cut in the middle of a record: the file ends with half a record, count field is -1
    size = p.stat().st_size
    os.truncate(p, size - 1000)
    cut = tmp_path / "cut.edf"
    shutil.copy(p, cut)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edf = edfio.read_edf(cut)  # readable as it is
    assert edf.num_data_records == 19
    assert recover_edf(p) == 19
    assert recover_edf(p) is None  # idempotent
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a recovered file is clean: no warnings at all
        edf = edfio.read_edf(p)
    assert edf.num_data_records == 19
    assert (0.0, 30.0, "Sleep stage W") in read_annotations(p)  # beside the UTC-offset note at onset 0


def test_annotation_burst_is_spread_over_records_not_lost(tmp_path):
    p = tmp_path / "n.edf"
    with EdfPlusRecorder(p, channel_labels=["a"], fs_hz=FS) as rec:
        for i in range(40):
            rec.annotate(i * 0.01, f"breather light level {i} of 40, ramp step")
        rec.write(_signal(3.0, ch=1))
    texts = [a[2] for a in read_annotations(p)]
    assert len([t for t in texts if t.startswith("breather light level")]) == 40


def test_retention_deletes_oldest_first(tmp_path):
    for i in range(5):
        d = tmp_path / f"2026112{i}T220000Z"
        d.mkdir()
        (d / "night.edf").write_bytes(b"x" * 1000)
    deleted = enforce_retention(tmp_path, max_nights=3, max_bytes=1e9)
    assert [d.name for d in deleted] == ["20261120T220000Z", "20261121T220000Z"]
    keep = tmp_path / "20261122T220000Z"
    deleted = enforce_retention(tmp_path, max_nights=10, max_bytes=1500, keep=keep)
    assert [d.name for d in deleted] == ["20261123T220000Z", "20261124T220000Z"]
    assert [d.name for d in list_nights(tmp_path)] == ["20261122T220000Z"]


def test_recover_nights_closes_interrupted_recordings(tmp_path):
    d = tmp_path / "20261123T220000Z"
    d.mkdir()
    rec = EdfPlusRecorder(d / "night.edf", channel_labels=["a"], fs_hz=FS)
    rec.write(_signal(5.0, ch=1))
    rec.flush()  # never closed: as after SIGKILL
    assert recover_nights(tmp_path) == [d / "night.edf"]
    assert edfio.read_edf(d / "night.edf").num_data_records == 5


def test_bad_arguments():
    with pytest.raises(ValueError):
        EdfPlusRecorder("/nonexistent/x.edf", channel_labels=["a"], fs_hz=250, record_duration_s=0.001)


def test_closing_puts_late_annotations_in_the_last_record(tmp_path):
    p = tmp_path / "n.edf"
    with EdfPlusRecorder(p, channel_labels=["a"], fs_hz=FS) as rec:
        rec.write(_signal(10.0, ch=1))
        rec.annotate(9.5, "night_ended")  # queued after the last record was written
    edf = edfio.read_edf(p)
    assert edf.num_data_records == 10  # not lengthened by the annotation
    assert (9.5, "night_ended") in [(a.onset, a.text) for a in edf.annotations]


@pytest.mark.parametrize("zone, local, offset", [("Pacific/Auckland", dt.datetime(2026, 11, 30, 22, 8, 48), "+13:00"),
                                                 ("America/New_York", dt.datetime(2026, 11, 30, 4, 8, 48), "-05:00"),
                                                 ("UTC", dt.datetime(2026, 11, 30, 9, 8, 48), "+00:00")])
def test_edf_start_is_local_time_and_says_its_utc_offset(tmp_path, monkeypatch, zone, local, offset):
    import time

    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        start = dt.datetime(2026, 11, 30, 9, 8, 48, tzinfo=dt.timezone.utc)
        with EdfPlusRecorder(tmp_path / "n.edf", channel_labels=["EEG Fpz-Cz"], fs_hz=FS, start=start) as rec:
            rec.write(_signal(3.0, ch=1))
    finally:
        monkeypatch.undo()
        time.tzset()
    head = (tmp_path / "n.edf").read_bytes()[:256]
    assert head[168:176] == local.strftime("%d.%m.%y").encode() and head[176:184] == local.strftime("%H.%M.%S").encode()
    assert head[88:88 + 21] == f"Startdate {local:%d-%b-%Y}".upper().replace("STARTDATE", "Startdate").encode()
    edf = edfio.read_edf(tmp_path / "n.edf")
    assert edf.startdate == local.date() and edf.starttime == local.time()
    assert (0.0, None, f"Local time UTC{offset} (start 2026-11-30T09:08:48Z)") in read_annotations(tmp_path / "n.edf")
    try:  # a second reader, when installed
        import pyedflib
    except ImportError:
        return
    with pyedflib.EdfReader(str(tmp_path / "n.edf")) as f:
        assert f.getStartdatetime() == local and f.getSignalLabels() == ["EEG Fpz-Cz"]


@pytest.mark.parametrize("labels", [["EEG Fpz-Cz-with-a-long-name"] + ["x"] * 7, ["EEG Fpz–Cz"] + ["x"] * 7,
                                    [""] + ["x"] * 7, [3] + ["x"] * 7])
def test_config_refuses_channel_labels_edf_cannot_hold(labels):
    from appliance.protocol.boxconfig import ConfigError, validate_config

    with pytest.raises(ConfigError) as ei:
        validate_config({"acquisition": {"channel_labels": labels}})
    assert ei.value.key.startswith("acquisition.channel_labels")


def test_default_labels_carry_electrode_names():
    from appliance.config import edf_channel_labels
    from appliance.protocol.boxconfig import validate_config

    acq = validate_config({"acquisition": {"channels": 4}}).acquisition
    assert edf_channel_labels(acq, n_channels=4) == ["EEG Fpz-Cz", "EEG Pz-Cz", "EEG C3-Cz", "EEG C4-Cz"]
    mine = validate_config({"acquisition": {"channels": 4, "channel_labels": ["EEG C4-M1", "a", "b", "c"]}})
    assert edf_channel_labels(mine.acquisition, n_channels=4)[0] == "EEG C4-M1"


# ---- TALs: the one encoder and decoder ---------------------------------------------------------------
_onsets = st.integers(min_value=0, max_value=100_000_000).map(lambda ms: ms / 1000.0)
_durations = st.none() | st.integers(min_value=0, max_value=9_999_999).map(lambda ms: ms / 1000.0)


@settings(max_examples=300, deadline=None)
@given(onset=_onsets, duration=_durations, text=st.text(max_size=60))
def test_a_tal_decodes_to_what_was_encoded(onset, duration, text):
    raw = encode_tal(onset, text, duration)
    assert raw.endswith(b"\x14\x00") and raw.count(b"\x00") == 1  # one TAL, NUL-terminated
    ((got_onset, got_duration, got_text),) = decode_tals(raw)
    assert got_onset == onset
    assert got_text == tal_text(text) and got_text.isascii() and "\x14" not in got_text and "\x15" not in got_text
    if duration is None:
        assert got_duration is None
    else:  # an 8-character field: exact to the shortest decimal that fits
        assert got_duration == pytest.approx(duration, abs=0.5 * 10 ** -max(0, 6 - len(str(int(duration)))))


def test_an_empty_text_is_the_time_keeping_tal():
    assert encode_tal(0.0, "") == b"+0\x14\x14\x00"
    assert encode_tal(61.5, "") == b"+61.5\x14\x14\x00"
    assert decode_tals(b"+61.5\x14\x14\x00" + b"\x00" * 20) == [(61.5, None, "")]


def test_decoding_the_records_gives_what_edfio_reads(tmp_path):
    """Every record's annotation signal, decoded here, holds exactly the annotations edfio finds in the file."""
    p = tmp_path / "n.edf"
    with EdfPlusRecorder(p, channel_labels=["a", "b"], fs_hz=FS) as rec:
        for i in range(40):
            rec.annotate(i * 0.75, f"event {i} \u00e9t\u00e9\x14", 1.5 if i % 3 else None)
        rec.write(_signal(12.4, ch=2))
    data = p.read_bytes()
    header_bytes, rec_bytes, spr = int(data[184:192]), 2 * (2 * FS) + 240, 2 * FS
    ours = []
    for r in range(header_bytes, len(data), rec_bytes):
        tals = decode_tals(data[r + 2 * spr:r + rec_bytes])
        assert tals[0][2] == "" and tals[0][0] == (r - header_bytes) // rec_bytes  # time-keeping TAL first
        ours += [(on, dur, text) for on, dur, text in tals[1:]]
    assert sorted(ours) == sorted(read_annotations(p))  # edfio gives them by onset
    assert ("event 7 ?t? " in {t for _, _, t in ours})


@pytest.mark.parametrize("block", [b"12\x14x\x14\x00", b"+a\x14x\x14\x00", b"+1\x15z\x14x\x14\x00"])
def test_a_damaged_tal_is_an_error(block):
    with pytest.raises(ValueError):
        decode_tals(block)


def test_a_nul_in_an_annotation_text_does_not_break_the_file(tmp_path):
    """Regression: a NUL in a text (e.g. an event detail echoing a hostile value) went into the file as is, where
    by the EDF+ spec it ends the TAL (readers that follow the spec cut the annotation there)."""
    p = tmp_path / "n.edf"
    with EdfPlusRecorder(p, channel_labels=["a"], fs_hz=FS) as rec:
        rec.annotate(1.0, "config_rejected reason=bad\x00value", 2.0)
        rec.annotate(2.0, "Sleep stage 2", 30)
        rec.write(_signal(3.0, ch=1))
    texts = [t for _, _, t in read_annotations(p) if not t.startswith("Local time UTC")]
    assert texts == ["config_rejected reason=bad value", "Sleep stage 2"]


def test_a_record_without_annotations_keeps_the_time_keeping_tal_of_encode_tal(tmp_path):
    """The writer's shortcut for a record with no annotation queued gives encode_tal's bytes, padded."""
    from appliance.edfplus import ANNOTATION_BYTES_PER_RECORD, encode_tal

    with EdfPlusRecorder(tmp_path / "n.edf", channel_labels=["EEG Fpz-Cz"], fs_hz=FS, record_duration_s=0.5) as rec:
        rec._annotations.clear()
        for i in (0, 1, 7, 86399, 123457):
            want = encode_tal(i * 0.5, "").ljust(ANNOTATION_BYTES_PER_RECORD, b"\x00")
            assert rec._tal_block(i) == want, i


class _ReferenceRecorder(EdfPlusRecorder):
    """The writer's record encoding done the straightforward way (as it was before the in-place buffer): scale,
    round, clip and cast with fresh arrays, every record's bytes joined; the TAL of a record by encode_tal."""

    def _tal_block(self, record_index: int) -> bytes:
        from appliance.edfplus import ANNOTATION_BYTES_PER_RECORD

        if self._annotations:
            return super()._tal_block(record_index)
        return encode_tal(record_index * self.record_duration_s, "").ljust(ANNOTATION_BYTES_PER_RECORD, b"\x00")

    def _write_records(self, x: np.ndarray) -> None:
        from appliance.edfplus import DIGITAL_MAX, DIGITAL_MIN

        digital = np.rint(x / self.uv_per_count - self._offset)
        clipped = (digital < DIGITAL_MIN) | (digital > DIGITAL_MAX)
        self.clipped_samples += int(clipped.sum())
        d16 = np.clip(digital, DIGITAL_MIN, DIGITAL_MAX).astype("<i2")
        spr = self.samples_per_record
        n_rec = len(x) // spr
        per_rec = d16.reshape(n_rec, spr, self.n_channels).transpose(0, 2, 1).reshape(n_rec, -1)
        self._file.write(b"".join(per_rec[i].tobytes() + self._tal_block(self.records_written + i)
                                  for i in range(n_rec)))
        self.records_written += n_rec


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_ch=st.integers(1, 4), record_s=st.sampled_from([0.2, 0.5, 1.0, 2.0]),
       blocks=st.lists(st.integers(1, 1200), min_size=1, max_size=12), scale=st.sampled_from([1.0, 400.0, 5000.0]),
       notes=st.lists(st.tuples(st.floats(0, 60), st.sampled_from(["Sleep stage 2", "Frames lost: 3", "x" * 300])),
                      max_size=4))
def test_the_writers_bytes_are_the_reference_encodings(tmp_path_factory, seed, n_ch, record_s, blocks, scale, notes):
    """Whatever the chunking, clipping and annotations, the writer's file is byte for byte the reference's."""
    d = tmp_path_factory.mktemp("edf")
    rng = np.random.default_rng(seed)
    x = (rng.normal(0, 1, (sum(blocks), n_ch)) * scale).astype(np.float32)
    x[rng.random(x.shape) < 0.01] = rng.choice([3276.7, -3276.8, 3276.75, -3276.85, 0.05, -0.05])  # edges, ties
    start = dt.datetime(2026, 11, 23, 21, 30, 5, tzinfo=dt.timezone.utc)
    recs = [cls(d / f"{cls.__name__}.edf", channel_labels=[f"EEG {i}" for i in range(n_ch)], fs_hz=FS,
                record_duration_s=record_s, start=start) for cls in (EdfPlusRecorder, _ReferenceRecorder)]
    for rec in recs:
        at = 0
        for j, n in enumerate(blocks):
            for onset, text in notes[j:j + 1]:
                rec.annotate(onset, text, 30.0)
            rec.write(x[at:at + n])
            at += n
        rec.close()
    assert recs[0].clipped_samples == recs[1].clipped_samples
    assert (d / "EdfPlusRecorder.edf").read_bytes() == (d / "_ReferenceRecorder.edf").read_bytes()
