"""The daemon and its audit log and alerts (issue 11 #11, issue 12, issue 11 lows): the audit head goes into
report.json, the MQTT report and the idle status; a restart after a truncation is detected and reported,
never papered over with a new head; a failing publish_alert or audit write does not lose an alert."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from appliance.audit import head_path, main_verify, verify
from appliance.daemon import Daemon, PipelineParts
from appliance.hardware import SimulationSource, open_hardware
from appliance.nightfolder import REPORT_JSON
from tests.daemon_helpers import box_config
from tests.test_daemon_logic import N2, R, W, ScriptedLoops, ScriptedStager

# A loop in REM, a breather session the sleeper wakes from, the loop going on: one alert, audit records.
STAGES = [N2] * 10 + [R] * 4 + [W] * 2 + [R] * 12 + [N2] * 4
P_LOOP = [0.0] * 11 + [0.9] * 21


def run_night(cfg, *, link=None) -> tuple[Daemon, object]:
    hyp = np.full(len(STAGES), N2, dtype=np.int8)
    hw = open_hardware(cfg, simulate=True, source=SimulationSource(hypnogram=hyp), speed=float("inf"))
    d = Daemon(cfg, hardware=hw, parts=PipelineParts(stager=ScriptedStager(STAGES), loop_detector=ScriptedLoops(P_LOOP),
                                                     link=link))
    return d, d.run()


def _lines(p):
    return p.read_text().splitlines(keepends=True)


def test_report_json_carries_the_audit_head_and_verify_uses_it(tmp_path):
    cfg = box_config(tmp_path, port=None)
    d, r = run_night(cfg)
    log = tmp_path / "state" / "audit.log"
    rep = json.loads(r.report_json.read_text())
    head = rep["audit_head"]
    last = json.loads(_lines(log)[-1])
    assert head["hash"] == last["hash"] and head["seq"] == last["seq"] and head["records"] == last["seq"] + 1
    assert head["first"] == json.loads(_lines(log)[0])["hash"]
    assert main_verify([str(log.parent), "--reports", str(tmp_path / "nights")]) == 0
    # Cut records the report promised and rewrite the head to match: caught by the report's copy.
    log.write_text("".join(_lines(log)[:2]))
    keep = json.loads(_lines(log)[-1])
    head_path(log).write_text(json.dumps({"seq": keep["seq"], "hash": keep["hash"]}))
    assert verify(log).ok
    assert main_verify([str(log.parent), "--reports", str(tmp_path / "nights")]) == 1


@pytest.mark.parametrize("head", ["rewritten to match", "left alone", "deleted"])
def test_a_restart_after_truncation_sets_the_log_aside_and_reports_a_fault(tmp_path, head):
    """Before the fix a restart continued the truncated log and wrote a new head over the evidence."""
    cfg = box_config(tmp_path, port=None)
    run_night(cfg)
    log = tmp_path / "state" / "audit.log"
    cut = "".join(_lines(log)[:3])
    log.write_text(cut)
    keep = json.loads(cut.splitlines()[-1])
    if head == "rewritten to match":
        head_path(log).write_text(json.dumps({"seq": keep["seq"], "hash": keep["hash"]}))
    elif head == "deleted":
        head_path(log).unlink()
    head_before = head_path(log).read_bytes() if head_path(log).exists() else None
    d, r = run_night(cfg)
    faults = [e for e in r.events if e["kind"] == "fault" and e.get("fault_kind") == "audit"]
    assert faults and "audit log broken" in faults[0]["reason"], r.events[:5]
    broken = sorted((tmp_path / "state").glob("audit.broken-*.log"))
    assert len(broken) == 1 and broken[0].read_text() == cut  # kept as found, for the auditor
    if head_before is not None:
        assert head_path(broken[0]).read_bytes() == head_before  # the evidence, not a new head
    assert verify(log).ok and verify(log).records > 0  # a new, intact log for this night
    # The folder verifies as: the new log OK, the old one failing against its night report.
    assert main_verify([str(log.parent), "--reports", str(tmp_path / "nights")]) == 1


def test_an_untouched_log_is_continued_across_restarts(tmp_path):
    cfg = box_config(tmp_path, port=None)
    run_night(cfg)
    n1 = len(_lines(tmp_path / "state" / "audit.log"))
    d, r = run_night(cfg)
    assert not [e for e in r.events if e.get("fault_kind") == "audit"]
    assert len(_lines(tmp_path / "state" / "audit.log")) > n1
    assert main_verify([str(tmp_path / "state"), "--reports", str(tmp_path / "nights")]) == 0


@pytest.mark.broker
def test_the_audit_head_goes_out_in_the_mqtt_report_and_the_idle_status(tmp_path, broker):
    from tests.broker import Recorder

    rec = Recorder(broker.host, broker.port, ["bedtime/v1/box-a/report", "bedtime/v1/box-a/status"], persistent=True)
    cfg = box_config(tmp_path, port=broker.port)
    d, r = run_night(cfg)
    try:
        assert rec.wait_for(lambda x: x.of("/report") and any(p["state"] == "idle" for p in x.of("/status")), 20)
    finally:
        rec.close()
    head = json.loads(r.report_json.read_text())["audit_head"]
    assert rec.of("/report")[-1]["report"]["audit_head"] == head
    idle = [p for p in rec.of("/status") if p["state"] == "idle"][-1]
    assert idle["audit_head"] == head


def test_a_failing_publish_alert_does_not_lose_the_alert(tmp_path):
    """The daemon's direct alert path survives a link that raises (here: a BoxLink whose outbox is already
    closed, as during a shutdown): the alert is recorded, written to events.jsonl, counted as an error and
    kept to be queued again. Before the fix the exception escaped and the night ended in a fault."""
    from appliance.mqtt import BoxLink
    from appliance.outbox import Outbox

    cfg = box_config(tmp_path, port=None)
    link = BoxLink(box_id="box-a", host="127.0.0.1", port=1, outbox_path=tmp_path / "outbox.sqlite",
                   firmware_version="t", model_versions={})
    link.outbox.close()
    d, r = run_night(cfg, link=link)
    assert [a["kind"] for a in d.alerts_sent] == ["loop_persists_after_breather"]
    assert "alert" in [e["kind"] for e in r.events]
    events_file = (r.night_dir / "events.jsonl").read_text()
    assert '"kind": "alert"' in events_file
    assert d.errors["alert_publish"] >= 1 and not [e for e in r.events if e["kind"] == "fault"]
    audit = (tmp_path / "state" / "audit.log").read_text()
    assert '"event":"alert"' in audit
    # The link works again (a new outbox): the kept alert is queued.
    link.outbox = Outbox(tmp_path / "outbox.sqlite")
    d.alerts.retry_unsent()
    rows = link.outbox.peek()
    assert [json.loads(x.payload)["kind"] for x in rows if x.topic.endswith("/alert")] == ["loop_persists_after_breather"]
    link.outbox.close()


@pytest.fixture
def full_small_disk(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_failed_audit_write_does_not_stop_the_escalation_alert(full_small_disk):
    """The breather's escalation: the alert goes first, then the audit records; an audit log on a full disk
    (ENOSPC) is logged and counted, the parent still hears. Before the fix the audit write came first and
    its exception stopped the alert."""
    from appliance.audit import AuditLog
    from appliance.protocol.safety import BreatherConfig
    from tests.test_breather import Rig, ep
    from tests.test_outbox_disk_full import fill

    rig = Rig(BreatherConfig(cue_s=30.0, light_s=60.0))
    rig.b.audit = AuditLog(full_small_disk / "audit.log", fsync=False, clock=lambda: 0.0)
    try:
        rig.b.on_epoch(ep(0, R, p_loop=0.9), now_s=0.0)
        for t in np.arange(0.5, 30.0, 0.5):
            rig.b.tick(t)
        rig.b.on_epoch(ep(1, R, p_loop=0.9), now_s=30.0)
        for t in np.arange(30.0, 60.0, 0.1):
            rig.b.tick(t)
        rig.b.on_epoch(ep(2, R, p_loop=0.9), now_s=60.0)
        for t in np.arange(60.0, 89.5, 0.5):
            rig.b.tick(t)
        fill(full_small_disk)  # the disk fills just before the session ends unresolved
        with pytest.raises(OSError) as ei:
            with open(full_small_disk / "probe", "wb", buffering=0) as f:
                f.write(b"x" * 8192)
        assert ei.value.errno == errno.ENOSPC
        for t in np.arange(89.5, 91.0, 0.5):
            rig.b.tick(t)
        assert len(rig.escalations) == 1 and rig.escalations[0]["session"] == 1
        assert rig.b.audit_errors >= 1
        assert rig.light_pin == 0 and rig.speaker_pin == 0
    finally:
        rig.close()
