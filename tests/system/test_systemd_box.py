"""The box where it lives: install-pi.sh and bedtime.service under a real systemd (Debian 12 amd64, nspawn).

A bookworm root filesystem (debootstrap, cached in build/rootfs/amd64) boots under ``systemd-nspawn -b``; a Pi
owner's clone of this checkout is put in /home/pi/bedtime and ``systemd/install-pi.sh`` runs inside exactly as
on a Pi (as root, from the owner's home). The only change after that is the owner's configuration: the hardware
switched to the simulator (``[hardware] simulate = true``) and the broker set ([mqtt]: a real mosquitto on the
host with the project's password + ACL listener, the box logging in as its own id). The unit is never edited.

Run with ``make system-test`` (root; debootstrap, systemd-container). The tests share one booted box and run in
file order; each leaves the service running (or resets it) for the next.
"""
from __future__ import annotations

import hashlib
import json
import re
import shlex
import time
from pathlib import Path

import pytest

from tests.broker import MosquittoBroker, Recorder, make_pki, mosquitto_available
from tests.system.nspawn import Container, build_rootfs, tracked_copy

pytestmark = [pytest.mark.timeout(3600), pytest.mark.system]

UNIT = "bedtime.service"
CONF = "/etc/bedtime/bedtime.toml"
STATE = "/var/lib/bedtime"
BEDTIME = "/opt/bedtime/venv/bin/bedtime"
TIMINGS: dict[str, float] = {}


def _edit_config(box: Container, **replacements: str) -> None:
    """Change lines of the box's bedtime.toml as the owner would with an editor (each must occur once)."""
    path = box.path(CONF)
    text = path.read_text()
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {CONF}"
        text = text.replace(old, new)
    path.write_text(text)


def _set_line(box: Container, key_line_start: str, new_line: str) -> None:
    """Replace the single line starting with ``key_line_start`` (e.g. 'sim_speed =') by ``new_line``."""
    path = box.path(CONF)
    lines = path.read_text().splitlines()
    hits = [i for i, ln in enumerate(lines) if ln.startswith(key_line_start)]
    assert len(hits) == 1, (key_line_start, hits)
    lines[hits[0]] = new_line
    path.write_text("\n".join(lines) + "\n")


def _main_pid(box: Container) -> int:
    return int(box.show(UNIT, "MainPID")["MainPID"])


def _wait_active(box: Container, *, timeout_s: float, not_pid: int = 0) -> int:
    """Wait until the unit is active with a main process other than ``not_pid``; return its PID."""
    out = box.wait_for(f"systemctl show {UNIT} -p ActiveState -p SubState -p MainPID",
                       lambda o: "ActiveState=active" in o and "SubState=running" in o
                       and (m := re.search(r"MainPID=(\d+)", o)) is not None and int(m.group(1)) not in (0, not_pid),
                       timeout_s=timeout_s, what="bedtime.service active (READY=1) with a new main process")
    return int(re.search(r"MainPID=(\d+)", out).group(1))


def _restart_clean(box: Container) -> int:
    """(Re)start the service with its start-rate counter reset; return the main PID."""
    box.run(f"systemctl reset-failed {UNIT} || true; systemctl restart {UNIT}", timeout=120)
    return _wait_active(box, timeout_s=90)


def _journal(box: Container, since: str = "") -> str:
    return box.run(f"journalctl -u {UNIT} --no-pager -o cat {since}", check=False, timeout=60).stdout


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    if not mosquitto_available():
        pytest.skip("mosquitto is not installed")
    b = MosquittoBroker(tmp_path_factory.mktemp("broker"), make_pki(tmp_path_factory.mktemp("pki")))
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def box(tmp_path_factory, broker):
    t0 = time.monotonic()
    rootfs = build_rootfs("amd64")
    TIMINGS["rootfs_s"] = time.monotonic() - t0
    work = tmp_path_factory.mktemp("box-amd64")
    c = Container(rootfs, work)
    t0 = time.monotonic()
    c.boot(timeout_s=180)
    TIMINGS["boot_s"] = time.monotonic() - t0
    try:
        # the Pi owner's clone in their home, plus an untracked file that must not be installed
        c.run("useradd -m -u 1000 pi")
        tracked_copy(c.path("/home/pi/bedtime"))
        (c.path("/home/pi/bedtime") / "notes-untracked.txt").write_text("mine\n")
        c.run("chown -R pi:pi /home/pi/bedtime")
        t0 = time.monotonic()
        r = c.run("cd /home/pi && bedtime/systemd/install-pi.sh", timeout=1800)
        TIMINGS["install_s"] = time.monotonic() - t0
        c.install_log = r.stdout + r.stderr  # type: ignore[attr-defined]
        yield c
    finally:
        c.poweroff(timeout_s=120)
        print(f"\nsystem-test timings: {json.dumps({k: round(v, 1) for k, v in TIMINGS.items()})}")


def test_install_pi_completes_with_a_box_id_of_its_own(box):
    assert "TFLite runtime: ai-edge-litert" in box.install_log, box.install_log[-3000:]
    mid = box.path("/etc/machine-id").read_text().strip()
    cfg = box.path(CONF).read_text()
    assert f'id = "box-{hashlib.sha256(mid.encode()).hexdigest()[:12]}"' in cfg
    assert box.run("systemctl is-enabled bedtime.service").stdout.strip() == "enabled"
    # only tracked files: no .git, no untracked notes
    assert box.path("/opt/bedtime/src/pyproject.toml").is_file()
    assert not box.path("/opt/bedtime/src/.git").exists()
    assert not box.path("/opt/bedtime/src/notes-untracked.txt").exists()
    # lgpio from PyPI (Debian does not package it)
    box.run("/opt/bedtime/venv/bin/python -c 'import importlib.metadata as m; print(m.version(\"lgpio\"))'")


def test_install_pi_runs_again_from_its_installed_copy_and_keeps_config(box):
    before = box.path(CONF).read_text()
    t0 = time.monotonic()
    box.run("cd / && /opt/bedtime/src/systemd/install-pi.sh", timeout=1800)
    TIMINGS["reinstall_s"] = time.monotonic() - t0
    assert box.path("/opt/bedtime/src/systemd/install-pi.sh").is_file()  # its own source survived
    assert box.path("/opt/bedtime/src/appliance/daemon.py").is_file()
    assert box.path(CONF).read_text() == before
    assert not list(box.path("/opt/bedtime").glob("src.*"))  # no staging leftovers


def test_configure_simulator_and_broker(box, broker):
    box_id = re.search(r'^id = "([^"]+)"', box.path(CONF).read_text(), re.M).group(1)
    broker.users[box_id] = "pw-" + box_id
    broker._write_files("")  # noqa: SLF001  (the broker's password file, with this box as a user)
    broker.stop()
    broker.start()
    box.run(f"printf %s {shlex.quote('pw-' + box_id)} > /etc/bedtime/mqtt-password && "
            "chown root:bedtime /etc/bedtime/mqtt-password && chmod 0640 /etc/bedtime/mqtt-password")
    _edit_config(box, **{"simulate = false": "simulate = true"})
    _set_line(box, 'host = "localhost"', f'host = "{broker.host}"')
    _set_line(box, "port = 1883", f"port = {broker.auth_port}")
    _set_line(box, 'username = ""', f'username = "{box_id}"')
    _set_line(box, 'password_file = ""', 'password_file = "/etc/bedtime/mqtt-password"')
    box.run(f"{BEDTIME} config check {CONF}")
    box.box_id = box_id  # type: ignore[attr-defined]


def test_ready_within_timeout_start_and_the_status_says_simulated(box, broker):
    unit_text = box.path("/etc/systemd/system/bedtime.service").read_text()
    timeout_start = float(re.search(r"^TimeoutStartSec=(\d+)$", unit_text, re.M).group(1))
    probe = Recorder(broker.host, broker.auth_port, ["bedtime/v1/+/status"], username="fleet", password="pw-fleet")
    try:
        t0 = time.monotonic()
        box.run(f"systemctl start {UNIT}", timeout=120)  # Type=notify: returns once READY=1 arrived
        TIMINGS["ready_s"] = time.monotonic() - t0
        assert TIMINGS["ready_s"] < timeout_start
        assert box.show(UNIT, "ActiveState")["ActiveState"] == "active"
        assert probe.wait_for(lambda r: any(p["state"] == "recording" for p in r.of("/status")), timeout_s=60)
        st = [p for p in probe.of("/status") if p["state"] == "recording"][-1]
        assert st["simulated"] is True and st["box_id"] == box.box_id
    finally:
        probe.close()


def test_watchdog_keeps_flowing(box):
    def stamp() -> int:
        return int(box.show(UNIT, "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"])

    first = stamp()
    box.wait_for(f"systemctl show {UNIT} -p WatchdogTimestampMonotonic",
                 lambda o: int(o.strip().split("=")[1] or 0) > first, timeout_s=60, what="a fresh WATCHDOG=1")
    assert box.show(UNIT, "WatchdogUSec")["WatchdogUSec"] in ("30s", "30000000")


def test_a_stalled_pipeline_is_killed_by_the_watchdog_and_restarted(box):
    pid = _main_pid(box)
    restarts = int(box.show(UNIT, "NRestarts")["NRestarts"])
    box.run(f"kill -STOP {pid}")  # everything stops, the consumer loop with it: no more WATCHDOG=1
    t0 = time.monotonic()
    # WatchdogSec=30, then SIGABRT (pending on a stopped process), SIGKILL after TimeoutAbortSec (= TimeoutStopSec
    # = 90), RestartSec=5
    new = _wait_active(box, timeout_s=300, not_pid=pid)
    TIMINGS["watchdog_restart_s"] = time.monotonic() - t0
    assert new != pid
    assert int(box.show(UNIT, "NRestarts")["NRestarts"]) > restarts
    assert "Watchdog timeout" in _journal(box)


def test_kill_9_runs_exec_stop_post_and_the_outputs_end_up_off(box):
    pid = _main_pid(box)
    mirror = f"{STATE}/sim-outputs.json"
    # the simulated GPIO lines as a crash in mid-breather would leave them: light and sound on
    box.run(f"/opt/bedtime/venv/bin/python -c 'from appliance.hardware import write_sim_outputs as w; "
            f"from pathlib import Path; w(Path(\"{mirror}\"), light=0.3, sound=0.1)'", user="bedtime")
    assert json.loads(box.path(mirror).read_text())["light"] == 0.3
    box.run(f"kill -9 {pid}")
    box.wait_for(f"cat {mirror}", lambda o: o and json.loads(o)["light"] == 0.0 and json.loads(o)["sound"] == 0.0,
                 timeout_s=60, what="outputs off after kill -9")
    _wait_active(box, timeout_s=120, not_pid=pid)
    log = _journal(box)
    assert "simulated outputs off" in log and "status=9/KILL" in log


def test_exit_75_is_restarted(box):
    # a night at recording.max_night_hours ends with 75 (EX_TEMPFAIL) and the next begins: an hour at 120x
    _set_line(box, "max_night_hours =", "max_night_hours = 1.0")
    _set_line(box, "sim_speed =", "sim_speed = 120.0")
    try:
        cursor = box.run("journalctl -u bedtime.service --show-cursor -n 0 --no-pager", check=False).stdout
        since = ""
        if m := re.search(r"cursor: (\S+)", cursor):
            since = f"--after-cursor={shlex.quote(m.group(1))}"
        pid = _restart_clean(box)
        t0 = time.monotonic()
        box.wait_for(f"journalctl -u {UNIT} --no-pager -o cat {since}",
                     lambda o: "exiting with status 75" in o and "Scheduled restart job" in o, timeout_s=300,
                     what="the night ending with exit 75 and systemd restarting it")
        TIMINGS["simulated_hour_s"] = time.monotonic() - t0
        _wait_active(box, timeout_s=120, not_pid=pid)
        assert box.show(UNIT, "Result")["Result"] == "success"
    finally:
        _set_line(box, "max_night_hours =", "max_night_hours = 14.0")
        _set_line(box, "sim_speed =", "sim_speed = 1.0")
    _restart_clean(box)


def test_five_crashes_hit_the_start_limit_and_the_retained_status_says_offline(box, broker):
    pid = _restart_clean(box)  # start 1 of StartLimitBurst=5
    for _ in range(4):  # crashes 1-4: restarts 2-5
        box.run(f"kill -9 {pid}")
        pid = _wait_active(box, timeout_s=120, not_pid=pid)
    box.run(f"kill -9 {pid}")  # crash 5: a sixth start within StartLimitIntervalSec is refused
    # (Result= keeps the first failure, "signal"; the start limit is in the state and the journal)
    box.wait_for(f"systemctl show {UNIT} -p ActiveState; journalctl -u {UNIT} --no-pager -o cat -n 20",
                 lambda o: "ActiveState=failed" in o and "Start request repeated too quickly" in o, timeout_s=120,
                 what="the start limit")
    # the parent / clinic can tell: the retained status is the last will, offline (and simulated)
    late = Recorder(broker.host, broker.auth_port, ["bedtime/v1/+/status"], username="fleet", password="pw-fleet")
    try:
        assert late.wait_for(lambda r: bool(r.of("/status")), timeout_s=30)
        st = late.of("/status")[-1]
        assert st["state"] == "offline" and st["online"] is False and st["simulated"] is True, st
    finally:
        late.close()
    _restart_clean(box)


def test_the_service_cannot_write_outside_its_state_directory(box):
    pid = _main_pid(box)

    def try_write(path: str) -> str:
        r = box.run(f"nsenter -t {pid} -m -- setpriv --reuid=bedtime --regid=bedtime --init-groups -- "
                    f"sh -c 'echo x > {path} && echo WROTE'", check=False)
        return r.stdout + r.stderr

    assert "WROTE" in try_write(f"{STATE}/probe")  # its own state directory: yes
    for path in ("/etc/bedtime/probe", "/opt/bedtime/probe", "/usr/probe", "/var/probe", "/home/pi/probe", "/probe"):
        out = try_write(path)
        assert "WROTE" not in out and ("Read-only" in out or "Permission denied" in out
                                       or "No such file" in out), (path, out)
    # PrivateTmp: what it writes to /tmp is not the machine's /tmp
    assert "WROTE" in try_write("/tmp/bedtime-probe")
    assert not box.path("/tmp/bedtime-probe").exists()


def test_lgpio_imports_under_the_units_sandbox(box):
    """gpiozero's lgpio factory makes its notification pipe in the working directory: run ``import lgpio`` with
    the installed unit's own [Service] sandbox settings (copied from the file, not restated here)."""
    props = []
    skip = ("Type", "NotifyAccess", "WatchdogSec", "TimeoutStartSec", "TimeoutStopSec", "ExecStart", "ExecStopPost",
            "Restart", "RestartSec", "SuccessExitStatus", "RestartForceExitStatus", "RestartPreventExitStatus")
    section = ""
    for ln in box.path("/etc/systemd/system/bedtime.service").read_text().splitlines():
        ln = ln.strip()
        if ln.startswith("["):
            section = ln
        elif section == "[Service]" and "=" in ln and not ln.startswith("#"):
            k, v = ln.split("=", 1)
            if k not in skip:
                props.append(f"-p {shlex.quote(k + '=' + v.replace('%S', '/var/lib'))}")
    code = "import os, lgpio; print(os.getcwd(), sorted(f for f in os.listdir('.') if f.startswith('.lgd')))"
    cmd = f"systemd-run --wait --pipe --quiet {' '.join(props)} /opt/bedtime/venv/bin/python -c {shlex.quote(code)}"
    r = box.run(cmd, check=False, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(STATE) and ".lgd-nfy" in r.stdout, r.stdout
    # and the regression: the same sandbox from / (the old unit had no WorkingDirectory=) fails
    bad = [p for p in props if "WorkingDirectory" not in p and "LG_WD" not in p]
    r = box.run(f"systemd-run --wait --pipe --quiet {' '.join(bad)} -p WorkingDirectory=/ "
                f"/opt/bedtime/venv/bin/python -c {shlex.quote(code)}", check=False, timeout=120)
    assert r.returncode != 0, r.stdout + r.stderr


def test_stop_start_keeps_the_night_readable(box):
    nights_dir = box.path(f"{STATE}/nights")
    before = {p.name for p in nights_dir.iterdir()} if nights_dir.is_dir() else set()
    _restart_clean(box)
    # a night worth a report: at least one scored 30-s epoch (real time: sim_speed = 1.0)
    def first_epoch_in_a_new_night(listing: str) -> bool:
        return any((box.path(f"{STATE}/nights") / n / "epochs.jsonl").is_file()
                   and (box.path(f"{STATE}/nights") / n / "epochs.jsonl").read_text().strip()
                   for n in set(listing.split()) - before)

    box.wait_for(f"ls {STATE}/nights", first_epoch_in_a_new_night, timeout_s=120, what="the new night's first epoch")
    box.run(f"systemctl stop {UNIT}", timeout=120)
    new = sorted(set(p.name for p in box.path(f"{STATE}/nights").iterdir()) - before)
    assert len(new) == 1, new
    last = box.path(f"{STATE}/nights") / new[0]
    assert (last / "night.edf").is_file()
    rep = json.loads((last / "report.json").read_text())
    assert rep["simulated"] is True and rep["box_id"] == box.box_id
    r = box.run(f"{BEDTIME} report {shlex.quote(last.name)} --config {CONF} --json", user="bedtime")
    assert json.loads(r.stdout)["simulated"] is True
    _restart_clean(box)
    r = box.run(f"{BEDTIME} report {shlex.quote(last.name)} --config {CONF} --json", user="bedtime")
    assert json.loads(r.stdout)["night_start"] == rep["night_start"]


def test_journald_holds_the_nights_log(box):
    log = _journal(box)
    assert "night recorded in" in log
    assert "[hardware] simulate = true" in log
    assert re.search(r"Started bedtime\.service|Started bedtime bedside sleep appliance", log)


def test_a_bad_config_fails_once_not_five_times(box):
    text = box.path(CONF).read_text()
    box_id = box.box_id
    try:
        _edit_config(box, **{f'id = "{box_id}"': 'id = "box-0001"'})
        box.run(f"systemctl reset-failed {UNIT} || true; systemctl restart {UNIT}", check=False, timeout=120)
        box.wait_for(f"systemctl show {UNIT} -p ActiveState", lambda o: "ActiveState=failed" in o, timeout_s=60,
                     what="failed on the example box id")
        assert int(box.show(UNIT, "NRestarts")["NRestarts"]) == 0
        assert "box.id: 'box-0001' is the example's id" in _journal(box)
    finally:
        box.path(CONF).write_text(text)
    _restart_clean(box)


def test_security_exposure_and_memory_cap(box):
    out = box.run(f"systemd-analyze security {UNIT} --no-pager", timeout=120).stdout
    line = next(ln for ln in out.splitlines() if "Overall exposure level" in ln)
    exposure = float(line.split(":", 1)[1].split()[0])
    TIMINGS["exposure"] = exposure
    assert exposure <= 1.5, line
    _restart_clean(box)
    mem = box.show(UNIT, "MemoryMax", "MemoryHigh")
    assert mem["MemoryMax"] not in ("infinity", "") and mem["MemoryHigh"] not in ("infinity", ""), mem
    # the daemon's resident set, for docs/pi.md (the container's cgroup may not account memory itself)
    pid = _main_pid(box)
    rss_kb = int(re.search(r"VmHWM:\s+(\d+)", box.run(f"cat /proc/{pid}/status").stdout).group(1))
    TIMINGS["daemon_peak_rss_mb"] = rss_kb / 1024
