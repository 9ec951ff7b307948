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
