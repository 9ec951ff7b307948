"""A night's report from its folder: read the files the daemon left (checked), rebuild what is missing, save it.

``bedtime report NIGHT`` and the clinic's MQTT ``report`` command go through here. The daemon's own
``report.json`` is the record of the night and is never rewritten; a night without one (the daemon was killed)
is rebuilt from ``epochs.jsonl``/``events.jsonl`` (:mod:`appliance.jsonl`: a crash's torn last line is
skipped, other damage is a :class:`NightError`) or, failing those, from the EDF+ annotations. The picture is
drawn by :mod:`appliance.report_draw`, imported only when a PNG is to be drawn in this process.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from appliance.jsonl import MAX_JSONL_READ_BYTES, JsonlError, read_rows
from appliance.protocol.schema import is_finite_number
from appliance.protocol.stages import STAGE_NAMES, STAGE_VALUES
from appliance.nightfolder import (EPOCHS_JSONL, EVENTS_JSONL, HYPNOGRAM_PNG, NIGHT_EDF, REPORT_JSON,
                                   night_start_from_id)
from appliance.protocol.userfiles import read_small_regular_file
from appliance.report import MAX_REPORT_TIME_S, NightRecord, build_report, parse_iso, report_problem

logger = logging.getLogger(__name__)


class NightError(ValueError):
    """A folder the report cannot be built from: no night in it, no recording, or a damaged sidecar file.

    The message is one line that names the file and the problem (``bedtime report`` prints it as is).
    """



def _is_number(x: object) -> bool:
    # protocol.schema's check: np.isfinite raised a TypeError on an integer no float holds (a traceback from
    # ``bedtime report``)
    return is_finite_number(x)



def _check_epoch_row(row: dict) -> str | None:
    """What is wrong with one ``epochs.jsonl`` row, or None (the fields the report reads, with their types)."""
    stage = row.get("stage")
    if isinstance(stage, bool) or not isinstance(stage, int) or stage not in STAGE_VALUES:
        return f"'stage' must be one of {sorted(STAGE_VALUES)}, got {stage!r:.40}"
    if "ok" in row and not isinstance(row["ok"], bool):
        return f"'ok' must be true or false, got {row['ok']!r:.40}"
    flags = row.get("flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        return f"'flags' must be a list of strings, got {flags!r:.40}"
    probs = row.get("probs")
    if probs is not None and (not isinstance(probs, list) or len(probs) != len(STAGE_NAMES)
                              or not all(_is_number(v) for v in probs)):
        return f"'probs' must be {len(STAGE_NAMES)} numbers, got {probs!r:.40}"
    return None



def _check_event(row: dict) -> str | None:
    """What is wrong with one ``events.jsonl`` row, or None."""
    if not isinstance(row.get("kind"), str):
        return f"'kind' must be a string, got {row.get('kind')!r:.40}"
    if not _is_number(row.get("time_s")) or not 0 <= row["time_s"] <= MAX_REPORT_TIME_S:
        return (f"'time_s' must be a number of seconds from 0 to {MAX_REPORT_TIME_S:.0f}, "
                f"got {row.get('time_s')!r:.40}")
    return None



def _read_jsonl(path: Path, check: Callable[[dict], str | None]) -> list[dict]:
    """The checked rows of a JSON-lines sidecar (:func:`appliance.jsonl.read_rows`; a torn last line skipped).

    Raises
    ------
    NightError
        Naming the file, the line and the problem.
    """
    try:
        return read_rows(path, check)
    except JsonlError as e:
        raise NightError(str(e)) from None


def _present(path: Path) -> bool:
    """Is the night's file ``path`` there? False when there is nothing at that name; True for a regular file.

    Raises
    ------
    NightError
        When something else is there (a folder, FIFO, device, or a link, even a dangling one): a damaged night
        folder, said out loud rather than read as "no such file" (a report without the night's events, or a
        rebuilt report written over it).
    """
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise NightError(f"{path}: not a regular file (a folder, FIFO, device or link); the night folder is damaged:"
                         " move it away")
    return path.exists()


def read_saved_report(night_dir: str | Path) -> dict | None:
    """The ``report.json`` the daemon wrote for a night, or None when there is none.

    Raises
    ------
    NightError
        When the file exists but is not a report (damaged): the caller must not overwrite it silently.
    """
    js = Path(night_dir) / REPORT_JSON
    if not _present(js):
        return None
    try:
        rep = json.loads(read_small_regular_file(js, max_bytes=MAX_JSONL_READ_BYTES).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        raise NightError(f"{js}: not a readable report (damaged); move it away to rebuild it from the night's "
                         "recording") from None
    problem = report_problem(rep)
    if problem is not None:
        raise NightError(f"{js}: not a bedtime report ({problem}); move it away to rebuild it from the night's "
                         "recording")
    return rep



def _night_identity(events: list[dict], saved: dict | None) -> tuple[str, str]:
    """(box id, box name) of the box that recorded the night: from its saved report, else its start event."""
    started = next((e for e in events if e.get("kind") == "night_started"), {})
    box_id = (saved or {}).get("box_id") or started.get("box_id") or ""
    box_name = (saved or {}).get("box_name") or started.get("box_name") or ""
    return (box_id if isinstance(box_id, str) else "", box_name if isinstance(box_name, str) else "")



def record_from_report(d: Path, rep: dict) -> NightRecord:
    """The night as its saved report tells it, with the per-epoch signal quality and events from the sidecars."""
    events = _read_jsonl(d / EVENTS_JSONL, _check_event) if _present(d / EVENTS_JSONL) else []
    ok = None
    if _present(d / EPOCHS_JSONL):
        rows = _read_jsonl(d / EPOCHS_JSONL, _check_epoch_row)
        ok = np.array([r.get("ok", True) for r in rows], dtype=bool)
    hyp = np.array(rep["hypnogram"], dtype=np.int8)
    if ok is not None and len(ok) != len(hyp):
        ok = None
    box_id, box_name = _night_identity(events, rep)
    return NightRecord(hypnogram=hyp, events=events, quality_ok=ok, start=parse_iso(rep.get("night_start")),
                       box_id=box_id, box_name=box_name)



def load_night(night_dir: str | Path, *, progress: Callable[[str], None] | None = None) -> NightRecord:
    """Rebuild a night from its directory: ``epochs.jsonl``/``events.jsonl`` when present, else the EDF+ annotations.

    This is how ``bedtime report NIGHT`` works after the fact, including for a night cut short by a crash. What
    the daemon itself recorded about the night (its box id and name, the acquisition counters of its saved
    report) is kept, never replaced by whoever runs the report. ``progress`` is told before the slow step
    (smoothing the night), which comes after every file has been read and checked.

    Raises
    ------
    NightError
        The folder holds no recording (e.g. a start that failed) or a damaged sidecar file.
    """
    d = Path(night_dir)
    if not d.is_dir():
        raise NightError(f"{d}: no such night folder")
    saved = read_saved_report(d)
    start = parse_iso((saved or {}).get("night_start"))
    if start is None:
        start = night_start_from_id(d.name)
    events = _read_jsonl(d / EVENTS_JSONL, _check_event) if _present(d / EVENTS_JSONL) else []
    if start is None:  # a night folder that was renamed or copied: its start event still knows
        start = next((parse_iso(e.get("night_start")) for e in events if e.get("kind") == "night_started"), None)
    box_id, box_name = _night_identity(events, saved)
    counters = {k: v for k, v in ((saved or {}).get("signal_quality") or {}).items()
                if isinstance(v, int) and not isinstance(v, bool)}
    rows = _read_jsonl(d / EPOCHS_JSONL, _check_epoch_row) if _present(d / EPOCHS_JSONL) else []
    common = {"events": events, "start": start, "counters": counters, "box_id": box_id, "box_name": box_name}
    if rows:
        live = np.array([r["stage"] for r in rows], dtype=np.int8)
        probs = [r.get("probs") for r in rows]
        hyp = live
        if all(p is not None for p in probs):
            if progress is not None:
                progress(f"smoothing the stages of {d.name}")
            hyp = _smooth(np.array(probs, dtype=float), live)
        flags: Counter = Counter()
        for r in rows:
            flags.update(r.get("flags", []))
        return NightRecord(hypnogram=hyp, live_hypnogram=live, quality_flags=flags,
                           quality_ok=np.array([r.get("ok", True) for r in rows], dtype=bool), **common)
    from appliance.edfplus import ANNOTATION_STAGE, read_annotations  # edfio: only for a night without sidecars

    edf = d / NIGHT_EDF
    if not edf.is_file():
        raise NightError(f"{d}: no recording in this folder (no scored epoch in {EPOCHS_JSONL}, no {NIGHT_EDF}): "
                         "not a night, or a start that failed")
    try:
        anns = read_annotations(edf)
    except Exception as e:  # edfio raises a variety of errors on a damaged header
        detail = "".join(c if c.isascii() and c.isprintable() else "?" for c in str(e))[:80]  # one clean line
        raise NightError(f"{edf}: not a readable EDF+ file ({type(e).__name__}: {detail})") from None
    stages = sorted((on, ANNOTATION_STAGE[t]) for on, _, t in anns if t in ANNOTATION_STAGE)
    if not stages:
        raise NightError(f"{d}: the recording ended before its first 30-s epoch was scored; nothing to report")
    if not box_id:
        box_id = next((t.rsplit(" box ", 1)[1] for _, _, t in anns
                       if t.startswith("Recording start") and " box " in t), "")
        common["box_id"] = box_id
    hyp = np.array([s for _, s in stages], dtype=np.int8)
    return NightRecord(hypnogram=hyp, live_hypnogram=hyp, **common)



def write_report(night: NightRecord, night_dir: str | Path, *, png: bool = True) -> tuple[dict, Path, Path | None]:
    """Write ``report.json`` (and ``hypnogram.png`` unless ``png=False``) into the night's directory.

    Returns (report, json path, png path or None).
    """
    d = Path(night_dir)
    rep = build_report(night)
    png_path = None
    if png:
        from appliance.report_draw import plot_hypnogram  # matplotlib: only where a PNG is drawn

        png_path = plot_hypnogram(night, d / HYPNOGRAM_PNG, rep=rep)
    js = d / REPORT_JSON
    tmp = js.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rep, indent=1))
    tmp.replace(js)
    return rep, js, png_path



def report_night(night_dir: str | Path, *,
                 progress: Callable[[str], None] | None = None) -> tuple[dict, Path, Path, bool]:
    """The morning report of a recorded night, rebuilt only when the daemon did not leave one.

    The daemon's own ``report.json`` is the record of the night (its box, its acquisition counters, its
    smoothing); it is returned as written, never rewritten. A night without one (the daemon was killed) gets it
    rebuilt from ``epochs.jsonl``/``events.jsonl`` or the EDF+ annotations. ``hypnogram.png`` is drawn when
    missing.

    Parameters
    ----------
    night_dir : path-like
        The night's folder.
    progress : callable, optional
        Called with a short message before each slow step (smoothing the night, drawing the PNG).

    Returns
    -------
    (report, JSON path, PNG path, rebuilt)
        ``rebuilt`` is True when ``report.json`` was (re)written by this call.

    Raises
    ------
    NightError
        No recording in the folder, or a damaged file; nothing is written then.
    """
    d = Path(night_dir)
    say = progress or (lambda msg: None)
    rep = read_saved_report(d)
    rebuilt = rep is None
    if rep is None:
        night = load_night(d, progress=say)
        rep, js, _ = write_report(night, d, png=False)
    png = d / HYPNOGRAM_PNG
    if not png.is_file():
        say("drawing the hypnogram")
        from appliance.report_draw import plot_hypnogram  # matplotlib: only where a PNG is drawn

        plot_hypnogram(record_from_report(d, rep), png, rep=rep)
    return rep, d / REPORT_JSON, png, rebuilt



def _smooth(probs: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """The stager's offline look-ahead smoothing over the whole night (what the daemon's own report uses)."""
    try:
        from appliance.stager import smooth_hypnogram

        return np.asarray(smooth_hypnogram(probs), dtype=np.int8)
    except Exception as e:  # the morning report must still come out
        logger.warning("offline smoothing failed (%s); reporting the live stages", e)
        return fallback

