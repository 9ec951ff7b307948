"""Server-side SVG drawings for the console pages (no chart library, no scripts: they work under the
strict Content-Security-Policy and print fine). Only numbers reach the SVG; labels are fixed strings."""
from __future__ import annotations

from dataclasses import dataclass

# Stage code (appliance.hypnogram.Stage) -> row from the top, as sleep labs draw a hypnogram.
_ROW = {0: 0, 4: 1, 1: 2, 2: 3, 3: 4}
ROW_LABELS = ("W", "REM", "N1", "N2", "N3")


@dataclass(frozen=True)
class HypnogramSVG:
    """Geometry of a hypnogram drawing: ``points`` is an SVG polyline, ``rem_segments`` the REM bars."""

    width: int
    height: int
    points: str
    rem_segments: list[tuple[float, float, float]]
    hours: list[tuple[float, int]]
    rows: list[tuple[float, str]]


def hypnogram_svg(stages: list[int], *, epoch_s: float = 30.0, width: int = 720, height: int = 140) -> HypnogramSVG | None:
    """Polyline geometry of a hypnogram (one Stage code per epoch; unscored epochs break nothing, they
    are drawn at the wake row). Returns None for an empty or malformed list."""
    if not isinstance(stages, list) or not stages or not all(isinstance(s, int) for s in stages):
        return None
    left, top, plot_w, plot_h = 40, 8, width - 50, height - 28
    n = len(stages)
    dx = plot_w / n
    dy = plot_h / (len(ROW_LABELS) - 1)
    pts: list[str] = []
    rem: list[tuple[float, float, float]] = []
    for i, s in enumerate(stages):
        y = top + _ROW.get(s, 0) * dy
        x0, x1 = left + i * dx, left + (i + 1) * dx
        pts.append(f"{x0:.1f},{y:.1f} {x1:.1f},{y:.1f}")
        if s == 4:
            rem.append((round(x0, 1), round(y, 1), round(dx, 2)))
    hours = [(round(left + h * 3600 / epoch_s * dx, 1), h) for h in range(int(n * epoch_s // 3600) + 1)]
    rows = [(round(top + r * dy, 1), label) for r, label in enumerate(ROW_LABELS)]
    return HypnogramSVG(width, height, " ".join(pts), rem, hours, rows)
