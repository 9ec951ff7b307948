"""The systemd unit: systemd-analyze verify accepts it, and it carries the settings the appliance relies on."""
from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "bedtime.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def _unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # keys are case-sensitive
    cp.read_string(UNIT.read_text())
    return cp


def test_unit_has_the_required_settings():
    s = _unit()["Service"]
    assert s["Type"] == "notify"
    assert int(s["WatchdogSec"]) > 0
    assert s["Restart"] == "on-failure"
    assert s["ProtectSystem"] == "strict" and s["NoNewPrivileges"] == "yes" and s["PrivateTmp"] == "yes"
    assert s["StateDirectory"] == "bedtime"
    assert set(s["SupplementaryGroups"].split()) == {"spi", "gpio"}
    assert s["ExecStopPost"].split()[1] == "outputs-off"
    assert s["ExecStart"].split()[1] == "run"


def test_cli_knows_the_commands_the_unit_calls():
    from appliance.cli import build_parser

    p = build_parser()
    s = _unit()["Service"]
    for key in ("ExecStart", "ExecStopPost"):
        argv = s[key].split()[1:]
        p.parse_args(argv)  # raises SystemExit on an unknown command or option


@pytest.mark.skipif(not Path(SYSTEMD_ANALYZE).exists(), reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path):
    # verify checks that ExecStart binaries exist; point them at a stand-in executable of the same name
    exe = tmp_path / "bin" / "bedtime"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    unit = tmp_path / "bedtime.service"
    unit.write_text(UNIT.read_text().replace("/opt/bedtime/venv/bin/bedtime", str(exe)))
    r = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines()
                if "bedtime.service" in ln and "not running as" not in ln.lower()]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
