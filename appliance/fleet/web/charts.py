"""Server-side SVG drawings for the console pages (no chart library, no scripts: they work under the
strict Content-Security-Policy and print fine). Only numbers reach the SVG; labels are fixed strings."""
from __future__ import annotations

from dataclasses import dataclass

from appliance.protocol.stages import HYPNOGRAM_ROWS, STAGE_VALUES, Stage, stage_runs, step_polylines

ROW_LABELS = tuple("REM" if s == Stage.REM else s.name for s in HYPNOGRAM_ROWS)


@dataclass(frozen=True)
class HypnogramSVG:
    """Geometry of a hypnogram drawing: ``lines`` are SVG polylines (an unscored stretch breaks the line),
    ``rem_segments`` the REM bars."""

    width: int
    height: int
    lines: list[str]
    rem_segments: list[tuple[float, float, float]]
    hours: list[tuple[float, int]]
    rows: list[tuple[float, str]]


def hypnogram_svg(stages: list[int], *, epoch_s: float = 30.0, width: int = 720, height: int = 140) -> HypnogramSVG | None:
    """SVG coordinates of a hypnogram (one Stage code per epoch), from the same step geometry the morning
    report's PNG is drawn from (:func:`appliance.protocol.stages.stage_runs`). Returns None for an empty or
    malformed list."""
    if (not isinstance(stages, list) or not stages
            or not all(isinstance(s, int) and not isinstance(s, bool) and s in STAGE_VALUES for s in stages)):
        return None
    left, top, plot_w, plot_h = 40, 8, width - 50, height - 28
    total_s = len(stages) * epoch_s
    dy = plot_h / (len(ROW_LABELS) - 1)

    def px(t_s: float) -> float:
        return left + t_s / total_s * plot_w

    runs = stage_runs(stages, epoch_s=epoch_s)
    lines = [" ".join(f"{px(t):.1f},{top + row * dy:.1f}" for t, row in line) for line in step_polylines(runs)]
    rem = [(round(px(r.start_s), 1), round(top + r.row * dy, 1), round(px(r.end_s) - px(r.start_s), 2))
           for r in runs if r.stage == Stage.REM and r.row is not None]
    hours = [(round(px(h * 3600.0), 1), h) for h in range(int(total_s // 3600) + 1)]
    rows = [(round(top + r * dy, 1), label) for r, label in enumerate(ROW_LABELS)]
    return HypnogramSVG(width, height, lines, rem, hours, rows)
