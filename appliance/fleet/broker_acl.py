"""Family accounts for the broker ACL: ``bedtime-fleet family-acl``.

A family's Home Assistant gets its own broker account, ``family-<name>``, that can read only its own
boxes: their ``bedtime/v1/<box>/#`` subtree (status, stage, telemetry, alerts, reports) and their Home
Assistant discovery configs (``homeassistant/+/<box>/#``), and write only Home Assistant's birth/will
topic ``homeassistant/status``. It cannot publish commands or configs, and it hears nothing of any
other family's boxes, even if two families' accounts were mixed up. The shipped
``docs/mosquitto/acl.conf`` holds the fixed accounts (console, boxes); this module writes the per-family
blocks that go after it::

    bedtime-fleet family-acl --base docs/mosquitto/acl.conf \\
        --family smith=ward3-07,ward3-08 --family jones=home-1 --out /etc/mosquitto/bedtime.acl

Without ``--out`` the ACL goes to stdout. Bad input is refused with one line and exit status 2 before
anything is written; ``--out`` is replaced atomically (write, fsync, rename).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Sequence

from appliance.fleet.cli import subcommand
from appliance.protocol import schema
from appliance.protocol.cliparse import one_line
from appliance.protocol.userfiles import UserFileError, read_user_text, replace_file

#: Every family account's user name starts with this (box ids must not, see docs/security.md).
FAMILY_PREFIX = "family-"

#: A family name: lower-case letters, digits, ``_`` and ``-``; it becomes part of a broker user name.
FAMILY_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")

MAX_BASE_BYTES = 1024 * 1024
"""Largest ``--base`` ACL read: the shipped docs/mosquitto/acl.conf is about 2 kB and a clinic's own accounts add
a few lines each; a bigger file is the wrong path, refused rather than copied into the broker's ACL."""

#: Where Home Assistant publishes its birth ("online") and last-will ("offline") messages.
HA_STATUS_TOPIC = f"{schema.HA_DISCOVERY_PREFIX}/status"


def family_user(name: str) -> str:
    """The broker user name of family ``name`` (``family-<name>``); raises ValueError if invalid."""
    if not isinstance(name, str) or not FAMILY_NAME_RE.match(name):
        raise ValueError(f"invalid family name {name!r}: 1-48 of a-z 0-9 _ - (not starting with _ -)")
    return FAMILY_PREFIX + name


def family_block(*, name: str, boxes: Sequence[str]) -> str:
    """The mosquitto ACL block of one family (``user family-<name>`` and its ``topic`` lines).

    Parameters
    ----------
    name : str
        Family name (see :data:`FAMILY_NAME_RE`).
    boxes : sequence of str
        The family's box ids (at least one; each a valid box id, see :func:`appliance.protocol.schema.check_box_id`).

    Returns
    -------
    str
        The block, ending with a newline.
    """
    user = family_user(name)
    if not boxes:
        raise ValueError(f"family {name!r} has no boxes")
    lines = [f"# family {name}: its Home Assistant reads its own boxes only; writes only HA's birth/will",
             f"user {user}"]
    for box in dict.fromkeys(boxes):  # keep order, drop repeats
        try:
            schema.check_box_id(box)
        except schema.SchemaError as e:
            raise ValueError(str(e)) from None
        if box.startswith(FAMILY_PREFIX):
            raise ValueError(f"box id {box!r} starts with {FAMILY_PREFIX!r}, which is reserved for family accounts")
        lines += [f"topic read {schema.TOPIC_PREFIX}/{box}/#",
                  f"topic read {schema.HA_DISCOVERY_PREFIX}/+/{box}/#"]
    lines.append(f"topic write {HA_STATUS_TOPIC}")
    return "\n".join(lines) + "\n"


def parse_family_spec(spec: str) -> tuple[str, list[str]]:
    """``"smith=box-a,box-b"`` -> ``("smith", ["box-a", "box-b"])``; raises ValueError if malformed."""
    name, sep, boxes = spec.partition("=")
    if not sep:
        raise ValueError(f"--family {spec!r}: expected NAME=BOX[,BOX...]")
    ids = [b.strip() for b in boxes.split(",") if b.strip()]
    if not ids:
        raise ValueError(f"--family {spec!r}: no box ids after '='")
    return name.strip(), ids


def family_acl(families: Sequence[tuple[str, Sequence[str]]], *, base: str = "") -> str:
    """The ACL text: ``base`` (e.g. docs/mosquitto/acl.conf) followed by one block per family.

    Raises ValueError for an invalid or repeated family name or an invalid box id.
    """
    seen: set[str] = set()
    blocks = []
    for name, boxes in families:
        if name in seen:
            raise ValueError(f"family {name!r} given twice")
        seen.add(name)
        blocks.append(family_block(name=name, boxes=boxes))
    head = base if not base or base.endswith("\n") else base + "\n"
    return head + ("\n" if head and blocks else "") + "\n".join(blocks)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", action="append", default=[], metavar="NAME=BOX[,BOX...]", required=True,
                   help="a family and its box ids; repeatable (user name: family-NAME)")
    p.add_argument("--base", type=Path, default=None,
                   help="ACL to start from, e.g. docs/mosquitto/acl.conf (default: family blocks only)")
    p.add_argument("--out", type=Path, default=None, help="write here atomically (default: stdout)")


@subcommand("family-acl", help="write the broker ACL blocks of family (Home Assistant) accounts",
            add_arguments=_arguments)
def _run(args: argparse.Namespace) -> int:
    try:
        families = [parse_family_spec(s) for s in args.family]
        base = ""
        if args.base is not None:
            try:  # a regular file of bounded size only: a FIFO or /dev/zero is refused, not waited on or read
                base = read_user_text(args.base, max_bytes=MAX_BASE_BYTES, what="text")
            except UserFileError as e:
                raise ValueError(f"--base {args.base}: {e}") from None
        text = family_acl(families, base=base)
        if args.out is not None and not args.out.parent.is_dir():
            raise ValueError(f"--out {args.out}: folder {args.out.parent} does not exist")
    except ValueError as e:
        print(f"bedtime-fleet family-acl: {one_line(e)}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(text)
    else:
        try:
            # the ACL names every box and family: not world-readable
            replace_file(args.out, text.encode("utf-8"), mode=0o640)
        except OSError as e:
            print(f"bedtime-fleet family-acl: --out {args.out}: {e.strerror or e}", file=sys.stderr)
            return 2
    return 0
