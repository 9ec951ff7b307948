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


def _values(key: str) -> list[str]:
    """Every value of a key that may repeat (DeviceAllow=, Environment=...), in order."""
    return [ln.split("=", 1)[1].strip() for ln in UNIT.read_text().splitlines() if ln.startswith(f"{key}=")]


def test_lgpio_gets_a_writable_working_directory():
    # lgpio (gpiozero's pin factory on Bookworm) makes its notification pipe in the working directory or
    # $LG_WD; under ProtectSystem=strict only the state directory is writable (else: BadPinFactory, restart loop)
    s = _unit()["Service"]
    state = f"%S/{s['StateDirectory']}"
    assert s["WorkingDirectory"] == state
    assert f"LG_WD={state}" in _values("Environment")


def test_matplotlib_keeps_its_font_cache_in_the_state_directory():
    # the morning PNG's drawing child: a cache directory matplotlib cannot write is a font cache rebuilt every night
    s = _unit()["Service"]
    assert f"MPLCONFIGDIR=%S/{s['StateDirectory']}/matplotlib" in _values("Environment")


def test_devices_of_a_pi4_and_a_pi5_are_allowed():
    allowed = {v.split()[0]: v.split()[1] for v in _values("DeviceAllow")}
    assert _unit()["Service"]["DevicePolicy"] == "closed"
    # spidev registers as "spi", the GPIO character devices as "gpiochip"; gpiomem (Pi 4) and gpiomem0..4 (Pi 5)
    for dev in ("char-spi", "char-gpiochip", "/dev/gpiomem", *(f"/dev/gpiomem{i}" for i in range(5))):
        assert allowed.get(dev) == "rw", dev


def test_memory_is_capped_and_a_bad_config_does_not_loop():
    s = _unit()["Service"]
    assert s.get("MemoryMax") and s["MemoryMax"] != "infinity"
    assert "2" in s["RestartPreventExitStatus"].split()  # exit 2 = bad configuration: restarting cannot help


@pytest.mark.skipif(not Path(SYSTEMD_ANALYZE).exists(), reason="systemd-analyze not installed")
def test_security_exposure_at_most_1_5(tmp_path):
    unit = tmp_path / "bedtime.service"
    unit.write_text(UNIT.read_text())
    r = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(unit)], capture_output=True,
                       text=True, timeout=120)
    line = next((ln for ln in r.stdout.splitlines() if "Overall exposure level" in ln), "")
    assert line, r.stdout + r.stderr
    exposure = float(line.split(":", 1)[1].split()[0])
    assert exposure <= 1.5, line


INSTALLER = UNIT.parent / "install-pi.sh"


def test_installer_refuses_a_python_without_a_runtime_before_touching_anything(tmp_path):
    # A Pi OS on Python 3.13 (no ai-edge-litert 1.4.0 wheel for aarch64, no tflite-runtime): stand-ins for
    # python3 and uname on PATH play that machine; apt-get and pip stand-ins record whether they were reached.
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    called = tmp_path / "called"
    stubs = {"python3": "echo 3.13", "uname": "echo aarch64",
             "apt-get": f"echo apt-get >> {called}; exit 99", "useradd": f"echo useradd >> {called}; exit 99",
             "groupadd": f"echo groupadd >> {called}; exit 99", "id": "echo 0"}
    for name, body in stubs.items():
        (bin_ / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / name).chmod(0o755)
    env = {"PATH": f"{bin_}:/usr/bin:/bin"}
    r = subprocess.run(["/bin/sh", str(INSTALLER)], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Python 3.13" in r.stderr and "Nothing was changed" in r.stderr, r.stderr
    assert not called.exists(), called.read_text()


def test_installer_installs_tracked_files_only_and_never_removes_its_own_source():
    text = INSTALLER.read_text()
    assert "ls-files" in text and "cp -a" not in text
    assert 'rm -rf "$PREFIX/src"\n' not in text  # the old re-run-from-/opt/bedtime/src data loss


def test_a_pushed_configs_probation_outlasts_the_start_limit_interval():
    # a pushed config that fails after its probation restarts the daemon at most once per probation: never the
    # unit's StartLimitBurst starts within StartLimitIntervalSec, so no config can run the box into the limit
    from appliance.pushed_config import PROBATION_S

    unit = _unit()["Unit"]
    assert int(unit["StartLimitBurst"]) > 1 and PROBATION_S >= int(unit["StartLimitIntervalSec"])
