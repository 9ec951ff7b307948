"""Morning report: AASM statistics checked against hand-counted hypnograms, and the PNG/JSON outputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.protocol.stages import Stage
from appliance.report import NightRecord, build_report, sleep_statistics
from appliance.report_load import load_night, write_report

W, N1, N2, N3, R, U = Stage.W, Stage.N1, Stage.N2, Stage.N3, Stage.REM, Stage.UNSCORED


def test_statistics_of_a_hand_counted_night():
    # 4 W (onset latency 2 min), then sleep with two wake bouts inside, then 3 W at the end
    h = np.array([W, W, W, W, N1, N2, N2, W, N2, N3, N3, R, R, W, W, N2, R, W, W, W], dtype=np.int8)
    s = sleep_statistics(h)
    assert s["n_epochs"] == 20
    assert s["time_in_bed_min"] == 10.0
    assert s["total_sleep_time_min"] == 5.0            # 10 sleep epochs
    assert s["sleep_onset_latency_min"] == 2.0         # first sleep at epoch 4
    assert s["sleep_period_time_min"] == 6.5           # epochs 4..16
    assert s["waso_min"] == 1.5                        # epochs 7, 13, 14
    assert s["awakenings"] == 2
    assert s["rem_latency_min"] == 3.5                 # epoch 11 - epoch 4
    assert s["sleep_efficiency_pct"] == pytest.approx(50.0)
    assert (s["W_min"], s["N1_min"], s["N2_min"], s["N3_min"], s["REM_min"]) == (5.0, 0.5, 2.0, 1.0, 1.5)
    assert s["N2_pct"] == pytest.approx(100 * 2.0 / 5.0)
    assert s["W_pct"] == pytest.approx(50.0)


def test_statistics_edge_cases():
    s = sleep_statistics(np.array([W, W, U], dtype=np.int8))
    assert s["total_sleep_time_min"] == 0 and s["sleep_onset_latency_min"] is None and s["rem_latency_min"] is None
    assert s["unscored_min"] == 0.5
    s = sleep_statistics(np.array([N2, N2, N3], dtype=np.int8))
    assert s["sleep_onset_latency_min"] == 0 and s["rem_latency_min"] is None and s["awakenings"] == 0
    assert s["sleep_efficiency_pct"] == 100.0
    s = sleep_statistics(np.array([], dtype=np.int8))
    assert s["time_in_bed_min"] == 0 and s["sleep_efficiency_pct"] == 0.0


def _brute_force(h):
    """Independent, loop-based re-derivation of the statistics, to compare on random nights."""
    sleep = [i for i, s in enumerate(h) if s in (1, 2, 3, 4)]
    if not sleep:
        return None
    first, last = sleep[0], sleep[-1]
    waso = sum(1 for i in range(first, last + 1) if h[i] == 0)
    bouts, prev = 0, None
    for i in range(first, last + 1):
        if h[i] == 0 and prev != 0:
            bouts += 1
        prev = h[i]
    rems = [i for i, s in enumerate(h) if s == 4]
    return {"total_sleep_time_min": len(sleep) / 2, "sleep_onset_latency_min": first / 2, "waso_min": waso / 2,
            "awakenings": bouts, "rem_latency_min": (rems[0] - first) / 2 if rems else None}


def test_statistics_match_a_brute_force_count_on_real_hypnograms(shared):
    from appliance.hypnogram import real_hypnograms

    for name, h in list(real_hypnograms().items())[:10]:
        s = sleep_statistics(h)
        for k, v in _brute_force(list(h)).items():
            assert s[k] == v, (name, k)


def test_report_files_and_reload(tmp_path):
    h = np.array([W] * 10 + [N2] * 30 + [R] * 10 + [W] * 2 + [R] * 8 + [W] * 5, dtype=np.int8)
    events = [{"time_s": 1500.0, "kind": "loop_detected", "p_loop": 0.9},
              {"time_s": 1500.0, "kind": "breather_started"}, {"time_s": 1530.0, "kind": "breather_light"},
              {"time_s": 1600.0, "kind": "breather_ended", "outcome": "woke"},
              {"time_s": 1700.0, "kind": "alert"}]
    night = NightRecord(hypnogram=h, events=events, quality_ok=np.ones(len(h), bool), box_id="b1")
    rep, js, png = write_report(night, tmp_path)
    assert png.stat().st_size > 5000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = json.loads(js.read_text())
    assert back["statistics"] == json.loads(json.dumps(sleep_statistics(h)))
    iv = back["interventions"]
    assert iv["loops_detected"] == 1 and iv["alerts"] == 1
    assert iv["breather_sessions"][0]["outcome"] == "woke"
    # the session went through the sound cue (breather_started), then the light: what the demo prints too
    assert iv["breather_sessions"][0]["steps"] == ["cue", "light", "ended"]
    assert iv["breather_sessions"][0]["light_s"] == 1530.0 and iv["alert_times_s"] == [1700.0]
    # reload from the jsonl sidecars the daemon writes
    (tmp_path / "epochs.jsonl").write_text("".join(json.dumps({"stage": int(s), "ok": True}) + "\n" for s in h)
                                           + '{"stage": 2, "o')  # torn last line (crash) is skipped
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    again = load_night(tmp_path)
    assert np.array_equal(again.live_hypnogram, h)
    assert build_report(again)["interventions"]["loops_detected"] == 1


@pytest.fixture
def berlin_time(monkeypatch):
    """The process's local time zone set to Europe/Berlin (UTC+1 in winter) for one test."""
    import time

    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _parents_night():
    import datetime as dt

    h = np.array([W] * 20 + ([N1] * 4 + [N2] * 40 + [N3] * 30 + [N2] * 20 + [R] * 20 + [W] * 2) * 4 + [W] * 10,
                 dtype=np.int8)
    ok = np.ones(len(h), bool)
    ok[200:230] = False  # 15 min of lost signal
    h[200:230] = U
    events = [{"time_s": 0.0, "kind": "night_started", "box_id": "b1", "box_name": "Mia's room", "simulated": True},
              {"time_s": 9000.0, "kind": "loop_detected"}, {"time_s": 9030.0, "kind": "breather_started"},
              {"time_s": 9090.0, "kind": "breather_light"}, {"time_s": 9300.0, "kind": "breather_ended",
                                                             "outcome": "completed"},
              {"time_s": 9600.0, "kind": "alert"}]
    start = dt.datetime(2026, 11, 30, 21, 15, tzinfo=dt.timezone.utc)  # 22:15 in Berlin
    return NightRecord(hypnogram=h, events=events, quality_ok=ok, start=start, box_id="b1", box_name="Mia's room")


def test_the_png_reads_for_a_parent(tmp_path, berlin_time):
    from appliance.report_draw import (LEGEND_ALERT, LEGEND_CUE, LEGEND_LIGHT, LEGEND_LOOP, LEGEND_SIGNAL_LOST,
                                       hypnogram_figure, plot_hypnogram)

    night = _parents_night()
    fig = hypnogram_figure(night)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    for label in ("Awake", "REM (dreaming)", "N1 light sleep", "N2 light sleep", "N3 deep sleep", LEGEND_LOOP,
                  LEGEND_CUE, LEGEND_LIGHT, LEGEND_ALERT, LEGEND_SIGNAL_LOST):
        assert label in legend
    fig.canvas.draw()
    ax, side = fig.axes
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert {"23:00", "00:00", "02:00"} <= set(ticks), ticks  # local clock times, one per hour
    title = fig.texts[0].get_text() if not fig._suptitle else fig._suptitle.get_text()
    assert "Mia's room" in title and "Mon 30" in title and "December 2026" in title, title
    texts = " | ".join(t.get_text() for t in fig.texts + side.texts)
    assert "lights out 22:15" in texts and "SIMULATED" in texts and "box b1" in texts
    for label in ("Total sleep (TST)", "Sleep efficiency", "Awake in the night (WASO)", "Fell asleep after",
                  "REM (% of sleep)", "Nightmare loops detected", "Breathers given", "Alerts sent"):
        assert label in texts
    assert "UTC+01:00" in ax.get_xlabel()
    p = plot_hypnogram(night, tmp_path / "h.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_and_console_svg_draw_one_geometry(berlin_time):
    import matplotlib.dates as mdates

    from appliance.fleet.web.charts import hypnogram_svg
    from appliance.protocol.stages import stage_runs, step_polylines
    from appliance.report_draw import hypnogram_figure

    night = _parents_night()
    want = step_polylines(stage_runs(night.hypnogram))
    assert len(want) == 2  # the lost stretch breaks the line
    # the PNG's step line, back in (seconds, row)
    fig = hypnogram_figure(night)
    t0 = mdates.date2num(night.start)
    got_png = [[(round((x - t0) * 86400.0, 3), int(y)) for x, y in line.get_xydata()]
               for line in fig.axes[0].get_lines() if line.get_color() == "0.45"]
    assert got_png == [[(float(t), r) for t, r in line] for line in want]
    # the console's SVG polylines, back in (seconds, row)
    svg = hypnogram_svg([int(s) for s in night.hypnogram])
    total = len(night.hypnogram) * 30.0
    s_per_px = total / (svg.width - 50)
    assert len(svg.lines) == len(want)
    for line, ref in zip(svg.lines, want):
        pts = [tuple(map(float, p.split(","))) for p in line.split()]
        assert [round((y - 8) / ((svg.height - 28) / 4)) for _, y in pts] == [r for _, r in ref]
        # the SVG rounds to 0.1 px
        assert [(x - 40) * s_per_px for x, _ in pts] == pytest.approx([t for t, _ in ref], abs=0.051 * s_per_px)


def test_the_text_report_speaks_clock_time(berlin_time):
    from appliance.report import format_report

    text = format_report(build_report(_parents_night()))
    assert "Night of Mon 30 Nov 2026, lights out 22:15 CET  Mia's room (box b1)" in text
    assert "breather at 00:45 (+2.51 h): cue -> light -> ended (outcome: completed)" in text
    assert "alerts sent        1, at 00:55 (+2.67 h)" in text


def _pixels(fig) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba()).copy()


def _with_a_line_per_run(fig, night: NightRecord):
    """The reference drawing of the stage bars: one ``Axes.plot`` per run (what the PNG drew before they became
    one collection), in place of that collection."""
    import datetime as dt

    import matplotlib.dates as mdates
    from dateutil import tz as dtz

    from appliance.protocol.stages import stage_runs
    from appliance.report_draw import STAGE_BAR_LW, STAGE_BARS_GID, STAGE_STYLE

    ax = fig.axes[0]
    (bars,) = [c for c in ax.collections if c.get_gid() == STAGE_BARS_GID]
    bars.remove()
    start = night.start.astimezone(dtz.tzlocal()) if night.start is not None else None

    def x(t_s: float) -> float:
        return (mdates.date2num(start + dt.timedelta(seconds=float(t_s))) if start is not None
                else float(t_s) / 3600.0)

    for r in stage_runs(night.hypnogram):
        if r.row is not None:
            ax.plot([x(r.start_s), x(r.end_s)], [r.row, r.row], color=STAGE_STYLE[r.stage][1], lw=STAGE_BAR_LW,
                    solid_capstyle="butt", zorder=3)
    return fig


_STAGE_OR_LOST = st.sampled_from([int(s) for s in (W, N1, N2, N3, R, U)])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=st.lists(st.tuples(_STAGE_OR_LOST, st.integers(1, 60)), min_size=1, max_size=40),
       clock=st.booleans())
def test_the_stage_bars_draw_the_pixels_of_a_line_per_run(berlin_time, runs, clock):
    # The PNG draws its stage bars as one LineCollection (cheaper to build and draw than one Line2D per run):
    # the picture must stay pixel for pixel what one Axes.plot per run drew.
    import datetime as dt

    from appliance.report_draw import hypnogram_figure

    h = np.concatenate([np.full(n, s, dtype=np.int8) for s, n in runs])
    start = dt.datetime(2026, 11, 30, 21, 15, 7, tzinfo=dt.timezone.utc) if clock else None
    night = NightRecord(hypnogram=h, quality_ok=h != U, start=start, box_id="b1")
    got = _pixels(hypnogram_figure(night))
    want = _pixels(_with_a_line_per_run(hypnogram_figure(night), night))
    assert got.shape == want.shape
    assert np.array_equal(got, want), f"{int(np.any(got != want, axis=2).sum())} pixels differ"


def test_the_saved_png_holds_the_pixels_drawn(tmp_path, berlin_time):
    # the PNG is saved at a faster zlib level than Pillow's default: a lossless format, so the same pixels
    from PIL import Image

    from appliance.report_draw import hypnogram_figure, plot_hypnogram

    night = _parents_night()
    p = plot_hypnogram(night, tmp_path / "h.png")
    with Image.open(p) as im:
        saved = np.asarray(im.convert("RGBA"))
    assert np.array_equal(saved, _pixels(hypnogram_figure(night)))
