"""Building the night's parts from the configuration: stage model, loop model, audit log, breather, systemd notifier.

Each builder says out loud (as a night event) what it had to do instead of what was configured: a stage model
from a signed update that cannot be loaded (``model_update_unused``, the configured model is used), an audit
log found broken at start (set aside for ``bedtime audit verify``, a new one started, a ``fault`` event).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from appliance.protocol.boxconfig import BoxConfig

if TYPE_CHECKING:  # imported where they are built: a night without MQTT or an audit key never loads their modules
    from appliance.audit import AuditLog
    from appliance.breather import Breather
    from appliance.hardware import BoxOutputs
    from appliance.loop_model import LoopDetector
    from appliance.mqtt import BoxLink
    from appliance.stager import Stager
    from appliance.updates import UpdateManager

logger = logging.getLogger(__name__)

AUDIT_ANCHORS_CHECKED = 3
"""How many of the newest night reports' audit heads the audit log is checked against at start."""


@dataclass
class PipelineParts:
    """The downstream components; built from the config unless a test passes its own."""

    stager: Stager | None = None
    loop_detector: LoopDetector | None = None
    breather: Breather | None = None
    link: BoxLink | None = None


def load_stager(cfg: BoxConfig, *, updates: UpdateManager | None, record_event: Callable[..., None]) -> Stager:
    """The stage model: the one a signed update applied last, if any, else ``staging.model_path`` (or the
    packaged one). The update wrote the model's signed card beside it and the health check loaded both, so
    an applied model that still cannot be loaded here (e.g. a pre-card update, or a file damaged since) is
    said out loud (``model_update_unused``) and the configured model is used instead.

    Parameters
    ----------
    cfg : BoxConfig
        The running configuration.
    updates : UpdateManager or None
        The signed-update manager, when a clinic key is pinned.
    record_event : callable
        ``record_event(kind, time_s, **fields)``, the night's journal.
    """
    from appliance.stager import Stager

    applied = updates.current_path("model") if updates is not None else None
    if applied is not None:
        try:
            stager = Stager(applied)
            record_event("model_from_update", 0.0, version=updates.current_version("model"), path=str(applied))
            return stager
        except Exception as e:  # the night must still be staged: fall back, and tell the clinic why
            logger.error("the updated stage model %s cannot be loaded: %s", applied, e)
            record_event("model_update_unused", 0.0, version=updates.current_version("model"),
                         reason=f"{type(e).__name__}: {e}")
    return Stager(cfg.staging.model_path or None)


def load_loop_detector(cfg: BoxConfig) -> LoopDetector:
    """The loop model the config names (its built-in one when none is named)."""
    from appliance.loop_model import LoopDetector

    return LoopDetector(cfg.loops.model_path or None)


def open_audit_log(cfg: BoxConfig, *, record_event: Callable[..., None]) -> AuditLog:
    """The breather's hash-chained audit log in the state directory, checked against its own head and the last
    night reports' copies of it (:data:`AUDIT_ANCHORS_CHECKED`).

    Never append to a broken chain, nor write a new head over the evidence (a truncated log or a
    missing/rewritten head): a broken log and its head are kept aside as ``audit.broken-<time>.log``, a new log
    is started, and a ``fault`` event says so."""
    from appliance.audit import LOG_NAME, AuditError, AuditLog, head_path

    path = Path(cfg.box.state_dir) / LOG_NAME
    audit = None
    try:
        audit = AuditLog(path)
        _check_audit_against_reports(path, cfg.recording_dir)
        return audit
    except AuditError as e:
        if audit is not None:
            audit.close()
        broken = path.with_name(f"audit.broken-{time.strftime('%Y%m%dT%H%M%S')}.log")
        head = head_path(path)
        for src, dst in ((path, broken), (head, head_path(broken))):
            if src.exists():
                src.replace(dst)
        audit = AuditLog(path)
        logger.error("audit log broken (%s); kept as %s, a new log started", e, broken.name)
        record_event("fault", 0.0, reason=f"audit log broken ({e}); kept as {broken.name}", fault_kind="audit")
        return audit


def _check_audit_against_reports(path: Path, recording_dir: Path) -> None:
    """Raise AuditError if the log lacks a record the last night reports promised (``audit_head``).

    The head alone cannot catch a truncation whose head was rewritten to match; the reports' copies
    can. Only anchors about this log count (their ``first`` matches), so a log set aside earlier
    does not condemn the new one.
    """
    from appliance.audit import AuditError, anchors_from_reports, first_hash, verify

    mine = first_hash(path)
    anchors = [a for a in anchors_from_reports(recording_dir)
               if a.first is None or a.first == mine][-AUDIT_ANCHORS_CHECKED:]
    if not anchors:
        return
    rep = verify(path, anchors=anchors)
    if not rep.ok:
        raise AuditError("; ".join(rep.problems))


def audit_head(audit: AuditLog | None) -> dict | None:
    """The audit log's head (``seq``, ``hash``, ``records``, ``first``) for the report and status; None without a
    log, or when it cannot be read (logged: the report must come out regardless)."""
    try:
        return audit.head() if audit is not None else None
    except Exception as e:  # noqa: BLE001 - the report must come out regardless
        logger.error("could not read the audit head: %s", e)
        return None


def make_breather(cfg: BoxConfig, *, outputs: BoxOutputs, audit: AuditLog, clock: Callable[[], float],
                  on_escalate: Callable[..., None]) -> Breather:
    """The breather on the box's outputs, its config checked against the safety envelope; ``clock`` is signal
    time (s), ``on_escalate`` tells the parent."""
    from appliance.breather import Breather
    from appliance.protocol.safety import BreatherConfig

    return Breather(light=outputs.light, speaker=outputs.speaker, button=outputs.button,
                    config=BreatherConfig.from_dict(cfg.breather), audit=audit, clock=clock, on_escalate=on_escalate)


def systemd_notifier() -> Callable[[str], None]:
    """sd_notify through the ``sdnotify`` package; a no-op outside systemd (no NOTIFY_SOCKET)."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return lambda _msg: None
    import sdnotify

    n = sdnotify.SystemdNotifier()
    return lambda msg: n.notify(msg)
