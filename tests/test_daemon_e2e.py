"""End to end: a whole simulated night with a scripted nightmare loop through the real daemon, real broker.

Checks the issue's "done when": the loop is detected, the breather stays inside its envelope, the alert reaches
a subscriber on the real mosquitto, the EDF+ file reads back with its annotations, and the report's statistics
match the hypnogram.
"""
from __future__ import annotations

import json
import warnings

import edfio
import numpy as np
import pytest

from appliance.audit import verify as audit_verify
from appliance.daemon import Daemon
from appliance.demo import scripted_night
from appliance.edfplus import ANNOTATION_STAGE
from appliance.hardware import SimulationSource, open_hardware
from appliance.nightfolder import EPOCHS_JSONL
from appliance.protocol import safety
from appliance.protocol.stages import Stage
from appliance.report import sleep_statistics
from appliance.report_load import load_night
from tests.daemon_helpers import Subscriber, box_config, pipeline_parts

pytestmark = [pytest.mark.slow, pytest.mark.broker]


@pytest.fixture(scope="module")
def night(tmp_path_factory, mqtt_pki):
    """Run the night once; the tests below each check one part of what it left behind."""
    from tests.broker import MosquittoBroker

    tmp = tmp_path_factory.mktemp("e2e")
    broker = MosquittoBroker(tmp / "mosquitto", mqtt_pki).start()
    hyp, loop, source_name = scripted_night()
    cfg = box_config(tmp, port=broker.port)
    phone = Subscriber("127.0.0.1", broker.port, [f"bedtime/v1/{cfg.box.id}/alert", f"bedtime/v1/{cfg.box.id}/report"],
                       client_id="phone-e2e")
    parts, models_used = pipeline_parts(hyp)
    hw = open_hardware(cfg, simulate=True, source=SimulationSource(hypnogram=hyp, seed=7), speed=float("inf"))
    daemon = Daemon(cfg, hardware=hw, parts=parts)
    try:
        result = daemon.run()
        alerts = phone.wait_for("alert", len(daemon.alerts_sent) or 1, timeout_s=30)
        reports = phone.wait_for("report", 1, timeout_s=30)
    finally:
        phone.close()
        broker.stop()
    print(f"\n[e2e] {source_name}: {result.epochs} epochs, {result.cpu_s:.1f} s CPU, {result.wall_s:.1f} s wall; "
          f"models: {models_used}")
    return {"hyp": hyp, "loop": loop, "cfg": cfg, "daemon": daemon, "result": result, "alerts": alerts,
            "reports": reports, "models_used": models_used}


def test_whole_night_was_replayed(night):
    r = night["result"]
    assert r.epochs == len(night["hyp"])
    assert r.counters["frames_lost"] == 0 and r.counters["frames"] == len(night["hyp"]) * 30 * 250


def test_loop_detected_inside_the_scripted_loop(night):
    loop = night["loop"]
    detections = [e for e in night["result"].events if e["kind"] == "loop_detected"]
    assert any(loop.start <= e["epoch_index"] < loop.stop for e in detections), detections


def test_breather_ran_inside_its_envelope(night):
    d, loop = night["daemon"], night["loop"]
    cfg = safety.BreatherConfig.from_dict(night["cfg"].breather)
    started = [e for e in night["result"].events if e["kind"] == "breather_started"]
    assert started and loop.start <= started[0]["epoch_index"] < loop.stop
    trace = d.output_trace
    assert trace, "the breather never moved an output"
    lights = np.array([lv for _, lv, _ in trace])
    sounds = np.array([sv for _, _, sv in trace])
    assert lights.max() <= min(cfg.light_brightness, safety.MAX_BRIGHTNESS) + 1e-9
    assert sounds.max() <= min(cfg.cue_volume, safety.MAX_VOLUME) + 1e-9
    for (t0, l0, s0), (t1, l1, s1) in zip(trace, trace[1:]):
        dt = t1 - t0
        assert l1 - l0 <= cfg.light_ramp_per_s * max(dt, 0) + 1e-9, "light rose faster than its ramp"
        assert s1 - s0 <= cfg.volume_ramp_per_s * max(dt, 0) + 1e-9, "sound rose faster than its ramp"
    # never stimulating after an epoch that was N3, W, or had bad signal (the decision is taken on the last
    # epoch completed before the output moved)
    epochs = d.epochs
    for t, lv, sv in trace:
        if lv > 0 or sv > 0:
            decided_on = epochs[max(int(t // 30) - 1, 0)]
            assert decided_on.stage not in (Stage.N3, Stage.W) and decided_on.quality.ok
    assert trace[-1][1:] == (0.0, 0.0), "outputs not off at the end"
    ended = [e for e in night["result"].events if e["kind"] == "breather_ended"]
    assert ended and ended[0]["duration_s"] <= cfg.session_s + 1


def test_alert_reached_a_subscriber_on_the_real_broker(night):
    alerts = night["alerts"]
    assert len(night["daemon"].alerts_sent) >= 1
    assert len(alerts) == len(night["daemon"].alerts_sent)
    a = alerts[0]
    assert a["box_id"] == night["cfg"].box.id and a["severity"] == "warning"
    assert a["title"] and a["message"] and a["kind"] in ("loop_not_resolved", "loop_persists_after_breather")
    loop = night["loop"]
    assert loop.start <= a["epoch_index"] < loop.stop


def test_edf_reads_back_with_annotations(night):
    r = night["result"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a cleanly closed file reads without a single warning
        edf = edfio.read_edf(r.edf_path)
    assert edf.num_signals == 8
    assert edf.duration == pytest.approx(r.epochs * 30, abs=1)
    assert all(s.physical_dimension == "uV" for s in edf.signals)
    anns = edf.annotations
    stages = [ANNOTATION_STAGE[a.text] for a in sorted(anns, key=lambda a: a.onset) if a.text in ANNOTATION_STAGE]
    live = [json.loads(ln)["stage"] for ln in (r.night_dir / EPOCHS_JSONL).read_text().splitlines()]
    assert stages == live
    texts = " ".join(a.text for a in anns)
    for kind in ("loop_detected", "breather_started", "breather_ended", "alert"):
        assert kind in texts
    # the signal itself is microvolt EEG, not zeros
    x = edf.signals[0].data[: 30 * 250 * 20]
    assert 1.0 < float(np.std(x)) < 500.0


def test_report_statistics_match_the_hypnogram(night):
    r = night["result"]
    rep = json.loads(r.report_json.read_text())
    hyp = np.array(rep["hypnogram"], dtype=np.int8)
    assert len(hyp) == r.epochs
    assert rep["statistics"] == json.loads(json.dumps(sleep_statistics(hyp)))
    assert rep["interventions"]["loops_detected"] >= 1 and rep["interventions"]["alerts"] >= 1
    assert r.report_png.stat().st_size > 5000
    # the report rebuilt from disk (as `bedtime report NIGHT` does) says the same
    again = load_night(r.night_dir)
    assert np.array_equal(again.live_hypnogram, [int(e.stage) for e in night["daemon"].epochs])
    assert np.array_equal(again.hypnogram, hyp)  # same look-ahead smoothing from the stored probabilities
    # the stager is a model: its night agrees with the scripted one, not exactly
    agreement = float(np.mean(hyp == night["hyp"]))
    print(f"[e2e] smoothed hypnogram agrees with the scripted one on {100 * agreement:.1f}% of epochs")
    assert agreement > 0.6
    # and it went out on MQTT
    assert night["reports"] and night["reports"][0]["report"]["statistics"] == rep["statistics"]


def test_audit_log_verifies(night):
    rep = audit_verify(night["cfg"].box.state_dir + "/audit.log")
    assert rep.ok, str(rep)
    assert rep.records >= 4
