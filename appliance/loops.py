"""The operational definition of a nightmare loop, as a labelling function over stage sequences.

A *return* is REM sleep broken by a short arousal that slides back into REM: a REM epoch, then an
interruption of 1..``max_interruption_epochs`` epochs made only of W and N1 with at least one W epoch,
then REM again. A *loop* is under way at epoch ``t`` when at least ``min_returns`` returns came back to REM
inside the last ``loop_window_epochs`` epochs (ending at ``t``). Loop *episodes* are the maximal runs of
epochs where a loop is under way. The full reasoning, and how the numbers were chosen against the real
Sleep-EDF hypnograms, is in ``docs/loops.md``.

The definition is causal on purpose: whether a loop is under way at ``t`` depends only on epochs ``<= t``,
so the loop classifier (``appliance/loop_model.py``) can be trained to reproduce it online, and the
replay test can compare the two epoch by epoch.

Every number lives in :class:`LoopDefinition`; nothing in this module hard-codes a threshold.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from appliance.epoch import ArousalFeatures
from appliance.protocol.stages import EPOCH_S, Stage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopDefinition:
    """Every parameter of the loop definition, explicit and configurable.

    Attributes
    ----------
    max_interruption_epochs : int
        Longest interruption (epochs of 30 s) between two REM epochs that still counts as a return.
        Default 20 epochs = 10 min.
    interruption_stages : frozenset of int
        Stages an interruption may consist of (default W and N1: an arousal, not a sleep-cycle change).
    required_arousal_stages : frozenset of int
        At least one interruption epoch must be one of these (default W), unless arousal markers say so
        (see ``n1_with_arousal_counts``).
    n1_with_arousal_counts : bool
        When arousal features are given, an interruption without any W epoch still counts if one of its
        epochs shows arousal markers (``beta_rel >= arousal_beta_rel_min`` or
        ``movement_fraction >= arousal_movement_min``). Hypnograms alone carry no markers, so this
        changes nothing on them.
    arousal_beta_rel_min : float
        Relative beta power (0..1) from which an N1 epoch is treated as an arousal.
    arousal_movement_min : float
        Fraction (0..1) of an epoch's samples in movement artefact from which an N1 epoch is an arousal.
    min_returns : int
        Returns needed inside the window for a loop (default 2).
    loop_window_epochs : int
        Length of the window, in epochs, in which ``min_returns`` returns make a loop (default 60 = 30 min).
    """

    max_interruption_epochs: int = 20
    interruption_stages: frozenset[int] = field(default_factory=lambda: frozenset({int(Stage.W), int(Stage.N1)}))
    required_arousal_stages: frozenset[int] = field(default_factory=lambda: frozenset({int(Stage.W)}))
    n1_with_arousal_counts: bool = True
    arousal_beta_rel_min: float = 0.30
    arousal_movement_min: float = 0.20
    min_returns: int = 2
    loop_window_epochs: int = 60

    def __post_init__(self) -> None:
        if self.max_interruption_epochs < 1:
            raise ValueError(f"max_interruption_epochs must be >= 1, got {self.max_interruption_epochs}")
        if self.min_returns < 1:
            raise ValueError(f"min_returns must be >= 1, got {self.min_returns}")
        if self.loop_window_epochs < 1:
            raise ValueError(f"loop_window_epochs must be >= 1, got {self.loop_window_epochs}")
        if int(Stage.REM) in self.interruption_stages:
            raise ValueError("interruption_stages must not contain REM")

    @property
    def history_epochs(self) -> int:
        """Epochs of history a causal detector needs to see a whole loop (window + one interruption + 1 REM)."""
        return self.loop_window_epochs + self.max_interruption_epochs + 1

    @property
    def window_min(self) -> float:
        """The loop window in minutes (for reports)."""
        return self.loop_window_epochs * EPOCH_S / 60.0


DEFAULT_DEFINITION = LoopDefinition()


@dataclass(frozen=True)
class Return:
    """One REM -> arousal -> REM return.

    Attributes
    ----------
    last_rem_epoch : int
        Last REM epoch before the interruption.
    return_epoch : int
        First REM epoch after it (the epoch at which the return is known).
    interruption_epochs : int
        Length of the interruption, in epochs.
    """

    last_rem_epoch: int
    return_epoch: int
    interruption_epochs: int


@dataclass(frozen=True)
class LoopEpisode:
    """A maximal run of epochs in which a loop is under way.

    Attributes
    ----------
    onset_epoch : int
        First epoch of the run: the return that completed ``min_returns`` inside the window; the earliest
        epoch a causal detector can know of the loop.
    end_epoch : int
        Last epoch of the run (inclusive).
    n_returns : int
        Returns whose ``return_epoch`` lies in ``[first return of the window, end_epoch]``.
    """

    onset_epoch: int
    end_epoch: int
    n_returns: int

    @property
    def length_epochs(self) -> int:
        return self.end_epoch - self.onset_epoch + 1


def _is_arousal_epoch(a: ArousalFeatures | None, d: LoopDefinition) -> bool:
    if a is None:
        return False
    return a.beta_rel >= d.arousal_beta_rel_min or a.movement_fraction >= d.arousal_movement_min


def find_returns(stages: Sequence[int] | np.ndarray, *, definition: LoopDefinition = DEFAULT_DEFINITION,
                 arousal: Sequence[ArousalFeatures | None] | None = None) -> list[Return]:
    """Find every REM -> arousal -> REM return in a stage sequence.

    Parameters
    ----------
    stages : array-like of int
        One :class:`~appliance.protocol.stages.Stage` value per 30-s epoch (UNSCORED allowed; it breaks an
        interruption, since nothing is known about it).
    definition : LoopDefinition
        The parameters.
    arousal : sequence of ArousalFeatures or None, optional
        Per-epoch arousal markers, same length as ``stages``; lets N1-only interruptions count when
        ``definition.n1_with_arousal_counts``.

    Returns
    -------
    list of Return, in time order.
    """
    s = np.asarray(stages, dtype=np.int64)
    if arousal is not None and len(arousal) != len(s):
        raise ValueError(f"arousal has {len(arousal)} entries for {len(s)} epochs")
    rem = int(Stage.REM)
    out: list[Return] = []
    rem_idx = np.flatnonzero(s == rem)
    # Consecutive REM epochs with something in between are the candidate interruptions.
    for a, b in zip(rem_idx[:-1], rem_idx[1:]):
        gap = int(b - a - 1)
        if gap < 1 or gap > definition.max_interruption_epochs:
            continue
        seg = s[a + 1:b]
        if not all(int(x) in definition.interruption_stages for x in seg):
            continue
        aroused = any(int(x) in definition.required_arousal_stages for x in seg)
        if not aroused and arousal is not None and definition.n1_with_arousal_counts:
            aroused = any(_is_arousal_epoch(arousal[i], definition) for i in range(a + 1, b))
        if aroused:
            out.append(Return(last_rem_epoch=int(a), return_epoch=int(b), interruption_epochs=gap))
    return out


def loop_active(stages: Sequence[int] | np.ndarray, *, definition: LoopDefinition = DEFAULT_DEFINITION,
                arousal: Sequence[ArousalFeatures | None] | None = None,
                returns: list[Return] | None = None) -> np.ndarray:
    """Per-epoch label: is a loop under way at this epoch (causal)?

    ``True`` at epoch ``t`` when at least ``min_returns`` returns have ``return_epoch`` in
    ``(t - loop_window_epochs, t]``.

    Returns
    -------
    numpy.ndarray of bool, same length as ``stages``.
    """
    n = len(stages)
    if returns is None:
        returns = find_returns(stages, definition=definition, arousal=arousal)
    count = np.zeros(n + 1, dtype=np.int64)
    for r in returns:
        # Each return is "in the window" for epochs return_epoch .. return_epoch + window - 1.
        count[r.return_epoch] += 1
        count[min(n, r.return_epoch + definition.loop_window_epochs)] -= 1
    return np.cumsum(count)[:n] >= definition.min_returns


def find_loops(stages: Sequence[int] | np.ndarray, *, definition: LoopDefinition = DEFAULT_DEFINITION,
               arousal: Sequence[ArousalFeatures | None] | None = None) -> list[LoopEpisode]:
    """Loop episodes: maximal runs of epochs where :func:`loop_active` is True.

    Returns
    -------
    list of LoopEpisode, in time order.
    """
    returns = find_returns(stages, definition=definition, arousal=arousal)
    active = loop_active(stages, definition=definition, returns=returns)
    episodes: list[LoopEpisode] = []
    for onset, end in runs_of_true(active):
        first = onset - definition.loop_window_epochs + 1
        n_ret = sum(1 for r in returns if first <= r.return_epoch <= end)
        episodes.append(LoopEpisode(onset_epoch=onset, end_epoch=end, n_returns=n_ret))
    return episodes


def runs_of_true(mask: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` inclusive index pairs of the runs of True in a boolean array."""
    m = np.asarray(mask, dtype=bool)
    if m.size == 0:
        return []
    d = np.diff(np.concatenate(([False], m, [False])).astype(np.int8))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1) - 1
    return list(zip(starts.tolist(), ends.tolist()))


@dataclass(frozen=True)
class NightLoopSummary:
    """The definition applied to one night: counts for reports and tests."""

    name: str
    n_epochs: int
    n_returns: int
    n_loops: int
    loop_epochs: int

    @property
    def has_loop(self) -> bool:
        return self.n_loops > 0


def summarise_night(name: str, stages: np.ndarray, *,
                    definition: LoopDefinition = DEFAULT_DEFINITION) -> NightLoopSummary:
    """Apply the definition to one hypnogram and count returns, loop episodes and loop epochs."""
    returns = find_returns(stages, definition=definition)
    active = loop_active(stages, definition=definition, returns=returns)
    return NightLoopSummary(name=name, n_epochs=len(stages), n_returns=len(returns),
                            n_loops=len(runs_of_true(active)), loop_epochs=int(active.sum()))
