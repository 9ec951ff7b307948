"""The morning report: what the night looked like, what the box did, and how far its signal can be trusted.

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

The report is a dict (written as ``report.json`` beside the night's EDF+ and published on MQTT) plus a hypnogram
PNG drawn with matplotlib's Agg backend (no display needed on the box).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from appliance.hypnogram import (EPOCH_S, HYPNOGRAM_ROWS, STAGE_NAMES, STAGE_VALUES, Stage, stage_runs,
                                 step_polylines)

logger = logging.getLogger(__name__)

REPORT_SCHEMA = 1
REPORT_JSON = "report.json"
HYPNOGRAM_PNG = "hypnogram.png"
EPOCHS_JSONL = "epochs.jsonl"
EVENTS_JSONL = "events.jsonl"


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


# How the morning report draws each stage and mark (one place, so the legend and the drawing agree).
STAGE_STYLE: dict[Stage, tuple[str, str]] = {
    Stage.W: ("Awake", "#e8871e"),
    Stage.REM: ("REM (dreaming)", "#c0392b"),
    Stage.N1: ("N1 light sleep", "#7fb3d5"),
    Stage.N2: ("N2 light sleep", "#2e86c1"),
    Stage.N3: ("N3 deep sleep", "#1b2f6b"),
}
LEGEND_LOOP = "nightmare loop detected"
LEGEND_CUE = "breather: soft sound"
LEGEND_LIGHT = "breather: warm light"
LEGEND_ALERT = "alert sent to phone"
LEGEND_SIGNAL_LOST = "signal lost"
_CUE_COLOUR, _LIGHT_COLOUR, _LOOP_COLOUR, _ALERT_COLOUR = "#f7e08a", "#f5a623", "#7d3c98", "#d62728"


def _runs_of(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, end) index pairs of the True stretches of a boolean array."""
    m = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    d = np.flatnonzero(np.diff(m.astype(np.int8)))
    return list(zip(d[::2].tolist(), d[1::2].tolist()))


def _hm(minutes: float | None) -> str:
    if minutes is None:
        return "n/a"
    m = int(round(minutes))
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min"


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def night_numbers(rep: dict) -> list[tuple[str, str]]:
    """The AASM numbers a parent reads beside the hypnogram, as (label, value) rows, from a report dict."""
    s, iv, q = rep["statistics"], rep["interventions"], rep.get("signal_quality") or {}
    rows = [
        ("Time in bed", _hm(s.get("time_in_bed_min"))),
        ("Total sleep (TST)", _hm(s.get("total_sleep_time_min"))),
        ("Sleep efficiency", f"{s.get('sleep_efficiency_pct', 0.0):.0f} %"),
        ("Fell asleep after", _hm(s.get("sleep_onset_latency_min"))),
        ("Awake in the night (WASO)", _hm(s.get("waso_min"))),
        ("REM latency", _hm(s.get("rem_latency_min"))),
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


def hypnogram_figure(night: NightRecord, *, rep: dict | None = None) -> Any:
    """The morning report's picture, for a parent: the night's stages against the clock, with what the box did.

    The stages are drawn from :func:`appliance.hypnogram.stage_runs` (the geometry the clinic console's SVG
    uses too): one coloured bar per stretch of equal stage on its row, joined by a thin step line. Over it:
    nightmare loops detected (dashed lines), each breather's soft-sound cue and warm light (shaded bands),
    alerts sent to the phone (triangles on top) and stretches where the signal was lost (hatched). The x axis
    is the local clock time (the box's time zone) when the night's start is known, else hours since lights out.
    Beside it: the AASM numbers (:func:`night_numbers`). A legend below names every mark.

    Returns
    -------
    matplotlib.figure.Figure
        Not yet saved (tests read its legend and ticks); :func:`plot_hypnogram` saves it.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on the box
    import matplotlib.dates as mdates
    from dateutil import tz as dtz
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rep = rep if rep is not None else build_report(night)
    h = np.asarray(night.hypnogram, dtype=np.int8)
    total_s = max(len(h) * EPOCH_S, EPOCH_S)
    local = dtz.tzlocal()
    start = night.start.astimezone(local) if night.start is not None else None

    if start is not None:
        def x(t_s: float) -> Any:  # seconds since lights out -> the plotted x value (a date number)
            return mdates.date2num(start + dt.timedelta(seconds=float(t_s)))
    else:
        def x(t_s: float) -> Any:
            return float(t_s) / 3600.0

    fig = Figure(figsize=(12.5, 4.8), dpi=110)
    grid = fig.add_gridspec(1, 2, width_ratios=[3.0, 1.0], left=0.115, right=0.985, top=0.84, bottom=0.23,
                            wspace=0.06)
    ax = fig.add_subplot(grid[0, 0])
    side = fig.add_subplot(grid[0, 1])
    n_rows = len(HYPNOGRAM_ROWS)

    # signal lost: hatched stretches (drawn first, under everything)
    if night.quality_ok is not None and len(night.quality_ok) == len(h):
        lost = ~np.asarray(night.quality_ok, dtype=bool)
    else:
        lost = h == Stage.UNSCORED
    for a, b in _runs_of(lost):
        ax.axvspan(x(a * EPOCH_S), x(b * EPOCH_S), facecolor="0.88", edgecolor="0.6", hatch="////", lw=0, zorder=0)
    # the stages: the step line, then a coloured bar on each run's row
    runs = stage_runs(h)
    for line in step_polylines(runs):
        ax.plot([x(t) for t, _ in line], [r for _, r in line], color="0.45", lw=0.7, zorder=2)
    for r in runs:
        if r.row is not None:
            ax.plot([x(r.start_s), x(r.end_s)], [r.row, r.row], color=STAGE_STYLE[r.stage][1], lw=8,
                    solid_capstyle="butt", zorder=3)
    # what the box did, in a lane above the stages: loops (dashed down through the stages), each breather's
    # sound cue then warm light (bars at least ~1 % of the night wide, else a 1-minute cue is invisible), alerts
    lane = -1.0
    ax.axhline(lane + 0.5, color="0.8", lw=0.8, zorder=1)
    min_w = 0.018 * total_s
    iv = rep["interventions"]
    for t in iv["loop_times_s"]:
        ax.axvline(x(t), ymin=0.0, ymax=0.86, color=_LOOP_COLOUR, ls="--", lw=1.6, zorder=4)
    for sess in iv["breather_sessions"]:
        t0 = sess["start_s"]
        t_end = sess.get("end_s", t0 + 60.0)
        t_light = sess.get("light_s", t_end)
        cue_end = max(t_light, t0 + min_w)
        ax.fill_between([x(t0), x(cue_end)], lane + 0.02, lane + 0.36, color=_CUE_COLOUR, ec="#b7950b", lw=0.8,
                        zorder=4)
        if "light_s" in sess:
            ax.fill_between([x(cue_end), x(max(t_end, cue_end + min_w))], lane + 0.02, lane + 0.36,
                            color=_LIGHT_COLOUR, ec="#a04000", lw=0.8, zorder=4)
    for t in iv.get("alert_times_s", []):
        ax.plot([x(t)], [lane - 0.22], marker="v", ms=11, color=_ALERT_COLOUR, mec="white", zorder=5)

    ax.set_ylim(n_rows - 0.45, lane - 0.5)
    ax.set_yticks([lane, *range(n_rows)], ["what the box did", *(STAGE_STYLE[s][0] for s in HYPNOGRAM_ROWS)])
    for label, colour in zip(ax.get_yticklabels(), ["0.3", *(STAGE_STYLE[s][1] for s in HYPNOGRAM_ROWS)]):
        label.set_color(colour)
        label.set_fontweight("bold")
    ax.set_xlim(x(0.0), x(total_s))
    ax.grid(axis="x", color="0.85", lw=0.8)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    if start is not None:
        ax.xaxis.set_major_locator(mdates.HourLocator(tz=local))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=local))
        end = start + dt.timedelta(seconds=total_s)
        off = start.strftime("%z")
        ax.set_xlabel(f"clock time ({start:%Z}, UTC{off[:3]}:{off[3:]})" if off else "clock time")
        same_day = start.date() == end.date()
        when = (f"{start:%A %-d %B %Y}" if same_day else f"night of {start:%a %-d} \u2192 {end:%a %-d %B %Y}")
        span = f"lights out {start:%H:%M}, lights on {end:%H:%M}"
    else:
        ax.set_xlabel("hours since lights out")
        when, span = "night (start time unknown)", f"{total_s / 3600:.1f} h recorded"
    who = night.box_name or night.box_id or "bedtime"
    simulated = any(e.get("kind") == "night_started" and e.get("simulated") for e in night.events)
    fig.suptitle(f"{who}: {when}", x=0.11, y=0.965, ha="left", fontsize=15, fontweight="bold")
    box = f"box {night.box_id}" if night.box_id and night.box_id != who else ""
    st = rep["statistics"]
    slept = f"slept {_hm(st.get('total_sleep_time_min'))}"
    acts = ", ".join(_count(n, what) for n, what in ((iv["loops_detected"], "nightmare loop"),
                                                    (len(iv["breather_sessions"]), "breather"),
                                                    (iv["alerts"], "alert")))
    sub = " \u00b7 ".join(p for p in (span, slept, acts, box, "SIMULATED night (no real EEG)" if simulated else "")
                          if p)
    fig.text(0.11, 0.885, sub, ha="left", fontsize=10, color="0.3")

    # the numbers beside it
    side.axis("off")
    rows = night_numbers(rep)
    side.text(0.04, 1.0, "The night in numbers", fontsize=11, fontweight="bold", va="top",
              transform=side.transAxes)
    step = 0.93 / max(len(rows), 1)
    for i, (label, value) in enumerate(rows):
        yy = 0.9 - i * step
        side.text(0.04, yy, label, fontsize=8.8, va="top", color="0.25", transform=side.transAxes)
        side.text(1.0, yy, value, fontsize=8.8, va="top", ha="right", fontweight="bold", transform=side.transAxes)

    handles = [Patch(color=STAGE_STYLE[s][1], label=STAGE_STYLE[s][0]) for s in HYPNOGRAM_ROWS]
    handles += [
        Line2D([], [], color=_LOOP_COLOUR, ls="--", lw=1.6, label=LEGEND_LOOP),
        Patch(color=_CUE_COLOUR, label=LEGEND_CUE),
        Patch(color=_LIGHT_COLOUR, label=LEGEND_LIGHT),
        Line2D([], [], color=_ALERT_COLOUR, marker="v", ms=10, ls="none", label=LEGEND_ALERT),
        Patch(facecolor="0.88", edgecolor="0.6", hatch="////", label=LEGEND_SIGNAL_LOST),
    ]
    fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.105, 0.0), ncol=5, frameon=False,
               fontsize=9.5, handlelength=2.2, columnspacing=1.6)
    return fig


def plot_hypnogram(night: NightRecord, path: str | Path, *, rep: dict | None = None) -> Path:
    """Draw :func:`hypnogram_figure` into a PNG file; returns its path."""
    p = Path(path)
    hypnogram_figure(night, rep=rep).savefig(p)
    return p


def write_report(night: NightRecord, night_dir: str | Path, *, png: bool = True) -> tuple[dict, Path, Path | None]:
    """Write ``report.json`` (and ``hypnogram.png`` unless ``png=False``) into the night's directory.

    Returns (report, json path, png path or None).
    """
    d = Path(night_dir)
    rep = build_report(night)
    png_path = plot_hypnogram(night, d / HYPNOGRAM_PNG, rep=rep) if png else None
    js = d / REPORT_JSON
    tmp = js.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rep, indent=1))
    tmp.replace(js)
    return rep, js, png_path


class NightError(ValueError):
    """A folder the report cannot be built from: no night in it, no recording, or a damaged sidecar file.

    The message is one line that names the file and the problem (``bedtime report`` prints it as is).
    """


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and bool(np.isfinite(x))


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
    if not _is_number(row.get("time_s")) or row["time_s"] < 0:
        return f"'time_s' must be a number of seconds >= 0, got {row.get('time_s')!r:.40}"
    return None


def _read_jsonl(path: Path, check: Callable[[dict], str | None]) -> list[dict]:
    """The rows of a JSON-lines sidecar, each checked by ``check``.

    A crash or power cut can tear the last line (or leave NUL padding after it); such a line is skipped. Any
    other unreadable line is damage, not a crash: rather than report a night shifted in time, say so.

    Raises
    ------
    NightError
        Naming the file, the line and the problem.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise NightError(f"{path}: cannot read ({e.strerror or e})") from None
    lines = raw.rstrip(b"\x00 \t\r\n").split(b"\n")
    rows: list[dict] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        last = n == len(lines)
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            if last and line.lstrip().startswith(b"{") and b"\x00" not in line:
                logger.warning("%s: line %d is cut short (an interrupted write); skipped", path, n)
                break
            what = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else "not valid JSON"
            raise NightError(f"{path}: line {n} is {what}; the file is damaged") from None
        problem = "must be a JSON object" if not isinstance(row, dict) else check(row)
        if problem:
            raise NightError(f"{path}: line {n}: {problem}; the file is damaged")
        rows.append(row)
    return rows


def read_saved_report(night_dir: str | Path) -> dict | None:
    """The ``report.json`` the daemon wrote for a night, or None when there is none.

    Raises
    ------
    NightError
        When the file exists but is not a report (damaged): the caller must not overwrite it silently.
    """
    js = Path(night_dir) / REPORT_JSON
    if not js.is_file():
        return None
    try:
        rep = json.loads(js.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        raise NightError(f"{js}: not a readable report (damaged); move it away to rebuild it from the night's "
                         "recording") from None
    hyp = rep.get("hypnogram") if isinstance(rep, dict) else None
    ok = (isinstance(rep, dict) and isinstance(rep.get("statistics"), dict)
          and isinstance(rep.get("interventions"), dict) and isinstance(rep.get("signal_quality"), dict)
          and isinstance(hyp, list)
          and all(isinstance(s, int) and not isinstance(s, bool) and s in STAGE_VALUES for s in hyp))
    if not ok:
        raise NightError(f"{js}: not a bedtime report (fields missing or of the wrong type); move it away to "
                         "rebuild it from the night's recording")
    return rep


def _parse_iso(text: object) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)


def _night_identity(events: list[dict], saved: dict | None) -> tuple[str, str]:
    """(box id, box name) of the box that recorded the night: from its saved report, else its start event."""
    started = next((e for e in events if e.get("kind") == "night_started"), {})
    box_id = (saved or {}).get("box_id") or started.get("box_id") or ""
    box_name = (saved or {}).get("box_name") or started.get("box_name") or ""
    return (box_id if isinstance(box_id, str) else "", box_name if isinstance(box_name, str) else "")


def render_png(night_dir: str | Path) -> Path:
    """Draw ``hypnogram.png`` from a night's ``report.json`` (its hypnogram), events and per-epoch quality.

    The daemon runs this in a short-lived child process (``python -m appliance.report png DIR``): matplotlib
    costs ~25 MB of resident memory, which the all-night process need not carry.
    """
    d = Path(night_dir)
    rep = read_saved_report(d)
    if rep is None:
        raise NightError(f"{d}: no {REPORT_JSON} to draw")
    return plot_hypnogram(_record_from_report(d, rep), d / HYPNOGRAM_PNG, rep=rep)


def _record_from_report(d: Path, rep: dict) -> NightRecord:
    """The night as its saved report tells it, with the per-epoch signal quality and events from the sidecars."""
    events = _read_jsonl(d / EVENTS_JSONL, _check_event) if (d / EVENTS_JSONL).is_file() else []
    ok = None
    if (d / EPOCHS_JSONL).is_file():
        rows = _read_jsonl(d / EPOCHS_JSONL, _check_epoch_row)
        ok = np.array([r.get("ok", True) for r in rows], dtype=bool)
    hyp = np.array(rep["hypnogram"], dtype=np.int8)
    if ok is not None and len(ok) != len(hyp):
        ok = None
    box_id, box_name = _night_identity(events, rep)
    return NightRecord(hypnogram=hyp, events=events, quality_ok=ok, start=_parse_iso(rep.get("night_start")),
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
    start = _parse_iso((saved or {}).get("night_start"))
    if start is None:
        try:
            start = dt.datetime.strptime(d.name, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            pass
    events = _read_jsonl(d / EVENTS_JSONL, _check_event) if (d / EVENTS_JSONL).is_file() else []
    if start is None:  # a night folder that was renamed or copied: its start event still knows
        start = next((_parse_iso(e.get("night_start")) for e in events if e.get("kind") == "night_started"), None)
    box_id, box_name = _night_identity(events, saved)
    counters = {k: v for k, v in ((saved or {}).get("signal_quality") or {}).items()
                if isinstance(v, int) and not isinstance(v, bool)}
    rows = _read_jsonl(d / EPOCHS_JSONL, _check_epoch_row) if (d / EPOCHS_JSONL).is_file() else []
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
    from appliance.recorder import ANNOTATION_STAGE, NIGHT_EDF, read_annotations

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
        plot_hypnogram(_record_from_report(d, rep), png, rep=rep)
    return rep, d / REPORT_JSON, png, rebuilt


def _smooth(probs: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """The stager's offline look-ahead smoothing over the whole night (what the daemon's own report uses)."""
    try:
        from appliance.stager import smooth_hypnogram

        return np.asarray(smooth_hypnogram(probs), dtype=np.int8)
    except Exception as e:  # the morning report must still come out
        logger.warning("offline smoothing failed (%s); reporting the live stages", e)
        return fallback


def format_report(rep: dict) -> str:
    """A human-readable text version of the report for ``bedtime report``."""
    s = rep["statistics"]

    def m(key: str) -> str:
        v = s.get(key)
        return "n/a" if v is None else f"{v:.1f} min"

    start = _parse_iso(rep.get("night_start"))
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


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "png":
        print("usage: python -m appliance.report png NIGHT_DIR", file=sys.stderr)
        sys.exit(2)
    try:
        print(render_png(sys.argv[2]))
    except NightError as e:
        print(f"appliance.report: {e}", file=sys.stderr)
        sys.exit(2)
