"""The clinic side against a real mosquitto: the fleet ingest (shared subscriptions, fleet view) and the
``bedtime-fleet`` command line (list, alerts, push-config, report)."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from appliance.epoch import Epoch
from appliance.fleet import cli
from appliance.fleet.ingest import FleetIngest
from tests.broker import Recorder, make_box, wait_until

pytestmark = pytest.mark.broker


def test_shared_subscription_splits_alerts_between_consoles_and_an_observer_sees_all(broker, tmp_path):
    got = {"c1": [], "c2": [], "obs": []}
    mk = lambda name, group: FleetIngest(broker.host, broker.port, group=group,  # noqa: E731
                                         on_alert=lambda b, p: got[name].append(p["seq"])).start()
    c1, c2, obs = mk("c1", "clinic"), mk("c2", "clinic"), mk("obs", None)
    link = make_box(tmp_path, "box-a", broker.host, broker.port)
    link.start()
    try:
        assert link.wait_connected(30)
        link.publish_status("recording")
        for i in range(40):
            link.publish_alert(title="Loop", message=f"#{i}", severity="info")
        assert link.wait_delivered(30)
        assert wait_until(lambda: len(got["c1"]) + len(got["c2"]) == 40 and len(got["obs"]) == 40, 30), got
        # status is not shared: every console has the whole fleet list
        assert wait_until(lambda: all(c.box("box-a") and c.box("box-a").state == "recording" for c in (c1, c2)), 30)
    finally:
        link.stop()
        for c in (c1, c2, obs):
            c.stop()
    assert got["c1"] and got["c2"], "mosquitto should spread a shared subscription over both members"
    assert sorted(got["c1"] + got["c2"]) == list(range(1, 41))  # each alert to exactly one console
    assert got["obs"] == list(range(1, 41))


def test_fleet_view_follows_status_telemetry_stages_and_the_last_will(broker, tmp_path):
    statuses = []
    ingest = FleetIngest(broker.host, broker.port, group=None, on_status=lambda b, p: statuses.append(p["state"])).start()
    link = make_box(tmp_path, "box-a", broker.host, broker.port)
    link.start()
    try:
        assert link.wait_connected(30)
        link.publish_status("recording")
        link.publish_telemetry(signal_quality_percent=91.0, impedance_kohm=[4.1, 5.0], cpu_percent=3.2,
                               temperature_c=48.5, frames_dropped=0, frames_corrupt=1)
        link.publish_stage(Epoch(index=3, start_sample=0, end_time_s=120.0,
                                 stage_probs=np.array([0.1, 0.1, 0.7, 0.1, 0.0]), p_loop=0.05))
        assert wait_until(lambda: (v := ingest.box("box-a")) is not None and v.last_stage == "N2"
                          and v.signal_quality_percent == 91.0 and v.state == "recording", 5)
        v = ingest.box("box-a")
        assert v.online and v.firmware_version == "0.1.0" and v.model_versions == {"stager": "s1", "loops": "l1"}
        assert v.telemetry["temperature_c"] == 48.5 and v.last_seen_utc is not None
    finally:
        link.stop()
    assert wait_until(lambda: ingest.box("box-a").state == "offline", 30)
    assert not ingest.box("box-a").online and statuses[-1] == "offline"
    ingest.stop()


@pytest.fixture
def fleet_box(broker, tmp_path):
    from appliance.protocol.boxconfig import validate_config

    applied = []
    link = make_box(tmp_path, "ward3-07", broker.host, broker.port, config_validator=validate_config)
    link.on_config(applied.append)
    night = {"night_start": "2026-11-22T20:41:00Z", "total_sleep_time_min": 452.5, "loops_detected": 1}
    link.on_command("report", lambda args: {"night": args.get("night", "latest"), "report": night})
    link.start()
    assert link.wait_connected(30)
    link.publish_status("recording")
    link.publish_telemetry(signal_quality_percent=88.0)
    # the commands read retained messages for a fixed --wait after subscribing: have them at the broker first
    probe = Recorder(broker.host, broker.port, ["bedtime/v1/ward3-07/status", "bedtime/v1/ward3-07/telemetry"])
    assert probe.wait_for(lambda r: any(p["state"] == "recording" for p in r.of("/status"))
                          and any(p.get("signal_quality_percent") == 88.0 for p in r.of("/telemetry")), timeout_s=30)
    probe.close()
    yield link, applied, night
    link.stop()


def base_args(broker) -> list[str]:
    # --wait: how long a command collects retained messages after subscribing; 0.3 s was outlasted on a busy
    # machine (an empty fleet list)
    return ["--host", broker.host, "--port", str(broker.port), "--wait", "2"]


def test_cli_lists_boxes(fleet_box, broker, capsys):
    assert cli.main(base_args(broker) + ["list"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("ward3-07"))
    assert "recording" in line and "0.1.0" in line and "88%" in line and "stager s1" in line
    assert cli.main(base_args(broker) + ["list", "--json"]) == 0
    (box,) = json.loads(capsys.readouterr().out)
    assert box["box_id"] == "ward3-07" and box["online"] and box["signal_quality_percent"] == 88.0


def test_cli_push_config_validates_before_publishing_and_reports_the_ack(fleet_box, broker, tmp_path, capsys):
    link, applied, _ = fleet_box
    bad = tmp_path / "loud.toml"
    bad.write_text("[breather]\ncue_volume = 0.9\n")
    assert cli.main(base_args(broker) + ["push-config", str(bad), "--box", "ward3-07"]) == 2
    assert "cue_volume" in capsys.readouterr().err
    time.sleep(0.2)
    assert applied == [] and link.config_version is None  # nothing was published
    good = tmp_path / "night.toml"
    good.write_text('[box]\nid = "ward3-07"\nname = "Room 7"\n[breather]\ncue_volume = 0.1\n')
    assert cli.main(base_args(broker) + ["push-config", str(good), "--box", "ward3-*", "--version", "c-42",
                                         "--ack-timeout", "30"]) == 0
    out = capsys.readouterr().out
    assert "ward3-07: applied" in out
    assert len(applied) == 1 and applied[0].breather["cue_volume"] == 0.1 and link.config_version == "c-42"


def test_cli_requests_and_saves_a_night_report(fleet_box, broker, tmp_path, capsys):
    _, _, night = fleet_box
    out_dir = tmp_path / "reports"
    assert cli.main(base_args(broker) + ["report", "--box", "ward3-07", "--night", "2026-11-22",
                                         "--out", str(out_dir), "--timeout", "30"]) == 0
    saved = json.loads((out_dir / "ward3-07-2026-11-22.json").read_text())
    assert saved == {"night": "2026-11-22", "report": night}
    # The report the box published at the end of the night is retained: saved even with the box gone.
    link, _, _ = fleet_box
    link.publish_report(night)
    assert link.wait_delivered(30)
    link.stop()
    assert cli.main(base_args(broker) + ["report", "--box", "ward3-07", "--retained", "--out", str(out_dir)]) == 0
    assert json.loads((out_dir / "ward3-07-2026-11-22.json").read_text()) == night
    # The console validates arguments with the box's command schema before sending anything.
    assert cli.main(base_args(broker) + ["report", "--box", "ward3-07", "--night", "someday"]) == 2
    assert "someday" in capsys.readouterr().err


def test_cli_follows_alerts_live(fleet_box, broker, capsys, monkeypatch):
    link, _, _ = fleet_box
    rc = {}
    # Alerts are not retained: publish only once the command's observer has subscribed (its start() returns
    # then), not after a fixed sleep, which a busy machine outlasts (the alerts then go by unseen).
    subscribed = threading.Event()
    real_start = FleetIngest.start

    def start_and_say_so(self, **kw):
        started = real_start(self, **kw)
        subscribed.set()
        return started

    monkeypatch.setattr(FleetIngest, "start", start_and_say_so)
    t = threading.Thread(target=lambda: rc.setdefault("rc", cli.main(
        base_args(broker) + ["alerts", "--count", "2", "--timeout", "60"])))
    t.start()
    assert subscribed.wait(30), "the alerts command never subscribed"
    link.publish_alert(title="Nightmare loop", message="Loop did not settle.", severity="critical")
    link.publish_alert(title="Signal", message="Electrode off.", severity="warning")
    t.join(90)
    assert not t.is_alive()
    assert rc.get("rc") == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "[CRITICAL]" in out[0] and "Nightmare loop: Loop did not settle." in out[0]
    assert "ward3-07" in out[1]
