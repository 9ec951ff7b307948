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


def one_line(text: object) -> str:
    """``text`` on one line, with characters a parser quoted from a binary file escaped rather than printed.

    Parameters
    ----------
    text : object
        Usually an exception; its ``str`` is used.

    Returns
    -------
    str
        Whitespace runs (newlines included) collapsed to one space; unprintable characters and U+FFFD
        written as Python escapes.
    """
    flat = " ".join(str(text).split())
    return "".join(c if c.isprintable() and c != "\ufffd" else ascii(c)[1:-1] for c in flat)
