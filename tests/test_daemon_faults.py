"""Fault tests of the daemon: killed mid-night, broker down, DRDY stall, electrode off.

Each runs a short simulated night containing the scripted nightmare loop (tests/daemon_helpers.py), so the
breather *would* act if nothing were wrong; the checks are about what happens when something is.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import edfio
import numpy as np
import pytest

from appliance.daemon import Daemon
from appliance.edfplus import ANNOTATION_STAGE
from appliance.hardware import SIM_OUTPUTS_FILE, ScriptedFault, SimulationSource, open_hardware, read_sim_outputs
from appliance.nightfolder import NIGHT_EDF, list_nights
from tests.daemon_helpers import Subscriber, box_config, pipeline_parts, short_night_with_loop

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _write_config(tmp: Path) -> Path:
    cfg = tmp / "bedtime.toml"
    # a 10-min ring: at 80x real time on a shared 2-core machine the pipeline can be starved for a few seconds,
    # and a replay paced by speed (not back-pressure) drops frames it cannot store, as a real chip would
    cfg.write_text(f'[box]\nid = "box-a"\nstate_dir = "{tmp / "state"}"\n'
                   f'[acquisition]\nring_capacity_frames = 150000\n'
                   f'[recording]\ndir = "{tmp / "nights"}"\nflush_interval_s = 0.5\n'
                   f'[mqtt]\nenabled = false\n[breather]\nconfirm_epochs = 2\n')
    return cfg


def _child(config: str, hypnogram: str, speed: str) -> None:
    """The daemon as a separate process (run by the SIGKILL test), exactly as `bedtime run --simulate` builds
    it, except that missing model files are replaced by the test-only stand-ins."""
    import logging

    from appliance.config import load_config
    from appliance.hypnogram import read_hypnogram

    logging.basicConfig(level=logging.INFO)
    cfg = load_config(config)
    hyp = read_hypnogram(hypnogram)
    parts, used = pipeline_parts(hyp)
    print(f"child: models {used}", file=sys.stderr, flush=True)
    hw = open_hardware(cfg, simulate=True, source=SimulationSource(hypnogram=hyp, seed=5), speed=float(speed))
    Daemon(cfg, hardware=hw, parts=parts).run()


def test_sigkill_mid_night_leaves_outputs_off_and_a_readable_edf(tmp_path):
    hyp, loop = short_night_with_loop()
    hyp_file = tmp_path / "night.txt"
    hyp_file.write_text("# scripted night\n" + "\n".join(str(int(s)) for s in hyp) + "\n")
    cfg_file = _write_config(tmp_path)
    outputs = tmp_path / "state" / SIM_OUTPUTS_FILE
    log = open(tmp_path / "child.log", "w")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-m", "tests.test_daemon_faults", "child", str(cfg_file),
                              str(hyp_file), "80"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240   # the child's start-up alone can take tens of seconds on a busy machine
        on = None
        while time.monotonic() < deadline and child.poll() is None:
            if outputs.exists():
                try:
                    state = read_sim_outputs(outputs)
                except (ValueError, OSError):
                    state = {}
                if state.get("light", 0) > 0 or state.get("sound", 0) > 0:
                    # the tone comes in bursts, so the output seen on a moment ago may be off by now: freeze
                    # the child, look again, and kill it only if an output is still on while it is frozen
                    os.kill(child.pid, signal.SIGSTOP)
                    state = read_sim_outputs(outputs)
                    if state.get("light", 0) > 0 or state.get("sound", 0) > 0:
                        on = state
                        break
                    os.kill(child.pid, signal.SIGCONT)
            time.sleep(0.005)
        assert on is not None, f"the breather never switched an output on:\n{(tmp_path / 'child.log').read_text()}"
        os.kill(child.pid, signal.SIGKILL)  # mid-session, frozen with an output on: the process cannot clean up
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
        log.close()
    assert child.returncode == -signal.SIGKILL
    # a process killed with its outputs on leaves them on: this is why the unit has ExecStopPost
    left = read_sim_outputs(outputs)
    assert left["light"] > 0 or left["sound"] > 0
    off = subprocess.run([sys.executable, "-m", "appliance.cli", "outputs-off", "--simulate", "--config",
                          str(cfg_file)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert off.returncode == 0, off.stderr
    assert read_sim_outputs(outputs)["light"] == 0 and read_sim_outputs(outputs)["sound"] == 0

    # the EDF+ cut by the kill reads as it is
    (night,) = list_nights(tmp_path / "nights")
    edf_path = night / NIGHT_EDF
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edf = edfio.read_edf(edf_path)
    assert edf.num_data_records > loop.start * 30 * 0.9  # flushed every 0.5 s: nearly all signal is there
    stages = [a.text for a in edf.annotations if a.text in ANNOTATION_STAGE]
    assert len(stages) >= loop.start - 2
    # the breather's decisions are in the hash-chained audit log, fsynced per record: nothing lost to the kill
    from appliance.audit import verify

    audit = verify(tmp_path / "state" / "audit.log")
    assert audit.ok, str(audit)
    assert '"cue_started"' in (tmp_path / "state" / "audit.log").read_text()

    # the next start: outputs forced off again (whatever the file said), the cut recording closed properly
    from appliance.hardware import write_sim_outputs

    write_sim_outputs(outputs, light=0.2, sound=0.1)
    from appliance.config import load_config

    cfg = load_config(cfg_file)
    short = np.full(4, 2, dtype=np.int8)
    parts, _ = pipeline_parts(short)
    d = Daemon(cfg, hardware=open_hardware(cfg, simulate=True, source=SimulationSource(hypnogram=short),
                                           speed=float("inf")), parts=parts)
    d.run()
    assert read_sim_outputs(outputs)["light"] == 0 and read_sim_outputs(outputs)["sound"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # recovered: record count in the header, no torn record
        again = edfio.read_edf(edf_path)
    assert again.num_data_records == edf.num_data_records


@pytest.mark.broker
def test_broker_down_for_part_of_the_night_loses_no_alert(tmp_path, mqtt_pki):
    from appliance import __version__
    from appliance.mqtt import BoxLink
    from appliance.protocol.boxconfig import validate_config
    from tests.broker import MosquittoBroker

    # tests/broker.py runs mosquitto with persistence on; with a persistent session the phone keeps its
    # subscription (and the QoS 1 messages queued for it) across the broker's restart
    broker = MosquittoBroker(tmp_path / "mosquitto", mqtt_pki).start()
    hyp, loop = short_night_with_loop()
    cfg = box_config(tmp_path, port=broker.port)
    topics = [f"bedtime/v1/{cfg.box.id}/alert", f"bedtime/v1/{cfg.box.id}/event"]
    phone = Subscriber("127.0.0.1", broker.port, topics, client_id="phone-persistent", persistent=True)
    link = BoxLink(box_id=cfg.box.id, host="127.0.0.1", port=broker.port, outbox_path=tmp_path / "outbox.sqlite",
                   firmware_version=__version__, model_versions={}, config_validator=validate_config,
                   reconnect_min_s=0.1, reconnect_max_s=0.5)
    link.start()
    assert link.wait_connected(30)
    parts, used = pipeline_parts(hyp, link=link)
    seen: dict = {}

    def progress(done_s: float, total_s: float) -> None:
        if "down_at" not in seen and done_s >= (loop.start - 4) * 30:
            broker.stop()
            seen["down_at"] = done_s
        if "down_at" in seen and "up_at" not in seen and daemon.alerts_sent:
            seen.setdefault("alert_while", (link.connected, link.outbox_depth))
            if done_s >= daemon.alerts_sent[0]["time_s"] + 600:
                broker.start()
                seen["up_at"] = done_s

    hw = open_hardware(cfg, simulate=True, source=SimulationSource(hypnogram=hyp, seed=2), speed=float("inf"))
    daemon = Daemon(cfg, hardware=hw, parts=parts, progress=progress)
    try:
        daemon.run()
        assert "up_at" in seen, f"the night never got to the alert ({used}): {[(e['kind'], e.get('epoch_index')) for e in daemon.events]}"
        assert seen["alert_while"][0] is False and seen["alert_while"][1] >= 1  # alert raised while offline
        assert link.wait_delivered(30), f"outbox still holds {link.outbox_depth}"
        alerts = phone.wait_for("alert", len(daemon.alerts_sent), timeout_s=20)
    finally:
        link.stop()
        phone.close()
        broker.stop()
    assert len(daemon.alerts_sent) >= 1 and len(alerts) == len(daemon.alerts_sent)
    assert alerts[0]["kind"] in ("loop_not_resolved", "loop_persists_after_breather")
    events = phone.payloads("event")
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and seqs == list(range(seqs[0], seqs[0] + len(seqs))), "events lost or reordered"
    kinds = [e["kind"] for e in events]
    assert "loop_detected" in kinds and "breather_ended" in kinds


@pytest.mark.broker
def test_drdy_stall_and_electrode_off_are_reported_and_never_trigger_a_breather(tmp_path, broker):
    hyp, loop = short_night_with_loop()
    faults = [ScriptedFault("drdy_stall", start_s=10 * 30 + 7, duration_s=1.0),
              ScriptedFault("electrode_off", start_s=(loop.start - 2) * 30, duration_s=(loop.stop - loop.start + 4) * 30,
                            channel=0)]
    cfg = box_config(tmp_path, port=broker.port)
    clinic = Subscriber("127.0.0.1", broker.port, [f"bedtime/v1/{cfg.box.id}/event"], client_id="clinic-faults")
    parts, used = pipeline_parts(hyp)
    hw = open_hardware(cfg, simulate=True, source=SimulationSource(hypnogram=hyp, seed=4, faults=faults),
                       speed=float("inf"))
    daemon = Daemon(cfg, hardware=hw, parts=parts)
    try:
        result = daemon.run()
        events = clinic.wait_for("event", 1, timeout_s=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(e["kind"] == "night_ended" for e in clinic.payloads("event")):
            time.sleep(0.05)
        events = clinic.payloads("event")
    finally:
        clinic.close()
    kinds = [e["kind"] for e in result.events]
    # the stall: reported as a fault, the chip re-initialised, and the night went on
    stalls = [e for e in result.events if e["kind"] == "fault" and e.get("fault_kind") == "drdy_stall"]
    assert stalls and "chip_reinit" in kinds and "fault_cleared" in kinds
    assert result.counters["drdy_stalls"] >= 1
    # the electrode: reported, its epochs flagged, and no breather however loop-like the stages look
    off = [e for e in result.events if e["kind"] == "electrode_off"]
    assert off and 1 in off[0]["channels"]
    in_loop = daemon.epochs[loop.start:loop.stop]
    assert all(not e.quality.ok and "lead_off" in e.quality.flags for e in in_loop)
    assert "breather_started" not in kinds
    assert daemon.output_trace == [], "an output moved during a fault"
    # reported over MQTT and in the morning report
    mqtt_kinds = [e["kind"] for e in events]
    assert "fault" in mqtt_kinds and "electrode_off" in mqtt_kinds
    rep = json.loads(result.report_json.read_text())
    assert any("DRDY stall" in f["reason"] for f in rep["interventions"]["faults"])
    assert rep["signal_quality"]["flags_epochs"].get("lead_off", 0) >= loop.stop - loop.start


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "child":
    _child(*sys.argv[2:])
