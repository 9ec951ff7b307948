"""When the acquisition thread stops for good (an unexpected exception: out of memory, a driver bug), no frame
will come any more. The daemon ends the night there (outputs off, EDF+ and report closed), exits with status 70
so that systemd starts it again, and a pushed config that never got the night staging is not kept.

Before 2026-12-03 the pipeline waited for frames for ever: the box sat silent all night after one fault event
(a replay hung), and a pushed config that let the chip start but killed the acquisition at its first epoch
(seen under ``RLIMIT_AS`` in tests/test_pushed_config.py) had already become the last known good one.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from appliance.ads1299_frame import STATUS_SYNC, encode_frames, uv_per_count
from appliance.daemon import Daemon, PipelineParts
from appliance.hardware import HardwareEdge, mock_pin_factory
from appliance.nightfolder import REPORT_JSON
from appliance.protocol.stages import Stage
from appliance.ring import FrameRing
from tests.daemon_helpers import box_config
from tests.test_daemon_logic import ScriptedLoops, ScriptedStager

ROOT = Path(__file__).resolve().parent.parent
EPOCH_FRAMES = 30 * 250


class _DyingAcquisition:
    """Feeds ``epochs`` epochs of a 10-Hz sine into the ring, then its thread ends with ``error``."""

    def __init__(self, ring: FrameRing, *, epochs: int, error: BaseException) -> None:
        self.ring, self.n, self.error = ring, epochs * EPOCH_FRAMES, error
        self.counters: dict = {}
        self.exception: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        def run() -> None:
            sent = 0
            while sent < self.n:
                while self.ring.capacity - len(self.ring) < 500:
                    threading.Event().wait(0.001)
                k = min(500, self.n - sent)
                t = np.arange(sent, sent + k) / 250.0
                code = (np.sin(2 * np.pi * 10 * t) * 20 / uv_per_count(24)).astype(np.int32)
                self.ring.push_raw(encode_frames(np.full(k, STATUS_SYNC), np.repeat(code[:, None], 8, 1)).tobytes(), 0)
                sent += k
            self.exception = self.error

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.join(5)

    def poll_events(self) -> list:
        return []

    def frames_accounted(self, frames_seen: int) -> bool:
        return False  # like a real chip: the night never runs out of frames by itself

    def failure(self) -> BaseException | None:
        return self.exception


def _night(tmp_path: Path, *, epochs: int, proven_after_s: float = 0.0) -> tuple[Daemon, threading.Thread, list, dict]:
    cfg = box_config(tmp_path, port=None)
    ring = FrameRing(20_000, 8)
    hw = HardwareEdge(ring=ring, acquisition=_DyingAcquisition(ring, epochs=epochs, error=MemoryError("no room")),
                      pin_factory=mock_pin_factory(), sample_rate_sps=250, n_channels=8, gain=24, simulated=True,
                      total_signal_s=None, poll_interval_s=0.001)
    running: list = []
    d = Daemon(cfg, hardware=hw, parts=PipelineParts(stager=ScriptedStager([Stage.N2] * 10),
                                                      loop_detector=ScriptedLoops([0.0])),
               on_running=lambda: running.append(len(d.epochs)), proven_after_s=proven_after_s)
    out: dict = {}
    th = threading.Thread(target=lambda: out.setdefault("result", d.run()), daemon=True)
    th.start()
    th.join(120)
    return d, th, running, out


def test_the_night_ends_when_the_acquisition_stops(tmp_path):
    d, th, running, out = _night(tmp_path, epochs=3)
    if th.is_alive():
        d.stop()
        th.join(30)
        raise AssertionError("the daemon kept waiting for frames after the acquisition thread had stopped")
    r = out["result"]
    assert d.acquisition_stopped == "MemoryError: no room"
    assert r.epochs == 3 and running == [1]  # the night was staging: on_running at its first epoch
    assert r.report_json is not None and r.report_json.name == REPORT_JSON and r.report_json.exists()
    assert not d.output_trace or d.output_trace[-1][1:] == (0.0, 0.0)  # light and sound left off


def test_on_running_waits_for_the_probation(tmp_path):
    # a pushed config's probation (appliance.pushed_config.PROBATION_S) in small: 60 s of signal, two epochs
    d, th, running, _ = _night(tmp_path, epochs=3, proven_after_s=60.0)
    assert not th.is_alive() and d.proven and running == [2]
    d, th, running, _ = _night(tmp_path / "b", epochs=3, proven_after_s=120.0)
    assert not th.is_alive() and not d.proven and running == []


def test_a_night_that_never_staged_is_not_proven(tmp_path):
    d, th, running, out = _night(tmp_path, epochs=0)
    assert not th.is_alive(), "the daemon kept waiting for frames after the acquisition thread had stopped"
    assert d.acquisition_stopped and not d.proven and running == []


_DYING_ACQUISITION = """
import sys
import appliance.acquisition as acquisition, appliance.cli as cli, appliance.daemon as daemon

die, burst, push, run = [None], acquisition.Acquisition._run_burst, acquisition.Acquisition._push_block, daemon.Daemon.run

def burst_or_die(self):
    if die[0] == "at once":  # as the acquisition thread out of memory at its first epoch
        raise MemoryError("no room for the first epoch")
    return burst(self)

def push_or_die(self, data, edges, n):
    if die[0] == "later" and self.counters.frames_read > 3 * 7500:  # three epochs in, well within the probation
        raise MemoryError("no room after three epochs")
    return push(self, data, edges, n)

def run_marked(self):  # the marks of the configs the acquisition dies with
    die[0] = {7.0: "at once", 8.0: "later"}.get(self.cfg.telemetry.interval_s)
    return run(self)

acquisition.Acquisition._run_burst, acquisition.Acquisition._push_block = burst_or_die, push_or_die
daemon.Daemon.run = run_marked
sys.exit(cli.main())
"""


def _bedtime_run(cfg_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _DYING_ACQUISITION, "run", "--config", str(cfg_path), "--simulate",
                           "--hours", "0.05", "--speed", "inf"], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)


def _config(tmp_path: Path, *, interval_s: float | None = None) -> Path:
    cfg = tmp_path / "bedtime.toml"
    cfg.write_text(f'[box]\nid = "box-a"\nstate_dir = "{tmp_path / "state"}"\n'
                   f'[recording]\ndir = "{tmp_path / "nights"}"\n[mqtt]\nenabled = false\n'
                   + (f"[telemetry]\ninterval_s = {interval_s}\n" if interval_s else ""))
    return cfg


def test_bedtime_run_exits_70_with_one_line_when_the_acquisition_stops(tmp_path):
    out = _bedtime_run(_config(tmp_path, interval_s=7.0))  # the box's own file: nothing to fall back to
    assert out.returncode == 70, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr.split("acquisition thread died")[-1]  # the thread's own log aside
    said = [line for line in out.stderr.splitlines() if line.startswith("bedtime: ")]
    assert said == ["bedtime: the acquisition stopped (MemoryError: no room for the first epoch); the night was "
                    "closed, exiting with status 70 so that the service starts again"]
    assert "night recorded in" in out.stdout


@pytest.mark.parametrize("interval_s, why", [(7.0, "no room for the first epoch"), (8.0, "no room after three epochs")])
def test_a_pushed_config_the_acquisition_dies_with_is_rejected_and_the_box_starts_again(tmp_path, interval_s, why):
    # at its first epoch, or three epochs into its probation: either way it never becomes the last known good one
    from appliance.config import load_config
    from appliance.pushed_config import PushedConfigStore

    cfg_path = _config(tmp_path)
    store = PushedConfigStore(tmp_path / "state")
    store.store({"telemetry": {"interval_s": interval_s}}, version="dies-1", source="test")
    assert store.choose(load_config(cfg_path)).source == "pushed"
    store.trying.unlink()
    out = _bedtime_run(cfg_path)
    assert out.returncode == 0, out.stderr[-3000:]  # the start again (same process) ran the box's own file
    assert [r["config_version"] for r in store.rejected()] == ["dies-1"]
    assert f"acquisition stopped (MemoryError: {why})" in store.rejected()[0]["reason"]
    assert not store.pushed.exists() and not store.good.exists()
