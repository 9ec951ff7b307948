"""The sleep-stage vocabulary box and clinic share: stage codes and names, and the one step geometry of a drawn
hypnogram.

A stage travels as its code (``stage_code`` in the ``stage`` payload, one code per epoch in a report's hypnogram)
and its name (``stage``; probability vectors in :data:`STAGE_NAMES` order), so the numbering is part of the
protocol: YASA's (W=0, N1=1, N2=2, N3=3, REM=4, UNSCORED=-1). The morning report's PNG (on the box) and the console's
SVG (in the clinic) are both drawn from :func:`stage_runs` and :func:`step_polylines`, so they cannot disagree about
where a stage starts or which row it sits on.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

EPOCH_S = 30.0
"""Length of one scoring epoch in seconds (AASM)."""


class Stage(enum.IntEnum):
    """AASM sleep stages, numbered as YASA numbers them."""

    UNSCORED = -1
    W = 0
    N1 = 1
    N2 = 2
    N3 = 3
    REM = 4


STAGE_VALUES: frozenset[int] = frozenset(int(s) for s in Stage)
"""Every value a hypnogram may hold (the scored stages and UNSCORED)."""

STAGE_NAMES: tuple[str, ...] = ("W", "N1", "N2", "N3", "REM")
"""Names of the five scored stages, indexed by :class:`Stage` value (probability vectors use this order)."""

HYPNOGRAM_ROWS: tuple[Stage, ...] = (Stage.W, Stage.REM, Stage.N1, Stage.N2, Stage.N3)
"""Rows of a drawn hypnogram, top to bottom, as sleep labs draw it (REM just under wake)."""


@dataclass(frozen=True)
class StageRun:
    """One stretch of equal stage in a drawn hypnogram.

    Attributes
    ----------
    start_s, end_s : float
        Seconds since the start of the hypnogram.
    stage : Stage
    row : int or None
        Index into :data:`HYPNOGRAM_ROWS` (0 = top); None for unscored epochs, which are drawn as a gap.
    """

    start_s: float
    end_s: float
    stage: Stage
    row: int | None


def stage_runs(hypnogram: np.ndarray | list[int], *, epoch_s: float = EPOCH_S) -> list[StageRun]:
    """The step geometry of a hypnogram: its runs of equal stage, in time order.

    Every drawing of a hypnogram (the morning report's PNG, the clinic console's SVG) is made from this one
    geometry, so they cannot disagree about where a stage starts or which row it sits on.

    Parameters
    ----------
    hypnogram : array-like of int
        One :class:`Stage` value per epoch.
    epoch_s : float
        Epoch length in seconds.
    """
    h = np.asarray(hypnogram, dtype=np.int64)
    runs: list[StageRun] = []
    if not len(h):
        return runs
    edges = np.flatnonzero(np.diff(h)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [len(h)]])
    for a, b in zip(starts, ends):
        stage = Stage(int(h[a])) if int(h[a]) in STAGE_VALUES else Stage.UNSCORED
        row = HYPNOGRAM_ROWS.index(stage) if stage in HYPNOGRAM_ROWS else None
        runs.append(StageRun(float(a * epoch_s), float(b * epoch_s), stage, row))
    return runs


def step_polylines(runs: list[StageRun]) -> list[list[tuple[float, int]]]:
    """The step line through ``runs`` as polylines of ``(time_s, row)`` vertices.

    A run is a horizontal segment at its row; consecutive scored runs are joined by a vertical step; an
    unscored run breaks the line (no stage is drawn where there was no signal to score).
    """
    lines: list[list[tuple[float, int]]] = []
    current: list[tuple[float, int]] = []
    for r in runs:
        if r.row is None:
            if current:
                lines.append(current)
            current = []
            continue
        current += [(r.start_s, r.row), (r.end_s, r.row)]
    if current:
        lines.append(current)
    return lines
