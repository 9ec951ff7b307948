"""Reading the files a person names on a command line: regular files only, of bounded size, parsed safely.

A path given to ``bedtime`` or ``bedtime-fleet`` can name anything. A FIFO nobody writes to makes a plain ``open``
wait forever; ``/dev/zero`` or ``/dev/urandom`` never end, so reading them "whole" eats the machine's memory; a
folder, a dangling link or a 5 GB file are mistakes too; and a JSON or TOML document nested a hundred thousand deep
makes Python's own parsers raise :class:`RecursionError`, which is not a :class:`ValueError` and so slips past the
``except ValueError`` that catches every other malformed document. Every function here turns these into a
:class:`UserFileError` (a :class:`ValueError`) whose message says what is wrong, in a few words, so the command can
print it on one line and exit with status 2.

It sits in the protocol layer because both programs promise this to the person at the terminal (as
:mod:`appliance.protocol.cliparse` does for usage errors) and the protocol layer is the one both import.
"""
from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["MAX_KEY_FILE_BYTES", "UserFileError", "read_small_regular_file", "read_user_file", "read_user_text",
           "json_loads", "parse_json", "parse_toml", "replace_file"]


MAX_KEY_FILE_BYTES = 64 * 1024
"""Largest key or secret file either side reads (a signing key, the pinned public key the box's
``updates.public_key_file`` names, and in :mod:`appliance.fleet` a broker password file and the console's session
key): each is well under 1 kB (an Ed25519 PEM is 113-300 bytes); 64 KiB leaves room for comments or a pasted chain
and still refuses a wrong path to a big file or ``/dev/zero`` at once, unread."""


class UserFileError(ValueError):
    """A file named on a command line cannot be used; the message names the problem (without the path)."""


def read_small_regular_file(path: str | Path, *, max_bytes: int, follow_symlinks: bool = True) -> bytes:
    """Read a whole regular file of at most ``max_bytes`` bytes.

    Opened without blocking, so a FIFO is refused rather than waited on, and read in bounded reads, so a file
    that grows (or a device that never ends) cannot make it read more than ``max_bytes + 1`` bytes.
    ``follow_symlinks=False``: a symbolic link is refused (an ``OSError``), for files the box wrote itself.

    Raises
    ------
    OSError
        When it cannot be opened (missing, a dangling or looping link, no permission).
    UserFileError
        When it is not a regular file (a device, FIFO, socket or folder) or is larger than ``max_bytes``.
        ``/dev/null`` reads as an empty file.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags if follow_symlinks else flags | getattr(os, "O_NOFOLLOW", 0))
    try:
        st = os.fstat(fd)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.stat(os.devnull).st_rdev:
            return b""  # /dev/null: the usual way to say "an empty file" (``--config /dev/null``: the defaults)
        if not stat.S_ISREG(st.st_mode):
            raise UserFileError("not a regular file (a folder, device or FIFO)")
        if st.st_size > max_bytes:
            raise UserFileError(f"larger than {max_bytes} bytes")
        chunks, got = [], 0
        while got <= max_bytes:  # a regular file's read may return less than asked (a network file system)
            chunk = os.read(fd, max_bytes + 1 - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    finally:
        os.close(fd)
    if got > max_bytes:
        raise UserFileError(f"larger than {max_bytes} bytes")
    return b"".join(chunks)


def read_user_file(path: str | Path, *, max_bytes: int) -> bytes:
    """:func:`read_small_regular_file`, with an :class:`OSError` also turned into a :class:`UserFileError`
    ("cannot read: No such file or directory")."""
    try:
        return read_small_regular_file(path, max_bytes=max_bytes)
    except OSError as e:
        raise UserFileError(f"cannot read: {e.strerror or e}") from None


def read_user_text(path: str | Path, *, max_bytes: int, what: str = "UTF-8 text") -> str:
    """A UTF-8 text file named on a command line (an editor's byte-order mark dropped), see :func:`read_user_file`.

    Parameters
    ----------
    what : str
        What the file should be, for the message when it is not UTF-8 (``"TOML text"``: "not a TOML text file").

    Raises
    ------
    UserFileError
        As :func:`read_user_file`, and when a byte is not UTF-8 (its value and offset named).
    """
    data = read_user_file(path, max_bytes=max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserFileError(f"not a {what} file: byte 0x{data[e.start]:02x} at offset {e.start} is not UTF-8") from None


def json_loads(text: str | bytes) -> Any:
    """``json.loads(text)``, with JSON nested too deeply for Python's parser a :class:`ValueError` like any other
    malformed JSON (a :class:`UserFileError` "JSON nested too deeply"), so that ``except ValueError`` catches it.

    For every file the box reads back: one damaged line must be a damaged file, handled, never a
    :class:`RecursionError` that stops the daemon at every start."""
    try:
        return json.loads(text)
    except RecursionError:
        raise UserFileError("JSON nested too deeply") from None


TOO_MANY_DIGITS = f"a number of more than {sys.get_int_max_str_digits()} digits"
"""What the person is told when Python refuses to read an integer that long (see :func:`too_many_digits`)."""


def too_many_digits(e: ValueError) -> bool:
    """Python refused to read an integer of more than ``sys.get_int_max_str_digits()`` digits (its message names
    ``sys.set_int_max_str_digits``, of no use to the person who wrote the file)."""
    return "integer string conversion" in str(e)


def parse_json(text: str | bytes) -> Any:
    """``json.loads(text)``, every failure a :class:`UserFileError` (nesting too deep included)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise UserFileError("not usable JSON: nested too deeply") from None
    except UnicodeDecodeError as e:
        raise UserFileError(f"not UTF-8 JSON: byte at offset {e.start}") from None
    except ValueError as e:
        if too_many_digits(e):
            raise UserFileError(f"not usable JSON: {TOO_MANY_DIGITS}") from None
        raise UserFileError(f"not valid JSON: {e}") from None


def parse_toml(text: str) -> dict:
    """``tomllib.loads(text)``, every failure a :class:`UserFileError` (nesting too deep included)."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise UserFileError("not usable TOML: nested too deeply") from None
    except tomllib.TOMLDecodeError as e:
        raise UserFileError(f"TOML syntax error: {e}") from None
    except ValueError as e:  # tomllib lets Python's limit on digits through as a plain ValueError
        if too_many_digits(e):
            raise UserFileError(f"not usable TOML: {TOO_MANY_DIGITS}") from None
        raise UserFileError(f"not usable TOML: {e}") from None


def replace_file(path: str | Path, data: bytes, *, mode: int = 0o644) -> None:
    """Put ``data`` at ``path`` whole or not at all: written to a temporary file in the same folder, flushed to disk,
    then renamed over ``path``.

    Never half a file for a reader (mosquitto reading its ACL, a box reading a manifest), and whatever sat at
    ``path`` (a FIFO, a device, a link) is replaced, never opened: opening a FIFO to write waits for a reader forever.
    """
    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
