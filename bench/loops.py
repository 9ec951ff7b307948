"""Loop classifier and breather: model size, per-epoch inference time, policy cost, and the real-night replay.

Times are medians in this process; the baseline is the loop *definition* itself (``appliance.loops``)
applied to the same 96-epoch window's top stages, i.e. what a rule-only detector would cost.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from appliance.loop_model import DEFAULT_MODEL_PATH, WINDOW_EPOCHS, LoopDetector
from appliance.loops import loop_active
from appliance.tflite import load_model_card

SIZE_GOAL_BYTES = 50_000
LATENCY_GOAL_MS = 1.0


def _median_s(fn, n: int) -> float:
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return float(np.median(t))


def _epochs(n: int):
    from appliance.protocol.stages import Stage
    from models.loops.simulate import simulate_night

    rng = np.random.default_rng(0)
    stages = np.resize(np.repeat([Stage.N2, Stage.REM, Stage.W, Stage.REM, Stage.N3], 8), n).astype(np.int8)
    return simulate_night(stages, rng).epochs()


def _breather_cost_s(epochs, ticks_per_epoch: int = 300) -> float:
    """Seconds of CPU per epoch for the policy: one on_epoch + 10 Hz ticks for 30 s, on mock pins."""
    import dataclasses
    import tempfile
    from pathlib import Path

    from gpiozero.pins.mock import MockFactory, MockPWMPin

    from appliance.audit import AuditLog
    from appliance.breather import Breather
    from appliance.outputs import BedsideLight, Speaker
    from appliance.protocol.safety import BreatherConfig

    f = MockFactory(pin_class=MockPWMPin)
    with tempfile.TemporaryDirectory() as tmp:
        audit = AuditLog(Path(tmp) / "a.jsonl", fsync=False)
        b = Breather(light=BedsideLight(18, pin_factory=f), speaker=Speaker(13, pin_factory=f), button=None,
                     config=BreatherConfig(), audit=audit, clock=lambda: 0.0)
        t0 = time.process_time()
        for e in epochs:
            b.on_epoch(dataclasses.replace(e, p_loop=0.9), now_s=e.end_time_s)
            for k in range(ticks_per_epoch):
                b.tick(e.end_time_s + 30.0 * k / ticks_per_epoch)
        cost = (time.process_time() - t0) / len(epochs)
        audit.close()
    f.reset()
    return cost


def run(*, quick: bool = False) -> str:
    logging.getLogger("appliance.breather").setLevel(logging.WARNING)
    card = load_model_card(DEFAULT_MODEL_PATH.with_name("model_card.json"))
    size = DEFAULT_MODEL_PATH.stat().st_size
    det = LoopDetector()
    epochs = _epochs(200)
    for e in epochs[:WINDOW_EPOCHS]:
        det.update(e)
    it = iter(epochs[WINDOW_EPOCHS:] * 50)
    n = 300 if quick else 3000
    model_s = _median_s(lambda: det.update(next(it)), n)
    stages = np.array([int(e.stage) for e in epochs[-WINDOW_EPOCHS:]])
    rule_s = _median_s(lambda: loop_active(stages), n)
    policy_s = _breather_cost_s(epochs[:20 if quick else 120])

    out = ["## Loops and breather",
           "| measure | value | goal |", "|---|---|---|",
           f"| loop model size | {size} bytes ({size / 1000:.1f} KB) | < {SIZE_GOAL_BYTES / 1000:.0f} KB |",
           f"| P(loop) per epoch (`LoopDetector.update`, median, {det.model.runtime}) | {model_s * 1e3:.3f} ms | "
           f"< {LATENCY_GOAL_MS:.0f} ms |",
           f"| baseline: the loop rule on the same window (median) | {rule_s * 1e3:.3f} ms | |",
           f"| ratio model / rule | {model_s / rule_s:.1f}x | |",
           f"| breather CPU per epoch (on_epoch + 300 ticks at 10 Hz, mock pins) | {policy_s * 1e3:.2f} ms | |",
           ""]
    ho = card["evaluation"]["held_out"]
    base = card["evaluation"]["baseline_rule_on_stager_argmax"]
    out += [f"Held-out metrics of model v{card['version']} (from its card; {card['evaluation']['protocol']}): "
            f"events detected {ho['detected']}/{ho['episodes']} (sensitivity {ho['event_sensitivity']}), "
            f"{ho['false_detections_per_night']} false detections per night, detection delay median "
            f"{ho['delay_epochs_median']} epochs (max {ho['delay_epochs_max']}). The loop rule applied to the "
            f"simulated stager's top stage instead: {base['detected']}/{base['episodes']} detected but "
            f"{base['false_detections_per_night']} false detections per night."]
    hc = card["evaluation"].get("held_out_real_chain")
    bc = card["evaluation"].get("baseline_rule_on_real_chain_argmax")
    if hc and bc:
        out[-1] += (f" Fed by the box's own DSP and stager on synthetic EEG (held out): {hc['detected']}/{hc['episodes']} "
                    f"detected, {hc['false_detections_per_night']} false per night, median delay "
                    f"{hc['delay_epochs_median']} epochs; the rule on that stager's top stage: {bc['detected']}/"
                    f"{bc['episodes']}, {bc['false_detections_per_night']} false per night (the stager is nearly "
                    "right on synthetic EEG).")
    out[-1] += (" No real nightmare is labelled in this data (healthy nights; the label is the operational "
                "definition).")
    out.append("")

    from appliance.hypnogram import real_hypnograms
    from models.loops.replay import replay_night, report_markdown, summarise

    nights = real_hypnograms()
    if not nights:
        out.append("_Replay skipped: ../shared is absent._")
        return "\n".join(out)
    names = sorted(nights)
    if quick:
        names = names[:6]
    t0 = time.perf_counter()
    reps = [replay_night(n, nights[n], sorted(nights).index(n), detector=det, ticks_per_epoch=3) for n in names]
    dt = time.perf_counter() - t0
    s = summarise({r.name: r.metrics for r in reps})
    out += [f"Replay of {len(reps)} real night(s), whole recordings, shipped model (training nights included), "
            f"simulated stager output, breather with the default config on mock pins, 3 ticks per epoch "
            f"({dt:.0f} s): {s['detected']}/{s['episodes']} episodes detected, {s['false_detections']} false "
            f"detections, {sum(r.sessions for r in reps)} breather sessions.", "",
            report_markdown(reps)]
    return "\n".join(out)
