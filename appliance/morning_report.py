"""The morning report the daemon writes when a night ends: ``report.json``, published, then the PNG.

The report uses the stager's offline look-ahead smoothing of the night (the live stages when that fails), the
night's events and signal-quality verdicts, and the acquisition counters. ``report.json`` is written first
(:func:`appliance.report_load.write_report`); the hypnogram PNG is drawn by ``python -m appliance.report_draw`` in a
child process (:func:`render_png_child`), so matplotlib never sits in the night-long process, and a child that
fails or hangs costs the morning its picture, never its report.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from appliance.epoch import Epoch
from appliance.nightfolder import HYPNOGRAM_PNG
from appliance.report import NightRecord
from appliance.report_load import write_report

if TYPE_CHECKING:
    from appliance.mqtt import BoxLink
    from appliance.ring import RingCounters
    from appliance.stager import Stager

logger = logging.getLogger(__name__)

PNG_CHILD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
"""Set in the drawing child's environment: drawing needs no BLAS threads, and numpy's OpenBLAS otherwise starts
(and at exit stops) one per core, measured ~0.1 s of the child's ~0.65 s CPU on 2 cores."""

PNG_CHILD_TIMEOUT_S = 300.0
"""Longest wait for the child process drawing the morning PNG (a loaded Pi Zero draws it in ~20 s); past it the
child is killed and the night ends without a picture (its report.json is already on disk)."""


def write_morning_report(*, night_dir: Path, epochs: Sequence[Epoch], events: Sequence[dict], stager: Stager,
                         counters: dict, ring_counters: RingCounters, start: dt.datetime, box_id: str, box_name: str,
                         audit_head: dict | None, link: BoxLink | None = None,
                         ) -> tuple[dict | None, Path | None, Path | None]:
    """Write the night's report, publish it (retained) and draw its PNG.

    Parameters
    ----------
    night_dir : Path
        The night's folder.
    epochs : sequence of Epoch
        The night's staged epochs, in order (none: no report).
    events : sequence of dict
        The night's events (:attr:`appliance.night_journal.NightJournal.events`).
    stager : Stager
        For its offline smoothing (``smooth_night``).
    counters : dict
        The night's counters (frames, frames lost, stalls, ...); ``frames_dropped`` and ``frames_corrupt`` are
        added from ``ring_counters`` (the ring's, as the night ended).
    start : datetime
        The night's start, UTC.
    box_id, box_name : str
        The box's identity, for the report's header.
    audit_head : dict or None
        The audit log's head, which the report carries (``bedtime audit verify`` checks against it).
    link : BoxLink or None
        Where the report is published.

    Returns
    -------
    (report, report_json, report_png) : tuple
        Each None when it could not be made.
    """
    if not epochs:
        return None, None, None
    probs = np.stack([e.stage_probs for e in epochs])
    live = np.array([int(e.stage) for e in epochs], dtype=np.int8)
    hyp = live
    try:
        hyp = np.argmax(stager.smooth_night(probs), axis=1).astype(np.int8)
    except Exception as e:  # the report must still come out with the live stages
        logger.warning("offline smoothing failed (%s); the report uses the live stages", e)
    flags: Counter = Counter()
    for e in epochs:
        flags.update(e.quality.flags)
    night = NightRecord(hypnogram=hyp, live_hypnogram=live, events=list(events),
                        quality_ok=np.array([e.quality.ok for e in epochs]), quality_flags=flags,
                        counters={**counters, "frames_dropped": ring_counters.dropped,
                                  "frames_corrupt": ring_counters.corrupt},
                        start=start, box_id=box_id, box_name=box_name, audit_head=audit_head)
    try:
        rep, js, _ = write_report(night, night_dir, png=False)
    except Exception as e:
        logger.error("could not write the report: %s", e)
        return None, None, None
    png = render_png_child(night_dir)
    if link is not None:
        try:
            link.publish_report({k: v for k, v in rep.items() if k != "hypnogram"} | {"hypnogram": rep["hypnogram"]})
        except Exception as e:
            logger.error("could not queue the report: %s", e)
    return rep, js, png


def render_png_child(night_dir: Path) -> Path | None:
    """Run ``python -m appliance.report_draw NIGHT_DIR`` and wait at most :data:`PNG_CHILD_TIMEOUT_S` seconds.

    ``report.json`` is written before this runs: a child that fails or hangs (killed at the timeout) costs the
    morning its picture, never its report. Returns the PNG's path, or None when there is none.
    """
    try:
        subprocess.run([sys.executable, "-m", "appliance.report_draw", str(night_dir)], check=True,
                       capture_output=True, text=True, timeout=PNG_CHILD_TIMEOUT_S,
                       env={**os.environ, **PNG_CHILD_ENV})
    except (subprocess.SubprocessError, OSError) as e:
        err = getattr(e, "stderr", "") or ""
        logger.error("could not draw the hypnogram: %s %s", e, err[-500:])
        return None
    return night_dir / HYPNOGRAM_PNG
