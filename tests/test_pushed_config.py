"""A pushed config never bricks a box (issue 11, High #3): the real ``bedtime run`` process on a simulated chip, a
real mosquitto, and the clinic pushing retained configs with the console's own ingest.

- The issue's case: ``{"recording": {"dir": "/proc/no-such-dir/nights"}}`` was ``config_applied`` and every later
  start exited 1 (systemd gave up after 5 restarts). A push never sets a folder or file now: the key is ignored
  (and said to be), the rest is kept, and the next start runs.
- A pushed config the daemon cannot start with (a ring buffer a memory-starved box cannot allocate: the process
  runs under RLIMIT_AS) falls back in the same process to the box's own file, reports ``config_rejected``, and the
  same config pushed again is refused by the pre-flight: no restart loop.
- A start that died with a pushed config before the daemon was running (SIGKILL) is not repeated: the next start
  rejects that config, uses the last known good one, and says so.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.broker import Recorder, wait_until

pytestmark = pytest.mark.broker

BOX = "box-a"
ROOT = Path(__file__).resolve().parent.parent
STARTED = "night_started"


def write_config(tmp: Path, port: int) -> Path:
    cfg = tmp / "bedtime.toml"
    cfg.write_text(f'[box]\nid = "{BOX}"\nstate_dir = "{tmp / "state"}"\n'
                   f'[recording]\ndir = "{tmp / "nights"}"\n'
                   f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nkeepalive_s = 5\n')
    return cfg


class BoxProcess:
    """``bedtime run --simulate`` as its own process (as systemd runs it), optionally under an address-space limit
    (a box with little memory)."""

    def __init__(self, cfg: Path, log: Path, *, memory_limit_bytes: int | None = None) -> None:
        def limit() -> None:
            if memory_limit_bytes:
                resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))

        env = dict(os.environ, MALLOC_ARENA_MAX="2", PYTHONPATH=str(ROOT))
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "--config", str(cfg), "--simulate",
                                      "--speed", "60"], cwd=ROOT, env=env, stdout=open(log, "wb"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT, preexec_fn=limit)

    def stop(self, timeout_s: float = 120) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def vm_peak_bytes(self) -> int:
        """The process's peak address-space size so far (VmPeak)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmPeak:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmPeak")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def box(tmp_path, broker):
    from appliance.fleet.ingest import FleetIngest

    cfg = write_config(tmp_path, broker.port)
    events = Recorder(broker.host, broker.port, [f"bedtime/v1/{BOX}/event"])
    clinic = FleetIngest(broker.host, broker.port).start()
    procs: list[BoxProcess] = []

    def start(**kw) -> BoxProcess:
        procs.append(BoxProcess(cfg, tmp_path / f"run-{len(procs)}.log", **kw))
        return procs[-1]

    def kinds() -> list[str]:
        return [e.get("kind") for e in events.of("/event")]

    def wait_started(p: BoxProcess, n: int) -> None:
        ok = events.wait_for(lambda r: [e.get("kind") for e in r.of("/event")].count(STARTED) >= n, 90)
        assert ok and p.proc.poll() is None, p.output()[-3000:]

    yield start, events, clinic, kinds, wait_started, tmp_path
    for p in procs:
        if p.proc.poll() is None:
            p.kill()
    clinic.stop()
    events.close()


def of_kind(events: Recorder, kind: str) -> list[dict]:
    """The box's events of one kind (``events`` is the Recorder, or the Recorder a wait_for predicate gets)."""
    return [e for e in events.of("/event") if e.get("kind") == kind]


def test_a_pushed_recording_dir_no_longer_bricks_the_box(box):
    """The issue's exact push. On the old code the second start exited 1: `[Errno 2] ... /proc/no-such-dir`."""
    start, events, clinic, kinds, wait_started, tmp = box
    first = start()
    wait_started(first, 1)
    clinic.push_config(BOX, {"recording": {"dir": "/proc/no-such-dir/nights"}, "telemetry": {"interval_s": 5.0}},
                       config_version="brick-1")
    assert events.wait_for(lambda r: any(e.get("kind") == "config_applied" for e in r.of("/event")), 30)
    assert first.stop() == 0
    second = start()
    wait_started(second, 2)  # it runs: the pushed config (without the folder) is this start's
    stored = of_kind(events, "config_stored")[-1]
    assert stored["ignored_local_keys"] == ["recording.dir"]
    assert json.loads((tmp / "state" / "clinic-config.json").read_text()) == {"recording": {},
                                                                             "telemetry": {"interval_s": 5.0}}
    assert wait_until(lambda: (tmp / "state" / "clinic-config.good.json").exists(), 30), second.output()[-2000:]
    assert not list(Path("/proc").glob("no-such-dir*"))
    assert len(list((tmp / "nights").iterdir())) == 2
    assert second.stop() == 0


def test_a_config_the_daemon_cannot_start_with_falls_back_by_itself(box):
    """A ring buffer of 4 Mi frames (218 MB) is a valid value, and this host has the memory, so the pre-flight
    passes; the box itself (RLIMIT_AS: what a running daemon takes plus 110 MB) cannot start with it (the ring
    does not fit, or it does and then threads cannot start; which one depends on how many malloc arenas the
    first run's peak counted).
    The start falls back to the box's own file (the same process, started again by itself: systemd sees no exit)
    and runs, reports config_rejected once, and refuses the same config when it is pushed again."""
    from appliance.pushed_config import PushedConfigStore

    start, events, clinic, kinds, wait_started, tmp = box
    first = start()
    wait_started(first, 1)
    big = {"acquisition": {"ring_capacity_frames": 4_194_304}, "telemetry": {"interval_s": 7.0}}
    clinic.push_config(BOX, big, config_version="big-ring-1")
    assert events.wait_for(lambda r: any(e.get("kind") == "config_applied" for e in r.of("/event")), 30)
    # The box's memory: what a running daemon took, plus 110 MB (the 4 Mi-frame ring needs 218 MB more)
    limit = first.vm_peak_bytes() + 110 * 1024 * 1024
    assert first.stop() == 0

    small = start(memory_limit_bytes=limit)
    wait_started(small, 2)
    # the start's own report: which config, why, and what it runs instead
    assert events.wait_for(lambda r: any("fallback" in e for e in of_kind(r, "config_rejected")), 30), kinds()
    report = [e for e in of_kind(events, "config_rejected") if "fallback" in e]
    assert len(report) == 1 and report[0]["fallback"] == "box_file"
    assert report[0]["config_version"] == "big-ring-1"
    assert any(m in report[0]["error"] for m in ("MemoryError", "can't start new thread")), report
    store = PushedConfigStore(tmp / "state")
    assert not store.pushed.exists() and [r["config_version"] for r in store.rejected()] == ["big-ring-1"]
    # the retained config reached this process too: its pre-flight refuses a config that already failed here
    assert events.wait_for(lambda r: any("already failed to start" in str(e.get("error"))
                                         for e in of_kind(r, "config_rejected")), 30)
    assert small.proc.pid == small.proc.pid and small.proc.poll() is None  # the same process, still running
    assert small.stop() == 0
    third = start(memory_limit_bytes=limit)
    wait_started(third, 3)  # no loop: the box's own file, straight away
    assert not store.pushed.exists()
    assert third.stop() == 0


def test_a_start_that_died_with_a_pushed_config_is_not_repeated(box):
    """SIGKILL while a start with a new pushed config is under way (before the daemon runs): the next start
    rejects that config and runs with the last known good one, saying so."""
    from appliance.pushed_config import PushedConfigStore

    start, events, clinic, kinds, wait_started, tmp = box
    store = PushedConfigStore(tmp / "state")
    first = start()
    wait_started(first, 1)
    clinic.push_config(BOX, {"telemetry": {"interval_s": 11.0}}, config_version="good-1")
    assert events.wait_for(lambda r: any(e.get("config_version") == "good-1" and e.get("kind") == "config_applied"
                                         for e in r.of("/event")), 30)
    assert first.stop() == 0
    second = start()
    wait_started(second, 2)
    assert wait_until(lambda: store.good.exists(), 90)  # good-1 staged its 10 min (10 s at 60x): last known good
    clinic.push_config(BOX, {"telemetry": {"interval_s": 13.0}}, config_version="deadly-2")
    assert events.wait_for(lambda r: any(e.get("config_version") == "deadly-2" and e.get("kind") == "config_applied"
                                         for e in r.of("/event")), 30)
    assert second.stop() == 0

    dying = start()
    assert wait_until(lambda: store.trying.exists() or dying.proc.poll() is not None, 60, step_s=0.002)
    dying.kill()  # the start with deadly-2 dies before the daemon runs (power, OOM killer, watchdog...)
    marker = json.loads(store.trying.read_text())
    assert json.loads(store.good.read_text()) == {"telemetry": {"interval_s": 11.0}}, "killed too late"
    assert marker["config_sha256"] != "" and store.pushed.exists()

    after = start()
    wait_started(after, 3)
    assert events.wait_for(lambda r: any("fallback" in e for e in of_kind(r, "config_rejected")), 30)
    rejected = [e for e in of_kind(events, "config_rejected") if "fallback" in e]
    assert len(rejected) == 1 and rejected[0]["config_version"] == "deadly-2"
    assert rejected[0]["fallback"] == "last_known_good"
    assert "before it had staged 10 min of signal" in rejected[0]["error"]
    assert not store.pushed.exists()
    assert json.loads(store.good.read_text()) == {"telemetry": {"interval_s": 11.0}}
    assert after.stop() == 0


_FAILING_START = """
import sys, weakref
import appliance.cli as cli, appliance.daemon as daemon, appliance.pushed_config as pushed, appliance.ring as ring

run, ring_init, rings = daemon.Daemon.run, ring.FrameRing.__init__, weakref.WeakSet()

def keep_track(self, *a, **k):
    ring_init(self, *a, **k)
    rings.add(self)

def run_unless_pushed(self):
    if self.cfg.telemetry.interval_s == 7.0:  # the pushed config's mark: its start fails as on a box out of memory
        raise RuntimeError("can't start new thread")
    return run(self)

def failed(self, choice, reason):  # recording the failure needs memory too, and there is none left
    print(f"rings alive when the failure is recorded: {len(rings)}", file=sys.stderr)
    raise MemoryError()

daemon.Daemon.run, pushed.PushedConfigStore.failed = run_unless_pushed, failed
ring.FrameRing.__init__ = keep_track
sys.exit(cli.main())
"""


def test_a_failed_start_falls_back_even_when_recording_the_failure_fails(tmp_path):
    """A start with a pushed config fails (out of memory), and recording that failure fails too (MemoryError
    while reading the stored config, seen on a loaded CI machine on 2026-12-03: a traceback, and the box down).
    The box must still start again by itself with its own file; the trying marker the failed start left names the
    config, so that start rejects it."""
    from appliance.config import load_config
    from appliance.pushed_config import PushedConfigStore

    cfg_path = tmp_path / "bedtime.toml"
    cfg_path.write_text(f'[box]\nid = "{BOX}"\nstate_dir = "{tmp_path / "state"}"\n'
                        f'[recording]\ndir = "{tmp_path / "nights"}"\n[mqtt]\nenabled = false\n')
    store = PushedConfigStore(tmp_path / "state")
    store.store({"telemetry": {"interval_s": 7.0}}, version="oom-1", source="test")
    assert store.choose(load_config(cfg_path)).source == "pushed"  # what the box's start will take, then fail with
    store.trying.unlink()
    out = subprocess.run([sys.executable, "-c", _FAILING_START, "run", "--config", str(cfg_path), "--simulate",
                          "--hours", "0.02", "--speed", "inf"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    # what the failed start held (its ring: on a box, maybe what did not fit) was given back before recording
    assert "rings alive when the failure is recorded: 0" in out.stderr
    assert "night recorded in" in out.stdout
    assert [r["config_version"] for r in store.rejected()] == ["oom-1"]
    assert "ended before it had staged 10 min of signal" in store.rejected()[0]["reason"]
    assert not store.pushed.exists()
