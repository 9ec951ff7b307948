"""Replay every real hypnogram through the loop classifier and the breather (simulated stager output).

Truth is the loop definition (appliance/loops.py) on the true hypnogram. The shipped model was trained on
all these nights (with other noise draws), so this is a consistency check of the whole chain, not a
held-out estimate; the held-out figures are in models/loops/MODEL_CARD.md.

Stated tolerance (docs/loops.md, "Replay"): over all nights the classifier's loop count (runs of
P(loop) >= 0.5) is between COUNT_RATIO_MIN and COUNT_RATIO_MAX times the definition's, at least
MIN_EVENTS_DETECTED of the definition's 11 episodes are detected, there are at most MAX_FALSE_TOTAL false
detections in all and no night has more than MAX_FALSE_PER_NIGHT. Measured with the shipped v1.0.0 model
(sha256 3ba4f07b...): 21 runs for 11 episodes, 9/11 detected, 6 false detections, at most 3 in a night.
"""
from __future__ import annotations

import logging

import pytest

from appliance.protocol.safety import BreatherConfig
from models.loops.replay import DETECTION_THRESHOLD, replay_night, report_markdown, summarise

COUNT_RATIO_MIN, COUNT_RATIO_MAX = 0.5, 2.0
MIN_EVENTS_DETECTED = 7
MAX_FALSE_TOTAL = 12
MAX_FALSE_PER_NIGHT = 3
DEFINITION_LOOPS_SLEEP_EDF = 9


@pytest.fixture(scope="module")
def replays(shared):
    from appliance.hypnogram import real_hypnograms
    from appliance.loop_model import LoopDetector

    logging.getLogger("appliance.breather").setLevel(logging.WARNING)
    nights = real_hypnograms()
    det = LoopDetector()
    cfg = BreatherConfig(p_loop_threshold=DETECTION_THRESHOLD)
    # Whole-night replay costs ~2x as much; the cut wake cannot hold a loop (see replay_night).
    return [replay_night(n, nights[n], i, detector=det, config=cfg, ticks_per_epoch=1, wake_margin_epochs=120)
            for i, n in enumerate(sorted(nights))]


def test_per_night_report(replays, capsys):
    table = report_markdown(replays)
    with capsys.disabled():
        print("\n" + table)
    assert table.count("\n") == len(replays) + 2


def test_definition_counts_survive_the_replay_cut(replays):
    sc = [r for r in replays if r.name.startswith("SC4")]
    assert sum(r.true_returns for r in sc) == 41
    assert sum(r.true_loops for r in sc) == DEFINITION_LOOPS_SLEEP_EDF


def test_classifier_loop_count_matches_definition_within_tolerance(replays):
    s = summarise({r.name: r.metrics for r in replays})
    model_count = sum(r.detected_loops for r in replays)
    definition_count = sum(r.true_loops for r in replays)
    assert COUNT_RATIO_MIN * definition_count <= model_count <= COUNT_RATIO_MAX * definition_count, \
        (model_count, definition_count)
    assert s["detected"] >= MIN_EVENTS_DETECTED, s
    assert s["false_detections"] <= MAX_FALSE_TOTAL, s
    worst = max(replays, key=lambda r: r.metrics["false_detections"])
    assert worst.metrics["false_detections"] <= MAX_FALSE_PER_NIGHT, worst.name


def test_breather_in_replay_stays_in_envelope(replays):
    cfg = BreatherConfig(p_loop_threshold=DETECTION_THRESHOLD)
    for r in replays:
        assert r.sessions <= cfg.sessions_per_night, r.name
        # A session can only start on an epoch the stager calls REM.
        assert all(s == "REM" for s in r.session_start_stages), (r.name, r.session_start_stages)
        if r.detected_loops == 0:
            assert r.sessions == 0, r.name
    assert sum(r.sessions for r in replays) >= 1
