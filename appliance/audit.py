"""Append-only, hash-chained audit log of every breather decision, and its verifier.

Format: JSON lines. Each record is one JSON object on one line::

    {"seq": 0, "t_utc": "2026-...Z", "t_s": 12.5, "event": "cue_started", "data": {...},
     "prev": "<sha256 of the previous record>", "hash": "<sha256 of this record>"}

``hash`` is the sha256 of the record's canonical JSON (sorted keys, no spaces) *without* the ``hash``
key; ``prev`` of the first record is 64 zeros. Editing, inserting, deleting or reordering a record breaks
the chain at that record. Cutting records off the *end* leaves a valid chain, so every append also
rewrites a small sidecar ``<log>.head`` (atomically: write, fsync, rename) holding the last ``seq`` and
``hash``; :func:`verify` reports a log shorter than its head as truncated. (Someone able to rewrite both
files consistently defeats any local check; the daemon also publishes the head hash over MQTT with the
night report, which puts a copy out of reach.)

The chain is hand-written because it is twenty lines over :mod:`hashlib` and :mod:`json`; the libraries
that do this (transparency logs, Merkle trees) bring servers and formats the box does not need.

``bedtime audit verify FILE`` runs :func:`main_verify`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
"""``prev`` of the first record."""


class AuditError(RuntimeError):
    """The audit log cannot be appended to (its existing tail is broken, or the disk refused)."""


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False, default=_json_default).encode()


def _json_default(o: Any) -> Any:
    # numpy scalars and frozensets reach the log from Epoch fields; make them plain JSON.
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON-serialisable in the audit log: {type(o).__name__}")


def record_hash(record: dict[str, Any]) -> str:
    """sha256 (hex) of a record without its ``hash`` key."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


def head_path(path: str | Path) -> Path:
    """The sidecar file that remembers the last record (truncation check)."""
    p = Path(path)
    return p.with_name(p.name + ".head")


class AuditLog:
    """Append-only hash-chained JSON-lines log.

    Parameters
    ----------
    path : str or Path
        The log file; created if missing, continued (after checking its last record) if present.
    fsync : bool
        fsync after every record (the default on the box: an intervention must be on disk before the
        next one). Tests turn it off for speed.
    clock : callable
        Monotonic seconds for ``t_s`` (the breather passes its own clock so replay times line up).

    Raises
    ------
    AuditError
        When the existing file's last record is malformed or its hash does not check; nothing is
        appended to a broken log (the daemon starts a new file and reports the broken one).
    """

    def __init__(self, path: str | Path, *, fsync: bool = True, clock=time.monotonic):
        self.path = Path(path)
        self.fsync = fsync
        self.clock = clock
        self._lock = threading.Lock()
        self._seq, self._prev = self._read_tail()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")

    def _read_tail(self) -> tuple[int, str]:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0, GENESIS
        with open(self.path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            tail = f.read().decode("utf-8", errors="replace")
        if not tail.endswith("\n"):
            raise AuditError(f"{self.path}: last line is incomplete (truncated write?); refusing to append")
        last = tail.rstrip("\n").rsplit("\n", 1)[-1]
        try:
            rec = json.loads(last)
            ok = rec["hash"] == record_hash(rec)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise AuditError(f"{self.path}: last record does not verify; refusing to append")
        return int(rec["seq"]) + 1, str(rec["hash"])

    @property
    def last_hash(self) -> str:
        """Hash of the last record written (GENESIS when empty)."""
        return self._prev

    @property
    def count(self) -> int:
        return self._seq

    def append(self, event: str, **data: Any) -> dict[str, Any]:
        """Append one record and return it.

        Parameters
        ----------
        event : str
            What happened (``loop_detected``, ``cue_started``, ``light_level``, ``escalated``,
            ``aborted``, ``fault``, ...).
        **data
            JSON-serialisable details (numbers, strings, lists, dicts).
        """
        with self._lock:
            rec: dict[str, Any] = {
                "seq": self._seq,
                "t_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "t_s": round(float(self.clock()), 3),
                "event": str(event),
                "data": data,
                "prev": self._prev,
            }
            rec["hash"] = record_hash(rec)
            line = _canonical(rec).decode() + "\n"
            self._fh.write(line)
            self._fh.flush()
            if self.fsync:
                os.fsync(self._fh.fileno())
            self._write_head(rec["seq"], rec["hash"])
            self._seq += 1
            self._prev = rec["hash"]
            return rec

    def _write_head(self, seq: int, h: str) -> None:
        hp = head_path(self.path)
        tmp = hp.with_name(hp.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"seq": seq, "hash": h}, f)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, hp)

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()

    def __enter__(self) -> "AuditLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class AuditReport:
    """What :func:`verify` found.

    Attributes
    ----------
    ok : bool
        True when every record verifies, the chain is unbroken and the log is not shorter than its head.
    records : int
        Records that verified before the first problem.
    problems : list of str
        Human-readable problems, each naming the line (1-based).
    last_hash : str
        Hash of the last good record.
    head_checked : bool
        Whether a ``.head`` sidecar was present to check truncation against.
    """

    ok: bool
    records: int
    problems: list[str] = field(default_factory=list)
    last_hash: str = GENESIS
    head_checked: bool = False

    def __str__(self) -> str:
        status = "OK" if self.ok else "FAILED"
        lines = [f"audit log {status}: {self.records} record(s) verified, last hash {self.last_hash[:16]}…"]
        if not self.head_checked:
            lines.append("warning: no .head file, truncation at the end cannot be detected")
        lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)


def verify(path: str | Path) -> AuditReport:
    """Check an audit log: every record's hash, the chain, sequence numbers and truncation.

    Never raises for a bad log; the problems are in the report. A missing file is a problem too.
    """
    p = Path(path)
    report = AuditReport(ok=True, records=0)
    if not p.is_file():
        return AuditReport(ok=False, records=0, problems=[f"{p}: no such file"])
    prev = GENESIS
    expected_seq = 0
    raw = p.read_bytes()
    lines = raw.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, else an incomplete last line
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            report.problems.append(f"line {lineno}: empty line")
            break
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError as e:
            report.problems.append(f"line {lineno}: not a JSON record ({e})")
            break
        try:
            good = rec.get("hash") == record_hash(rec)
        except (ValueError, TypeError):
            good = False
        if not good:
            report.problems.append(f"line {lineno}: record hash does not match its content (edited)")
            break
        if rec.get("prev") != prev:
            report.problems.append(f"line {lineno}: chain broken (prev hash differs: record removed, inserted or reordered)")
            break
        if rec.get("seq") != expected_seq:
            report.problems.append(f"line {lineno}: sequence {rec.get('seq')} where {expected_seq} was expected")
            break
        prev = rec["hash"]
        expected_seq += 1
        report.records += 1
    if tail and not report.problems:
        report.problems.append(f"line {len(lines) + 1}: incomplete last line (truncated mid-record)")
    report.last_hash = prev
    hp = head_path(p)
    if hp.is_file():
        report.head_checked = True
        try:
            head = json.loads(hp.read_text())
            head_seq, head_hash = int(head["seq"]), str(head["hash"])
        except (ValueError, KeyError, TypeError) as e:
            report.problems.append(f"{hp.name}: unreadable ({e})")
        else:
            if not report.problems:
                if head_seq + 1 > report.records:
                    report.problems.append(f"truncated: head says {head_seq + 1} record(s), file has {report.records}")
                elif head_seq + 1 == report.records and head_hash != prev:
                    report.problems.append("last record differs from the one the head remembers (rewritten)")
    report.ok = not report.problems
    return report


def main_verify(argv: list[str] | None = None) -> int:
    """``bedtime audit verify FILE [FILE...]``: print a report per file; exit 0 only when all verify."""
    ap = argparse.ArgumentParser(prog="bedtime audit verify", description="Verify hash-chained audit logs.")
    ap.add_argument("files", nargs="+", type=Path, help="audit log file(s) (JSON lines)")
    args = ap.parse_args(argv)
    all_ok = True
    for f in args.files:
        rep = verify(f)
        print(f"{f}: {rep}")
        all_ok &= rep.ok
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main_verify())
