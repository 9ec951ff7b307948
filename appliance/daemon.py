"""The appliance daemon: one process from the chip to the phone, all night.

Threads and the bounded hand-offs between them::

    acquisition thread:  ADS1299 (spidev, DRDY) --frames--> C ring buffer (fixed capacity; overflow counted)
    pipeline thread:     ring --pop <= 1 s--> microvolts --> EDF+ recorder (flushed every few seconds)
                                                        --> DSP (causal, streaming) --> 30-s epoch
                         epoch --> stager --> loop model --> breather policy --> light / sound (gpiozero)
                               --> epochs.jsonl, MQTT stage (QoS 0), events/alerts (QoS 1 via the outbox)
    MQTT link thread:    paho-mqtt; persistent SQLite outbox with a row and byte cap

There is no unbounded queue: the ring has a fixed capacity (the chip cannot wait, so frames that find it full
are counted as dropped and the epoch is marked ``frames_lost``), the outbox is capped by
:class:`appliance.outbox.Outbox`, QoS 0 messages are dropped while offline, and the recorder writes inline.
In an accelerated replay the simulated chip *can* wait, so its producer backs off while the ring is nearly
full: the replay then runs exactly as fast as the pipeline, and nothing is dropped.

Time inside the pipeline is signal time (sample index / data rate), so a replay at 600x makes the same
decisions as a real night. Light and sound are forced off on every fault, on every exit path, by
``bedtime outputs-off`` (systemd ExecStopPost) after a crash, and again at the next start.

systemd: READY=1 once the first frames arrive; STATUS= each epoch; WATCHDOG=1 from the pipeline loop (so a
wedged pipeline, not only a dead process, gets restarted).
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import logging
import os
import resource
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from appliance import __version__
from appliance.ads1299_frame import uv_per_count
from appliance.config import edf_channel_labels
from appliance.protocol.boxconfig import BoxConfig
from appliance.dsp import MODEL_FS_HZ
from appliance.epoch import Epoch
from appliance.episodes import LoopAlert, LoopEpisodes
from appliance.hardware import SIM_OUTPUTS_FILE, BoxOutputs, HardwareEdge
from appliance.protocol.stages import EPOCH_S, STAGE_NAMES
from appliance.pushed_config import PUSHED_CONFIG, PushedConfigStore  # PUSHED_CONFIG: re-exported for the tests
from appliance.edfplus import STAGE_ANNOTATION, EdfPlusRecorder
from appliance.jsonl import JsonlWriter
from appliance.nightfolder import (EPOCHS_JSONL, EVENTS_JSONL, HYPNOGRAM_PNG, NIGHT_EDF, enforce_retention, night_id,
                                   recover_nights)
from appliance.report import NightRecord
from appliance.report_load import write_report

logger = logging.getLogger(__name__)

PNG_CHILD_TIMEOUT_S = 300.0
"""Longest wait for the child process drawing the morning PNG (a loaded Pi Zero draws it in ~20 s); past it the
child is killed and the night ends without a picture (its report.json is already on disk)."""

NO_DATA_FAULT_S = 2.0
"""Wall-clock seconds without a single frame before the pipeline itself declares a fault (the driver's own
DRDY-stall detection, at 4 sample periods, normally fires long before)."""

MAX_GAP_FILL_FRAMES = 250 * 600
"""A stretch of lost frames up to this long (10 min at 250 SPS) is filled with a flat line so that the recording,
the epochs and the breather's clock stay on the night's timeline; the filled epochs are flagged ``frames_lost``."""


STAGES_FLOWING_S = 2 * EPOCH_S + 15.0
"""For an update's health check, the pipeline counts as staging when its last epoch came out within this many
wall-clock seconds (two epochs and some slack), or, before the night's first epoch, when frames are arriving."""

SIGNED_UPDATES_REQUIRED = "signed updates required: use the update command"
"""Why a box with a pinned update key refuses a config on the unsigned retained ``config`` topic."""


# ---- what happened during the night -----------------------------------------------------------------
@dataclass
class NightResult:
    """What :meth:`Daemon.run` hands back (and the demo prints)."""

    night_dir: Path
    edf_path: Path | None
    report_json: Path | None
    report_png: Path | None
    report: dict | None
    epochs: int
    events: list[dict]
    counters: dict
    cpu_s: float
    wall_s: float


@dataclass
class PipelineParts:
    """The downstream components; built from the config unless a test passes its own."""

    stager: Any = None
    loop_detector: Any = None
    breather: Any = None
    link: Any = None


#: How many of the newest night reports' audit heads the daemon checks its audit log against at start.
AUDIT_ANCHORS_CHECKED = 3


# ---- the daemon --------------------------------------------------------------------------------------
class Daemon:
    """The whole appliance in one object: build it from a config and a hardware edge, then :meth:`run`.

    Parameters
    ----------
    config : BoxConfig
        Validated configuration.
    hardware : HardwareEdge
        The chip, ring and acquisition thread, and the pin factory (real or simulated); see
        :func:`appliance.hardware.open_hardware`.
    parts : PipelineParts, optional
        Downstream components to use instead of building them from the config (tests).
    progress : callable, optional
        ``progress(signal_s, total_s)`` after each epoch (the demo's progress bar).
    notify : callable, optional
        ``notify(text)`` for systemd notifications (default: sdnotify when under systemd).
    max_signal_s : float, optional
        Stop after this much signal (default: run until stopped or the replay ends).
    file_config : BoxConfig, optional
        The box's own file, without the clinic's pushed configuration (default ``config``): a new push is
        merged over this one and pre-flighted (:mod:`appliance.pushed_config`).
    on_running : callable, optional
        Called once when the daemon is running (first frames in, READY=1): the start with this configuration
        worked, so it becomes the last known good one.
    start_reports : list of dict, optional
        ``config_rejected`` reports from choosing this start's configuration, published once the link is up.
    """

    def __init__(self, config: BoxConfig, *, hardware: HardwareEdge, parts: PipelineParts | None = None,
                 progress: Callable[[float, float], None] | None = None,
                 notify: Callable[[str], None] | None = None, max_signal_s: float | None = None,
                 file_config: BoxConfig | None = None, on_running: Callable[[], None] | None = None,
                 start_reports: list[dict] | None = None) -> None:
        self.cfg = config
        self.file_cfg = file_config or config
        self.pushed_store = PushedConfigStore(self.file_cfg.box.state_dir)
        self._on_running = on_running
        self._start_reports = list(start_reports or [])
        self.running = False
        self.hw = hardware
        self.parts = parts or PipelineParts()
        self.progress = progress
        self.max_signal_s = max_signal_s
        self._notify = notify or _systemd_notifier()
        self._stop = threading.Event()
        self.fs_hz = int(hardware.sample_rate_sps)
        self.n_channels = int(hardware.n_channels)
        self.uv_per_count = float(uv_per_count(hardware.gain))
        self.samples_per_epoch = int(round(EPOCH_S * self.fs_hz))
        self.events: list[dict] = []
        self.epochs: list[Epoch] = []
        self.counters: dict[str, int] = {"frames": 0, "frames_lost": 0, "frames_corrupt": 0, "drdy_stalls": 0,
                                         "chip_reinits": 0, "no_data_faults": 0, "epochs_bad_signal": 0}
        self.episodes: LoopEpisodes | None = None  # built with the parts (the threshold is the breather's)
        self.breather_enabled = True
        self._box_state = "online"  # the status last published (recording during a night)
        self.restart_requested = False
        self.ended_by_limit = False
        self._lead_off_channels: frozenset[int] = frozenset()
        self._fault_active: str | None = None
        self._events_lock = threading.Lock()
        self.link: Any = None
        self.recorder: EdfPlusRecorder | None = None
        self.alerts_sent: list[dict] = []
        # Alerts the link could not take yet (it raised), queued again each epoch; and failures on paths
        # that must go on regardless (a failed audit write, a failed publish), logged and counted.
        self._unsent_alerts: list[dict] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.output_trace: list[tuple[float, float, float]] = []
        self._acq_event_at: dict[str, float] = {}
        self.epoch_wall_s: list[float] = []  # time.monotonic() when each epoch's last sample had been processed
        self._last_levels = (0.0, 0.0)
        self._last_frames_wall: float | None = None  # time.monotonic() of the last frames popped from the ring
        self.updates: Any = None  # appliance.updates.UpdateManager when a clinic key is pinned

    # ---- public ----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the pipeline to finish the night (thread- and signal-safe)."""
        self._stop.set()

    def run(self) -> NightResult:
        """Record and watch one night; returns when stopped, when the replay ends, or after max_signal_s."""
        cfg = self.cfg
        t_wall0, t_cpu0 = time.monotonic(), time.process_time()
        root = cfg.recording_dir
        root.mkdir(parents=True, exist_ok=True)
        state = Path(cfg.box.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        for p in recover_nights(root):
            logger.warning("closed an interrupted recording from a previous run: %s", p)
        start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        self.night_dir = root / night_id(start)
        while self.night_dir.exists():  # two starts within a second (tests, restarts)
            start += dt.timedelta(seconds=1)
            self.night_dir = root / night_id(start)
        self.start = start
        # The night's folder is made only once acquisition runs: a start that fails (no GPIO, no chip, a model
        # that does not load) must not leave an empty night behind for the report and retention to trip on.
        self._night_open = False
        self.recorder = None
        mirror = state / SIM_OUTPUTS_FILE if self.hw.simulated else None
        self.outputs = BoxOutputs(cfg, self.hw.pin_factory, mirror=mirror)  # forced off at start
        report = rep_json = rep_png = None
        try:
            self._build_parts()
            self._install_signal_handlers()
            self.hw.start()
            self._open_night()
            self._event("night_started", 0.0, box_id=cfg.box.id, box_name=cfg.box.name,
                        night_start=self.start.strftime("%Y-%m-%dT%H:%M:%SZ"), simulated=bool(self.hw.simulated))
            for r in self._start_reports:  # a pushed config this start could not use, and what it fell back to
                self._event("config_rejected", 0.0, **r)
            try:
                self._publish_status("recording")
            except Exception as e:  # noqa: BLE001 - reporting must never take the night down
                self.errors["status_publish"] += 1
                logger.error("could not publish the recording status: %s", e)
            self._pipeline_loop()
        except BaseException as e:
            self._fault(f"daemon error: {type(e).__name__}: {e}", self._signal_s())
            raise
        finally:
            self._notify("STOPPING=1")
            self.outputs.all_off()
            self._ring_at_end = self.hw.ring.counters  # before stopping: a stopping producer is not the night's
            try:
                self.hw.stop()
            finally:
                end_s = self._signal_s()
                if self._night_open:
                    self._event("night_ended", end_s)
                    if self.recorder is not None:
                        self.recorder.close()
                    self._epochs_file.close()
                    report, rep_json, rep_png = self._write_report()
                    self._events_file.close()
                if self.link is not None:
                    try:
                        # The audit head goes out with the status too (retained): a copy out of the box's reach.
                        self._publish_status("idle", breather_state="off",
                                             **({"audit_head": head} if (head := self._audit_head()) else {}))
                    except Exception as e:  # the night is recorded; a status that cannot go out waits for next time
                        logger.error("could not publish the idle status: %s", e)
                    if self._own_link:
                        self.link.wait_delivered(timeout_s=3.0)
                        self.link.stop()
                self.outputs.close()
                if getattr(self, "audit", None) is not None:
                    self.audit.close()
        return NightResult(night_dir=self.night_dir, edf_path=self.night_dir / NIGHT_EDF if self.recorder else None,
                           report_json=rep_json, report_png=rep_png, report=report, epochs=len(self.epochs),
                           events=list(self.events), counters=dict(self.counters),
                           cpu_s=time.process_time() - t_cpu0, wall_s=time.monotonic() - t_wall0)

    # ---- construction ----------------------------------------------------------------------------
    def _open_night(self) -> None:
        """Make the night's folder, its sidecar files and its EDF+ (acquisition has started)."""
        cfg = self.cfg
        root = cfg.recording_dir
        self.night_dir.mkdir(parents=True)
        try:
            self._epochs_file = JsonlWriter(self.night_dir / EPOCHS_JSONL)
            self._events_file = JsonlWriter(self.night_dir / EVENTS_JSONL)
            if cfg.recording.enabled:
                labels = edf_channel_labels(cfg.acquisition, n_channels=self.n_channels)
                self.recorder = EdfPlusRecorder(self.night_dir / NIGHT_EDF, channel_labels=labels,
                                                fs_hz=self.fs_hz, physical_range_uv=cfg.recording.physical_range_uv,
                                                flush_interval_s=cfg.recording.flush_interval_s, start=self.start)
                self.recorder.annotate(0.0, f"Recording start bedtime {__version__} box {cfg.box.id}")
        except BaseException:
            for f in (getattr(self, "_epochs_file", None), getattr(self, "_events_file", None)):
                if f is not None:
                    f.close()
            shutil.rmtree(self.night_dir, ignore_errors=True)
            raise
        self._night_open = True
        enforce_retention(root, max_nights=cfg.recording.retention_nights,
                          max_bytes=cfg.recording.retention_max_mb * 1e6, keep=self.night_dir)

    def _build_parts(self) -> None:
        cfg = self.cfg
        p = self.parts
        self.updates = self._make_update_manager()
        if p.stager is None:
            p.stager = self._load_stager()
        if p.loop_detector is None:
            from appliance.loop_model import LoopDetector

            p.loop_detector = LoopDetector(cfg.loops.model_path or None)
        self.stager, self.loop_detector = p.stager, p.loop_detector
        from appliance.dsp import StreamingPreprocessor

        self.pre = StreamingPreprocessor(fs_hz=float(self.fs_hz))
        self._own_link = False
        self.link = p.link
        if self.link is None and cfg.mqtt.enabled:
            self.link = make_link(cfg, model_versions={"stager": getattr(self.stager, "sha256", "?")[:12],
                                                       "loops": getattr(self.loop_detector, "sha256", "?")[:12]},
                                   simulated=bool(self.hw.simulated))
            self._own_link = True
            self._register_link_handlers()
            if self.updates is not None:
                from appliance.updates import attach_to_link

                attach_to_link(self.updates, self.link)
        if self.link is not None:
            # Home Assistant discovery: sent on every (re)connect, so a family's Home Assistant shows the box.
            self.link.publish_discovery()
        if self._own_link:
            self.link.start()
        self.breather = p.breather if p.breather is not None else self._make_breather()
        self._breather_last_state = self._breather_state()
        from appliance.protocol.safety import BreatherConfig

        self.episodes = LoopEpisodes(box_name=cfg.box.name,
                                     threshold=BreatherConfig.from_dict(cfg.breather).p_loop_threshold)

    def _make_update_manager(self) -> Any:
        """The signed-update manager when ``updates.public_key_file`` pins a clinic key, else None."""
        if not self.cfg.updates.public_key_file:
            return None
        from appliance.config import read_public_key
        from appliance.updates import UpdateManager

        return UpdateManager(self.cfg.box.state_dir, read_public_key(self.cfg.updates.public_key_file),
                             health_check=self._update_health_check, on_audit=self._on_update_audit,
                             check_config=self._check_signed_config, box_id=self.cfg.box.id,
                             box_groups=self.cfg.box.groups)

    def _load_stager(self) -> Any:
        """The stage model: the one a signed update applied last, if any, else ``staging.model_path`` (or the
        packaged one). The update wrote the model's signed card beside it and the health check loaded both, so
        an applied model that still cannot be loaded here (e.g. a pre-card update, or a file damaged since) is
        said out loud (``model_update_unused``) and the configured model is used instead."""
        from appliance.stager import Stager

        applied = self.updates.current_path("model") if self.updates is not None else None
        if applied is not None:
            try:
                stager = Stager(applied)
                self._event("model_from_update", 0.0, version=self.updates.current_version("model"),
                            path=str(applied))
                return stager
            except Exception as e:  # the night must still be staged: fall back, and tell the clinic why
                logger.error("the updated stage model %s cannot be loaded: %s", applied, e)
                self._event("model_update_unused", 0.0, version=self.updates.current_version("model"),
                            reason=f"{type(e).__name__}: {e}")
        return Stager(self.cfg.staging.model_path or None)

    def _stages_flowing(self) -> tuple[bool, str]:
        """Is the running pipeline still staging? (The daemon's part of an update's health check.)"""
        now = time.monotonic()
        if self._stop.is_set():
            return False, "the pipeline is stopping"
        if self._fault_active is not None:
            return False, f"fault active: {self._fault_active}"
        if self.epoch_wall_s:
            age = now - self.epoch_wall_s[-1]
            return age <= STAGES_FLOWING_S, f"last epoch staged {age:.0f} s ago"
        if self._last_frames_wall is not None and now - self._last_frames_wall <= NO_DATA_FAULT_S:
            return True, "frames arriving; first epoch not yet due"
        return False, "no frames and no epoch yet"

    def _update_health_check(self, kind: str, path: Path) -> Any:
        """``appliance.updates.default_health_check`` (model loads and runs / config validates) plus
        ``stages_flowing``. The new model or config takes effect at the next start (never mid-night), so
        stages_flowing checks that installing it left tonight's pipeline staging."""
        from appliance.updates import HealthReport, default_health_check

        base = default_health_check(kind, path)
        flowing, why = self._stages_flowing()
        detail = "; ".join(x for x in (base.detail, "" if flowing else f"stages not flowing: {why}") if x)
        return HealthReport(base.ok and flowing, {**base.checks, "stages_flowing": flowing}, detail)

    def _check_signed_config(self, doc: Any) -> list[str]:
        """A signed config's pre-flight (run by the update manager after the signature verified, before it is
        installed): local-only keys dropped, merged over the box's file, and the daemon could start with it.
        Returns the ignored local-only keys; raises ConfigError when the daemon could not start with it."""
        _pushable, _merged, ignored = self.pushed_store.check(doc, base=self.file_cfg)
        return ignored

    def _on_update_audit(self, entry: dict) -> None:
        """A config applied (or rolled back to) by a signed update becomes the config of the next start, through
        the same state file a pushed config uses (``appliance.cli`` merges it over the TOML file)."""
        if entry.get("kind") != "config" or entry.get("action") not in ("update.applied", "update.rolled_back"):
            return
        current = self.updates.current_path("config") if self.updates is not None else None
        if current is not None:
            self._store_pushed_config(json.loads(current.read_bytes()), version=self.updates.current_version("config"),
                                      source="update")

    def _store_pushed_config(self, doc: dict, *, version: str = "", source: str = "") -> list[str]:
        """Keep a pushed config for the next start. The pinned key, the box's identity, its broker and every key
        that names a file come only from the box's own file (appliance.config.LOCAL_ONLY_KEYS): a pushed config
        never unpins or replaces the key that checks the next one, nor points the box at a file."""
        from appliance.protocol.boxconfig import split_pushed_config

        pushable, ignored = split_pushed_config(doc)
        self.pushed_store.store(pushable, version=version, source=source)
        return ignored

    def _make_breather(self) -> Any:
        from appliance.audit import LOG_NAME, AuditError, AuditLog, head_path
        from appliance.breather import Breather
        from appliance.protocol.safety import BreatherConfig

        path = Path(self.cfg.box.state_dir) / LOG_NAME
        try:
            self.audit = AuditLog(path)
            self._check_audit_against_reports(path)
        except AuditError as e:
            if getattr(self, "audit", None) is not None:
                self.audit.close()
            # Never append to a broken chain, nor write a new head over the evidence (a truncated log
            # or a missing/rewritten head): keep both aside for `bedtime audit verify`, start a new log,
            # and report it.
            broken = path.with_name(f"audit.broken-{time.strftime('%Y%m%dT%H%M%S')}.log")
            head = head_path(path)
            for src, dst in ((path, broken), (head, head_path(broken))):
                if src.exists():
                    src.replace(dst)
            self.audit = AuditLog(path)
            logger.error("audit log broken (%s); kept as %s, a new log started", e, broken.name)
            self._event("fault", 0.0, reason=f"audit log broken ({e}); kept as {broken.name}", fault_kind="audit")
        return Breather(light=self.outputs.light, speaker=self.outputs.speaker, button=self.outputs.button,
                        config=BreatherConfig.from_dict(self.cfg.breather), audit=self.audit,
                        clock=self._signal_s, on_escalate=self._on_escalate)

    def _check_audit_against_reports(self, path: Path) -> None:
        """Raise AuditError if the log lacks a record the last night reports promised (``audit_head``).

        The head alone cannot catch a truncation whose head was rewritten to match; the reports' copies
        can. Only anchors about this log count (their ``first`` matches), so a log set aside earlier
        does not condemn the new one.
        """
        from appliance.audit import AuditError, anchors_from_reports, first_hash, verify

        mine = first_hash(path)
        anchors = [a for a in anchors_from_reports(self.cfg.recording_dir)
                   if a.first is None or a.first == mine][-AUDIT_ANCHORS_CHECKED:]
        if not anchors:
            return
        rep = verify(path, anchors=anchors)
        if not rep.ok:
            raise AuditError("; ".join(rep.problems))

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())

    # ---- the pipeline ----------------------------------------------------------------------------
    def _signal_s(self) -> float:
        return self.counters["frames"] / self.fs_hz if hasattr(self, "fs_hz") else 0.0

    def _pipeline_loop(self) -> None:
        ring = self.hw.ring
        # Real time: pop what is there (a fraction of a second). Replay: up to 10 s per step; the breather is
        # still ticked once per second of signal (safety.MAX_TICK_STEP_S) by _tick_breather.
        block = self.fs_hz * (10 if self.hw.simulated and self.hw.poll_interval_s < 0.01 else 1)
        self._last_tick_s = 0.0
        ch = self.cfg.acquisition.staging_channel
        epoch_raw = np.empty((self.samples_per_epoch, self.n_channels), dtype=np.float32)
        epoch_fill = 0
        epoch_lost = 0
        missed_seen = 0
        epoch_loff = 0
        model_buf: list[np.ndarray] = [np.empty(0)]
        last_index = -1
        ready = False
        last_watchdog = last_data = time.monotonic()
        next_telemetry_s = self.cfg.telemetry.interval_s
        cpu_mark = (time.monotonic(), time.process_time())
        total_s = self.hw.total_signal_s
        while not self._stop.is_set():
            self._drain_hardware_events()
            want = block
            total_frames = self.hw.total_frames
            if total_frames is not None:  # a replay: stop exactly at the end of the source
                want = min(block, total_frames - self.counters["frames"])
                if want <= 0:
                    break
            frames = ring.pop(want)
            now = time.monotonic()
            if now - last_watchdog >= 1.0:
                self._notify("WATCHDOG=1")
                last_watchdog = now
            if len(frames) == 0:
                if self.hw.finished(self.counters["frames"]):
                    break
                if now - last_data > NO_DATA_FAULT_S and self._fault_active is None:
                    self.counters["no_data_faults"] += 1
                    self._fault("no data from the chip", self._signal_s())
                time.sleep(self.hw.poll_interval_s)
                continue
            last_data = self._last_frames_wall = now
            if self._fault_active is not None:
                self._event("fault_cleared", self._signal_s(), reason=self._fault_active)
                self._fault_active = None
                clear = getattr(self.breather, "clear_fault", None)
                if clear is not None:
                    clear()  # stimulation may resume only after the breather's own minimum gap
            if not ready:
                self._notify("READY=1")
                ready = self.running = True
                if self._on_running is not None:
                    try:
                        self._on_running()
                    except Exception as e:  # bookkeeping of the config must never stop the night
                        logger.error("could not record the running configuration: %s", e)
            # frames the ring dropped still took an index: a gap is signal that never arrived
            idx = frames.index
            first = last_index + 1 if last_index >= 0 else int(idx[0])
            lost = int(idx[-1]) - first + 1 - len(idx)
            last_index = int(idx[-1])
            uv = frames.counts.astype(np.float32) * np.float32(self.uv_per_count)
            loff_all = frames.loff_statp | frames.loff_statn
            if lost > 0:
                self.counters["frames_lost"] += lost
                epoch_lost += lost
                if lost <= MAX_GAP_FILL_FRAMES:
                    # keep the timeline: the lost stretch is recorded as a flat line and its epoch is flagged
                    at = idx - first
                    full = np.zeros((len(idx) + lost, self.n_channels), np.float32)
                    full[at] = uv
                    loff_full = np.zeros(len(full), loff_all.dtype)
                    loff_full[at] = loff_all
                    uv, loff_all = full, loff_full
                    if self.recorder is not None:
                        self.recorder.annotate(self._signal_s(), f"Frames lost: {lost} (flat fill)")
            if self.recorder is not None:
                self.recorder.write(uv)
            n = len(uv)
            y = self.pre.process(uv[:, ch].astype(np.float64))
            model_buf.append(y)
            pos = 0
            while pos < n:  # slices end at epoch boundaries
                take = min(n - pos, self.samples_per_epoch - epoch_fill)
                epoch_raw[epoch_fill:epoch_fill + take] = uv[pos:pos + take]
                epoch_loff |= int(np.bitwise_or.reduce(loff_all[pos:pos + take]))
                epoch_fill += take
                pos += take
                self.counters["frames"] += take
                if epoch_fill < self.samples_per_epoch:
                    self._tick_breather()
                else:
                    # At an epoch boundary the breather first sees the epoch that just ended, then the clock
                    # reaches the boundary: a session whose light is due at the same second as an epoch staged
                    # W (or N3, or bad signal) ends instead of turning the light on for an instant.
                    self._tick_breather(up_to_now=False)
                    need = int(EPOCH_S * MODEL_FS_HZ)
                    ym = np.concatenate(model_buf) if len(model_buf) > 1 else model_buf[0]
                    if len(ym) < need:  # the resampler lags by a few samples at the very start
                        ym = np.concatenate([np.zeros(need - len(ym)), ym])
                    model_buf = [ym[need:]]
                    missed = self.hw.missed_frames()  # DRDY edges the driver never saw: frames that never arrived
                    epoch_lost += missed - missed_seen
                    missed_seen = missed
                    self._epoch_done(epoch_raw, ym[:need], end_s=self._signal_s(), frames_lost=epoch_lost,
                                     loff_bits=epoch_loff)
                    epoch_fill = epoch_lost = epoch_loff = 0
                    self._tick_breather()
            sig_s = self._signal_s()
            if sig_s >= next_telemetry_s:
                cpu_mark = self._telemetry(sig_s, cpu_mark)
                next_telemetry_s += self.cfg.telemetry.interval_s
            if self.max_signal_s is not None and sig_s >= self.max_signal_s:
                self.ended_by_limit = True
                break
        if total_s and self.progress:
            self.progress(self._signal_s(), total_s)

    def _tick_breather(self, *, up_to_now: bool = True) -> None:
        """Tick the breather at every whole second of signal passed since the last tick, then at now
        (``up_to_now=False``: only the whole seconds before now, so that an epoch ending now is seen first)."""
        now = self._signal_s()
        t = self._last_tick_s + 1.0
        while t < now:
            self.breather.tick(t)
            self._trace_outputs(t)
            self._last_tick_s = t
            t += 1.0
        if up_to_now:
            self.breather.tick(now)
            self._trace_outputs(now)
            self._last_tick_s = now
        self._check_breather(self._last_tick_s)

    def _trace_outputs(self, t: float) -> None:
        """Keep every change of the light/sound level with its signal time (the report and tests read it), and
        mirror it to the simulated-GPIO file. Outside a session with both outputs off there is nothing to read."""
        if self._last_levels == (0.0, 0.0) and self._breather_state() not in ("cue", "light"):
            return
        lv = self.outputs.levels()
        if lv != self._last_levels:
            self.output_trace.append((t, lv[0], lv[1]))
            self._last_levels = lv
            self.outputs.sync_mirror()

    def _drain_hardware_events(self) -> None:
        """Faults the acquisition layer reported (from its thread, through a bounded queue)."""
        for ev in self.hw.poll_events():
            kind = ev.get("kind", "fault")
            reason = ev.get("reason", "")
            t = self._signal_s()
            if kind == "stall":
                self.counters["drdy_stalls"] += 1
                self._fault(f"DRDY stall: {reason}", t, kind="drdy_stall")
            elif kind == "reinit":
                self.counters["chip_reinits"] += 1
                self._event("chip_reinit", t, reason=reason)
            elif kind == "reinit_failed":
                self._fault(f"chip re-initialisation failed: {reason}", t, kind=kind)
            else:  # missed_drdy, corrupt, ring_full, stuck_channel, railed, lead_off: reported; the epoch's
                # quality verdict keeps the breather away from the signal they spoil. At most one event per kind
                # per epoch (a loaded host can miss hundreds of edges a minute); the counts go in telemetry.
                key = f"acq_{kind}"
                self.counters[key] = self.counters.get(key, 0) + 1
                last = self._acq_event_at.get(kind)
                if last is None or t - last >= EPOCH_S:
                    self._acq_event_at[kind] = t
                    self._event(f"acquisition_{kind}", t, reason=reason, count_so_far=self.counters[key])

    def _epoch_done(self, raw: np.ndarray, model_epoch: np.ndarray, *, end_s: float, frames_lost: int,
                    loff_bits: int) -> None:
        from appliance.dsp import arousal_features, epoch_quality

        ch = self.cfg.acquisition.staging_channel
        index = len(self.epochs)
        self.epoch_wall_s.append(time.monotonic())
        x = raw[:, ch].astype(np.float64)
        # LOFF_STATP/N bit n-1 = channel n; any electrode of the staging channel off spoils its epoch
        off_channels = frozenset(i for i in range(self.n_channels) if loff_bits >> i & 1)
        if off_channels != self._lead_off_channels:
            if off_channels - self._lead_off_channels:
                self._event("electrode_off", end_s, channels=sorted(c + 1 for c in off_channels))
            if self._lead_off_channels - off_channels:
                self._event("electrode_on", end_s, channels=sorted(c + 1 for c in self._lead_off_channels - off_channels))
            self._lead_off_channels = off_channels
        quality = epoch_quality(x, fs_hz=self.fs_hz, lead_off=ch in off_channels, frames_lost=frames_lost)
        arousal = arousal_features(x, fs_hz=self.fs_hz)
        epoch = Epoch(index=index, start_sample=index * self.samples_per_epoch, end_time_s=end_s,
                      quality=quality, arousal=arousal)
        probs = np.asarray(self.stager.stage_epoch(model_epoch), dtype=np.float64)
        epoch = dataclasses.replace(epoch, stage_probs=probs)
        p_loop = float(self.loop_detector.update(epoch))
        epoch = dataclasses.replace(epoch, p_loop=p_loop)
        if not quality.ok:
            self.counters["epochs_bad_signal"] += 1
        self.epochs.append(epoch)
        episodes = self.episodes
        loop_event = episodes.on_epoch(index=index, p_loop=p_loop, signal_ok=quality.ok)
        if loop_event is not None:
            self._event(loop_event[0], end_s, **loop_event[1])
        if self.breather_enabled:
            self.breather.on_epoch(epoch)
            self._check_breather(end_s, index)
            alert = episodes.after_breather(index=index, p_loop=p_loop, night_time_s=self._signal_s(),
                                            session_reports=getattr(self.breather, "session_reports", None),
                                            in_session=self._breather_state() in ("cue", "light"))
        else:  # the clinic switched the breather off: the parent hears about the loop directly
            alert = episodes.breather_off(index=index, p_loop=p_loop, night_time_s=end_s)
        if alert is not None:
            self._send_alert(alert)
        stage = epoch.stage
        self._epochs_file.write({
            "index": index, "end_time_s": end_s, "stage": int(stage), "probs": [round(float(p), 5) for p in probs],
            "p_loop": round(p_loop, 5), "ok": quality.ok, "flags": sorted(quality.flags),
        })
        if self.recorder is not None:
            self.recorder.annotate(end_s - EPOCH_S, STAGE_ANNOTATION[int(stage)], EPOCH_S)
            if not quality.ok:
                self.recorder.annotate(end_s - EPOCH_S, "Bad signal: " + ",".join(sorted(quality.flags)), EPOCH_S)
        if self.link is not None:
            self.link.publish_stage(epoch)
            if self._unsent_alerts:
                self._retry_unsent_alerts()
        self._notify(f"STATUS=epoch {index} {STAGE_NAMES[stage] if stage >= 0 else '?'} p_loop={p_loop:.2f} "
                     f"signal {'ok' if quality.ok else 'bad'}")
        if self.progress is not None and self.hw.total_signal_s:
            self.progress(end_s, self.hw.total_signal_s)

    # ---- breather bookkeeping --------------------------------------------------------------------
    def _breather_state(self) -> str:
        st = getattr(self.breather, "state", None)
        return str(getattr(st, "value", st)).lower() if st is not None else "?"

    def _publish_status(self, state: str, *, breather_state: str | None = None, **fields: Any) -> None:
        """The retained status, with the breather's state (``disabled`` when the clinic turned it off), which
        Home Assistant shows as the box's "Breather" sensor (appliance/homeassistant.py), and ``fields``
        (e.g. ``audit_head`` when the night ends)."""
        self._box_state = state
        if self.link is None:
            return
        if breather_state is None:
            breather_state = self._breather_state() if self.breather_enabled else "disabled"
        self.link.publish_status(state, breather_state=breather_state, **fields)

    def _check_breather(self, t: float, index: int | None = None) -> None:
        """Turn the breather's state changes into events (for MQTT, the EDF+ annotations and the report)."""
        after = self._breather_state()
        before = self._breather_last_state
        if after == before:
            return
        self._breather_last_state = after
        try:
            self._publish_status(self._box_state)
        except Exception as e:  # reporting must never take the night down
            logger.error("could not publish the breather state: %s", e)
        session_states = ("cue", "light")
        fields: dict[str, Any] = {} if index is None else {"epoch_index": index}
        if after == "cue" and before not in session_states:
            self._event("breather_started", t, session=getattr(self.breather, "sessions", None), **fields)
        elif after == "light" and before == "cue":
            self._event("breather_light", t, **fields)
        elif before in session_states and after not in session_states:
            reps = getattr(self.breather, "session_reports", None) or [{}]
            rep = reps[-1]
            self._event("breather_ended", t, outcome=rep.get("outcome", after), reason=rep.get("reason", ""),
                        duration_s=rep.get("duration_s"), max_light=rep.get("max_light"),
                        max_volume=rep.get("max_volume"), **fields)

    def _audit_head(self) -> dict | None:
        """The audit log's head (``seq``, ``hash``, ``records``, ``first``) for the report and status."""
        audit = getattr(self, "audit", None)
        try:
            return audit.head() if audit is not None else None
        except Exception as e:  # noqa: BLE001 - the report must come out regardless
            logger.error("could not read the audit head: %s", e)
            return None

    def audit_append(self, event: str, **data: Any) -> None:
        """Add a record to the hash-chained audit log the breather writes (alerts are decisions too)."""
        audit = getattr(self, "audit", None)
        if audit is not None:
            try:
                audit.append(event, **data)
            except Exception as e:  # the alert must still go out
                self.errors["audit_write"] += 1
                logger.error("could not audit %s: %s", event, e)

    def _on_escalate(self, payload: dict | None = None, *args: Any) -> None:
        """The breather ended a session with the loop still going: tell the parent (QoS 1 via the outbox)."""
        self._send_alert(self.episodes.escalated(payload, night_time_s=self._signal_s()))

    def _send_alert(self, alert: LoopAlert) -> None:
        """Tell the parent: queue the alert on the link (QoS 1 via the outbox) and record it; then append its
        audit record, if it has one (the alert first: a failing audit write must not hold it back).

        A link that raises (a closed or broken outbox) neither loses the alert nor stops the caller: the
        alert is recorded and written to events.jsonl/EDF+ regardless, and kept to be queued again at the
        next epoch (:meth:`_retry_unsent_alerts`); each failure is logged and counted (``errors``).
        """
        t = self._signal_s()
        kind, title, message = alert.kind, alert.title, alert.message
        fields = {"kind": kind, "night_time_s": round(t, 1), **alert.fields}
        wall = time.monotonic()
        self.alerts_sent.append({"time_s": t, "wall_s": wall, "title": title, "message": message, **fields})
        if self.link is not None:
            self._unsent_alerts.append({"title": title, "message": message, "severity": alert.severity, **fields})
            self._retry_unsent_alerts()
        self._event("alert", t, title=title, **{k: v for k, v in fields.items() if k not in ("kind", "night_time_s")},
                    alert_kind=kind)
        if alert.audit is not None:
            self.audit_append("alert", **alert.audit)

    def _retry_unsent_alerts(self) -> None:
        """Queue the alerts the link refused so far, oldest first; stop at the first that fails again."""
        while self._unsent_alerts and self.link is not None:
            alert = self._unsent_alerts[0]
            try:
                self.link.publish_alert(**alert)
            except Exception as e:  # noqa: BLE001 - whatever the link raises, the alert is kept
                self.errors["alert_publish"] += 1
                logger.error("could not queue the alert %r (%d waiting; retried next epoch): %s",
                             alert.get("kind"), len(self._unsent_alerts), e)
                return
            self._unsent_alerts.pop(0)

    # ---- commands and config from the clinic ----------------------------------------------------
    def _register_link_handlers(self) -> None:
        link = self.link
        # Authorisation first, then validation and pre-flight: nothing in a config the box will refuse anyway is
        # looked at, and no config received over MQTT makes the box open a file it names.
        link.config_validator = self._validate_pushed_config
        link.on_config(self._on_pushed_config)
        link.on_command("report", self._cmd_report)
        link.on_command("set_breather", self._cmd_set_breather)
        link.on_command("restart", self._cmd_restart)
        link.on_command("selftest", self._cmd_selftest)

    def _validate_pushed_config(self, doc: Any) -> tuple[dict, list[str]]:
        """The link's validator for the unsigned retained ``config`` topic.

        With a pinned clinic key this path is refused before anything in the config is looked at (the link
        reports ``config_rejected`` with this reason): only ``cmd/update``, verified against the key, may change
        the box. Otherwise local-only keys are dropped, the rest merged over the box's own file and pre-flighted
        (:meth:`appliance.pushed_config.PushedConfigStore.check`)."""
        if getattr(self, "updates", None) is not None or self.cfg.updates.public_key_file:
            raise PermissionError(SIGNED_UPDATES_REQUIRED)
        pushable, _merged, ignored = self.pushed_store.check(doc, base=self.file_cfg)
        return pushable, ignored

    def _on_pushed_config(self, validated: tuple[dict, list[str]]) -> None:
        """A config the clinic pushed (already authorised, validated and pre-flighted): kept in the state
        directory, applied at the next start. Never mid-night: a session must not change its limits while it
        runs."""
        if getattr(self, "updates", None) is not None or self.cfg.updates.public_key_file:
            raise PermissionError(SIGNED_UPDATES_REQUIRED)
        pushable, ignored = validated
        self.pushed_store.store(pushable, version=str(getattr(self.link, "incoming_config_version", "") or "")[:64],
                                source="retained")
        self._event("config_stored", self._signal_s(), applies="next start", ignored_local_keys=ignored)

    def _cmd_report(self, args: dict) -> dict:
        from appliance.nightfolder import list_nights
        from appliance.report import build_report
        from appliance.report_load import NightError, load_night, read_saved_report

        night = args.get("night", "latest")
        nights = [n for n in list_nights(self.cfg.recording_dir) if n != self.night_dir]
        if night != "latest":
            nights = [n for n in nights if n.name.startswith(night.replace("-", ""))]
        for d in reversed(nights):
            # the report the daemon wrote that morning is the record; a night without one is rebuilt, and a
            # folder without a recording (a failed start of an older version) is passed over for "latest"
            try:
                saved = read_saved_report(d)
                return saved if saved is not None else build_report(load_night(d))
            except NightError as e:
                if night != "latest":
                    raise ValueError(str(e)) from None
                logger.warning("report command: skipping %s: %s", d.name, e)
        raise ValueError(f"no finished night {night!r} with a recording on this box")

    def _cmd_set_breather(self, args: dict) -> dict:
        self.breather_enabled = bool(args["enabled"])
        if not self.breather_enabled:
            self.breather.stop("disabled by the clinic")
        self._event("breather_enabled" if self.breather_enabled else "breather_disabled", self._signal_s())
        self._publish_status(self._box_state)
        return {"enabled": self.breather_enabled}

    def _cmd_selftest(self, args: dict) -> dict:
        """The self-test that can run while a night is recorded. The chip checks (ID, test signal, noise,
        lead-off, impedance) and driving the light and speaker would take the chip from acquisition and
        stimulate a sleeper, so they are not run: the reply lists them under ``not_checked``
        (``bedtime selftest`` runs them between nights)."""
        from appliance.selftest import _broker_check

        checked = []
        light, sound = self.outputs.levels()
        in_session = self._breather_state() in ("cue", "light")
        checked.append({"name": "outputs_off", "passed": in_session or (light == 0.0 and sound == 0.0),
                        "detail": f"light {light:.3f}, sound {sound:.3f}"
                                  + (" (breather session running)" if in_session else " (no session: must be 0)")})
        age = None if self._last_frames_wall is None else time.monotonic() - self._last_frames_wall
        c = self.hw.ring.counters
        checked.append({"name": "acquisition_running",
                        "passed": age is not None and age <= NO_DATA_FAULT_S and self._fault_active is None,
                        "detail": (f"last frames {age:.1f} s ago" if age is not None else "no frames yet")
                                  + f"; {self.counters['frames']} frames, {int(c.dropped)} dropped, "
                                    f"{self.counters['frames_lost']} lost"
                                  + (f"; fault: {self._fault_active}" if self._fault_active else "")})
        ok, detail = _broker_check(self.cfg, timeout_s=5.0)
        checked.append({"name": "broker", "passed": ok, "detail": detail})
        skipped = "a night is being recorded: the chip stays with acquisition and nothing stimulates the sleeper"
        not_checked = {name: skipped for name in ("chip_id", "test_signal", "noise", "lead_off", "impedance",
                                                  "light_drive", "sound_drive")}
        passed = all(r["passed"] for r in checked)
        self._event("selftest", self._signal_s(), passed=passed, checked=[r["name"] for r in checked])
        return {"passed": passed, "scope": "partial (night in progress)", "checked": checked,
                "not_checked": not_checked}

    def _cmd_restart(self, args: dict) -> dict:
        self.restart_requested = True
        self._event("restart_requested", self._signal_s(), reason=args.get("reason", ""))
        self.stop()
        return {"restarting": True}

    # ---- events, faults, telemetry ---------------------------------------------------------------
    def _event(self, kind: str, time_s: float, **fields: Any) -> None:
        ev = {"time_s": round(float(time_s), 3), "kind": kind, **fields}
        with self._events_lock:
            self.events.append(ev)
            f = getattr(self, "_events_file", None)  # None until the night's folder exists
            if f is not None and not f.closed:
                f.write(ev)
        if self.recorder is not None and not getattr(self.recorder, "_closed", True):
            detail = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("title",))
            self.recorder.annotate(time_s, f"{kind} {detail}".strip()[:200])
        if self.link is not None and kind not in ("alert",):
            try:
                # the envelope carries the box id already
                self.link.publish_event(kind, night_time_s=round(float(time_s), 1),
                                        **{k: v for k, v in fields.items() if k not in ("kind", "box_id")})
            except Exception as e:  # reporting must never take the night down
                logger.error("could not queue event %s: %s", kind, e)
        logger.info("event %s at %.1f s %s", kind, time_s, fields)

    def _fault(self, reason: str, time_s: float, *, kind: str = "fault") -> None:
        """Any internal fault: outputs off first, then say so."""
        try:
            if hasattr(self, "breather"):
                self.breather.fault(reason)
        finally:
            if hasattr(self, "outputs"):
                self.outputs.all_off()
        self._fault_active = reason
        self._event("fault", time_s, reason=reason, fault_kind=kind)

    def _telemetry(self, sig_s: float, cpu_mark: tuple[float, float]) -> tuple[float, float]:
        wall, cpu = time.monotonic(), time.process_time()
        cpu_pct = 100.0 * (cpu - cpu_mark[1]) / max(wall - cpu_mark[0], 1e-6)
        recent = self.epochs[-10:]
        ok_pct = 100.0 * sum(e.quality.ok for e in recent) / len(recent) if recent else None
        c = self.hw.ring.counters
        fields = {"signal_quality_percent": ok_pct, "frames_dropped": int(c.dropped),
                  "frames_corrupt": int(c.corrupt), "frames_lost": self.counters["frames_lost"],
                  "drdy_stalls": self.counters["drdy_stalls"], "cpu_percent": round(cpu_pct, 2),
                  "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "night_time_s": round(sig_s, 1), "lead_off_channels": sorted(c + 1 for c in self._lead_off_channels)}
        if self.link is not None:
            try:
                self.link.publish_telemetry(**{k: v for k, v in fields.items() if v is not None})
            except Exception as e:
                logger.error("telemetry failed: %s", e)
        return wall, cpu

    # ---- the morning report ----------------------------------------------------------------------
    def _render_png(self) -> Path | None:
        """The hypnogram PNG, drawn in a child process so matplotlib never sits in the night-long process."""
        return _render_png_child(self.night_dir)

    def _write_report(self) -> tuple[dict | None, Path | None, Path | None]:
        if not self.epochs:
            return None, None, None
        probs = np.stack([e.stage_probs for e in self.epochs])
        live = np.array([int(e.stage) for e in self.epochs], dtype=np.int8)
        hyp = live
        try:
            hyp = np.argmax(self.stager.smooth_night(probs), axis=1).astype(np.int8)
        except Exception as e:  # the report must still come out with the live stages
            logger.warning("offline smoothing failed (%s); the report uses the live stages", e)
        from collections import Counter

        flags: Counter = Counter()
        for e in self.epochs:
            flags.update(e.quality.flags)
        c = getattr(self, "_ring_at_end", None) or self.hw.ring.counters
        night = NightRecord(hypnogram=hyp, live_hypnogram=live, events=list(self.events),
                            quality_ok=np.array([e.quality.ok for e in self.epochs]), quality_flags=flags,
                            counters={**self.counters, "frames_dropped": c.dropped, "frames_corrupt": c.corrupt},
                            start=self.start, box_id=self.cfg.box.id, box_name=self.cfg.box.name,
                            audit_head=self._audit_head())
        try:
            rep, js, _ = write_report(night, self.night_dir, png=False)
        except Exception as e:
            logger.error("could not write the report: %s", e)
            return None, None, None
        png = self._render_png()
        if self.link is not None:
            try:
                self.link.publish_report({k: v for k, v in rep.items() if k != "hypnogram"}
                                         | {"hypnogram": rep["hypnogram"]})
            except Exception as e:
                logger.error("could not queue the report: %s", e)
        return rep, js, png


def _render_png_child(night_dir: Path) -> Path | None:
    """Run ``python -m appliance.report_draw NIGHT_DIR`` and wait at most :data:`PNG_CHILD_TIMEOUT_S`.

    ``report.json`` is written before this runs: a child that fails or hangs (killed at the timeout) costs the
    morning its picture, never its report. Returns the PNG's path, or None when there is none.
    """
    import subprocess
    import sys

    try:
        subprocess.run([sys.executable, "-m", "appliance.report_draw", str(night_dir)], check=True,
                       capture_output=True, text=True, timeout=PNG_CHILD_TIMEOUT_S)
    except (subprocess.SubprocessError, OSError) as e:
        err = getattr(e, "stderr", "") or ""
        logger.error("could not draw the hypnogram: %s %s", e, err[-500:])
        return None
    return night_dir / HYPNOGRAM_PNG


def make_link(cfg: BoxConfig, *, model_versions: dict, simulated: bool = False) -> Any:
    """The MQTT link for this box, configured from ``[mqtt]``, validating pushed configs with our validator.

    ``simulated`` (the chip simulator instead of the hardware) is carried by every retained status, the last will
    included."""
    from appliance.protocol.boxconfig import validate_config
    from appliance.mqtt import BoxLink, TLSSettings

    m = cfg.mqtt
    tls = None
    if m.tls_ca:
        tls = TLSSettings(ca_file=Path(m.tls_ca), cert_file=Path(m.tls_cert) if m.tls_cert else None,
                          key_file=Path(m.tls_key) if m.tls_key else None)
    password = Path(m.password_file).read_text().strip() if m.password_file else None
    return BoxLink(box_id=cfg.box.id, host=m.host, port=m.port, outbox_path=Path(cfg.box.state_dir) / "outbox.sqlite",
                   tls=tls, username=m.username or None, password=password, firmware_version=__version__,
                   model_versions=model_versions, keepalive_s=m.keepalive_s, config_validator=validate_config,
                   outbox_max_bytes=int(m.outbox_max_mb * 1024 * 1024), status_fields={"simulated": simulated})


def _systemd_notifier() -> Callable[[str], None]:
    """sd_notify through the ``sdnotify`` package; a no-op outside systemd (no NOTIFY_SOCKET)."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return lambda _msg: None
    import sdnotify

    n = sdnotify.SystemdNotifier()
    return lambda msg: n.notify(msg)
