"""Replay real hypnograms through the loop classifier and the breather; event metrics against the definition.

Used by the trainer's evaluation (metrics only), ``tests/test_loop_replay.py`` and ``bench/loops.py``.
Pure numpy + the TFLite runtime: no TensorFlow.

Each real night is observed through :func:`models.loops.simulate.simulate_eval_night` (simulated stager
probabilities and arousal features around the true stages), fed epoch by epoch to
:class:`appliance.loop_model.LoopDetector`, and the epochs, with P(loop) set, to a real
:class:`appliance.breather.Breather` on mock pins in simulated time. The truth is the loop definition
(``appliance/loops.py``) applied to the true hypnogram.
"""
from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from appliance.loops import find_loops, find_returns, loop_active, runs_of_true

DETECTION_THRESHOLD = 0.5
"""P(loop) at or above which an epoch counts as a detection in the metrics (= the model card's threshold)."""


def event_metrics(stages: np.ndarray, p: np.ndarray, *, threshold: float = DETECTION_THRESHOLD) -> dict:
    """Compare detections (runs of ``p >= threshold``) with the definition's loop episodes.

    An episode is detected when a detection run overlaps it; the delay is the first detected epoch minus
    the onset, in epochs. A detection run overlapping no episode is a false detection.
    """
    episodes = find_loops(stages)
    truth = loop_active(stages)
    det = np.asarray(p) >= threshold
    delays = []
    for ep in episodes:
        hit = np.flatnonzero(det[ep.onset_epoch:ep.end_epoch + 1])
        if len(hit):
            delays.append(int(hit[0]))
    runs = runs_of_true(det)
    false = sum(1 for a, b in runs if not truth[a:b + 1].any())
    return {"episodes": len(episodes), "detected": len(delays), "delays": delays, "detection_runs": len(runs),
            "false_detections": false, "epoch_tp": int((det & truth).sum()),
            "epoch_fp": int((det & ~truth).sum()), "epoch_fn": int((~det & truth).sum())}


def argmax_rule_probability(probs: np.ndarray) -> np.ndarray:
    """Baseline: the definition applied to the stager's argmax (1.0 where it says a loop is under way)."""
    return loop_active(np.argmax(probs, axis=1)).astype(np.float32)


def summarise(per_night: dict[str, dict]) -> dict:
    """Totals over nights of :func:`event_metrics` results."""
    ep = sum(m["episodes"] for m in per_night.values())
    det = sum(m["detected"] for m in per_night.values())
    delays = [d for m in per_night.values() for d in m["delays"]]
    fd = sum(m["false_detections"] for m in per_night.values())
    tp = sum(m["epoch_tp"] for m in per_night.values())
    fp = sum(m["epoch_fp"] for m in per_night.values())
    fn = sum(m["epoch_fn"] for m in per_night.values())
    n = len(per_night)
    return {
        "nights": n, "episodes": ep, "detected": det,
        "event_sensitivity": round(det / ep, 3) if ep else None,
        "false_detections": fd, "false_detections_per_night": round(fd / n, 3) if n else None,
        "nights_with_false_detection": sum(1 for m in per_night.values() if m["false_detections"]),
        "delay_epochs_median": float(np.median(delays)) if delays else None,
        "delay_epochs_max": int(max(delays)) if delays else None,
        "epoch_precision": round(tp / (tp + fp), 3) if tp + fp else None,
        "epoch_recall": round(tp / (tp + fn), 3) if tp + fn else None,
    }


@dataclass
class NightReplay:
    """One real night through classifier + policy."""

    name: str
    n_epochs: int
    true_returns: int
    true_loops: int
    metrics: dict
    sessions: int
    outcomes: dict
    session_start_stages: list[str] = field(default_factory=list)
    p_loop: np.ndarray | None = None

    @property
    def detected_loops(self) -> int:
        """Loop count according to the classifier: runs of P(loop) >= threshold."""
        return self.metrics["detection_runs"]


def replay_night(name: str, stages: np.ndarray, night_number: int, *, detector=None, config=None,
                 ticks_per_epoch: int = 3, keep_p: bool = False,
                 wake_margin_epochs: int | None = None) -> NightReplay:
    """Replay one real night (see the module docstring).

    Parameters
    ----------
    detector : LoopDetector or None
        Reused across nights (it is reset here); default loads the shipped model.
    config : BreatherConfig or None
        Breather config (default ``BreatherConfig()`` with ``p_loop_threshold`` = DETECTION_THRESHOLD).
    ticks_per_epoch : int
        Breather ticks per 30-s epoch, evenly spaced in simulated time.
    wake_margin_epochs : int or None
        When set, replay only from this many epochs before the first sleep epoch to this many after the
        last (Sleep-EDF recordings carry hours of daytime wake at both ends). The simulated observation is
        still made on the whole night and then cut, so the epochs kept see the same inputs as a full replay;
        loops cannot lie in the cut wake, so the definition's counts do not change.
    """
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    from appliance.audit import AuditLog
    from appliance.breather import Breather
    from appliance.loop_model import LoopDetector
    from appliance.outputs import BedsideLight, Speaker
    from appliance.protocol.safety import BreatherConfig
    from models.loops.simulate import simulate_eval_night

    det = detector or LoopDetector()
    det.reset()
    cfg = config or BreatherConfig(p_loop_threshold=DETECTION_THRESHOLD)
    sim = simulate_eval_night(stages, night_number)
    if wake_margin_epochs is not None:
        asleep = np.flatnonzero(stages > 0)
        if len(asleep):
            a = max(0, int(asleep[0]) - wake_margin_epochs)
            b = min(len(stages), int(asleep[-1]) + 1 + wake_margin_epochs)
            stages = stages[a:b]
            sim = dataclasses.replace(sim, stages=sim.stages[a:b], probs=sim.probs[a:b], arousal=sim.arousal[a:b],
                                      quality_ok=sim.quality_ok[a:b], artefact_fraction=sim.artefact_fraction[a:b])
    factory = MockFactory(pin_class=MockPWMPin)
    p = np.zeros(len(stages), dtype=np.float32)
    start_stages: list[str] = []
    with tempfile.TemporaryDirectory(prefix="loop-replay-") as tmp:
        audit = AuditLog(Path(tmp) / "audit.jsonl", fsync=False, clock=lambda: 0.0)
        light, speaker = BedsideLight(18, pin_factory=factory), Speaker(13, pin_factory=factory)
        b = Breather(light=light, speaker=speaker, button=None, config=cfg, audit=audit, clock=lambda: 0.0)
        for e in sim.epochs():
            p[e.index] = det.update(e)
            e = dataclasses.replace(e, p_loop=float(p[e.index]))
            before = b.sessions
            b.on_epoch(e, now_s=e.end_time_s)
            if b.sessions > before:
                start_stages.append(e.stage.name)
            for k in range(1, ticks_per_epoch + 1):
                b.tick(e.end_time_s + 30.0 * k / (ticks_per_epoch + 1))
        report = b.night_report()
        audit.close()
        light.close()
        speaker.close()
    factory.reset()
    return NightReplay(name=name, n_epochs=len(stages), true_returns=len(find_returns(stages)),
                       true_loops=len(find_loops(stages)), metrics=event_metrics(stages, p),
                       sessions=report["sessions"], outcomes=report["outcomes"],
                       session_start_stages=start_stages, p_loop=p if keep_p else None)


def report_markdown(replays: list[NightReplay]) -> str:
    """A per-night table plus totals, as markdown."""
    lines = ["| night | epochs | returns (def.) | loops (def.) | loop runs (model) | detected | false | "
             "delay (epochs) | breather sessions | outcomes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in replays:
        m = r.metrics
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r.outcomes.items())) or "-"
        lines.append(f"| {r.name} | {r.n_epochs} | {r.true_returns} | {r.true_loops} | {r.detected_loops} | "
                     f"{m['detected']}/{m['episodes']} | {m['false_detections']} | "
                     f"{','.join(map(str, m['delays'])) or '-'} | {r.sessions} | {outcomes} |")
    s = summarise({r.name: r.metrics for r in replays})
    lines.append(f"| **total** | {sum(r.n_epochs for r in replays)} | {sum(r.true_returns for r in replays)} | "
                 f"{sum(r.true_loops for r in replays)} | {sum(r.detected_loops for r in replays)} | "
                 f"{s['detected']}/{s['episodes']} | {s['false_detections']} | median {s['delay_epochs_median']} | "
                 f"{sum(r.sessions for r in replays)} | |")
    return "\n".join(lines)
