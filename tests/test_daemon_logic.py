"""The daemon's own decisions, driven by scripted stage and loop outputs (the models are tested elsewhere;
the whole chain with the real models is tests/test_daemon_e2e.py): alerts when a loop outlasts a breather
session, alerts when the clinic switched the breather off, and a pushed config kept for the next start."""
from __future__ import annotations

import json

import numpy as np

from appliance.ads1299_frame import STATUS_SYNC, encode_frames, uv_per_count
from appliance.audit import verify
from appliance.daemon import Daemon, PipelineParts
from appliance.hardware import SimulationSource, open_hardware
from appliance.jsonl import JsonlWriter
from appliance.protocol.boxconfig import validate_config
from appliance.pushed_config import PUSHED_CONFIG
from tests.daemon_helpers import box_config

W, R, N2 = 0, 4, 2


class ScriptedStager:
    """Returns the scripted stage for each epoch with probability 0.9 (ignores the EEG); a stage of None is a
    doubtful epoch (all five stages equally likely)."""

    sha256 = "scripted"

    def __init__(self, stages):
        self.stages, self.i = list(stages), -1

    def stage_epoch(self, x):
        self.i += 1
        stage = self.stages[min(self.i, len(self.stages) - 1)]
        if stage is None:
            return np.full(5, 0.2)
        p = np.full(5, 0.025)
        p[stage] = 0.9
        return p / p.sum()

    def smooth_night(self, probs):
        return np.asarray(probs)


class ScriptedLoops:
    sha256 = "scripted"

    def __init__(self, p):
        self.p = list(p)

    def update(self, epoch):
        return self.p[min(epoch.index, len(self.p) - 1)]


def _run(tmp_path, stages, p_loop, *, breather_enabled=True):
    cfg = box_config(tmp_path, port=None)
    hyp = np.full(len(stages), N2, dtype=np.int8)  # the EEG is irrelevant here: the stager is scripted
    hw = open_hardware(cfg, simulate=True, source=SimulationSource(hypnogram=hyp), speed=float("inf"))
    d = Daemon(cfg, hardware=hw, parts=PipelineParts(stager=ScriptedStager(stages), loop_detector=ScriptedLoops(p_loop)))
    d.night.breather_enabled = breather_enabled
    return d, d.run(), cfg


def test_a_loop_outlasting_a_woken_session_alerts_the_parent_once(tmp_path):
    # loop detected in REM, session starts, the sleeper wakes (session ends 'woke'), the loop goes on
    stages = [N2] * 10 + [R] * 4 + [W] * 2 + [R] * 12 + [N2] * 4
    p = [0.0] * 11 + [0.9] * 21
    d, r, cfg = _run(tmp_path, stages, p)
    ended = [e for e in r.events if e["kind"] == "breather_ended"]
    assert ended and ended[0]["outcome"] == "woke"
    assert [a["kind"] for a in d.alerts_sent] == ["loop_persists_after_breather"]
    # session from epoch 12 (two loop epochs to confirm), ended 'woke' at epoch 14; loop epochs 15..18 follow
    assert ended[0]["epoch_index"] == 14
    assert d.alerts_sent[0]["epoch_index"] == 18
    audit = (tmp_path / "state" / "audit.log").read_text()
    assert '"alert"' in audit and verify(tmp_path / "state" / "audit.log").ok


def test_a_loop_outlasting_a_session_aborted_for_doubtful_stages_alerts_the_parent(tmp_path):
    # The interop night of seed 0: the session stopped on doubtful stages ("uncertain_stage"), the loop went on
    # for an hour and, with the breather in its refractory gap, nobody was told. Now the parent is.
    stages = [N2] * 10 + [R] * 4 + [None] * 2 + [R] * 12 + [N2] * 4
    p = [0.0] * 11 + [0.9] * 21
    d, r, cfg = _run(tmp_path, stages, p)
    ended = [e for e in r.events if e["kind"] == "breather_ended"]
    assert [(e["outcome"], e["reason"]) for e in ended] == [("aborted", "uncertain_stage")]
    assert [a["kind"] for a in d.alerts_sent] == ["loop_persists_after_breather"]
    assert d.alerts_sent[0]["epoch_index"] == ended[0]["epoch_index"] + 4


def test_a_second_loop_inside_the_breathers_gap_alerts_the_parent(tmp_path):
    # First loop: a session, the sleeper wakes, the loop goes on -> loop_persists_after_breather. It ends; a
    # second loop comes 10 min later, inside the breather's 40-min gap: no session can start, and before this
    # test nobody was told. Now the parent is, once, after LOOP_PERSIST_EPOCHS loop epochs.
    stages = [N2] * 10 + [R] * 4 + [W] * 2 + [R] * 12 + [N2] * 12 + [R] * 10 + [N2] * 4
    p = [0.0] * 11 + [0.9] * 17 + [0.0] * 12 + [0.9] * 10 + [0.0] * 4
    d, r, cfg = _run(tmp_path, stages, p)
    assert [e["kind"] for e in r.events if e["kind"] in ("loop_detected", "loop_ended")] == \
        ["loop_detected", "loop_ended", "loop_detected"]
    assert len([e for e in r.events if e["kind"] == "breather_started"]) == 1
    assert [a["kind"] for a in d.alerts_sent] == ["loop_persists_after_breather", "loop_breather_unavailable"]
    second = d.alerts_sent[1]
    assert second["epoch_index"] == 40 + 4 - 1 and second["breather"] == "refractory"
    assert second["message"].endswith("The breather cannot help now: it is resting after an earlier breather.")
    assert verify(tmp_path / "state" / "audit.log").ok


def test_no_alert_when_the_loop_ends_with_the_session(tmp_path):
    stages = [N2] * 10 + [R] * 4 + [W] * 2 + [N2] * 16
    p = [0.0] * 11 + [0.9] * 4 + [0.0] * 17
    d, r, _ = _run(tmp_path, stages, p)
    assert d.alerts_sent == []


def test_breather_switched_off_by_the_clinic_alerts_directly_and_never_stimulates(tmp_path):
    stages = [N2] * 10 + [R] * 12 + [N2] * 4
    p = [0.0] * 11 + [0.9] * 15
    d, r, _ = _run(tmp_path, stages, p, breather_enabled=False)
    assert [a["kind"] for a in d.alerts_sent] == ["loop_detected_breather_off"]
    assert d.output_trace == [] and "breather_started" not in [e["kind"] for e in r.events]


def test_a_pushed_config_is_kept_for_the_next_start(tmp_path):
    from appliance.pushed_config import PushedConfigStore

    cfg = box_config(tmp_path, port=None)
    hw = open_hardware(cfg, simulate=True, source=SimulationSource(hypnogram=np.full(2, N2, np.int8)), speed=60.0)
    d = Daemon(cfg, hardware=hw)  # not run: only the clinic's handlers are used
    d.journal.events_file = JsonlWriter(tmp_path / "events.jsonl")  # as the daemon opens it
    pushed = {"box": {"id": "someone-else"}, "telemetry": {"interval_s": 5}, "breather": {"cue_s": 30.0}}
    d.commands.on_pushed_config(d.commands.validate_pushed_config(pushed))
    d.journal.close()
    stored = json.loads((tmp_path / "state" / PUSHED_CONFIG).read_text())
    assert stored["telemetry"]["interval_s"] == 5 and "id" not in stored.get("box", {})
    assert d.events[-1]["ignored_local_keys"] == ["box.id"]
    choice = PushedConfigStore(cfg.box.state_dir).choose(cfg)
    merged = choice.config
    assert choice.source == "pushed" and merged.telemetry.interval_s == 5 and merged.breather["cue_s"] == 30.0
    assert merged.box.id == cfg.box.id  # the box's identity stays the file's


class _GapAcquisition:
    """A producer that overfills a small ring once (the ring drops 250 frames), then feeds the rest as the
    consumer makes room: the daemon must see the index gap, count it, and keep the night's timeline."""

    def __init__(self, ring, total: int, dropped: int) -> None:
        self.ring, self.total, self.dropped = ring, total, dropped
        self.counters: dict = {}
        self._thread = None
        self._failed: BaseException | None = None

    def _frames(self, n: int, start: int) -> bytes:
        # The frame layout and scaling come from the one place that defines them (no second 27 or 4.5e6 here).
        t = (np.arange(start, start + n) / 250.0)
        code = (np.sin(2 * np.pi * 10 * t) * 20 / uv_per_count(24)).astype(np.int32)
        return encode_frames(np.full(n, STATUS_SYNC), np.repeat(code[:, None], 8, axis=1)).tobytes()

    def start(self) -> None:
        import threading
        import time

        # The ring is filled and the next frames are dropped here, before the daemon pops anything (it starts its
        # loop after start() returns): done in the producer thread, a pop in between made room on a loaded
        # machine, the "dropped" frames went in, and the thread's assertion ended it while the daemon waited on.
        cap = self.ring.capacity
        self.ring.push_raw(self._frames(cap, 0), 0)
        assert self.ring.push_raw(self._frames(self.dropped, cap), 0) == 0  # ring full: dropped, counted

        def run():
            try:
                sent = cap + self.dropped
                while sent < self.total:
                    while self.ring.capacity - len(self.ring) < 500:
                        time.sleep(0.001)
                    n = min(500, self.total - sent)
                    self.ring.push_raw(self._frames(n, sent), 0)
                    sent += n
            except BaseException as e:  # the daemon ends the night on it (failure()), rather than wait for ever
                self._failed = e

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._thread.join(5)

    def poll_events(self) -> list:
        return []

    def frames_accounted(self, frames_seen: int) -> bool:
        return frames_seen >= self.total

    def failure(self) -> BaseException | None:
        return self._failed


def test_frames_the_ring_dropped_are_counted_and_the_timeline_kept(tmp_path):
    import edfio

    from appliance.hardware import HardwareEdge, mock_pin_factory
    from appliance.ring import FrameRing

    cfg = box_config(tmp_path, port=None, acquisition={"ring_capacity_frames": 1024})
    total = 4 * 7500
    ring = FrameRing(1024, 8)
    hw = HardwareEdge(ring=ring, acquisition=_GapAcquisition(ring, total, 250), pin_factory=mock_pin_factory(),
                      sample_rate_sps=250, n_channels=8, gain=24, simulated=True, total_signal_s=total / 250,
                      poll_interval_s=0.001)
    stages = [N2] * 4
    d = Daemon(cfg, hardware=hw, parts=PipelineParts(stager=ScriptedStager(stages), loop_detector=ScriptedLoops([0.0])))
    r = d.run()
    assert r.counters["frames_lost"] == 250 and r.counters["frames"] == total and r.epochs == 4
    assert "frames_lost" in d.epochs[0].quality.flags and not d.epochs[0].quality.ok
    assert d.epochs[2].quality.ok
    edf = edfio.read_edf(r.edf_path)
    assert edf.duration == total / 250  # the lost second is in the file, as a flat line, on the timeline
    assert any(a.text.startswith("Frames lost: 250") and a.onset == 1024 / 250 for a in edf.annotations)
    x = edf.signals[0].data
    assert np.all(np.abs(x[1024:1274]) < 1e-6) and np.std(x[1274:2000]) > 5
