"""What the ``bedtime`` and ``bedtime-fleet`` command lines share: usage errors in one line.

A person who mistypes an option gets what is wrong and where to read more, on one line, and exit status 2
(argparse's default prints the whole usage block first).

It sits in the protocol layer, although no message carries it, because it is the one convention both programs
promise the person at the terminal (and ``tests/test_cli.py`` holds both to it); the protocol layer is the only
code the box and the clinic both import, and this module imports nothing of either.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, NoReturn


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


def checked_number(parse: Callable[[str], Any], noun: str, ok: Callable[[Any], bool],
                   rule: str) -> Callable[[str], Any]:
    """An argparse type: the text parsed by ``parse`` (``int`` or ``float``), kept when ``ok(value)``.

    Parameters
    ----------
    parse : callable
        ``int`` or ``float``; its ValueError (not a number, or an integer of more than 4300 digits) becomes
        "'TEXT' is not NOUN".
    noun : str
        What the text should have been ("a number", "a port number").
    ok : callable
        Whether the value is allowed (write it so that NaN fails: ``0 < v``, not ``not v <= 0``).
    rule : str
        Said after the text when ``ok`` refuses it ("a port is from 1 to 65535").
    """
    def convert(text: str) -> Any:
        try:
            v = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:80]!r} is not {noun}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"{text[:80]!r}: {rule}")
        return v

    return convert


tcp_port = checked_number(int, "a port number", lambda v: 1 <= v <= 65535, "a port is from 1 to 65535")
"""A TCP port, 1 to 65535 (0 and negatives used to reach the socket as a traceback)."""
seconds = checked_number(float, "a number of seconds", lambda v: 0 < v <= MAX_WAIT_S,
                         f"give seconds > 0 and at most {MAX_WAIT_S:.0f} (a week)")
"""A wait in seconds, finite, > 0 and at most :data:`MAX_WAIT_S` (NaN never ends a wait)."""
seconds_or_zero = checked_number(float, "a number of seconds", lambda v: 0 <= v <= MAX_WAIT_S,
                                 f"give seconds >= 0 and at most {MAX_WAIT_S:.0f} (a week)")
"""Like :data:`seconds`, but 0 (do not wait) is allowed too."""
count = checked_number(int, "a whole number", lambda v: 1 <= v <= 10**9, "give a whole number from 1 to 1000000000")
"""How many, an integer from 1 to 10**9."""
