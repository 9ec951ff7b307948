"""One night's work per epoch: stager -> loop model -> loop episodes -> breather, and what they say.

:class:`NightPipeline` is what the daemon's pipeline thread drives, in signal time (samples / data rate):

* :meth:`NightPipeline.take` for each pop from the ring (:class:`appliance.epoch_assembler.Chunk`): written to the
  EDF+ recording, counted into the signal clock, cut into epochs;
* :meth:`NightPipeline.epoch_done` once per finished epoch (:class:`appliance.epoch_assembler.AssembledEpoch`):
  signal quality and arousal features, electrode on/off events, stage probabilities, P(loop), the episode tracker
  (:class:`appliance.episodes.LoopEpisodes`: loop events and alerts), the breather's decision, then the epoch's
  row in epochs.jsonl, its EDF+ stage annotation, the MQTT stage message and the systemd status;
* :meth:`NightPipeline.tick` between epochs: the breather's ramps, on a grid of :data:`TICKS_PER_S` a second of
  signal;
* :meth:`NightPipeline.hardware_event` and :meth:`NightPipeline.fault` for the acquisition layer's reports;
* :meth:`NightPipeline.telemetry_if_due` every ``telemetry.interval_s`` of signal.

The breather emits its state changes (:class:`appliance.breather.BreatherChange`); :class:`BreatherEvents` turns
them into ``breather_started``/``breather_light``/``breather_ended`` events and a status update at the pipeline's
next step (after each epoch's decision and after each run of ticks), with that step's signal time.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import resource
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from appliance.alerts import AlertSender
from appliance.breather import SESSION_STATES, BreatherChange
from appliance.dsp import epoch_checks
from appliance.edfplus import STAGE_ANNOTATION
from appliance.epoch import Epoch
from appliance.epoch_assembler import AssembledEpoch, Chunk, EpochAssembler
from appliance.episodes import LoopEpisodes
from appliance.morning_report import write_morning_report
from appliance.night_journal import NightJournal
from appliance.protocol.boxconfig import BoxConfig
from appliance.protocol.safety import BreatherConfig
from appliance.protocol.stages import EPOCH_S, STAGE_NAMES

if TYPE_CHECKING:  # the parts are built by appliance.night_parts and handed over in equip()
    from appliance.breather import Breather
    from appliance.hardware import BoxOutputs
    from appliance.loop_model import LoopDetector
    from appliance.mqtt import BoxLink
    from appliance.ring import RingCounters
    from appliance.stager import Stager

logger = logging.getLogger(__name__)

NO_DATA_FAULT_S = 2.0
"""Wall-clock seconds without a single frame before the pipeline itself declares a fault (the driver's own
DRDY-stall detection, at 4 sample periods, normally fires long before); also how fresh frames must be for the
``selftest`` command's ``acquisition_running``."""

TICKS_PER_S = 10
"""The breather is ticked on a grid of signal time, this many points a second (what :class:`Breather` is made for,
~10 Hz: smooth ramps, sound bursts down to 0.2 s). A grid, not the pops' ends, so that a night's outputs do not
depend on how its frames happened to arrive."""

STAGES_FLOWING_S = 2 * EPOCH_S + 15.0
"""For an update's health check, the pipeline counts as staging when its last epoch came out within this many
wall-clock seconds (two epochs and some slack), or, before the night's first epoch, when frames are arriving."""


def _state_name(state: Any) -> str:
    return str(getattr(state, "value", state)).lower() if state is not None else "?"


class BreatherEvents:
    """Listens to the breather's state changes and reports them at the pipeline's steps.

    A change is taken note of when it happens (from whichever thread made it); :meth:`report` compares the
    state now with the state last reported, so a step sees one net change (cue -> light -> refractory within one
    run of ticks is one ``breather_ended``), as the night's events have always been recorded.

    Parameters
    ----------
    record_event : callable
        ``record_event(kind, time_s, **fields)``.
    publish_status : callable
        Called with no arguments after each reported change (the retained status carries the breather's state).
    state : str
        The breather's state when the listener is attached (``"idle"``).
    """

    def __init__(self, *, record_event: Callable[..., None], publish_status: Callable[[], None], state: str) -> None:
        self._record_event = record_event
        self._publish_status = publish_status
        self._lock = threading.Lock()
        self.state = state  # the breather's state now
        self._reported = state  # the state the last step reported
        self.session = 0
        self.session_reports: list[dict] = []  # every session that ended, in order

    def on_change(self, change: BreatherChange) -> None:
        """The breather's ``on_change`` listener: note the change (no I/O here, the breather's lock is held)."""
        with self._lock:
            self.state = _state_name(change.after)
            self.session = change.session
            if change.session_report is not None:
                self.session_reports.append(change.session_report)

    @property
    def in_session(self) -> bool:
        """A breather session (cue or light) is running."""
        return self.state in SESSION_STATES

    def report(self, t: float, index: int | None = None) -> None:
        """Record the net change since the last step as events at ``t`` (signal time, s), with ``epoch_index``
        when the step is an epoch's decision."""
        with self._lock:
            after, before = self.state, self._reported
            if after == before:
                return
            self._reported = after
            session, last = self.session, (self.session_reports[-1] if self.session_reports else {})
        self._publish_status()
        fields: dict[str, Any] = {} if index is None else {"epoch_index": index}
        if after == "cue" and before not in SESSION_STATES:
            self._record_event("breather_started", t, session=session, **fields)
        elif after == "light" and before == "cue":
            self._record_event("breather_light", t, **fields)
        elif before in SESSION_STATES and after not in SESSION_STATES:
            self._record_event("breather_ended", t, outcome=last.get("outcome", after), reason=last.get("reason", ""),
                               duration_s=last.get("duration_s"), max_light=last.get("max_light"),
                               max_volume=last.get("max_volume"), **fields)


class NightPipeline:
    """The night's per-epoch work and its reporting (see the module's docstring).

    Parameters
    ----------
    cfg : BoxConfig
        The running configuration.
    fs_hz : int
        The chip's data rate, samples per second (the signal clock is ``counters["frames"] / fs_hz``).
    n_channels : int
        Channels per frame.
    journal : NightJournal
        Where the night's events and rows go.
    notify : callable
        systemd notifications (``STATUS=``).
    progress : callable or None
        ``progress(end_s)`` after each epoch, with the epoch's end in signal time, s (the demo's progress bar).

    Attributes
    ----------
    counters : dict
        The night's counters (``frames``, the signal clock; ``frames_lost``, ``drdy_stalls``, ...), in the report.
    errors : collections.Counter
        Failures on paths that must go on regardless (a failed audit write, a failed publish), by name.
    alerts : AlertSender
        How the parent's alerts go out (its ``link`` and ``audit`` are set once they exist).
    epochs : list of Epoch
        The night's epochs so far.
    epoch_wall_s : list of float
        ``time.monotonic()`` when each epoch had been processed.
    output_trace : list of (float, float, float)
        Every change of (light, sound) level with its signal time, s.
    fault_active : str or None
        The fault being reported, until frames flow again.
    last_frames_wall : float or None
        ``time.monotonic()`` when frames last came off the ring.
    breather_enabled : bool
        False after the clinic switched the breather off (the detector and alerts keep running).
    """

    def __init__(self, cfg: BoxConfig, *, fs_hz: int, n_channels: int, journal: NightJournal,
                 notify: Callable[[str], None], progress: Callable[[float], None] | None = None) -> None:
        self.cfg = cfg
        self.fs_hz, self.n_channels = int(fs_hz), int(n_channels)
        self.journal = journal
        self.counters: dict[str, int] = {"frames": 0, "frames_lost": 0, "frames_corrupt": 0, "drdy_stalls": 0,
                                         "chip_reinits": 0, "no_data_faults": 0, "epochs_bad_signal": 0}
        self.errors: collections.Counter[str] = collections.Counter()
        self.alerts = AlertSender(record_event=journal.event, clock=self.signal_s, errors=self.errors)
        self._notify, self._progress = notify, progress
        self.epochs: list[Epoch] = []
        self.epoch_wall_s: list[float] = []
        self.output_trace: list[tuple[float, float, float]] = []
        self.fault_active: str | None = None
        self.last_frames_wall: float | None = None
        self.breather_enabled = True
        self.box_state = "online"  # the status last published (recording during a night)
        self.link: BoxLink | None = None
        self.stager: Stager | None = None
        self.loop_detector: LoopDetector | None = None
        self.breather: Breather | None = None
        self.outputs: BoxOutputs | None = None
        self.episodes: LoopEpisodes | None = None
        self.breather_events: BreatherEvents | None = None
        self._lead_off_channels: frozenset[int] = frozenset()
        self._acq_event_at: dict[str, float] = {}
        self._last_levels = (0.0, 0.0)
        self._tick_index = 0  # the breather's last tick was at _tick_index / TICKS_PER_S s of signal
        self._last_tick_s = 0.0
        self._next_telemetry_s = cfg.telemetry.interval_s  # signal time, s
        self._cpu_mark = (time.monotonic(), time.process_time())  # (wall, CPU) s at the last telemetry

    def equip(self, *, stager: Stager, loop_detector: LoopDetector | None, breather: Breather,
              link: BoxLink | None) -> None:
        """The night's parts, once built; the breather's state changes come to :attr:`breather_events`, and the
        episode tracker counts an epoch as loop at the breather's ``p_loop_threshold``. (:attr:`outputs`, the
        light and sound, are set by the daemon as soon as they exist: a fault before the parts are built still
        turns them off.)"""
        self.stager, self.loop_detector, self.breather, self.link = stager, loop_detector, breather, link
        threshold = BreatherConfig.from_dict(self.cfg.breather).p_loop_threshold
        self.episodes = LoopEpisodes(box_name=self.cfg.box.name, threshold=threshold)
        self.breather_events = BreatherEvents(record_event=self.journal.event, state=_state_name(breather.state),
                                              publish_status=self._publish_breather_status)
        breather.on_change = self.breather_events.on_change

    def signal_s(self) -> float:
        """Signal time now: s of signal since the night's start."""
        return self.counters["frames"] / self.fs_hz

    # ---- the night's start and end -------------------------------------------------------------------
    def begin(self, start: dt.datetime, *, simulated: bool, start_reports: list[dict]) -> None:
        """The night's folder is open: say so (``night_started``, then any ``config_rejected`` report from choosing
        this start's configuration) and publish the ``recording`` status."""
        box = self.cfg.box
        self._cpu_mark = (time.monotonic(), time.process_time())  # telemetry's CPU share counts from here
        self.journal.event("night_started", 0.0, box_id=box.id, box_name=box.name,
                           night_start=start.strftime("%Y-%m-%dT%H:%M:%SZ"), simulated=simulated)
        for r in start_reports:  # a pushed config this start could not use, and what it fell back to
            self.journal.event("config_rejected", 0.0, **r)
        try:
            self.publish_status("recording")
        except Exception as e:  # noqa: BLE001 - reporting must never take the night down
            self.errors["status_publish"] += 1
            logger.error("could not publish the recording status: %s", e)

    def end(self, night_dir: Path, *, start: dt.datetime, ring_counters: RingCounters,
            audit_head: dict | None) -> tuple[dict | None, Path | None, Path | None]:
        """The night is over (acquisition stopped): ``night_ended``, the recording closed, the morning report
        written and published (:func:`appliance.morning_report.write_morning_report`); returns (report,
        report.json, PNG), each None when it could not be made. ``ring_counters`` are the ring's as the night
        ended."""
        self.journal.event("night_ended", self.signal_s())
        self.journal.close_recording()
        box = self.cfg.box
        made = write_morning_report(night_dir=night_dir, epochs=self.epochs, events=self.journal.events,
                                    stager=self.stager, counters=self.counters, ring_counters=ring_counters,
                                    start=start, box_id=box.id, box_name=box.name, audit_head=audit_head,
                                    link=self.link)
        self.journal.close()
        return made

    def publish_idle(self, *, audit_head: dict | None) -> None:
        """The retained ``idle`` status after the night; the audit head goes with it (a copy out of the box's
        reach)."""
        try:
            self.publish_status("idle", breather_state="off", **({"audit_head": audit_head} if audit_head else {}))
        except Exception as e:  # the night is recorded; a status that cannot go out waits for next time
            logger.error("could not publish the idle status: %s", e)

    # ---- the signal as it comes -------------------------------------------------------------------
    def take(self, chunk: Chunk, assembler: EpochAssembler) -> None:
        """One pop from the ring, converted by ``assembler``: recorded, counted into the signal clock, and cut
        into epochs; the breather is ticked along and sees each epoch as it ends."""
        recorder = self.journal.recorder
        if chunk.lost > 0:
            self.counters["frames_lost"] += chunk.lost
            if chunk.filled and recorder is not None:
                recorder.annotate(self.signal_s(), f"Frames lost: {chunk.lost} (flat fill)")
        if recorder is not None:
            recorder.write(chunk.uv)
        for n, epoch in assembler.slices(chunk):
            self.counters["frames"] += n
            if epoch is None:
                self.tick()
            else:
                # At an epoch boundary the breather first sees the epoch that just ended, then the clock
                # reaches the boundary: a session whose light is due at the same second as an epoch staged
                # W (or N3, or bad signal) ends instead of turning the light on for an instant.
                self.tick(up_to_now=False)
                self.epoch_done(epoch, end_s=self.signal_s())
                self.tick()

    # ---- the breather between epochs ---------------------------------------------------------------
    def tick(self, *, up_to_now: bool = True) -> None:
        """Tick the breather at every point of its grid (:data:`TICKS_PER_S` a second of signal) passed since the
        last tick, up to now (``up_to_now=False``: only those before now, so that an epoch ending now is seen
        first).

        Only grid points, never "now" itself: where a pop of frames happens to end must not move the breather's
        clock, or the same night replayed twice would stamp its events differently (a pop ending mid-second
        moved every later tick off the whole seconds: breather_light at 179.0 or 180.0 s).
        """
        frames_x_ticks = self.counters["frames"] * TICKS_PER_S
        # the last grid index k with k / TICKS_PER_S <= now (< now), in integers: k * fs <= frames * TICKS_PER_S
        last_k = (frames_x_ticks if up_to_now else frames_x_ticks - 1) // self.fs_hz
        k = self._tick_index + 1
        if k > last_k:
            self.breather_events.report(self._last_tick_s)
            return
        if self._last_levels == (0.0, 0.0) and not self.breather_events.in_session:
            # No session and both outputs off: a tick has nothing to ramp and nothing to end (only an epoch's
            # decision starts a session, on this thread), so only the run's last tick is made; it still forces
            # off an output found on, and leaves the breather's clock where the whole run would have. (In a
            # replay a run is a hundred ticks; in real time, a few.)
            k = last_k
        while k <= last_k:
            t = k / TICKS_PER_S  # exact on the whole seconds (and the epoch boundaries): not a sum of 0.1 steps
            self.breather.tick(t)
            self._trace_outputs(t)
            self._tick_index, self._last_tick_s = k, t
            k += 1
        self.breather_events.report(self._last_tick_s)

    def _trace_outputs(self, t: float) -> None:
        """Keep every change of the light/sound level with its signal time (the report and tests read it), and
        mirror it to the simulated-GPIO file. Outside a session with both outputs off there is nothing to read."""
        if self._last_levels == (0.0, 0.0) and not self.breather_events.in_session:
            return
        lv = self.outputs.levels()
        if lv != self._last_levels:
            self.output_trace.append((t, lv[0], lv[1]))
            self._last_levels = lv
            self.outputs.sync_mirror()

    # ---- one epoch ---------------------------------------------------------------------------------
    def epoch_done(self, assembled: AssembledEpoch, *, end_s: float) -> None:
        """Stage, score and act on one finished epoch that ends at ``end_s`` (signal time, s)."""
        ch = self.cfg.acquisition.staging_channel
        index = len(self.epochs)
        self.epoch_wall_s.append(time.monotonic())
        x = assembled.staging_uv  # channel ch (the assembler's staging channel, from the same config), float64
        # LOFF_STATP/N bit n-1 = channel n; any electrode of the staging channel off spoils its epoch
        bits = assembled.lead_off_bits
        off_channels = frozenset(i for i in range(self.n_channels) if bits >> i & 1) if bits else frozenset()
        if off_channels != self._lead_off_channels:
            if off_channels - self._lead_off_channels:
                self.journal.event("electrode_off", end_s, channels=sorted(c + 1 for c in off_channels))
            if self._lead_off_channels - off_channels:
                self.journal.event("electrode_on", end_s,
                                   channels=sorted(c + 1 for c in self._lead_off_channels - off_channels))
            self._lead_off_channels = off_channels
        # epoch_quality and arousal_features in one pass (their two high-pass filters side by side)
        quality, arousal = epoch_checks(x, fs_hz=self.fs_hz, lead_off=ch in off_channels,
                                        frames_lost=assembled.frames_lost)
        probs = np.asarray(self.stager.stage_epoch(assembled.model_uv), dtype=np.float64)
        epoch = Epoch(index=index, start_sample=index * int(round(EPOCH_S * self.fs_hz)), end_time_s=end_s,
                      quality=quality, arousal=arousal, stage_probs=probs)
        p_loop = float(self.loop_detector.update(epoch))
        epoch = dataclasses.replace(epoch, p_loop=p_loop)
        if not quality.ok:
            self.counters["epochs_bad_signal"] += 1
        self.epochs.append(epoch)
        self._decide(epoch, index=index, p_loop=p_loop, end_s=end_s)
        stage = epoch.stage
        self.journal.epochs_file.write({
            "index": index, "end_time_s": end_s, "stage": int(stage),
            "probs": [round(float(p), 5) for p in probs], "p_loop": round(p_loop, 5), "ok": quality.ok,
            "flags": sorted(quality.flags),
        })
        recorder = self.journal.recorder
        if recorder is not None:
            recorder.annotate(end_s - EPOCH_S, STAGE_ANNOTATION[int(stage)], EPOCH_S)
            if not quality.ok:
                recorder.annotate(end_s - EPOCH_S, "Bad signal: " + ",".join(sorted(quality.flags)), EPOCH_S)
        if self.link is not None:
            self.link.publish_stage(epoch)
            if self.alerts.waiting:
                self.alerts.retry_unsent()
        self._notify(f"STATUS=epoch {index} {STAGE_NAMES[stage] if stage >= 0 else '?'} p_loop={p_loop:.2f} "
                     f"signal {'ok' if quality.ok else 'bad'}")
        if self._progress is not None:
            self._progress(end_s)

    def _decide(self, epoch: Epoch, *, index: int, p_loop: float, end_s: float) -> None:
        """The episode tracker and the breather on one epoch; the alert they call for, if any."""
        episodes = self.episodes
        loop_event = episodes.on_epoch(index=index, p_loop=p_loop, signal_ok=epoch.quality.ok)
        if loop_event is not None:
            self.journal.event(loop_event[0], end_s, **loop_event[1])
        if self.breather_enabled:
            self.breather.on_epoch(epoch)
            self.breather_events.report(end_s, index)
            alert = episodes.after_breather(index=index, p_loop=p_loop, night_time_s=self.signal_s(),
                                            session_reports=self.breather_events.session_reports,
                                            in_session=self.breather_events.in_session,
                                            unavailable=self.breather.unavailable)
        else:  # the clinic switched the breather off: the parent hears about the loop directly
            alert = episodes.breather_off(index=index, p_loop=p_loop, night_time_s=end_s)
        if alert is not None:
            self.alerts.send(alert)

    def on_escalate(self, payload: dict | None = None, *args: Any) -> None:
        """The breather's ``on_escalate``: a session ended with the loop still going; tell the parent."""
        self.alerts.send(self.episodes.escalated(payload, night_time_s=self.signal_s()))

    # ---- the clinic's switch, status ------------------------------------------------------------
    def set_breather_enabled(self, enabled: bool) -> None:
        """The clinic switches the breather on or off (off stops a running session at once)."""
        self.breather_enabled = bool(enabled)
        if not self.breather_enabled:
            self.breather.stop("disabled by the clinic")
        self.journal.event("breather_enabled" if self.breather_enabled else "breather_disabled", self.signal_s())
        self.publish_status(self.box_state)

    def breather_state(self) -> str:
        """The breather's state now (``idle``, ``cue``, ``light``, ``escalate``, ``refractory``, ``fault``)."""
        return self.breather_events.state if self.breather_events is not None else "?"

    def publish_status(self, state: str, *, breather_state: str | None = None, **fields: Any) -> None:
        """The retained status, with the breather's state (``disabled`` when the clinic turned it off), which
        Home Assistant shows as the box's "Breather" sensor (appliance/homeassistant.py), and ``fields``
        (e.g. ``audit_head`` when the night ends)."""
        self.box_state = state
        if self.link is None:
            return
        if breather_state is None:
            breather_state = self.breather_state() if self.breather_enabled else "disabled"
        self.link.publish_status(state, breather_state=breather_state, **fields)

    def _publish_breather_status(self) -> None:
        try:
            self.publish_status(self.box_state)
        except Exception as e:  # reporting must never take the night down
            logger.error("could not publish the breather state: %s", e)

    # ---- faults and the acquisition layer's reports -------------------------------------------------
    def fault(self, reason: str, time_s: float, *, kind: str = "fault") -> None:
        """Any internal fault: outputs off first, then say so."""
        try:
            if self.breather is not None:
                self.breather.fault(reason)
        finally:
            if self.outputs is not None:
                self.outputs.all_off()
        self.fault_active = reason
        self.journal.event("fault", time_s, reason=reason, fault_kind=kind)

    def frames_flowing(self, now: float) -> None:
        """Frames came off the ring at ``now`` (``time.monotonic()``, s): a fault being reported is over
        (stimulation resumes only after the breather's own minimum gap)."""
        self.last_frames_wall = now
        if self.fault_active is None:
            return
        self.journal.event("fault_cleared", self.signal_s(), reason=self.fault_active)
        self.fault_active = None
        clear = getattr(self.breather, "clear_fault", None)
        if clear is not None:
            clear()

    def stages_flowing(self) -> tuple[bool, str]:
        """Is the night still staging? (An update's health check; the daemon adds whether it is stopping.)"""
        now = time.monotonic()
        if self.fault_active is not None:
            return False, f"fault active: {self.fault_active}"
        if self.epoch_wall_s:
            age = now - self.epoch_wall_s[-1]
            return age <= STAGES_FLOWING_S, f"last epoch staged {age:.0f} s ago"
        if self.last_frames_wall is not None and now - self.last_frames_wall <= NO_DATA_FAULT_S:
            return True, "frames arriving; first epoch not yet due"
        return False, "no frames and no epoch yet"

    def hardware_event(self, ev: dict) -> None:
        """One fault the acquisition layer reported (from its thread, through a bounded queue)."""
        kind = ev.get("kind", "fault")
        reason = ev.get("reason", "")
        t = self.signal_s()
        if kind == "stall":
            self.counters["drdy_stalls"] += 1
            self.fault(f"DRDY stall: {reason}", t, kind="drdy_stall")
        elif kind == "reinit":
            self.counters["chip_reinits"] += 1
            self.journal.event("chip_reinit", t, reason=reason)
        elif kind == "reinit_failed":
            self.fault(f"chip re-initialisation failed: {reason}", t, kind=kind)
        else:  # missed_drdy, corrupt, ring_full, stuck_channel, railed, lead_off: reported; the epoch's
            # quality verdict keeps the breather away from the signal they spoil. At most one event per kind
            # per epoch (a loaded host can miss hundreds of edges a minute); the counts go in telemetry.
            key = f"acq_{kind}"
            self.counters[key] = self.counters.get(key, 0) + 1
            last = self._acq_event_at.get(kind)
            if last is None or t - last >= EPOCH_S:
                self._acq_event_at[kind] = t
                self.journal.event(f"acquisition_{kind}", t, reason=reason, count_so_far=self.counters[key])

    def telemetry_if_due(self, *, ring_counters: Callable[[], RingCounters]) -> None:
        """Publish the telemetry message (QoS 0) when ``telemetry.interval_s`` more seconds of signal have passed
        since the last one; ``ring_counters()`` gives the ring's (dropped, corrupt), read only then (it is a call
        into the ring, and this is asked after every pop)."""
        sig_s = self.signal_s()
        if sig_s < self._next_telemetry_s:
            return
        self._next_telemetry_s += self.cfg.telemetry.interval_s
        wall, cpu = time.monotonic(), time.process_time()
        cpu_pct = 100.0 * (cpu - self._cpu_mark[1]) / max(wall - self._cpu_mark[0], 1e-6)
        self._cpu_mark = (wall, cpu)
        recent = self.epochs[-10:]
        ok_pct = 100.0 * sum(e.quality.ok for e in recent) / len(recent) if recent else None
        c = ring_counters()
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
