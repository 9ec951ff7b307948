"""The nights on disk: one folder per night, what is in it, how old nights go and how cut ones are closed.

A night's folder is ``<recording dir>/<night id>`` (:func:`night_id`: its UTC start, sortable) and holds the
files named here, each written by the module that owns its format:

* :data:`NIGHT_EDF`: the raw channels and annotations (:mod:`appliance.edfplus`);
* :data:`EPOCHS_JSONL` and :data:`EVENTS_JSONL`: one JSON object per scored epoch / per event, appended as the
  night goes (:mod:`appliance.jsonl`);
* :data:`REPORT_JSON` and :data:`HYPNOGRAM_PNG`: the morning report (:mod:`appliance.report_load`,
  :mod:`appliance.report_draw`).

Retention deletes whole nights, oldest first; recovery closes the EDF+ of a night a crash or power cut
interrupted (:func:`appliance.edfplus.recover_edf`).
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

NIGHT_EDF = "night.edf"
EPOCHS_JSONL = "epochs.jsonl"
EVENTS_JSONL = "events.jsonl"
REPORT_JSON = "report.json"
HYPNOGRAM_PNG = "hypnogram.png"
NIGHT_ID_FORMAT = "%Y%m%dT%H%M%SZ"
"""A night folder's name: its UTC start (``20261123T221500Z``)."""


def night_id(start: dt.datetime) -> str:
    """Directory name of a night: its UTC start, sortable (``20261123T221500Z``)."""
    return start.astimezone(dt.timezone.utc).strftime(NIGHT_ID_FORMAT)


def night_start_from_id(name: str) -> dt.datetime | None:
    """The UTC start a night folder's name says, or None when the name is not a night id."""
    try:
        return dt.datetime.strptime(name, NIGHT_ID_FORMAT).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def list_nights(root: str | os.PathLike) -> list[Path]:
    """Night directories under ``root``, oldest first."""
    r = Path(root)
    if not r.is_dir():
        return []
    # a symlink is never a night: in a shared folder it could point anywhere (and retention would measure it)
    return sorted(p for p in r.iterdir()
                  if not p.is_symlink() and p.is_dir() and len(p.name) == 16 and p.name.endswith("Z"))


def _dir_bytes(p: Path) -> int:
    return sum(f.lstat().st_size for f in p.rglob("*") if not f.is_symlink() and f.is_file())


def enforce_retention(root: str | os.PathLike, *, max_nights: int, max_bytes: float,
                      keep: str | os.PathLike | None = None) -> list[Path]:
    """Delete whole nights, oldest first, until at most ``max_nights`` and ``max_bytes`` remain.

    The night ``keep`` (the one being recorded) is never deleted. Returns the deleted directories.
    """
    nights = list_nights(root)
    keep_p = Path(keep).resolve() if keep else None
    sizes = {p: _dir_bytes(p) for p in nights}
    deleted = []
    for p in nights:
        if len(nights) - len(deleted) <= max_nights and sum(sizes.values()) <= max_bytes:
            break
        if keep_p is not None and p.resolve() == keep_p:
            continue
        shutil.rmtree(p, ignore_errors=True)
        sizes.pop(p)
        deleted.append(p)
        logger.info("retention: deleted night %s", p.name)
    return deleted


def recover_nights(root: str | os.PathLike) -> list[Path]:
    """Run :func:`appliance.edfplus.recover_edf` on every night under ``root``; returns the files that needed it."""
    # imported here: the PNG-drawing child (appliance.report_draw) needs this module's file names, not the EDF+
    # writer (a module it would otherwise import for nothing on every night)
    from appliance.edfplus import recover_edf

    fixed = []
    for night in list_nights(root):
        edf = night / NIGHT_EDF
        if edf.is_file():
            try:
                if recover_edf(edf) is not None:
                    fixed.append(edf)
            except (ValueError, OSError) as e:
                logger.error("cannot recover %s: %s", edf, e)
    return fixed
