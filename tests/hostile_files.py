"""Hostile files for the tests of everything that reads a file a person names (or a damaged disk leaves): both
command lines (tests/test_box_hostile_files.py, tests/test_fleet_hostile_files.py) draw them from here.

Kinds: a FIFO nobody writes to (a plain ``open`` waits for ever), a link to ``/dev/zero`` (reading it "whole" never
ends), a folder, a dangling or looping link, a sparse file one byte over a cap, binary bytes (never UTF-8), text that
is no config, key or manifest, JSON or TOML nested thousands deep (Python's parsers raise ``RecursionError``), JSON
or TOML holding a number of more than 4300 digits (Python refuses to read it with a ``ValueError`` that is neither a
``JSONDecodeError`` nor a ``TOMLDecodeError``), an empty file.
"""
from __future__ import annotations

import os
from pathlib import Path

from hypothesis import strategies as st

ALL_KINDS = ("fifo", "dev_zero", "folder", "dangling", "link_loop", "oversize", "binary", "text", "nested_json",
             "nested_toml", "nested_inline_table", "huge_number_json", "huge_number_toml", "empty")


def hostile_spec(kinds: tuple[str, ...]) -> st.SearchStrategy:
    """(kind, detail): what :func:`make_hostile` builds."""
    return st.sampled_from(kinds).flatmap(lambda k: st.tuples(st.just(k), {
        "binary": st.binary(max_size=2000).map(lambda b: b"\xff\x00" + b),  # never UTF-8
        "text": st.text(max_size=500).map(lambda t: "= " + t),  # no TOML, JSON, PEM or config
        "nested_json": st.integers(2_000, 200_000),
        "nested_toml": st.integers(2_000, 200_000),
        "nested_inline_table": st.integers(2_000, 200_000),
        "huge_number_json": st.integers(4_301, 20_000),
        "huge_number_toml": st.integers(4_301, 20_000),
    }.get(k, st.none())))


def make_hostile(folder: Path, spec: tuple, *, cap: int, suffix: str = ".json") -> Path:
    """Build the hostile file of ``spec`` in ``folder`` (``oversize``: sparse, ``cap`` + 1 bytes)."""
    return make_hostile_at(folder / f"hostile{suffix}", spec, cap=cap)


def make_hostile_at(p: Path, spec: tuple, *, cap: int) -> Path:
    """Build the hostile file of ``spec`` at ``p`` (``oversize``: sparse, ``cap`` + 1 bytes)."""
    kind, detail = spec
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "dev_zero":
        p.symlink_to("/dev/zero")
    elif kind == "folder":
        p.mkdir()
    elif kind == "dangling":
        p.symlink_to(p.with_name("no-such-file"))
    elif kind == "link_loop":
        p.symlink_to(p)
    elif kind == "oversize":
        p.touch()
        os.truncate(p, cap + 1)  # sparse: no gigabytes written
    elif kind == "binary":
        p.write_bytes(detail)
    elif kind == "text":
        p.write_text(detail, encoding="utf-8", errors="surrogatepass")
    elif kind == "nested_json":
        p.write_text("[" * detail + "]" * detail)
    elif kind == "nested_toml":
        p.write_text("a = " + "[" * detail + "]" * detail + "\n")
    elif kind == "nested_inline_table":
        p.write_text("a = " + "{b = " * detail + "1" + "}" * detail + "\n")
    elif kind == "huge_number_json":
        p.write_text('{"schema": ' + "9" * detail + "}\n")
    elif kind == "huge_number_toml":
        p.write_text("[box]\nid = " + "9" * detail + "\n")
    elif kind == "empty":
        p.touch()
    else:
        raise AssertionError(kind)
    return p
