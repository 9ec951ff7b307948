"""The morning report's content: what the night looked like, what the box did, and how far its signal can be trusted.

Statistics follow the AASM scoring manual's summary definitions (as YASA's ``sleep_statistics`` computes them):

* time in bed (TIB): the whole recording, lights out to lights on;
* total sleep time (TST): N1 + N2 + N3 + REM;
* sleep onset latency (SOL): start to the first epoch of any sleep stage;
* sleep period time (SPT): first to last sleep epoch, inclusive;
* wake after sleep onset (WASO): wake within the SPT;
* sleep efficiency (SE): TST / TIB, in percent;
* REM latency: sleep onset to the first REM epoch;
* awakenings: wake bouts (runs of W epochs) inside the SPT.

Stage percentages are of TST for the sleep stages and of TIB for W. Unscored epochs (``Stage.UNSCORED``: lost
signal) count towards TIB but towards no stage; they are reported separately.

The report is a dict (:func:`build_report`; written as ``report.json`` beside the night's EDF+ and published on
MQTT) and its text (:func:`format_report`). This module computes; it reads and writes no file and draws nothing:
:mod:`appliance.report_load` reads a night's folder and saves the report, :mod:`appliance.report_draw` draws the
hypnogram PNG (matplotlib, imported only there).
"""
from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from appliance.protocol.schema import is_finite_number
from appliance.protocol.stages import EPOCH_S, STAGE_NAMES, STAGE_VALUES, Stage

logger = logging.getLogger(__name__)

REPORT_SCHEMA = 1


def sleep_statistics(hypnogram: np.ndarray, *, epoch_s: float = EPOCH_S) -> dict[str, Any]:
    """AASM summary statistics of a hypnogram.

    Parameters
    ----------
    hypnogram : numpy.ndarray
        One :class:`Stage` value per epoch (``-1`` unscored).
    epoch_s : float
        Epoch length in seconds.

    Returns
    -------
    dict
        Minutes end in ``_min``, percentages in ``_pct``; latencies are None when the event never happens.
    """
    h = np.asarray(hypnogram, dtype=np.int8)
    to_min = epoch_s / 60.0
    sleep = np.isin(h, [Stage.N1, Stage.N2, Stage.N3, Stage.REM])
    idx = np.flatnonzero(sleep)
    tib = len(h) * to_min
    tst = int(sleep.sum()) * to_min
    out: dict[str, Any] = {
        "epoch_s": epoch_s,
        "n_epochs": int(len(h)),
        "time_in_bed_min": tib,
        "total_sleep_time_min": tst,
        "sleep_efficiency_pct": 100.0 * tst / tib if tib else 0.0,
        "unscored_min": int((h == Stage.UNSCORED).sum()) * to_min,
    }
    if len(idx):
        first, last = int(idx[0]), int(idx[-1])
        spt = h[first:last + 1]
        wake = spt == Stage.W
        # a wake bout starts where W follows a non-W epoch
        bouts = int(np.sum(wake[1:] & ~wake[:-1]) + (1 if wake[0] else 0))
        rem = np.flatnonzero(h == Stage.REM)
        out.update({
            "sleep_onset_latency_min": first * to_min,
            "sleep_period_time_min": (last - first + 1) * to_min,
            "waso_min": int(wake.sum()) * to_min,
            "rem_latency_min": (int(rem[0]) - first) * to_min if len(rem) else None,
            "awakenings": bouts,
        })
    else:
        out.update({"sleep_onset_latency_min": None, "sleep_period_time_min": 0.0, "waso_min": 0.0,
                    "rem_latency_min": None, "awakenings": 0})
    for s in (Stage.W, Stage.N1, Stage.N2, Stage.N3, Stage.REM):
        name = STAGE_NAMES[s]
        minutes = int((h == s).sum()) * to_min
        out[f"{name}_min"] = minutes
        base = tib if s == Stage.W else tst
        out[f"{name}_pct"] = 100.0 * minutes / base if base else 0.0
    return out


@dataclass
class NightRecord:
    """Everything the report needs about one night.

    Attributes
    ----------
    hypnogram : numpy.ndarray
        The stage per epoch the report is about (the offline-smoothed night when available).
    live_hypnogram : numpy.ndarray or None
        The causal stages the box acted on during the night.
    events : list of dict
        Loop detections, breather steps, alerts and faults, each with ``time_s`` and ``kind``.
    quality_ok : numpy.ndarray or None
        Per-epoch signal-quality verdict.
    quality_flags : collections.Counter
        How many epochs carried each quality flag.
    counters : dict
        Acquisition counters (frames dropped, corrupt, DRDY stalls...).
    start : datetime.datetime or None
        UTC start of the recording.
    box_id : str
        The box that recorded the night (its MQTT id).
    box_name : str
        The box's human name (``box.name``, e.g. the bedroom), for the parent's report.
    audit_head : dict or None
        The breather audit log's head when the report was written (``seq``, ``hash``, ``records``,
        ``first``): a copy of it out of the box's reach lets ``bedtime audit verify`` catch a truncation.
    """

    hypnogram: np.ndarray
    live_hypnogram: np.ndarray | None = None
    events: list[dict] = field(default_factory=list)
    quality_ok: np.ndarray | None = None
    quality_flags: Counter = field(default_factory=Counter)
    counters: dict = field(default_factory=dict)
    start: dt.datetime | None = None
    box_id: str = ""
    box_name: str = ""
    audit_head: dict | None = None


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def summarise_interventions(events: list[dict]) -> dict[str, Any]:
    """Loops, breather sessions and alerts from the night's event list.

    Each breather session lists the steps it really went through, from its events: ``cue`` (the session starts
    with the sound cue: ``breather_started``), ``light`` (``breather_light``) when the light came on, and
    ``ended``; a session that ended during the cue reads ``cue -> ended``. Times are seconds since lights out:
    ``start_s`` (cue), ``light_s`` (when the light started, if it did) and ``end_s``.
    """
    kinds = Counter(e.get("kind", "?") for e in events)
    sessions = []
    current: dict | None = None
    for e in sorted(events, key=lambda e: e.get("time_s", 0.0)):
        k = e.get("kind", "")
        if not k.startswith("breather_"):
            continue
        step = "cue" if k == "breather_started" else k[len("breather_"):]
        if k == "breather_started" or current is None:
            # a step without its start (e.g. events cut by a crash) still opens a session of its own
            current = {"start_s": e["time_s"], "steps": [], "outcome": None}
            sessions.append(current)
        current["steps"].append(step)
        if k == "breather_light":
            current["light_s"] = e["time_s"]
        if k == "breather_ended":
            current["outcome"] = e.get("outcome") or e.get("reason") or "ended"
            current["end_s"] = e["time_s"]
            for key in ("reason", "max_light", "max_volume", "duration_s"):
                if key in e:
                    current[key] = e[key]
            current = None
    return {
        "loops_detected": kinds.get("loop_detected", 0),
        "loop_times_s": [e["time_s"] for e in events if e.get("kind") == "loop_detected"],
        "breather_sessions": sessions,
        "alerts": kinds.get("alert", 0),
        "alert_times_s": [e["time_s"] for e in events if e.get("kind") == "alert"],
        "faults": [{"time_s": e.get("time_s"), "reason": e.get("reason", "")} for e in events
                   if e.get("kind") == "fault"],
    }


def build_report(night: NightRecord) -> dict[str, Any]:
    """The machine-readable morning report (JSON-serialisable)."""
    stats = sleep_statistics(night.hypnogram)
    q = night.quality_ok
    quality = {
        "epochs_ok_pct": 100.0 * float(np.mean(q)) if q is not None and len(q) else None,
        "flags_epochs": dict(night.quality_flags),
        **{k: int(v) for k, v in night.counters.items() if isinstance(v, (int, np.integer))},
    }
    rep = {
        "schema": REPORT_SCHEMA,
        "box_id": night.box_id,
        "box_name": night.box_name,
        "night_start": _iso(night.start),
        # the chip simulator, not an ADS1299 (from the night_started event): a simulated night never passes for real
        "simulated": any(bool(e.get("simulated")) for e in night.events if e.get("kind") == "night_started"),
        "generated": _iso(dt.datetime.now(dt.timezone.utc)),
        "statistics": stats,
        "interventions": summarise_interventions(night.events),
        "signal_quality": quality,
        "hypnogram": [int(s) for s in night.hypnogram],
    }
    if night.audit_head is not None:
        rep["audit_head"] = dict(night.audit_head)
    if night.live_hypnogram is not None:
        live = np.asarray(night.live_hypnogram)
        n = min(len(live), len(night.hypnogram))
        rep["live_vs_smoothed_agreement_pct"] = (100.0 * float(np.mean(live[:n] == night.hypnogram[:n]))
                                                 if n else None)
    return rep


MAX_REPORT_TIME_S = 366 * 24 * 3600.0
"""Latest time (seconds since lights out) a report may hold: far past any night (``max_night_hours`` <= 48, a
``--hours`` replay), and well inside what a clock time can show (``1e308`` s overflowed the PNG's clock axis)."""

# the statistics every report has (sleep_statistics), and those that are None when the event never happens
_STAT_NUMBERS = ("time_in_bed_min", "total_sleep_time_min", "sleep_efficiency_pct",
                 *(f"{n}_{u}" for n in STAGE_NAMES for u in ("min", "pct")))
_STAT_OPTIONAL = ("sleep_onset_latency_min", "waso_min", "rem_latency_min")


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _is_time(x: object) -> bool:
    return is_finite_number(x) and 0.0 <= x <= MAX_REPORT_TIME_S


def report_problem(rep: object) -> str | None:
    """What keeps a report dict (a saved ``report.json``) from being read, shown and drawn, or None.

    Checks every field :func:`format_report`, :func:`night_numbers` and the hypnogram drawing read, with its
    type; fields a newer box may add are left alone.

    Returns
    -------
    str or None
        A short phrase naming the first wrong field (``'statistics.awakenings' must be a count``).
    """
    if not isinstance(rep, dict):
        return "not a JSON object"
    hyp = rep.get("hypnogram")
    if not isinstance(hyp, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s in STAGE_VALUES
                                            for s in hyp):
        return f"'hypnogram' must be a list of stages {sorted(STAGE_VALUES)}"
    for key in ("box_id", "box_name", "night_start"):
        if rep.get(key) is not None and not isinstance(rep[key], str):
            return f"'{key}' must be text"
    s = rep.get("statistics")
    if not isinstance(s, dict):
        return "'statistics' must be an object"
    for key in _STAT_NUMBERS:
        if not is_finite_number(s.get(key)):
            return f"'statistics.{key}' must be a number"
    for key in _STAT_OPTIONAL:
        if s.get(key) is not None and not is_finite_number(s[key]):
            return f"'statistics.{key}' must be a number or null"
    if not _is_count(s.get("awakenings")):
        return "'statistics.awakenings' must be a count"
    iv = rep.get("interventions")
    if not isinstance(iv, dict):
        return "'interventions' must be an object"
    for key in ("loops_detected", "alerts"):
        if not _is_count(iv.get(key)):
            return f"'interventions.{key}' must be a count"
    for key in ("loop_times_s", "alert_times_s"):
        times = iv.get(key, [] if key == "alert_times_s" else None)  # alert_times_s came later: may be missing
        if not isinstance(times, list) or not all(_is_time(t) for t in times):
            return f"'interventions.{key}' must be a list of times (seconds since lights out)"
    sessions = iv.get("breather_sessions")
    if not isinstance(sessions, list) or not all(isinstance(x, dict) for x in sessions):
        return "'interventions.breather_sessions' must be a list of objects"
    for sess in sessions:
        steps = sess.get("steps")
        if (not _is_time(sess.get("start_s")) or not all(_is_time(sess[k]) for k in ("light_s", "end_s") if k in sess)
                or not isinstance(steps, list) or not all(isinstance(x, str) for x in steps) or "outcome" not in sess):
            return "'interventions.breather_sessions' holds a session without its times, steps or outcome"
    faults = iv.get("faults")
    if not isinstance(faults, list) or not all(
            isinstance(f, dict) and "time_s" in f and (f["time_s"] is None or _is_time(f["time_s"])) and "reason" in f
            for f in faults):
        return "'interventions.faults' must be a list of faults with their times and reasons"
    q = rep.get("signal_quality")
    if not isinstance(q, dict):
        return "'signal_quality' must be an object"
    if q.get("epochs_ok_pct") is not None and not is_finite_number(q["epochs_ok_pct"]):
        return "'signal_quality.epochs_ok_pct' must be a number or null"
    if not isinstance(q.get("flags_epochs"), dict):
        return "'signal_quality.flags_epochs' must be an object"
    return None


def minutes_text(minutes: float | None) -> str:
    """``7 h 05 min`` / ``42 min`` (``n/a`` for None) from minutes, for a parent's eyes."""
    if minutes is None:
        return "n/a"
    m = int(round(minutes))
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


def count_text(n: int, what: str) -> str:
    """``1 alert`` / ``3 alerts``."""
    return f"{n} {what}" + ("" if n == 1 else "s")


def night_numbers(rep: dict) -> list[tuple[str, str]]:
    """The AASM numbers a parent reads beside the hypnogram, as (label, value) rows, from a report dict."""
    s, iv, q = rep["statistics"], rep["interventions"], rep.get("signal_quality") or {}
    rows = [
        ("Time in bed", minutes_text(s.get("time_in_bed_min"))),
        ("Total sleep (TST)", minutes_text(s.get("total_sleep_time_min"))),
        ("Sleep efficiency", f"{s.get('sleep_efficiency_pct', 0.0):.0f} %"),
        ("Fell asleep after", minutes_text(s.get("sleep_onset_latency_min"))),
        ("Awake in the night (WASO)", minutes_text(s.get("waso_min"))),
        ("REM latency", minutes_text(s.get("rem_latency_min"))),
        ("Awakenings", f"{s.get('awakenings', 0)}"),
    ]
    rows += [(f"{n} (% of sleep)", f"{s.get(n + '_pct', 0.0):.0f} %") for n in ("N1", "N2", "N3", "REM")]
    rows += [
        ("Nightmare loops detected", f"{iv.get('loops_detected', 0)}"),
        ("Breathers given", f"{len(iv.get('breather_sessions', []))}"),
        ("Alerts sent", f"{iv.get('alerts', 0)}"),
    ]
    if q.get("epochs_ok_pct") is not None:
        rows.append(("Signal good for", f"{q['epochs_ok_pct']:.0f} % of the night"))
    return rows


def parse_iso(text: object) -> dt.datetime | None:
    """An aware datetime from ISO 8601 text (``Z`` allowed; naive taken as UTC), or None when it is not one."""
    if not isinstance(text, str):
        return None
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)


def format_report(rep: dict) -> str:
    """A human-readable text version of the report for ``bedtime report``."""
    s = rep["statistics"]

    def m(key: str) -> str:
        v = s.get(key)
        return "n/a" if v is None else f"{v:.1f} min"

    start = parse_iso(rep.get("night_start"))
    local = start.astimezone() if start is not None else None

    def at(t_s: float) -> str:  # clock time (the box's zone) and hours since lights out
        if local is None:
            return f"{t_s / 3600:.2f} h"
        return f"{local + dt.timedelta(seconds=float(t_s)):%H:%M} (+{t_s / 3600:.2f} h)"

    when = f"{local:%a %-d %b %Y, lights out %H:%M %Z}" if local is not None else "(start unknown)"
    who = f"{rep['box_name']} (box {rep.get('box_id') or '?'})" if rep.get("box_name") else \
        f"box {rep.get('box_id') or '?'}"
    lines = [
        f"Night of {when}  {who}",
        f"  time in bed        {m('time_in_bed_min')}",
        f"  total sleep time   {m('total_sleep_time_min')}",
        f"  sleep efficiency   {s['sleep_efficiency_pct']:.1f} %",
        f"  sleep onset lat.   {m('sleep_onset_latency_min')}",
        f"  WASO               {m('waso_min')}",
        f"  REM latency        {m('rem_latency_min')}",
        f"  awakenings         {s['awakenings']}",
        "  stages             " + "  ".join(f"{n} {s[n + '_min']:.0f} min ({s[n + '_pct']:.0f}%)" for n in STAGE_NAMES),
    ]
    iv = rep["interventions"]
    lines.append(f"  loops detected     {iv['loops_detected']}")
    for sess in iv["breather_sessions"]:
        lines.append(f"  breather at {at(sess['start_s'])}: {' -> '.join(sess['steps']) or 'started'}"
                     f" (outcome: {sess['outcome']})")
    alert_times = iv.get("alert_times_s") or []
    lines.append(f"  alerts sent        {iv['alerts']}" + (f", at {', '.join(at(t) for t in alert_times)}"
                                                          if alert_times else ""))
    for f in iv["faults"]:
        lines.append(f"  fault at {at(f['time_s'] or 0.0)}: {f['reason']}")
    q = rep["signal_quality"]
    if q.get("epochs_ok_pct") is not None:
        lines.append(f"  signal ok          {q['epochs_ok_pct']:.1f} % of epochs; flags {q['flags_epochs']}")
    return "\n".join(lines)

