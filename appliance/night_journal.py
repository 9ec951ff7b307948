"""The night's record on disk and on the wire: its folder, events, epoch rows and the EDF+ recording.

:class:`NightJournal` is where everything the night says goes: :meth:`NightJournal.event` keeps an event in memory
(the morning report reads them), appends it to ``events.jsonl``, annotates the EDF+ recording and publishes it on
MQTT (QoS 1 through the outbox; alerts go by their own path, :mod:`appliance.alerts`). Events from before the
night's folder exists (a model fallback at start, a broken audit log) are kept in memory and published, and reach
the files as part of the report.
"""
from __future__ import annotations

import datetime as dt
import logging
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance import __version__
from appliance.config import edf_channel_labels
from appliance.edfplus import EdfPlusRecorder
from appliance.jsonl import JsonlWriter
from appliance.nightfolder import EPOCHS_JSONL, EVENTS_JSONL, NIGHT_EDF, enforce_retention, night_id, recover_nights
from appliance.protocol.boxconfig import BoxConfig

if TYPE_CHECKING:
    from appliance.mqtt import BoxLink

logger = logging.getLogger(__name__)


def start_night_dir(recording_dir: Path) -> tuple[Path, dt.datetime]:
    """The folder the night starting now will have (not made yet) and its start (UTC, whole seconds), after
    closing any recording a previous run left open (:func:`appliance.nightfolder.recover_nights`).

    The folder is made only once acquisition runs (:meth:`NightJournal.open`): a start that fails (no GPIO, no
    chip, a model that does not load) must not leave an empty night behind for the report and retention."""
    recording_dir.mkdir(parents=True, exist_ok=True)
    for p in recover_nights(recording_dir):
        logger.warning("closed an interrupted recording from a previous run: %s", p)
    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    while (recording_dir / night_id(start)).exists():  # two starts within a second (tests, restarts)
        start += dt.timedelta(seconds=1)
    return recording_dir / night_id(start), start


class NightJournal:
    """The night's events and files.

    Attributes
    ----------
    events : list of dict
        Every event of the night (``time_s``: signal time, s since the night's start; ``kind``; its fields).
    events_file, epochs_file : JsonlWriter or None
        ``events.jsonl`` and ``epochs.jsonl`` once the night's folder is open.
    recorder : EdfPlusRecorder or None
        The EDF+ recording once the folder is open (None when ``recording.enabled`` is false).
    link : BoxLink or None
        Where events are published (set once the link is built).
    """

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.events_file: JsonlWriter | None = None
        self.epochs_file: JsonlWriter | None = None
        self.recorder: EdfPlusRecorder | None = None
        self.link: BoxLink | None = None
        self._lock = threading.Lock()  # events come from the pipeline, the link's command thread and the breather's

    def open(self, night_dir: Path, *, cfg: BoxConfig, n_channels: int, fs_hz: int, start: dt.datetime) -> None:
        """Make the night's folder, its sidecar files and its EDF+ (acquisition has started), then apply the
        retention limits to the older nights. A failure leaves no folder behind."""
        night_dir.mkdir(parents=True)
        try:
            self.epochs_file = JsonlWriter(night_dir / EPOCHS_JSONL)
            self.events_file = JsonlWriter(night_dir / EVENTS_JSONL)
            if cfg.recording.enabled:
                labels = edf_channel_labels(cfg.acquisition, n_channels=n_channels)
                self.recorder = EdfPlusRecorder(night_dir / NIGHT_EDF, channel_labels=labels, fs_hz=fs_hz,
                                                physical_range_uv=cfg.recording.physical_range_uv,
                                                flush_interval_s=cfg.recording.flush_interval_s, start=start)
                self.recorder.annotate(0.0, f"Recording start bedtime {__version__} box {cfg.box.id}")
        except BaseException:
            for f in (self.epochs_file, self.events_file):
                if f is not None:
                    f.close()
            self.epochs_file = self.events_file = None
            shutil.rmtree(night_dir, ignore_errors=True)
            raise
        enforce_retention(cfg.recording_dir, max_nights=cfg.recording.retention_nights,
                          max_bytes=cfg.recording.retention_max_mb * 1e6, keep=night_dir)

    def event(self, kind: str, time_s: float, **fields: Any) -> None:
        """Record one event at ``time_s`` (signal time, s): in memory, events.jsonl, the EDF+ annotations, MQTT."""
        ev = {"time_s": round(float(time_s), 3), "kind": kind, **fields}
        with self._lock:
            self.events.append(ev)
            f = self.events_file  # None until the night's folder exists
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

    def close_recording(self) -> None:
        """Close the EDF+ recording and epochs.jsonl (the night is over; events.jsonl stays open for the report)."""
        if self.recorder is not None:
            self.recorder.close()
        if self.epochs_file is not None:
            self.epochs_file.close()

    def close(self) -> None:
        """Close events.jsonl (after the report)."""
        if self.events_file is not None:
            self.events_file.close()
