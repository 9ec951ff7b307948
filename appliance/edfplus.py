"""EDF+ (EDF+C) writing and reading: the raw channels in microvolts plus annotations (TALs), nothing about nights.

Why a hand-written streaming writer rather than edfio (which the project uses everywhere else for EDF): edfio
builds and writes a whole file from in-memory signals, so a night would sit in RAM until morning and a power cut
would lose all of it. EDF+ is designed to be appended to: a fixed header, then fixed-size data records. This
writer appends one record per ``record_duration_s`` and flushes to disk every ``flush_interval_s`` seconds of
wall time, so a crash loses at most that. While recording, the header's record count is ``-1`` (what the EDF
spec prescribes for a file being written); :func:`recover_edf` (run at the next start) cuts a torn last record
and writes the true count, and :meth:`EdfPlusRecorder.close` does the same on a clean stop. Read-back is
verified with edfio in tests/test_recorder.py, including a file cut mid-record.

Physical range: EDF stores 16-bit integers, but the ADS1299 has 24 bits (+-187.5 mV at gain 24). Storing the
full chip range would cost 5.7 uV per count, too coarse for EEG, so the range is +-``physical_range_uv``
(default 3276.8 uV = 0.1 uV per count); samples beyond it are saturated, counted and annotated.
The header's physical and digital extremes define the scaling exactly: the writer derives its gain from the
very numbers it writes into the 8-character header fields, so every reader reconstructs the same microvolts.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DIGITAL_MIN = -32768
DIGITAL_MAX = 32767
ANNOTATION_BYTES_PER_RECORD = 240
"""Space for annotations in each data record (120 two-byte 'samples'); overflow waits for the next record."""

STAGE_ANNOTATION = {0: "Sleep stage W", 1: "Sleep stage 1", 2: "Sleep stage 2", 3: "Sleep stage 3",
                    4: "Sleep stage R", -1: "Sleep stage ?"}
"""EDF+ standard texts for scored stages (EDF+ spec, 'standard texts'), by :class:`appliance.protocol.stages.Stage`."""
ANNOTATION_STAGE = {v: k for k, v in STAGE_ANNOTATION.items()}

UTC_OFFSET_PREFIX = "Local time UTC"
"""Start of the annotation (onset 0) that says which UTC offset the header's local start time has."""


def utc_offset_text(t: dt.datetime) -> str:
    """``+13:00`` style UTC offset of an aware datetime."""
    off = t.strftime("%z") or "+0000"
    return f"{off[:3]}:{off[3:5]}"


def _field(value: object, width: int) -> bytes:
    text = str(value)
    if len(text) > width:
        raise ValueError(f"EDF header field {text!r} longer than {width} characters")
    return text.ljust(width).encode("ascii")


def _num_field(x: float) -> str:
    """Shortest decimal text of ``x`` that fits an 8-character EDF field."""
    for decimals in range(6, -1, -1):
        text = f"{x:.{decimals}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        if len(text) <= 8:
            return text
    raise ValueError(f"{x} does not fit an 8-character EDF field")


def _onset_text(onset_s: float) -> str:
    text = f"{onset_s:+.3f}".rstrip("0").rstrip(".")
    return text if text not in ("+", "-") else "+0"


# ---- TALs (EDF+ spec section 2.2.2): the one encoder and the one decoder -------------------------------
TAL_DURATION = "\x15"
"""Separates a TAL's onset from its duration."""
TAL_TEXT = "\x14"
"""Ends the onset (or duration) and each annotation text of a TAL."""


def tal_text(text: str) -> str:
    """``text`` as an annotation can hold it: ASCII only (others become ``?``), no separator and no NUL inside.

    A NUL ends a TAL, so one inside a text (an event detail echoing a hostile value) would cut the annotation
    there and leave the rest to be read as a TAL of its own.
    """
    clean = text.encode("ascii", "replace").decode("ascii")
    return clean.replace(TAL_TEXT, " ").replace(TAL_DURATION, " ").replace("\x00", " ")


def encode_tal(onset_s: float, text: str, duration_s: float | None = None) -> bytes:
    """One Time-stamped Annotation List: ``+onset[\\x15duration]\\x14text\\x14\\x00``.

    With an empty ``text`` this is the time-keeping TAL that opens every record's annotation signal.

    Parameters
    ----------
    onset_s : float
        Seconds since the recording start (written to the millisecond, trailing zeros dropped).
    text : str
        The annotation; passed through :func:`tal_text`.
    duration_s : float, optional
        Seconds; written in at most 8 characters.
    """
    dur = f"{TAL_DURATION}{_num_field(duration_s)}" if duration_s is not None else ""
    return (_onset_text(onset_s) + dur + TAL_TEXT + tal_text(text) + TAL_TEXT + "\x00").encode("ascii")


def decode_tals(block: bytes) -> list[tuple[float, float | None, str]]:
    """The TALs of one record's annotation signal as ``(onset_s, duration_s, text)``, in order.

    The time-keeping TAL comes out with an empty text; a TAL with several texts gives one tuple per text; the
    zero padding after the last TAL is ignored.

    Raises
    ------
    ValueError
        When a TAL's onset or duration is not a number (a damaged block).
    """
    out: list[tuple[float, float | None, str]] = []
    for raw in block.split(b"\x00"):
        if not raw:
            continue
        parts = raw.decode("ascii", "replace").split(TAL_TEXT)
        when, texts = parts[0], parts[1:-1] if len(parts) > 2 else [""]
        onset, _, dur = when.partition(TAL_DURATION)
        if not onset or onset[0] not in "+-":
            raise ValueError(f"TAL onset {onset!r:.20} does not start with a sign")
        for text in texts:
            out.append((float(onset), float(dur) if dur else None, text))
    return out


@dataclass(frozen=True)
class EdfChannel:
    """One recorded signal."""

    label: str
    transducer: str = "AgAgCl electrode"
    prefilter: str = "None (raw ADS1299)"


class EdfPlusRecorder:
    """Append-only EDF+C writer for the night's raw EEG.

    Parameters
    ----------
    path : path-like
        File to create (must not exist).
    channel_labels : list of str
        One label per channel (e.g. ``"EEG Fpz-Cz"``).
    fs_hz : int
        Sample rate of every channel (the chip data rate).
    physical_range_uv : float
        Recorded range is +-this many microvolts.
    record_duration_s : float
        Seconds per EDF data record; ``fs_hz * record_duration_s`` must be an integer.
    flush_interval_s : float
        Longest wall-clock time between flushes to disk.
    start : datetime.datetime, optional
        Recording start (an aware datetime, or naive UTC); default now. EDF defines the header's start date and
        time as local time, so they are written in the process's local time zone (the box's), and the UTC
        offset goes into an annotation at onset 0 (:data:`UTC_OFFSET_PREFIX`), since EDF has no field for it.
    patient : str
        EDF+ patient field (``code sex birthdate name``; ``X`` for unknown).
    equipment : str
        EDF+ equipment code in the recording field.
    """

    def __init__(self, path: str | os.PathLike, *, channel_labels: list[str], fs_hz: int,
                 physical_range_uv: float = 3276.8, record_duration_s: float = 1.0,
                 flush_interval_s: float = 2.0, start: dt.datetime | None = None,
                 patient: str = "X X X X", equipment: str = "bedtime-ADS1299") -> None:
        self.path = Path(path)
        self.fs_hz = int(fs_hz)
        self.n_channels = len(channel_labels)
        spr = fs_hz * record_duration_s
        if abs(spr - round(spr)) > 1e-9 or spr < 1:
            raise ValueError(f"fs_hz * record_duration_s must be a positive integer, got {spr}")
        self.samples_per_record = int(round(spr))
        self.record_duration_s = float(record_duration_s)
        self.flush_interval_s = float(flush_interval_s)
        start = start or dt.datetime.now(dt.timezone.utc)
        if start.tzinfo is None:
            start = start.replace(tzinfo=dt.timezone.utc)
        self.start = start.replace(microsecond=0)
        self.local_start = self.start.astimezone()  # the box's local time, what EDF's header means
        # Derive the scaling from the exact header text so writer and readers agree to the last bit.
        self._pmin_text = _num_field(-physical_range_uv)
        self._pmax_text = _num_field(physical_range_uv * DIGITAL_MAX / 32768.0)
        pmin, pmax = float(self._pmin_text), float(self._pmax_text)
        self.uv_per_count = (pmax - pmin) / (DIGITAL_MAX - DIGITAL_MIN)
        self._offset = pmin / self.uv_per_count - DIGITAL_MIN  # physical = uv_per_count * (digital + offset)
        self.channels = [EdfChannel(label=lb) for lb in channel_labels]
        self._pending = np.empty((0, self.n_channels), dtype=np.float32)
        self._scratch: dict[int, tuple[memoryview, np.ndarray, np.ndarray, np.ndarray]] = {}  # by records per write
        self._annotations: list[tuple[float, float | None, str]] = []
        self.records_written = 0
        self.clipped_samples = 0
        self._last_flush = time.monotonic()
        self._closed = False
        self._file = open(self.path, "x+b")  # noqa: SIM115 (kept open all night; read back once at close)
        self._file.write(self._header(patient=patient, equipment=equipment))
        self._file.flush()
        self.annotate(0.0, f"{UTC_OFFSET_PREFIX}{utc_offset_text(self.local_start)} "
                           f"(start {self.start.astimezone(dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ})")

    # ---- header -----------------------------------------------------------------------------------
    def _header(self, *, patient: str, equipment: str) -> bytes:
        ns = self.n_channels + 1
        start = self.local_start
        rec = f"Startdate {start.strftime('%d-%b-%Y').upper()} X X {equipment}"
        h = b"".join([
            _field("0", 8), _field(patient[:80], 80), _field(rec[:80], 80),
            _field(start.strftime("%d.%m.%y"), 8), _field(start.strftime("%H.%M.%S"), 8),
            _field(256 * (ns + 1), 8), _field("EDF+C", 44), _field(-1, 8),
            _field(_num_field(self.record_duration_s), 8), _field(ns, 4),
        ])
        sigs = self.channels
        ann_spr = ANNOTATION_BYTES_PER_RECORD // 2
        h += b"".join(_field(c.label, 16) for c in sigs) + _field("EDF Annotations", 16)
        h += b"".join(_field(c.transducer, 80) for c in sigs) + _field("", 80)
        h += b"".join(_field("uV", 8) for _ in sigs) + _field("", 8)
        h += b"".join(_field(self._pmin_text, 8) for _ in sigs) + _field(-1, 8)
        h += b"".join(_field(self._pmax_text, 8) for _ in sigs) + _field(1, 8)
        h += b"".join(_field(DIGITAL_MIN, 8) for _ in sigs) + _field(DIGITAL_MIN, 8)
        h += b"".join(_field(DIGITAL_MAX, 8) for _ in sigs) + _field(DIGITAL_MAX, 8)
        h += b"".join(_field(c.prefilter, 80) for c in sigs) + _field("", 80)
        h += b"".join(_field(self.samples_per_record, 8) for _ in sigs) + _field(ann_spr, 8)
        h += _field("", 32) * ns
        assert len(h) == 256 * (ns + 1)
        return h

    # ---- writing ----------------------------------------------------------------------------------
    @property
    def duration_s(self) -> float:
        """Seconds of signal written to complete records so far."""
        return self.records_written * self.record_duration_s

    def annotate(self, onset_s: float, text: str, duration_s: float | None = None) -> None:
        """Queue an annotation; it goes into the next data record written.

        Parameters
        ----------
        onset_s : float
            Seconds since the recording start.
        text : str
            Free text (EDF+ standard texts for stages: see :data:`STAGE_ANNOTATION`). Non-ASCII is replaced.
        duration_s : float, optional
        """
        self._annotations.append((max(0.0, float(onset_s)), duration_s, tal_text(text)))

    def write(self, samples_uv: np.ndarray) -> None:
        """Append samples (shape ``(n, n_channels)``, microvolts); complete records go to the file."""
        if self._closed:
            raise ValueError("recorder is closed")
        x = np.asarray(samples_uv, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_channels:
            raise ValueError(f"expected (n, {self.n_channels}) samples, got {x.shape}")
        buf = np.concatenate([self._pending, x]) if len(self._pending) else x
        n_rec = len(buf) // self.samples_per_record
        if n_rec:
            self._write_records(buf[:n_rec * self.samples_per_record])
        self._pending = buf[n_rec * self.samples_per_record:].copy()
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def _tal_block(self, record_index: int) -> bytes:
        onset = record_index * self.record_duration_s
        if not self._annotations:  # the usual record (28,800 a night): encode_tal(onset, "") without its steps
            # a whole second (every record at the default 1-s records) is what _onset_text makes of it: "+17"
            text = f"+{int(onset)}" if onset.is_integer() else _onset_text(onset)
            return (text + TAL_TEXT + TAL_TEXT + "\x00").encode("ascii").ljust(ANNOTATION_BYTES_PER_RECORD, b"\x00")
        out = encode_tal(onset, "")  # the record's time-keeping TAL
        while self._annotations:
            on, dur, text = self._annotations[0]
            raw = encode_tal(on, text, dur)
            room = ANNOTATION_BYTES_PER_RECORD - len(out)
            if len(raw) > room:
                if len(out) > 16:  # wait for the next record
                    break
                raw = raw[: room - 2] + (TAL_TEXT + "\x00").encode("ascii")  # a single over-long text: shortened rather than lost
            out += raw
            self._annotations.pop(0)
        return out.ljust(ANNOTATION_BYTES_PER_RECORD, b"\x00")

    def _records_buffer(self, n_rec: int) -> tuple[memoryview, np.ndarray, np.ndarray, np.ndarray]:
        """The reusable output buffer for ``n_rec`` data records and its views: ``(bytes, float32 scratch of shape
        (n_rec * spr, n_channels), int16 view of the records' signal samples as (n_rec, n_channels, spr), uint8
        view of the records' annotation areas as (n_rec, ANNOTATION_BYTES_PER_RECORD))``.

        Why: a write call is a few records (one pop from the ring); converting them in place into one buffer that
        goes to the file as it is saves a temporary per step (scaled, rounded, int16, transposed, each record's
        bytes, the joined bytes), about a third of the writer's own CPU.
        """
        got = self._scratch.get(n_rec)
        if got is None:
            spr, nch = self.samples_per_record, self.n_channels
            data_bytes = 2 * spr * nch
            rec_bytes = data_bytes + ANNOTATION_BYTES_PER_RECORD
            raw = memoryview(bytearray(n_rec * rec_bytes))  # a view: a slice assigned must keep its size
            samples = np.ndarray((n_rec, nch, spr), dtype="<i2", buffer=raw, strides=(rec_bytes, 2 * spr, 2))
            tals = np.ndarray((n_rec, ANNOTATION_BYTES_PER_RECORD), dtype=np.uint8, buffer=raw, offset=data_bytes,
                              strides=(rec_bytes, 1))
            got = (raw, np.empty((n_rec * spr, nch), dtype=np.float32), samples, tals)
            if len(self._scratch) > 4:  # a few sizes at most (the pop size, the last partial one); never grows
                self._scratch.clear()
            self._scratch[n_rec] = got
        return got

    def _write_records(self, x: np.ndarray) -> None:
        """Write ``x`` (float32 microvolts, a whole number of records) as data records, in one write call."""
        spr = self.samples_per_record
        n_rec = len(x) // spr
        raw, digital, samples, tals = self._records_buffer(n_rec)
        # float32 arithmetic throughout, as x / uv_per_count - offset on a float32 array computes it
        np.divide(x, self.uv_per_count, out=digital)
        np.subtract(digital, self._offset, out=digital)
        np.rint(digital, out=digital)
        if not (digital.size and digital.min() >= DIGITAL_MIN and digital.max() <= DIGITAL_MAX):
            clipped = (digital < DIGITAL_MIN) | (digital > DIGITAL_MAX)
            n_clip = int(clipped.sum())
            if n_clip:
                self.clipped_samples += n_clip
            np.clip(digital, DIGITAL_MIN, DIGITAL_MAX, out=digital)
        # record layout: channel 0's spr samples, channel 1's, ..., then the annotation bytes
        np.copyto(samples, digital.reshape(n_rec, spr, self.n_channels).transpose(0, 2, 1), casting="unsafe")
        first = self.records_written
        if not self._annotations and self.record_duration_s.is_integer():
            # The usual run of records (nothing queued, whole-second onsets): every record's time-keeping TAL
            # (what _tal_block gives then) put in place in one assignment.
            step = int(self.record_duration_s)
            tals[...] = np.frombuffer(b"".join([f"+{(first + i) * step}{TAL_TEXT}{TAL_TEXT}\x00".encode("ascii").ljust(
                ANNOTATION_BYTES_PER_RECORD, b"\x00") for i in range(n_rec)]), dtype=np.uint8).reshape(n_rec, -1)
        else:
            for i in range(n_rec):
                tals[i] = np.frombuffer(self._tal_block(first + i), dtype=np.uint8)  # always the area's size
        self._file.write(raw)
        self.records_written += n_rec

    def _annotate_last_record(self) -> None:
        """Put queued annotations into the free space of the last record's annotation signal (EDF+ lets an
        annotation sit in any record), so closing does not lengthen the recording."""
        data_bytes = 2 * self.samples_per_record * self.n_channels
        rec_bytes = data_bytes + ANNOTATION_BYTES_PER_RECORD
        where = 256 * (self.n_channels + 2) + (self.records_written - 1) * rec_bytes + data_bytes
        self._file.flush()
        self._file.seek(where)
        area = self._file.read(ANNOTATION_BYTES_PER_RECORD)
        used = len(area.rstrip(b"\x00")) + 1  # each TAL ends in 0x14 0x00; the rest is padding
        extra = b""
        while self._annotations:
            on, dur, text = self._annotations[0]
            raw = encode_tal(on, text, dur)
            if used + len(extra) + len(raw) > ANNOTATION_BYTES_PER_RECORD:
                break
            extra += raw
            self._annotations.pop(0)
        if extra:
            self._file.seek(where + used)
            self._file.write(extra)
        self._file.seek(0, os.SEEK_END)

    def flush(self) -> None:
        """Push everything written so far to the disk (what a power cut cannot take away)."""
        if self._closed:
            return
        self._file.flush()
        try:
            os.fdatasync(self._file.fileno())
        except OSError:  # e.g. a filesystem without fdatasync; the flush above still reached the kernel
            pass
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Write the last partial record (zero-padded, annotated), set the record count, close the file."""
        if self._closed:
            return
        if len(self._pending):
            n = len(self._pending)
            self.annotate(self.duration_s + n / self.fs_hz, "Recording end (rest of record is padding)")
            pad = np.zeros((self.samples_per_record - n, self.n_channels), dtype=np.float32)
            self._write_records(np.concatenate([self._pending, pad]))
            self._pending = self._pending[:0]
        if self._annotations and self.records_written:
            self._annotate_last_record()
        while self._annotations:  # what still does not fit gets records of its own (flat zero signal)
            self._write_records(np.zeros((self.samples_per_record, self.n_channels), dtype=np.float32))
        self._file.flush()
        self._file.seek(236)
        self._file.write(_field(self.records_written, 8))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._closed = True

    def __enter__(self) -> EdfPlusRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _header_layout(path: Path) -> tuple[int, int, int]:
    """(header bytes, bytes per data record, record count field) of an EDF file."""
    with open(path, "rb") as f:
        head = f.read(256)
        if len(head) < 256:
            raise ValueError(f"{path}: not an EDF file (short header)")
        header_bytes = int(head[184:192])
        ns = int(head[252:256])
        f.seek(256 + ns * 216)
        spr = [int(f.read(8)) for _ in range(ns)]
        n_records = int(head[236:244])
    return header_bytes, 2 * sum(spr), n_records


def recover_edf(path: str | os.PathLike) -> int | None:
    """Close a recording cut by a crash or power loss: drop a torn last record and write the true record count.

    Returns
    -------
    int or None
        The number of complete records kept, or None when the file was already closed properly.
    """
    p = Path(path)
    header_bytes, rec_bytes, n_field = _header_layout(p)
    size = p.stat().st_size
    n_complete = (size - header_bytes) // rec_bytes
    if n_field == n_complete and size == header_bytes + n_complete * rec_bytes:
        return None
    with open(p, "r+b") as f:
        f.truncate(header_bytes + n_complete * rec_bytes)
        f.seek(236)
        f.write(_field(n_complete, 8))
        f.flush()
        os.fsync(f.fileno())
    logger.warning("recovered %s: interrupted recording closed with %d complete records", p, n_complete)
    return n_complete


def read_annotations(path: str | os.PathLike) -> list[tuple[float, float | None, str]]:
    """All annotations of an EDF+ file (via edfio) as ``(onset_s, duration_s, text)``."""
    import warnings

    import edfio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a crash-cut file warns about its record count; that is expected here
        edf = edfio.read_edf(path)
    return [(float(a.onset), None if a.duration is None else float(a.duration), a.text) for a in edf.annotations]
