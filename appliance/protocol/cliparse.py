"""What the ``bedtime`` and ``bedtime-fleet`` command lines share: usage errors in one line.

A person who mistypes an option gets what is wrong and where to read more, on one line, and exit status 2
(argparse's default prints the whole usage block first).

It sits in the protocol layer, although no message carries it, because it is the one convention both programs
promise the person at the terminal (and ``tests/test_cli.py`` holds both to it); the protocol layer is the only
code the box and the clinic both import, and this module imports nothing of either.
"""
from __future__ import annotations

import argparse
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """:class:`argparse.ArgumentParser` whose usage errors are one line: ``PROG: message (see PROG --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {one_line(message)} (see {self.prog} --help)\n")


MAX_LINE_CHARS = 600
"""Longest error line printed: a message quoting what it refuses (a 100,000-character argument, a line of a
binary file) is cut here, saying how much was cut; the longest real message (a list of known keys) is ~300."""


def one_line(text: object) -> str:
    """``text`` on one line, with characters a parser quoted from a binary file escaped rather than printed, and
    at most about :data:`MAX_LINE_CHARS` characters long.

    Parameters
    ----------
    text : object
        Usually an exception; its ``str`` is used.

    Returns
    -------
    str
        Whitespace runs (newlines included) collapsed to one space; unprintable characters and U+FFFD
        written as Python escapes; past :data:`MAX_LINE_CHARS`, cut with "... (N more characters)".
    """
    flat = " ".join(str(text).split())
    out: list[str] = []
    width = 0
    for i, c in enumerate(flat):
        piece = c if c.isprintable() and c != "\ufffd" else ascii(c)[1:-1]
        if width + len(piece) > MAX_LINE_CHARS:
            return f"{''.join(out)}... ({len(flat) - i} more characters)"
        out.append(piece)
        width += len(piece)
    return "".join(out)


# ---- argument types both command lines use ---------------------------------------------------------------------
MAX_WAIT_S = 7 * 86400.0
"""Longest wait a command line accepts, s (a week): past it a typo, and ``threading`` refuses waits near 1e9 s."""


def tcp_port(text: str) -> int:
    """An argparse type: a TCP port, 1 to 65535 (0 and negatives used to reach the socket as a traceback)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a port number") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"{text[:80]!r}: a port is from 1 to 65535")
    return v


def seconds(text: str) -> float:
    """An argparse type: a wait in seconds, finite, > 0 and at most :data:`MAX_WAIT_S` (NaN never ends a wait)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a number of seconds") from None
    if not 0 < v <= MAX_WAIT_S:  # also refuses NaN and infinities
        raise argparse.ArgumentTypeError(f"{text[:80]!r}: give seconds > 0 and at most {MAX_WAIT_S:.0f} (a week)")
    return v


def seconds_or_zero(text: str) -> float:
    """An argparse type: like :func:`seconds`, but 0 (do not wait) is allowed too."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a number of seconds") from None
    if v == 0:
        return 0.0
    if not 0 < v <= MAX_WAIT_S:
        raise argparse.ArgumentTypeError(f"{text[:80]!r}: give seconds >= 0 and at most {MAX_WAIT_S:.0f} (a week)")
    return v


def count(text: str) -> int:
    """An argparse type: how many, an integer from 1 to 10**9."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not a whole number") from None
    if not 1 <= v <= 10**9:
        raise argparse.ArgumentTypeError(f"{text[:80]!r}: give a whole number from 1 to 1000000000")
    return v
