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
from typing import Any

import numpy as np

from appliance.hypnogram import EPOCH_S, STAGE_NAMES, Stage

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
        The box's id.
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
    audit_head: dict | None = None


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def summarise_interventions(events: list[dict]) -> dict[str, Any]:
    """Loops, breather sessions and alerts from the night's event list."""
    kinds = Counter(e.get("kind", "?") for e in events)
    sessions = []
    current: dict | None = None
    for e in sorted(events, key=lambda e: e.get("time_s", 0.0)):
        k = e.get("kind", "")
        if k == "breather_started":
            current = {"start_s": e["time_s"], "steps": [], "outcome": None}
            sessions.append(current)
        elif k.startswith("breather_") and current is not None:
            current["steps"].append(k[len("breather_"):])
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
        "night_start": _iso(night.start),
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


def plot_hypnogram(night: NightRecord, path: str | Path) -> Path:
    """Draw the hypnogram with loops, breather sessions and bad-signal epochs marked; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on the box
    import matplotlib.pyplot as plt

    h = np.asarray(night.hypnogram, dtype=float)
    # conventional order top to bottom: W, REM, N1, N2, N3
    ypos = {Stage.W: 4, Stage.REM: 3, Stage.N1: 2, Stage.N2: 1, Stage.N3: 0, Stage.UNSCORED: np.nan}
    y = np.array([ypos[Stage(int(s))] for s in h], dtype=float)
    t_h = np.arange(len(h) + 1) * EPOCH_S / 3600.0
    fig, ax = plt.subplots(figsize=(10, 3.2), dpi=100)
    ax.step(t_h[:-1], y, where="post", color="0.2", lw=1)
    rem = np.where(h == Stage.REM, y, np.nan)
    ax.step(t_h[:-1], rem, where="post", color="tab:red", lw=2.5, label="REM")
    if night.quality_ok is not None:
        bad = np.flatnonzero(~np.asarray(night.quality_ok, dtype=bool))
        for i in bad:
            ax.axvspan(t_h[i], t_h[i + 1], color="0.85", lw=0)
    iv = summarise_interventions(night.events)
    for s in iv["breather_sessions"]:
        ax.axvspan(s["start_s"] / 3600, s.get("end_s", s["start_s"] + 60) / 3600, color="gold", alpha=0.5, lw=0)
    for t in iv["loop_times_s"]:
        ax.axvline(t / 3600, color="tab:purple", ls="--", lw=1)
    ax.set_yticks([0, 1, 2, 3, 4], ["N3", "N2", "N1", "REM", "W"])
    ax.set_xlabel("hours since lights out")
    ax.set_xlim(0, max(t_h[-1], 1e-3))
    stats = sleep_statistics(night.hypnogram)
    ax.set_title(f"TST {stats['total_sleep_time_min']:.0f} min, SE {stats['sleep_efficiency_pct']:.0f}%, "
                 f"loops {iv['loops_detected']}, breathers {len(iv['breather_sessions'])}")
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p)
    plt.close(fig)
    return p


def write_report(night: NightRecord, night_dir: str | Path, *, png: bool = True) -> tuple[dict, Path, Path | None]:
    """Write ``report.json`` (and ``hypnogram.png`` unless ``png=False``) into the night's directory.

    Returns (report, json path, png path or None).
    """
    d = Path(night_dir)
    rep = build_report(night)
    png_path = plot_hypnogram(night, d / HYPNOGRAM_PNG) if png else None
    js = d / REPORT_JSON
    tmp = js.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rep, indent=1))
    tmp.replace(js)
    return rep, js, png_path


def render_png(night_dir: str | Path) -> Path:
    """Draw ``hypnogram.png`` from a night's ``report.json`` (its hypnogram), events and per-epoch quality.

    The daemon runs this in a short-lived child process (``python -m appliance.report png DIR``): matplotlib
    costs ~25 MB of resident memory, which the all-night process need not carry.
    """
    d = Path(night_dir)
    rep = json.loads((d / REPORT_JSON).read_text())
    events: list[dict] = []
    if (d / EVENTS_JSONL).is_file():
        events = [json.loads(ln) for ln in (d / EVENTS_JSONL).read_text().splitlines() if _complete_json(ln)]
    ok = None
    if (d / EPOCHS_JSONL).is_file():
        rows = [json.loads(ln) for ln in (d / EPOCHS_JSONL).read_text().splitlines() if _complete_json(ln)]
        ok = np.array([r.get("ok", True) for r in rows], dtype=bool)
    hyp = np.array(rep["hypnogram"], dtype=np.int8)
    if ok is not None and len(ok) != len(hyp):
        ok = None
    return plot_hypnogram(NightRecord(hypnogram=hyp, events=events, quality_ok=ok), d / HYPNOGRAM_PNG)


def load_night(night_dir: str | Path) -> NightRecord:
    """Rebuild a night from its directory: ``epochs.jsonl``/``events.jsonl`` when present, else the EDF+ annotations.

    This is how ``bedtime report NIGHT`` works after the fact, including for a night cut short by a crash.
    """
    d = Path(night_dir)
    start = None
    try:
        start = dt.datetime.strptime(d.name, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        pass
    events: list[dict] = []
    if (d / EVENTS_JSONL).is_file():
        events = [json.loads(ln) for ln in (d / EVENTS_JSONL).read_text().splitlines() if _complete_json(ln)]
    if (d / EPOCHS_JSONL).is_file():
        rows = [json.loads(ln) for ln in (d / EPOCHS_JSONL).read_text().splitlines() if _complete_json(ln)]
        live = np.array([r["stage"] for r in rows], dtype=np.int8)
        probs = [r.get("probs") for r in rows]
        hyp = live
        if rows and all(p is not None for p in probs):
            hyp = _smooth(np.array(probs, dtype=float), live)
        flags: Counter = Counter()
        for r in rows:
            flags.update(r.get("flags", []))
        return NightRecord(hypnogram=hyp, live_hypnogram=live, events=events, start=start,
                           quality_ok=np.array([r.get("ok", True) for r in rows], dtype=bool), quality_flags=flags)
    from appliance.recorder import ANNOTATION_STAGE, NIGHT_EDF, read_annotations

    anns = read_annotations(d / NIGHT_EDF)
    stages = sorted((on, ANNOTATION_STAGE[t]) for on, _, t in anns if t in ANNOTATION_STAGE)
    hyp = np.array([s for _, s in stages], dtype=np.int8)
    return NightRecord(hypnogram=hyp, live_hypnogram=hyp, events=events, start=start)


def _complete_json(line: str) -> bool:
    # a crash can cut the last line; a partial line is skipped, not fatal
    line = line.strip()
    if not line:
        return False
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


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

    lines = [
        f"Night {rep.get('night_start') or '?'}  box {rep.get('box_id') or '?'}",
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
        lines.append(f"  breather at {sess['start_s'] / 3600:.2f} h: {' -> '.join(sess['steps']) or 'started'}"
                     f" (outcome: {sess['outcome']})")
    lines.append(f"  alerts sent        {iv['alerts']}")
    for f in iv["faults"]:
        lines.append(f"  fault at {f['time_s']} s: {f['reason']}")
    q = rep["signal_quality"]
    if q.get("epochs_ok_pct") is not None:
        lines.append(f"  signal ok          {q['epochs_ok_pct']:.1f} % of epochs; flags {q['flags_epochs']}")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "png":
        print("usage: python -m appliance.report png NIGHT_DIR", file=sys.stderr)
        sys.exit(2)
    print(render_png(sys.argv[2]))
