"""The morning report's picture (``hypnogram.png``), drawn with matplotlib's Agg backend (no display on the box).

Only drawing imports this module, and with it matplotlib (~25 MB of resident memory): the all-night daemon never
does. It runs ``python -m appliance.report_draw NIGHT_DIR`` in a short-lived child process instead, which draws
the PNG from the night's saved ``report.json`` and sidecars (:func:`render_png`); ``bedtime report`` draws in
its own (short) process.
"""
from __future__ import annotations

if __name__ == "__main__":  # the daemon's drawing child, before its first heavy import (numpy, matplotlib)
    import gc

    # Nothing it makes outlives the one picture it draws and the process ends right after: collecting cycles
    # while numpy and matplotlib import (hundreds of thousands of objects) is CPU spent for nothing.
    gc.disable()

import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on the box
import matplotlib.dates as mdates  # noqa: E402 (after the backend is chosen)
import numpy as np  # noqa: E402
from dateutil import tz as dtz  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from appliance.nightfolder import HYPNOGRAM_PNG, REPORT_JSON  # noqa: E402
from appliance.protocol.stages import EPOCH_S, HYPNOGRAM_ROWS, Stage, stage_runs, step_polylines  # noqa: E402
from appliance.report import NightRecord, build_report, count_text, minutes_text, night_numbers  # noqa: E402
from appliance.report_load import NightError, read_saved_report, record_from_report  # noqa: E402

logger = logging.getLogger(__name__)


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

STAGE_BAR_LW = 8.0
"""Width of a stage's bar, points."""
STAGE_BARS_GID = "stage-bars"
"""The id of the collection holding the stage bars (tests find it by it)."""

PNG_COMPRESS_LEVEL = 3
"""zlib level of the saved PNG (the pixels are the same at any level). Measured on the demo night's picture
(1375 x 528): level 3 encodes in ~14 ms where Pillow's default (6) takes ~20 ms and 9 ~94 ms, and its file is
~3 % smaller than the default's."""


def _runs_of(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, end) index pairs of the True stretches of a boolean array."""
    m = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    d = np.flatnonzero(np.diff(m.astype(np.int8)))
    return list(zip(d[::2].tolist(), d[1::2].tolist()))


def hypnogram_figure(night: NightRecord, *, rep: dict | None = None) -> Any:
    """The morning report's picture, for a parent: the night's stages against the clock, with what the box did.

    The stages are drawn from :func:`appliance.protocol.stages.stage_runs` (the geometry the clinic console's SVG
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
    # one collection for all the bars (a night has ~60-200 runs): the same pixels as one Line2D per run
    # (tests/test_report.py compares them), for a fraction of the artists to build and draw
    bars = [r for r in runs if r.row is not None]
    ax.add_collection(LineCollection([[(x(r.start_s), r.row), (x(r.end_s), r.row)] for r in bars],
                                     colors=[STAGE_STYLE[r.stage][1] for r in bars], linewidths=STAGE_BAR_LW,
                                     capstyle="butt", zorder=3, gid=STAGE_BARS_GID), autolim=False)
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
    slept = f"slept {minutes_text(st.get('total_sleep_time_min'))}"
    acts = ", ".join(count_text(n, what) for n, what in ((iv["loops_detected"], "nightmare loop"),
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
    hypnogram_figure(night, rep=rep).savefig(p, pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return p


def render_png(night_dir: str | Path) -> Path:
    """Draw ``hypnogram.png`` from a night's ``report.json`` (its hypnogram), events and per-epoch quality.

    The daemon runs this in a short-lived child process (``python -m appliance.report_draw DIR``): matplotlib
    costs ~25 MB of resident memory, which the all-night process need not carry.
    """
    d = Path(night_dir)
    rep = read_saved_report(d)
    if rep is None:
        raise NightError(f"{d}: no {REPORT_JSON} to draw")
    return plot_hypnogram(record_from_report(d, rep), d / HYPNOGRAM_PNG, rep=rep)


def main(argv: list[str] | None = None) -> int:
    """``python -m appliance.report_draw NIGHT_DIR``: draw the night's PNG; a night it cannot draw is one line, 2."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m appliance.report_draw NIGHT_DIR", file=sys.stderr)
        return 2
    try:
        print(render_png(args[0]))
    except NightError as e:
        print(f"appliance.report_draw: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    code = main()
    # The PNG is written and closed: skip the interpreter's teardown of numpy and matplotlib (module by module,
    # CPU spent for nothing in a process that ends here).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
