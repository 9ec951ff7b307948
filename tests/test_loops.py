"""The loop definition (appliance/loops.py) on hand-made sequences and on the real hypnograms."""
from __future__ import annotations

import numpy as np
import pytest

from appliance.epoch import ArousalFeatures
from appliance.protocol.stages import Stage
from appliance.loops import (LoopDefinition, find_loops, find_returns, loop_active, runs_of_true,
                             summarise_night)

W, N1, N2, N3, R, U = (int(Stage.W), int(Stage.N1), int(Stage.N2), int(Stage.N3), int(Stage.REM),
                       int(Stage.UNSCORED))


def seq(*parts: tuple[int, int]) -> np.ndarray:
    return np.concatenate([np.full(n, s, dtype=np.int8) for s, n in parts])


def test_single_return_is_found_at_first_rem_after_interruption():
    h = seq((N2, 10), (R, 5), (W, 2), (N1, 1), (R, 5))
    (r,) = find_returns(h)
    assert (r.last_rem_epoch, r.return_epoch, r.interruption_epochs) == (14, 18, 3)


@pytest.mark.parametrize("gap,expected", [([(W, 20)], 1), ([(W, 21)], 0), ([(N1, 3)], 0),
                                          ([(W, 1), (N2, 1)], 0), ([(W, 1), (U, 1)], 0), ([(N3, 2)], 0)])
def test_interruption_rules(gap, expected):
    h = seq((R, 3), *gap, (R, 3))
    assert len(find_returns(h)) == expected


def test_n1_interruption_counts_only_with_arousal_markers():
    h = seq((R, 3), (N1, 2), (R, 3))
    calm = [ArousalFeatures()] * len(h)
    aroused = list(calm)
    aroused[4] = ArousalFeatures(beta_rel=0.5)
    assert find_returns(h, arousal=calm) == []
    assert len(find_returns(h, arousal=aroused)) == 1
    off = LoopDefinition(n1_with_arousal_counts=False)
    assert find_returns(h, arousal=aroused, definition=off) == []


def test_loop_needs_two_returns_inside_the_window_and_is_causal():
    # Returns at epochs 6 and 6+3+40=... : build two returns 40 epochs apart, then a third far away.
    h = seq((R, 3), (W, 2), (R, 40), (W, 2), (R, 5), (N2, 200), (R, 3), (W, 2), (R, 3))
    rets = find_returns(h)
    assert len(rets) == 3
    active = loop_active(h)
    (ep,) = find_loops(h)
    assert ep.onset_epoch == rets[1].return_epoch
    # Active until the first return leaves the 60-epoch window.
    assert ep.end_epoch == rets[0].return_epoch + 59
    assert ep.n_returns == 2
    # Causality: truncating the night never changes the label of the epochs kept.
    for t in range(0, len(h), 7):
        assert np.array_equal(loop_active(h[:t]), active[:t])


def test_returns_farther_apart_than_window_make_no_loop():
    h = seq((R, 3), (W, 2), (R, 70), (W, 2), (R, 3))
    assert len(find_returns(h)) == 2
    assert find_loops(h) == []
    assert len(find_loops(h, definition=LoopDefinition(loop_window_epochs=80))) == 1


def test_definition_refuses_nonsense():
    with pytest.raises(ValueError, match="max_interruption_epochs"):
        LoopDefinition(max_interruption_epochs=0)
    with pytest.raises(ValueError, match="REM"):
        LoopDefinition(interruption_stages=frozenset({W, R}))


def test_runs_of_true():
    assert runs_of_true(np.array([0, 1, 1, 0, 1], bool)) == [(1, 2), (4, 4)]
    assert runs_of_true(np.array([], bool)) == []


def test_real_hypnograms_reproduce_shared_readme_counts(shared):
    """shared/README.md: 41 REM->W->REM returns within 10 min, a loop in 6 nights, 12 in SC4041E0."""
    from appliance.hypnogram import real_hypnograms

    nights = {k: v for k, v in real_hypnograms().items() if k.startswith("SC4")}
    assert len(nights) == 39
    summaries = {k: summarise_night(k, h) for k, h in nights.items()}
    assert sum(s.n_returns for s in summaries.values()) == 41
    assert sum(s.has_loop for s in summaries.values()) == 6
    assert summaries["SC4041E0"].n_returns == 12
    assert sum(s.n_loops for s in summaries.values()) == 9
