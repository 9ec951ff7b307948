"""The breather: a gentle light-and-sound intervention policy, inside the envelope of ``appliance/protocol/safety.py``.

States (:class:`BreatherState`)::

    idle --loop confirmed in REM--> cue (soft tone bursts) --cue_s--> light (warm light rising slowly,
    bursts go on) --session end, loop still under way--> escalate (outputs off, parent alerted) --> refractory
    any session state --wake / button / fault / N3 / stable N2--> refractory (outputs off at once);
    a bad-signal or uncertain-stage epoch pauses the session (outputs off at once) for up to
    max_pause_epochs epochs, then aborts it; refractory --min_gap_s after the session ended--> idle; fault latches until
    clear_fault().

Two entry points, as the daemon drives it:

* :meth:`Breather.on_epoch`, once per 30-s epoch: every *decision* (start, stop, escalate) is made here
  from the epoch's stage probabilities, signal quality and P(loop);
* :meth:`Breather.tick`, often (~10 Hz): moves the light and sound levels along their ramps. It never
  starts anything; it only raises levels within a running session, at most at the configured rates, and
  ends a session whose time is up.

Outputs go *down* at once (stopping is always allowed); they go *up* only by ramps no faster than the
config, which the config cannot set faster than the envelope. Every decision is written to the audit log.

The state machine is written out by hand rather than with a state-machine library: it has six states,
and safety-critical code should read top to bottom in one file without a framework's dispatch rules.
"""
from __future__ import annotations

import enum
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from appliance.audit import AuditLog
from appliance.epoch import Epoch
from appliance.outputs import BedsideLight, OkButton, Speaker, all_off
from appliance.protocol.safety import MAX_TICK_STEP_S, BreatherConfig, envelope
from appliance.protocol.stages import Stage

logger = logging.getLogger(__name__)


class BreatherState(str, enum.Enum):
    IDLE = "idle"
    CUE = "cue"
    LIGHT = "light"
    ESCALATE = "escalate"
    REFRACTORY = "refractory"
    FAULT = "fault"


SESSION_STATES = (BreatherState.CUE, BreatherState.LIGHT)


@dataclass(frozen=True)
class BreatherChange:
    """One change of the breather's state, as :class:`Breather` emits it to its ``on_change`` listener.

    Attributes
    ----------
    before, after : BreatherState
        The state left and the state entered.
    session : int
        The night's session number so far (the running session's, in a session).
    session_report : dict or None
        When a session just ended, its report (``session``, ``start_epoch``, ``end_epoch``, ``duration_s`` in
        seconds, ``outcome``, ``reason``, ``max_light``, ``max_volume``); else None.
    """

    before: BreatherState
    after: BreatherState
    session: int
    session_report: dict[str, Any] | None = None


class Breather:
    """The intervention policy and its outputs.

    Parameters
    ----------
    light, speaker : BedsideLight, Speaker
        The outputs (``appliance/outputs.py``).
    button : OkButton or None
        The "I'm OK / stop" button; pressing it stops a session at once.
    config : BreatherConfig
        Validated against the envelope on creation.
    audit : AuditLog
        Where every decision goes.
    clock : callable
        Seconds, monotonic. In accelerated replay the daemon passes simulated time to :meth:`tick` and
        :meth:`on_epoch` instead; the latest time passed is then used.
    on_escalate : callable or None
        Called with a dict (night session number, epoch index, P(loop), reason) when a session ends with
        the loop still under way. The breather knows nothing of MQTT: the daemon passes its own
        ``NightPipeline.on_escalate``, which has :mod:`appliance.episodes` word the parent's alert and publishes it with
        ``BoxLink.publish_alert`` (QoS 1, through the persistent outbox). Its errors are logged, never allowed
        to keep outputs on.
    on_change : callable or None
        Called with a :class:`BreatherChange` each time the state changes, from the thread that changed it
        (the pipeline's, the button's, a command's) with the breather's lock held: it should only take note
        (:class:`appliance.night_pipeline.BreatherEvents` records it and reports it at the pipeline's next step).
    """

    def __init__(self, *, light: BedsideLight, speaker: Speaker, button: OkButton | None, config: BreatherConfig,
                 audit: AuditLog, clock: Callable[[], float] = time.monotonic,
                 on_escalate: Callable[[dict], None] | None = None,
                 on_change: Callable[[BreatherChange], None] | None = None):
        if not isinstance(config, BreatherConfig):
            raise TypeError("config must be a BreatherConfig (validated against the safety envelope)")
        self.light, self.speaker, self.button = light, speaker, button
        self.config = config
        self.audit = audit
        self.clock = clock
        self.on_escalate = on_escalate
        self.on_change = on_change
        self._lock = threading.RLock()
        self._sim_now: float | None = None
        self.sessions = 0
        self.outcomes: Counter[str] = Counter()
        self.session_reports: list[dict[str, Any]] = []
        self._state = BreatherState.IDLE
        self.escalations = 0
        self.audit_errors = 0  # audit writes that failed on a path that had to go on (see _audit_safely)
        self._loop_streak = 0
        self._n2_streak = 0
        self._last_epoch_index: int | None = None
        self._last_p_loop = 0.0
        self._session_start: float | None = None
        self._session_end: float | None = None
        self._session_epoch: int | None = None
        self._last_tick: float | None = None
        self._light_reached = False
        self._max_light = 0.0
        self._max_volume = 0.0
        self._hold_reason: str | None = None
        self._paused_epochs = 0
        self._fault_reason: str | None = None
        all_off(self.light, self.speaker)
        self.speaker.tone_hz = config.cue_tone_hz
        if button is not None:
            button.when_pressed = self._on_button
        self.audit.append("breather_ready", config=config.to_dict(), envelope=envelope())

    # ---- state ------------------------------------------------------------------------------------
    @property
    def state(self) -> BreatherState:
        """The current state; every change is emitted to ``on_change``."""
        return self._state

    @state.setter
    def state(self, new: BreatherState) -> None:
        old, self._state = self._state, new
        if new == old or self.on_change is None:
            return
        ended = old in SESSION_STATES and new not in SESSION_STATES and self.session_reports
        try:
            self.on_change(BreatherChange(before=old, after=new, session=self.sessions,
                                          session_report=dict(self.session_reports[-1]) if ended else None))
        except Exception as e:  # noqa: BLE001 - reporting a change must never stop the policy (or an alert)
            logger.error("breather on_change failed: %r", e)

    @property
    def unavailable(self) -> str | None:
        """Why a loop detected now could get no session, whatever its stage: ``fault`` (stopped by a fault),
        ``night_limit_reached`` (``sessions_per_night`` given), ``refractory`` (inside ``min_gap_s`` after a
        session); None while idle and ready, or in a session. The parent is told about a loop the breather
        cannot act on (:meth:`appliance.episodes.LoopEpisodes.after_breather`)."""
        with self._lock:  # the button's thread may end a session meanwhile
            if self.state == BreatherState.FAULT:
                return "fault"
            if self.state in SESSION_STATES:
                return None
            if self.sessions >= self.config.sessions_per_night:
                return "night_limit_reached"
            if self.state != BreatherState.IDLE and not self._gap_elapsed(self._now(None)):
                return "refractory"
            return None

    # ---- time ------------------------------------------------------------------------------------
    def _now(self, now_s: float | None) -> float:
        if now_s is not None:
            self._sim_now = float(now_s)
            return self._sim_now
        return self._sim_now if self._sim_now is not None else float(self.clock())

    # ---- per-epoch decisions ----------------------------------------------------------------------
    def on_epoch(self, epoch: Epoch, *, now_s: float | None = None) -> BreatherState:
        """Make the policy decision for one epoch (call once per epoch, after the loop model).

        Returns the state after the decision.
        """
        with self._lock:
            try:
                return self._on_epoch(epoch, self._now(now_s))
            except Exception as e:
                self.fault(f"internal error in on_epoch: {e!r}")
                raise

    def _stop_reason(self, epoch: Epoch) -> str | None:
        """Why stimulation must not go on (or start) on this epoch, or None."""
        if not epoch.quality.ok:
            return "bad_signal:" + ",".join(sorted(epoch.quality.flags) or ["not_ok"])
        if epoch.stage_probs is None or epoch.confidence < self.config.min_stage_confidence:
            return "uncertain_stage"
        stage = epoch.stage
        if stage == Stage.W:
            return "woke"
        if stage == Stage.N3:
            return "n3"
        if stage == Stage.N2 and self._n2_streak >= self.config.stable_n2_epochs:
            return "stable_n2"
        return None

    def _on_epoch(self, epoch: Epoch, now: float) -> BreatherState:
        cfg = self.config
        p = float(epoch.p_loop) if epoch.p_loop is not None else 0.0
        self._last_p_loop = p
        self._last_epoch_index = epoch.index
        loop_now = p >= cfg.p_loop_threshold
        self._loop_streak = self._loop_streak + 1 if loop_now else 0
        confident_n2 = (epoch.stage_probs is not None and epoch.stage == Stage.N2
                        and epoch.confidence >= cfg.min_stage_confidence)
        self._n2_streak = self._n2_streak + 1 if confident_n2 else 0
        reason = self._stop_reason(epoch)

        if self.state == BreatherState.FAULT:
            all_off(self.light, self.speaker)
            return self.state
        if self.state in SESSION_STATES and self._session_time_up(now):
            pass  # ended (completed or escalated); the state says which
        elif self.state in SESSION_STATES:
            transient = reason is not None and (reason == "uncertain_stage" or reason.startswith("bad_signal"))
            if transient and self._paused_epochs < cfg.max_pause_epochs:
                # A doubtful epoch: outputs off at once, session clock runs on; resume (from zero, by the
                # ramps) if the next epoch is clear, abort if it is not.
                all_off(self.light, self.speaker)
                self._paused_epochs += 1
                self.audit.append("paused", session=self.sessions, epoch=epoch.index, reason=reason)
            elif reason is not None:
                outcome = "woke" if reason == "woke" else "settled" if reason in ("n3", "stable_n2") else "aborted"
                self._end_session(outcome, now, reason=reason, epoch=epoch)
            elif self._paused_epochs:
                self._paused_epochs = 0
                self.audit.append("resumed", session=self.sessions, epoch=epoch.index)
            return self.state
        if self.state == BreatherState.ESCALATE:
            self.state = BreatherState.REFRACTORY
        if self.state == BreatherState.REFRACTORY and self._gap_elapsed(now) and self.sessions < cfg.sessions_per_night:
            self.state = BreatherState.IDLE
            self.audit.append("ready_again", epoch=epoch.index, sessions=self.sessions)

        if not loop_now:
            self._hold_reason = None
            return self.state
        hold = self._start_blocker(epoch, reason, now)
        if hold is None:
            self._start_session(epoch, now)
        elif hold != self._hold_reason:
            # Log each new reason for not acting on a detected loop once, not every epoch.
            self._hold_reason = hold
            self.audit.append("loop_detected_no_action", epoch=epoch.index, p_loop=round(p, 4), reason=hold,
                              stage=epoch.stage.name, confidence=round(epoch.confidence, 4))
        return self.state

    def _gap_elapsed(self, now: float) -> bool:
        return self._session_end is None or now - self._session_end >= self.config.min_gap_s

    def _start_blocker(self, epoch: Epoch, reason: str | None, now: float) -> str | None:
        cfg = self.config
        if self._loop_streak < cfg.confirm_epochs:
            return "confirming"
        if self.sessions >= cfg.sessions_per_night:
            return "night_limit_reached"
        if self.state != BreatherState.IDLE or not self._gap_elapsed(now):
            return "refractory"
        if reason is not None:
            return reason
        if epoch.stage != Stage.REM:
            return f"stage_{epoch.stage.name}"
        return None

    def _start_session(self, epoch: Epoch, now: float) -> None:
        cfg = self.config
        self.sessions += 1
        self.state = BreatherState.CUE
        self._session_start = now
        self._session_epoch = epoch.index
        self._last_tick = now
        self._light_reached = False
        self._max_light = self._max_volume = 0.0
        self._hold_reason = None
        self._paused_epochs = 0
        self.audit.append("loop_detected", epoch=epoch.index, p_loop=round(float(epoch.p_loop or 0.0), 4),
                          stage=epoch.stage.name, confidence=round(epoch.confidence, 4), session=self.sessions)
        self.audit.append("cue_started", session=self.sessions, volume=cfg.cue_volume, tone_hz=cfg.cue_tone_hz,
                          burst_s=cfg.cue_burst_s, gap_s=cfg.cue_gap_s, ramp_per_s=cfg.volume_ramp_per_s)
        logger.info("breather: session %d started at epoch %d (P(loop)=%.2f)", self.sessions, epoch.index,
                    epoch.p_loop or 0.0)

    # ---- ending ---------------------------------------------------------------------------------
    def _end_session(self, outcome: str, now: float, *, reason: str, epoch: Epoch | None = None) -> None:
        errors = all_off(self.light, self.speaker)
        start = self._session_start if self._session_start is not None else now
        rep = {"session": self.sessions, "start_epoch": self._session_epoch,
               "end_epoch": epoch.index if epoch is not None else self._last_epoch_index,
               "duration_s": round(now - start, 3), "outcome": outcome, "reason": reason,
               "max_light": round(self._max_light, 4), "max_volume": round(self._max_volume, 4)}
        self.session_reports.append(rep)
        self.outcomes[outcome] += 1
        self._session_end = now
        self._session_start = None
        if outcome == "escalated":
            self.state = BreatherState.ESCALATE
            self.escalations += 1
            payload = {"session": self.sessions, "epoch": rep["end_epoch"], "p_loop": round(self._last_p_loop, 4),
                       "reason": reason}
            # The parent's alert first, the audit records after: a failing audit write (a full disk)
            # must not stop the alert, and a failing alert must not stop the audit.
            alert_error = None
            if self.on_escalate is not None:
                try:
                    self.on_escalate(payload)
                except Exception as e:  # noqa: BLE001 - the alert path failing must not affect the outputs
                    logger.error("on_escalate failed: %r", e)
                    alert_error = e
            self._audit_safely("session_ended", **rep, output_errors=errors)
            self._audit_safely("escalated", **payload)
            if alert_error is not None:
                self._audit_safely("escalation_alert_failed", error=repr(alert_error))
        else:
            self.audit.append("session_ended" if outcome == "completed" else "aborted", **rep, output_errors=errors)
            self.state = BreatherState.REFRACTORY

    def _audit_safely(self, event: str, **data: Any) -> None:
        """Append to the audit log on a path that must go on if the log cannot be written: log, count."""
        try:
            self.audit.append(event, **data)
        except Exception as e:  # noqa: BLE001 - e.g. OSError(ENOSPC), a closed log
            self.audit_errors += 1
            logger.error("could not audit %s: %r", event, e)

    def stop(self, reason: str, *, now_s: float | None = None) -> None:
        """Stop at once: all outputs off; a running session ends as ``aborted`` with ``reason``."""
        with self._lock:
            now = self._now(now_s)
            if self.state in SESSION_STATES:
                self._end_session("button" if reason == "button" else "aborted", now, reason=reason)
            else:
                all_off(self.light, self.speaker)

    def _on_button(self) -> None:
        # Called from gpiozero's thread.
        try:
            with self._lock:
                self.audit.append("button_pressed", state=self.state.value)
                self.stop("button")
        except Exception as e:  # noqa: BLE001 - never leave outputs on because logging failed
            all_off(self.light, self.speaker)
            logger.error("button handler: %r", e)

    def fault(self, reason: str) -> None:
        """An internal fault: all outputs off at once, logged; no stimulation until :meth:`clear_fault`."""
        with self._lock:
            errors = all_off(self.light, self.speaker)
            if self.state in SESSION_STATES:
                self._end_session("fault", self._now(None), reason=reason)
            self.state = BreatherState.FAULT
            self._fault_reason = reason
            logger.error("breather fault: %s", reason)
            try:
                self.audit.append("fault", reason=reason, output_errors=errors)
            except Exception as e:  # noqa: BLE001 - the outputs are already off; report and carry on
                logger.error("could not audit fault: %r", e)

    def clear_fault(self) -> None:
        """Leave the fault state (the daemon, after recovering); the minimum gap still applies."""
        with self._lock:
            if self.state == BreatherState.FAULT:
                self.state = BreatherState.REFRACTORY
                self.audit.append("fault_cleared", reason=self._fault_reason)
                self._fault_reason = None

    def _session_time_up(self, now: float) -> bool:
        """End the running session if its time is up (checked on every tick *and* every epoch, so a
        stalled tick loop cannot stretch a session)."""
        if now - self._session_start < self.config.session_s:
            return False
        if self.config.escalate and self._last_p_loop >= self.config.p_loop_threshold:
            self._end_session("escalated", now, reason="loop_persists_after_session")
        else:
            self._end_session("completed", now, reason="session_time_up")
        return True

    # ---- ramps ----------------------------------------------------------------------------------
    def tick(self, now_s: float | None = None) -> None:
        """Advance the ramps to ``now_s`` (or the clock); end the session when its time is up."""
        with self._lock:
            try:
                self._tick(self._now(now_s))
            except Exception as e:
                self.fault(f"internal error in tick: {e!r}")
                raise

    def _tick(self, now: float) -> None:
        cfg = self.config
        if self.state not in SESSION_STATES:
            if self.light.level != 0.0 or self.speaker.level != 0.0:
                all_off(self.light, self.speaker)
            return
        dt = 0.0 if self._last_tick is None else min(max(now - self._last_tick, 0.0), MAX_TICK_STEP_S)
        self._last_tick = now if self._last_tick is None else max(now, self._last_tick)
        if self._session_time_up(now):
            return
        elapsed = now - self._session_start
        if self._paused_epochs:
            return  # outputs are off until a clear epoch resumes the session
        if self.state == BreatherState.CUE and elapsed >= cfg.cue_s:
            self.state = BreatherState.LIGHT
            self.audit.append("light_started", session=self.sessions, target=cfg.light_brightness,
                              ramp_per_s=cfg.light_ramp_per_s)
        # Sound: bursts of cue_burst_s every cue_burst_s + cue_gap_s, each fading in at the ramp rate.
        in_burst = (elapsed % (cfg.cue_burst_s + cfg.cue_gap_s)) < cfg.cue_burst_s
        vol = self.speaker.level
        new_vol = min(cfg.cue_volume, vol + cfg.volume_ramp_per_s * dt) if in_burst else 0.0
        self.speaker.level = new_vol
        self._max_volume = max(self._max_volume, new_vol)
        if self.state == BreatherState.LIGHT:
            b = self.light.level
            new_b = min(cfg.light_brightness, b + cfg.light_ramp_per_s * dt)
            self.light.level = new_b
            self._max_light = max(self._max_light, new_b)
            if not self._light_reached and new_b >= cfg.light_brightness:
                self._light_reached = True
                self.audit.append("light_level", session=self.sessions, level=round(new_b, 4), reached=True)

    # ---- reporting ------------------------------------------------------------------------------
    def night_report(self) -> dict[str, Any]:
        """Counters for the morning report: sessions, outcomes, escalations, and each session."""
        with self._lock:
            return {"sessions": self.sessions, "escalations": self.escalations, "outcomes": dict(self.outcomes),
                    "session_reports": [dict(r) for r in self.session_reports], "state": self.state.value,
                    "audit_last_hash": self.audit.last_hash}
