"""Append-only, hash-chained audit log of every breather decision, and its verifier.

Format: JSON lines. Each record is one JSON object on one line::

    {"seq": 0, "t_utc": "2026-...Z", "t_s": 12.5, "event": "cue_started", "data": {...},
     "prev": "<sha256 of the previous record>", "hash": "<sha256 of this record>"}

The first record also carries ``log_id`` (random), so the first record's hash names the log.
``hash`` is the sha256 of the record's canonical JSON (sorted keys, no spaces) *without* the ``hash``
key; ``prev`` of the first record is 64 zeros. Editing, inserting, deleting or reordering a record breaks
the chain at that record. Cutting records off the *end* leaves a valid chain, so:

- every append also rewrites a small sidecar ``<log>.head`` (atomically: write, fsync, rename) holding
  the last ``seq`` and ``hash`` (``seq`` -1 for a log with no record yet; the head is written when the
  log is created, so a log *always* has one). :func:`verify` reports a log shorter than its head as
  truncated, a last record other than the head's as rewritten, and a missing head as a failure (deleting
  the head is how one would hide a truncation);
- opening a log whose head does not match it (truncated, rewritten, head missing) raises
  :class:`AuditError` instead of silently writing a new head over the evidence: the daemon keeps the log
  aside, starts a new one and reports a ``fault``;
- someone able to rewrite both files consistently defeats any local check, so the head also leaves the
  file: the daemon puts it (``audit_head``: ``seq``, ``hash``, ``records``) into each night's
  ``report.json``, which goes to the clinic over MQTT with the night report and in the ``idle`` status.
  :func:`verify` checks the log against such anchors (``anchors=``; ``bedtime audit verify`` reads them
  from the night reports next to the log, or ``--reports DIR``, or ``--expect-hash`` from the clinic's
  copy): a log cut or rewritten below a record a report promised fails, whatever its head says.

The chain is hand-written because it is twenty lines over :mod:`hashlib` and :mod:`json`; the libraries
that do this (transparency logs, Merkle trees) bring servers and formats the box does not need.

``bedtime audit verify PATH`` (a log file, or a folder holding ``audit.log``, e.g. the state directory)
runs :func:`main_verify`.
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

from appliance.protocol.userfiles import json_loads, read_small_regular_file

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
"""``prev`` of the first record."""

LOG_NAME = "audit.log"
"""The audit log's file name in the box's state directory (``bedtime audit verify DIR`` looks for it)."""

#: Largest report.json read for anchors (bytes): a report is a few tens of kB; anything bigger is not one.
MAX_REPORT_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Anchor:
    """A record the log must contain, promised somewhere out of the log's reach (a night report).

    Attributes
    ----------
    seq : int or None
        The record's sequence number (None: any record with ``hash``).
    hash : str
        The record's hash.
    source : str
        Where the promise came from (for the problem message).
    first : str or None
        Hash of the log's first record: which log the promise is about (the daemon starts a new log
        when it finds one broken). None: this log.
    """

    seq: int | None
    hash: str
    source: str
    first: str | None = None


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
        self._first: str | None = None
        self._seq, self._prev = self._read_tail()
        self._check_head()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        if self._seq == 0 and not head_path(self.path).exists():
            self._write_head(-1, GENESIS)  # a new log has a head from the start: "no record yet"

    def _check_head(self) -> None:
        """Refuse a log its head does not vouch for (never write a new head over the evidence)."""
        hp = head_path(self.path)
        if not hp.exists():
            if self._seq > 0:
                raise AuditError(f"{self.path}: {hp.name} is missing although the log has {self._seq} record(s) "
                                 "(deleted? a truncation cannot be ruled out); refusing to append")
            return
        head_seq, head_hash = read_head(hp)
        last_seq = self._seq - 1
        if head_seq > last_seq:
            raise AuditError(f"{self.path}: truncated: {hp.name} says {head_seq + 1} record(s), the log has "
                             f"{self._seq}; refusing to append")
        if head_seq == last_seq and head_hash != self._prev:
            raise AuditError(f"{self.path}: last record differs from the one {hp.name} remembers (rewritten); "
                             "refusing to append")
        if head_seq < last_seq - 1:  # one behind is a crash between the record's and the head's write
            raise AuditError(f"{self.path}: {hp.name} says {head_seq + 1} record(s), the log has {self._seq} "
                             "(head rewritten?); refusing to append")

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
            rec = json_loads(last)
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
        """Records in the log."""
        return self._seq

    def head(self) -> dict[str, Any]:
        """The head to publish (night report, status): ``{"seq", "hash", "records", "first"}``
        (``first``: hash of the log's first record, which names the log; None while it is empty)."""
        with self._lock:
            if self._first is None and self._seq > 0:
                self._first = first_hash(self.path)
            return {"seq": self._seq - 1, "hash": self._prev, "records": self._seq, "first": self._first}

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
            if self._seq == 0:  # a random id makes each log's first record, which names the log, unique
                rec["log_id"] = os.urandom(8).hex()
            rec["hash"] = record_hash(rec)
            if self._seq == 0:
                self._first = rec["hash"]
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
        Whether a ``.head`` sidecar was present to check truncation against (its absence is a problem).
    anchors_checked : int
        How many anchors (records promised by night reports or the clinic) were checked.
    """

    ok: bool
    records: int
    problems: list[str] = field(default_factory=list)
    last_hash: str = GENESIS
    head_checked: bool = False
    anchors_checked: int = 0

    def __str__(self) -> str:
        status = "OK" if self.ok else "FAILED"
        lines = [f"audit log {status}: {self.records} record(s) verified, last hash {self.last_hash[:16]}…"
                 + (f", {self.anchors_checked} night-report anchor(s) checked" if self.anchors_checked else "")]
        lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)


def read_head(hp: Path) -> tuple[int, str]:
    """``(seq, hash)`` from a ``.head`` file; raises :class:`AuditError` if it is not one."""
    try:
        head = json_loads(read_small_regular_file(hp, max_bytes=4096).decode("utf-8"))
        head_seq, head_hash = head["seq"], head["hash"]
        if type(head_seq) is not int or head_seq < -1 or not isinstance(head_hash, str):
            raise ValueError("seq must be an integer >= -1 and hash a string")
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise AuditError(f"{hp.name}: unreadable ({e})") from None
    return head_seq, head_hash


def first_hash(path: str | Path) -> str | None:
    """Hash of a log's first record (which names the log), or None if it has none or it is unreadable."""
    try:
        with open(path, "rb") as f:
            line = f.readline(1 << 20)
        h = json_loads(line).get("hash")
        return h if isinstance(h, str) else None
    except (OSError, ValueError, AttributeError):
        return None


def anchors_from_reports(folder: str | Path) -> list[Anchor]:
    """The ``audit_head`` every night report under ``folder`` promised (``*/report.json``, one level deep,
    and ``folder/report.json``). Reports without one, or unreadable, are skipped."""
    f = Path(folder)
    out: list[Anchor] = []
    for rp in sorted([f / "report.json", *f.glob("*/report.json")]):
        try:
            if not rp.is_file() or rp.stat().st_size > MAX_REPORT_BYTES:
                continue
            head = json_loads(rp.read_text(encoding="utf-8")).get("audit_head")
            if isinstance(head, dict) and type(head.get("seq")) is int and isinstance(head.get("hash"), str):
                first = head.get("first")
                if head["seq"] >= 0:
                    out.append(Anchor(head["seq"], head["hash"], str(rp), first if isinstance(first, str) else None))
        except (OSError, ValueError, AttributeError, UnicodeDecodeError) as e:
            logger.warning("%s: not read for audit anchors: %s", rp, e)
    return out


def verify(path: str | Path, *, anchors: list[Anchor] | tuple[Anchor, ...] = ()) -> AuditReport:
    """Check an audit log: every record's hash, the chain, sequence numbers, its head and ``anchors``.

    Never raises for a bad log; the problems are in the report. A missing file is a problem too, and so
    is a missing ``.head`` (see the module docstring).
    """
    p = Path(path)
    report = AuditReport(ok=True, records=0)
    if not p.is_file():
        return AuditReport(ok=False, records=0, problems=[f"{p}: no such file"])
    prev = GENESIS
    expected_seq = 0
    hashes: list[str] = []
    raw = p.read_bytes()
    lines = raw.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, else an incomplete last line
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            report.problems.append(f"line {lineno}: empty line")
            break
        try:
            rec = json_loads(line)
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
        hashes.append(prev)
        expected_seq += 1
        report.records += 1
    if tail and not report.problems:
        report.problems.append(f"line {len(lines) + 1}: incomplete last line (truncated mid-record)")
    report.last_hash = prev
    hp = head_path(p)
    if hp.is_file():
        report.head_checked = True
        try:
            head_seq, head_hash = read_head(hp)
        except AuditError as e:
            report.problems.append(str(e))
        else:
            if not report.problems:
                if head_seq + 1 > report.records:
                    report.problems.append(f"truncated: head says {head_seq + 1} record(s), file has {report.records}")
                elif head_seq + 1 == report.records and head_hash != prev:
                    report.problems.append("last record differs from the one the head remembers (rewritten)")
    else:
        report.problems.append(f"{hp.name} is missing: a truncation at the end cannot be ruled out (head deleted?)")
    for a in anchors:
        if a.first is not None and (not hashes or a.first != hashes[0]):
            report.problems.append(f"{a.source} promised records of another log (first record {a.first[:16]}…), "
                                   "not this one")
            continue
        if a.seq is None:
            if a.hash not in hashes:
                report.problems.append(f"{a.source} promised a record with hash {a.hash[:16]}…, the log has none "
                                       "(truncated or rewritten)")
        elif a.seq >= len(hashes):
            report.problems.append(f"truncated: {a.source} promised record {a.seq} (hash {a.hash[:16]}…), "
                                   f"the log verifies only {len(hashes)} record(s)")
        elif hashes[a.seq] != a.hash:
            report.problems.append(f"record {a.seq} differs from the one {a.source} promised (rewritten)")
    report.anchors_checked = len(anchors)
    report.ok = not report.problems
    return report


def _resolve(path: Path, reports: Path | None) -> tuple[Path, list[Anchor]]:
    """The log to verify for a CLI argument and its anchors; raises ValueError with a one-line reason."""
    if path.is_dir():
        log = path / LOG_NAME
        if not log.is_file():
            raise ValueError(f"{path}: a folder without {LOG_NAME} (give the log file, or the box's state directory)")
        nights = path / "nights"
    elif path.is_file():
        log, nights = path, path.parent / "nights"
    elif path.exists():
        raise ValueError(f"{path}: not a regular file")
    else:
        raise ValueError(f"{path}: no such file or folder")
    anchors = anchors_from_reports(reports if reports is not None else nights) if (reports or nights.is_dir()) else []
    return log, anchors


def main_verify(argv: list[str] | None = None) -> int:
    """``bedtime audit verify PATH [PATH...] [--reports DIR] [--expect-hash HASH]``.

    PATH is a log, or a folder holding ``audit.log`` (the state directory). Night reports next to it
    (``nights/*/report.json``) or under ``--reports`` are anchors; ``--expect-hash`` is a head hash from
    the clinic's copy. Prints a report per log; exit 0 when all verify, 1 when one does not, 2 (one line
    on stderr) when an argument names no log.
    """
    ap = argparse.ArgumentParser(prog="bedtime audit verify", description="Verify hash-chained audit logs.")
    ap.add_argument("files", nargs="+", type=Path, metavar="PATH",
                    help=f"audit log file(s), or folder(s) holding {LOG_NAME} (the box's state directory)")
    ap.add_argument("--reports", type=Path, default=None, metavar="DIR",
                    help="folder of nights whose report.json promised audit heads (default: PATH's nights/)")
    ap.add_argument("--expect-hash", action="append", default=[], metavar="HASH",
                    help="a head hash the log must contain (from the clinic's copy of a night report)")
    args = ap.parse_args(argv)
    try:
        if args.reports is not None and not args.reports.is_dir():
            raise ValueError(f"--reports {args.reports}: no such folder")
        for h in args.expect_hash:
            if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
                raise ValueError(f"--expect-hash {h[:80]!r}: not a sha256 hex digest (64 of 0-9 a-f)")
        targets = [_resolve(f, args.reports) for f in args.files]
    except ValueError as e:
        print(f"bedtime audit verify: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a name the system refuses to look up (too long, a folder it may not enter)
        print(f"bedtime audit verify: {str(e.filename)[:200]}: {e.strerror or e}", file=sys.stderr)
        return 2
    all_ok = True
    for log, anchors in targets:
        anchors = anchors + [Anchor(None, h, "--expect-hash") for h in args.expect_hash]
        for other, theirs in _route_anchors(log, anchors):
            rep = verify(other, anchors=theirs)
            print(f"{other}: {rep}")
            all_ok &= rep.ok
    return 0 if all_ok else 1


def _route_anchors(log: Path, anchors: list[Anchor]) -> list[tuple[Path, list[Anchor]]]:
    """Pair each anchor with the log it is about: ``log`` itself, or a sibling ``audit*.log`` the daemon
    set aside (a broken log) whose first record matches. Anchors of a log found nowhere stay with
    ``log``, where :func:`verify` reports them."""
    mine = first_hash(log)
    routed: dict[Path, list[Anchor]] = {log: []}
    siblings: dict[str, Path] = {}
    for sib in sorted(log.parent.glob("audit*.log")):
        if sib != log:
            h = first_hash(sib)
            if h is not None:
                siblings.setdefault(h, sib)
    for a in anchors:
        target = log if a.first is None or a.first == mine else siblings.get(a.first, log)
        routed.setdefault(target, []).append(a)
    return list(routed.items())


if __name__ == "__main__":
    sys.exit(main_verify())
