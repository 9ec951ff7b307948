"""The box's identity and its hardware switch, as the systemd unit's `bedtime run --config FILE` sees them.

- a box left with the documented example's id (two boxes would share one set of MQTT topics) refuses to run:
  one line naming box.id, exit 2 (the unit's RestartPreventExitStatus=2: no restart loop), no night folder;
- ``[hardware] simulate = true`` puts the unchanged unit on the chip simulator, and every report says so;
- ``bedtime outputs-off`` (the unit's ExecStopPost) follows the same switch.

Each runs the real CLI in a child process, as systemd would.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from appliance.config import load_config
from appliance.protocol.boxconfig import EXAMPLE_BOX_ID

REPO = Path(__file__).resolve().parent.parent


def _bedtime(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def _config(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "bedtime.toml"
    p.write_text(f'[box]\nstate_dir = "{tmp_path / "state"}"\n{body}')
    return p


def test_run_refuses_the_example_box_id(tmp_path):
    cfg = _config(tmp_path, "[mqtt]\nenabled = false\n")
    assert load_config(cfg).box.id == EXAMPLE_BOX_ID
    r = _bedtime("run", "--config", str(cfg))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "box.id" in lines[0] and "[box] id" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "state").exists()  # nothing recorded, nothing half-made


def test_hardware_simulate_by_config_runs_the_simulator_and_every_report_says_so(tmp_path):
    cfg = _config(tmp_path, 'id = "box-sim1"\n[hardware]\nsimulate = true\nsim_speed = 1000.0\n'
                            '[mqtt]\nenabled = false\n')
    r = _bedtime("run", "--config", str(cfg), "--hours", "0.05")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    reports = list((tmp_path / "state" / "nights").glob("*/report.json"))
    assert len(reports) == 1
    assert json.loads(reports[0].read_text())["simulated"] is True
    assert "simulate = true" in r.stderr  # the journal says so too


def test_outputs_off_follows_the_hardware_switch(tmp_path):
    from appliance.hardware import SIM_OUTPUTS_FILE, read_sim_outputs, write_sim_outputs

    cfg = _config(tmp_path, 'id = "box-sim1"\n[hardware]\nsimulate = true\n')
    mirror = tmp_path / "state" / SIM_OUTPUTS_FILE
    mirror.parent.mkdir(parents=True)
    write_sim_outputs(mirror, light=0.3, sound=0.1)  # a crash left them on
    r = _bedtime("outputs-off", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    levels = read_sim_outputs(mirror)
    assert levels["light"] == 0.0 and levels["sound"] == 0.0, levels
