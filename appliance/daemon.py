"""The appliance daemon: one process from the chip to the phone, all night. Lifecycle and threads only.

Threads and the bounded hand-offs between them (the modules doing the work in brackets)::

    acquisition thread:  ADS1299 (spidev, DRDY) --frames--> C ring buffer (fixed capacity; overflow counted)
    pipeline thread:     ring --pop <= 1 s--> microvolts, gap fill, DSP, 30-s epochs [epoch_assembler]
                               --> EDF+ recorder, events.jsonl, epochs.jsonl [night_journal]
                         epoch --> stager --> loop model --> loop episodes --> breather [night_pipeline]
                               --> light / sound (gpiozero), MQTT stage (QoS 0), events and alerts [alerts] (QoS 1)
                         night over --> report.json, PNG in a child process [morning_report]
    MQTT link thread:    paho-mqtt; persistent SQLite outbox with a row and byte cap; the clinic's commands and
                         configs on its worker thread [clinic_commands]

This module builds the parts [night_parts], starts the threads, runs the pipeline loop and ends the night,
whatever happens.

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

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from appliance.clinic_commands import ClinicCommands
from appliance.epoch_assembler import EpochAssembler
from appliance.hardware import SIM_OUTPUTS_FILE, BoxOutputs, HardwareEdge
from appliance.night_journal import NightJournal, start_night_dir
from appliance.night_parts import (PipelineParts, audit_head, load_loop_detector, load_stager, make_breather,
                                   open_audit_log, systemd_notifier)
from appliance.night_pipeline import NO_DATA_FAULT_S, NightPipeline
from appliance.nightfolder import NIGHT_EDF
from appliance.protocol.boxconfig import BoxConfig

if TYPE_CHECKING:  # built in run(), when the night starts
    from appliance.audit import AuditLog
    from appliance.mqtt import BoxLink
    from appliance.ring import RingCounters
    from appliance.updates import UpdateManager

logger = logging.getLogger(__name__)

__all__ = ["Daemon", "NightResult", "PipelineParts"]


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
        Stop after this much signal, s (default: run until stopped or the replay ends).
    file_config : BoxConfig, optional
        The box's own file, without the clinic's pushed configuration (default ``config``): a new push is
        merged over this one and pre-flighted (:mod:`appliance.pushed_config`).
    on_running : callable, optional
        Called once when the night has staged ``proven_after_s`` of signal (at least one epoch), so the
        configuration becomes the last known good one; not at READY=1, which a config that starts the chip but not
        the night would pass.
    proven_after_s : float
        Seconds of signal before :attr:`proven` and ``on_running`` (:data:`appliance.pushed_config.PROBATION_S`
        for a pushed configuration; default 0: the first epoch).
    start_reports : list of dict, optional
        ``config_rejected`` reports from choosing this start's configuration, published once the link is up.
    """

    def __init__(self, config: BoxConfig, *, hardware: HardwareEdge, parts: PipelineParts | None = None,
                 progress: Callable[[float, float], None] | None = None,
                 notify: Callable[[str], None] | None = None, max_signal_s: float | None = None,
                 file_config: BoxConfig | None = None, on_running: Callable[[], None] | None = None,
                 start_reports: list[dict] | None = None, proven_after_s: float = 0.0) -> None:
        self.cfg = config
        self.hw = hardware
        self.parts = parts or PipelineParts()
        self.max_signal_s = max_signal_s
        self._on_running = on_running
        self._start_reports = list(start_reports or [])
        self._notify = notify or systemd_notifier()
        self._stop = threading.Event()
        self.running = self.restart_requested = self.ended_by_limit = False
        self.proven = False  # the night has staged proven_after_s of signal: on_running was called
        self.proven_after_s = proven_after_s
        self.acquisition_stopped: str | None = None  # why no frame will come any more (the night was ended)
        self.fs_hz = int(hardware.sample_rate_sps)
        self.journal = NightJournal()
        self.progress = progress
        self.night = NightPipeline(config, fs_hz=self.fs_hz, n_channels=int(hardware.n_channels),
                                   journal=self.journal, notify=self._notify, progress=self._progress_at)
        self.counters, self.errors, self.alerts = self.night.counters, self.night.errors, self.night.alerts
        self.commands = ClinicCommands(config, file_config=file_config or config, journal=self.journal,
                                       night=self.night, ring=hardware.ring, request_restart=self._request_restart,
                                       current_night=lambda: getattr(self, "night_dir", None))
        self.events, self.epochs, self.alerts_sent = self.journal.events, self.night.epochs, self.alerts.sent
        self.output_trace = self.night.output_trace
        self.link: BoxLink | None = None
        self.updates: UpdateManager | None = None  # when a clinic key is pinned
        self.audit: AuditLog | None = None

    def stop(self) -> None:
        """Ask the pipeline to finish the night (thread- and signal-safe)."""
        self._stop.set()

    def run(self) -> NightResult:
        """Record and watch one night; returns when stopped, when the replay ends, or after max_signal_s."""
        cfg = self.cfg
        t_wall0, t_cpu0 = time.monotonic(), time.process_time()
        state = Path(cfg.box.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        self.night_dir, self.start = start_night_dir(cfg.recording_dir)
        start = self.start
        night_open = False  # the folder is made once acquisition runs (a failed start leaves no empty night)
        mirror = state / SIM_OUTPUTS_FILE if self.hw.simulated else None
        self.outputs = self.night.outputs = BoxOutputs(cfg, self.hw.pin_factory, mirror=mirror)  # forced off
        report = rep_json = rep_png = None
        try:
            self._build_parts()
            self._install_signal_handlers()
            self.hw.start()
            self.journal.open(self.night_dir, cfg=cfg, n_channels=int(self.hw.n_channels), fs_hz=self.fs_hz,
                              start=start)
            night_open = True
            self.night.begin(start, simulated=bool(self.hw.simulated), start_reports=self._start_reports)
            self._pipeline_loop()
        except BaseException as e:
            self.night.fault(f"daemon error: {type(e).__name__}: {e}", self.night.signal_s())
            raise
        finally:
            self._notify("STOPPING=1")
            self.outputs.all_off()
            ring_at_end = self.hw.ring.counters  # before stopping: a stopping producer is not the night's
            try:
                self.hw.stop()
            finally:
                if night_open:
                    report, rep_json, rep_png = self.night.end(self.night_dir, start=start, ring_counters=ring_at_end,
                                                               audit_head=audit_head(self.audit))
                if self.link is not None:
                    self.night.publish_idle(audit_head=audit_head(self.audit))
                    if self._own_link:
                        self.link.wait_delivered(timeout_s=3.0)
                        self.link.stop()
                self.outputs.close()
                if self.audit is not None:
                    self.audit.close()
        return NightResult(night_dir=self.night_dir,
                           edf_path=self.night_dir / NIGHT_EDF if self.journal.recorder else None,
                           report_json=rep_json, report_png=rep_png, report=report, epochs=len(self.epochs),
                           events=list(self.events), counters=dict(self.counters),
                           cpu_s=time.process_time() - t_cpu0, wall_s=time.monotonic() - t_wall0)

    # ---- construction ----------------------------------------------------------------------------
    def _build_parts(self) -> None:
        cfg, p, event = self.cfg, self.parts, self.journal.event
        self.updates = self.commands.make_update_manager(stages_flowing=self._stages_flowing)
        if p.stager is None:
            p.stager = load_stager(cfg, updates=self.updates, record_event=event)
        if p.loop_detector is None:
            p.loop_detector = load_loop_detector(cfg)
        self._own_link = p.link is None and cfg.mqtt.enabled
        self.link = self.commands.open_link(p.link, stager=p.stager, loop_detector=p.loop_detector,
                                            simulated=bool(self.hw.simulated))
        self.journal.link = self.alerts.link = self.link
        breather = p.breather
        if breather is None:
            audit = self.audit = self.alerts.audit = open_audit_log(cfg, record_event=event)
            breather = make_breather(cfg, outputs=self.outputs, audit=audit, clock=self.night.signal_s,
                                     on_escalate=self.night.on_escalate)
        self.night.equip(stager=p.stager, loop_detector=p.loop_detector, breather=breather, link=self.link)

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())

    # ---- the pipeline thread ---------------------------------------------------------------------
    def _pipeline_loop(self) -> None:
        hw, night, counters = self.hw, self.night, self.counters
        # Real time: pop what is there (a fraction of a second). Replay: up to 10 s per step; the breather is
        # still ticked on its grid of signal time (night_pipeline.TICKS_PER_S) by NightPipeline.tick.
        block = self.fs_hz * (10 if hw.simulated and hw.poll_interval_s < 0.01 else 1)
        assembler = EpochAssembler(fs_hz=self.fs_hz, n_channels=int(hw.n_channels), gain=hw.gain,
                                   staging_channel=self.cfg.acquisition.staging_channel, missed_frames=hw.missed_frames)
        ready, total_s = False, hw.total_signal_s

        def ring_counters() -> RingCounters:  # read when telemetry is due, not after every pop
            return hw.ring.counters

        last_watchdog = last_data = time.monotonic()
        while not self._stop.is_set():
            for ev in hw.poll_events():  # faults the acquisition thread reported, through a bounded queue
                night.hardware_event(ev)
            want = block
            if hw.total_frames is not None:  # a replay: stop exactly at the end of the source
                want = min(block, hw.total_frames - counters["frames"])
                if want <= 0:
                    break
            frames = hw.ring.pop(want)
            now = time.monotonic()
            if now - last_watchdog >= 1.0:
                self._notify("WATCHDOG=1")
                last_watchdog = now
            if len(frames) == 0:
                if hw.finished(counters["frames"]):
                    break
                died = hw.acquisition_failure()
                if died is not None:  # no frame will come any more: end the night (bedtime run then exits 70)
                    for ev in hw.poll_events():
                        night.hardware_event(ev)
                    self.acquisition_stopped = f"{type(died).__name__}: {died}"[:300]
                    logger.error("the acquisition thread stopped (%s): ending the night", self.acquisition_stopped)
                    break
                if now - last_data > NO_DATA_FAULT_S and night.fault_active is None:
                    counters["no_data_faults"] += 1
                    night.fault("no data from the chip", night.signal_s())
                time.sleep(hw.poll_interval_s)
                continue
            last_data = now
            night.frames_flowing(now)
            if not ready:
                self._notify("READY=1")
                ready = self.running = True
            night.take(assembler.convert(frames), assembler)
            if not self.proven and night.epochs and night.signal_s() >= self.proven_after_s:
                self.proven = True
                if self._on_running is not None:
                    try:
                        self._on_running()
                    except Exception as e:  # bookkeeping of the config must never stop the night
                        logger.error("could not record the running configuration: %s", e)
            night.telemetry_if_due(ring_counters=ring_counters)
            if self.max_signal_s is not None and night.signal_s() >= self.max_signal_s:
                self.ended_by_limit = True
                break
        if total_s and self.progress:
            self.progress(night.signal_s(), total_s)

    def _progress_at(self, signal_s: float) -> None:
        """The replay's progress after each epoch (``signal_s``: its end, s)."""
        if self.progress is not None and self.hw.total_signal_s:
            self.progress(signal_s, self.hw.total_signal_s)

    # ---- asked from other threads ----------------------------------------------------------------
    def _request_restart(self) -> None:
        """The clinic's ``restart``: end the night; systemd starts the daemon again."""
        self.restart_requested = True
        self.stop()

    def _stages_flowing(self) -> tuple[bool, str]:
        """Is the running pipeline still staging? (The daemon's part of an update's health check.)"""
        if self._stop.is_set():
            return False, "the pipeline is stopping"
        return self.night.stages_flowing()

