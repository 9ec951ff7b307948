"""JSON-lines files (one JSON object per line), appended as things happen and read back after a crash.

The box writes its night's ``epochs.jsonl``/``events.jsonl`` and the update audit this way because a line
appended is a line kept: a crash or power cut can at most tear the last line (or leave NUL padding after it,
on filesystems that extend the file before the data lands). :func:`read_rows` therefore skips a torn last
line, and calls anything else unreadable damage (:class:`JsonlError`), rather than report a night shifted in
time.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, TextIO

from appliance.protocol.userfiles import TOO_MANY_DIGITS, UserFileError, read_small_regular_file, too_many_digits

logger = logging.getLogger(__name__)


class JsonlError(ValueError):
    """A JSON-lines file that is damaged (not a crash's torn last line): one line naming file, line and problem."""


# A recording folder may be shared (or writable by another account): a symlink planted where a night's file
# will be must not make the box append to, or a report read back, whatever file it points at.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

MAX_JSONL_READ_BYTES = 32 * 1024 * 1024
"""Largest JSON-lines file :func:`read_rows` reads back: a whole 8-h night's ``epochs.jsonl`` is ~130 KB (the
longest night, ``recording.max_night_hours`` = 14 h, ~0.25 MB), so 100 times that is a damaged or planted file,
refused rather than turned into hundreds of MB of Python objects on a 512 MB box."""


def _open_append(path: Path) -> TextIO:
    """``path`` opened for appending (created 0644 when missing), refusing a symlink (``OSError`` ELOOP)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o644)
    return open(fd, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (the caller closes it)


def encode_row(row: dict, *, sort_keys: bool = False, default: Callable[[Any], Any] | None = None) -> str:
    """One row as its line, newline included (``json.dumps`` with the given options)."""
    return json.dumps(row, sort_keys=sort_keys, default=default) + "\n"


class JsonlWriter:
    """A JSON-lines file kept open for appending all night.

    Line-buffered: each row reaches the kernel as it is written (what a crash of the process cannot take away).

    Parameters
    ----------
    path : path-like
        The file; created when missing, appended to when present.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file: TextIO = _open_append(self.path)  # open all night

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._file.closed

    def write(self, row: dict) -> None:
        """Append one row."""
        self._file.write(encode_row(row))

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._file.close()


def append_row(path: str | os.PathLike, row: dict, *, sort_keys: bool = False,
               default: Callable[[Any], Any] | None = None, fsync: bool = False) -> str:
    """Append one row to ``path`` (opened and closed for it); with ``fsync`` it is on the disk when this returns.

    Returns
    -------
    str
        The line written, without its newline (for a log message).
    """
    line = encode_row(row, sort_keys=sort_keys, default=default)
    with _open_append(Path(path)) as f:
        f.write(line)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return line[:-1]


def read_rows(path: str | os.PathLike, check: Callable[[dict], str | None] | None = None) -> list[dict]:
    """The rows of a JSON-lines file, each an object and each passed by ``check``.

    A torn last line (it starts an object, holds no NUL and does not parse) is skipped with a warning; trailing
    NULs and blank lines are ignored.

    Parameters
    ----------
    path : path-like
        The file.
    check : callable, optional
        Given each row; returns what is wrong with it, or None.

    Raises
    ------
    JsonlError
        The file cannot be read, or a line (other than a torn last one) is not UTF-8, not JSON, not an object
        or fails ``check``; the message names the file and the line.
    """
    p = Path(path)
    try:
        # a FIFO or device in a night's folder is refused, not waited on or read without end
        raw = read_small_regular_file(p, max_bytes=MAX_JSONL_READ_BYTES, follow_symlinks=False)
    except OSError as e:
        raise JsonlError(f"{p}: cannot read ({e.strerror or e})") from None
    except UserFileError as e:
        raise JsonlError(f"{p}: cannot read ({e})") from None
    lines = raw.rstrip(b"\x00 \t\r\n").split(b"\n")
    rows: list[dict] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        last = n == len(lines)
        try:
            row = json.loads(line.decode("utf-8"))
        except RecursionError:
            raise JsonlError(f"{p}: line {n} is nested too deeply; the file is damaged") from None
        except (UnicodeDecodeError, ValueError) as e:
            if not isinstance(e, UnicodeDecodeError) and too_many_digits(e):  # whole, and still unreadable
                raise JsonlError(f"{p}: line {n} holds {TOO_MANY_DIGITS}; the file is damaged") from None
            if last and line.lstrip().startswith(b"{") and b"\x00" not in line:
                logger.warning("%s: line %d is cut short (an interrupted write); skipped", p, n)
                break
            what = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else "not valid JSON"
            raise JsonlError(f"{p}: line {n} is {what}; the file is damaged") from None
        problem = "must be a JSON object" if not isinstance(row, dict) else (check(row) if check else None)
        if problem:
            raise JsonlError(f"{p}: line {n}: {problem}; the file is damaged")
        rows.append(row)
    return rows
