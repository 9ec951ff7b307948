"""The clinic's commands to a box: their schema and validation (protocol layer: the clinic checks a command
against the same spec before sending it, the box before running it).

A command arrives on ``bedtime/v1/<box_id>/cmd/<name>`` with a JSON body
``{"schema": 1, "time_utc": "...", "args": {...}}``. :func:`parse_command` either returns the
validated arguments or raises :class:`CommandError` with a machine-readable ``code``; the box then
answers with an error reply and calls no handler, so an unknown or malformed command changes nothing.

The argument specs are written by hand rather than as JSON Schema: there are a handful of flat
arguments, and a JSON Schema engine would add a native dependency (rpds-py) to the box for that.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any

from appliance.protocol import schema
from appliance.protocol.signing import KINDS
from appliance.protocol.updates import MAX_MANIFEST_CHARS, MAX_PAYLOAD_BYTES, b64_len

MAX_COMMAND_BYTES = 64 * 1024
"""Largest command body a box parses, unless its spec allows more (``update`` carries a model)."""
MAX_MESSAGE_CHARS = 300
"""Longest error message in a reply (and its log line): a hostile argument is never echoed whole."""
MAX_COMMAND_AGE_S = 3600.0
"""A command whose ``time_utc`` is older than this (seconds) is refused as stale (a replayed or retained one)."""
MAX_COMMAND_FUTURE_S = 600.0
"""...or further than this in the future (clocks differ a little)."""


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def short_repr(v: Any, limit: int = 60) -> str:
    """A bounded repr of a received value for a message (never the whole of a 10 MB string or a deep list)."""
    try:
        return clip(repr(v) if not isinstance(v, (list, dict)) else f"<{type(v).__name__} of {len(v)}>", limit)
    except RecursionError:
        return f"<{type(v).__name__}>"


class CommandError(ValueError):
    """A command the box refuses; ``code`` is one of ``unknown_command``, ``bad_payload``,
    ``bad_args``, ``handler_error``. The message is clipped to :data:`MAX_MESSAGE_CHARS`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(clip(message))
        self.code = code


@dataclass(frozen=True)
class Arg:
    """One command argument.

    Attributes
    ----------
    type : str
        ``"bool"``, ``"int"``, ``"number"`` or ``"str"``.
    required : bool
        Whether the argument must be present.
    minimum, maximum : float or None
        Inclusive bounds for numbers.
    pattern : str or None
        Regular expression a string must match in full.
    choices : tuple or None
        Allowed values.
    max_length : int
        Longest string (characters), checked before the pattern.
    """

    type: str
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    pattern: str | None = None
    choices: tuple | None = None
    max_length: int = 1024

    def check(self, name: str, v: Any) -> Any:
        ok_type = {
            "bool": lambda x: isinstance(x, bool),
            "int": lambda x: isinstance(x, int) and not isinstance(x, bool),
            "number": schema.is_finite_number,
            "str": lambda x: isinstance(x, str),
        }[self.type]
        r = short_repr(v)
        if not ok_type(v):
            raise CommandError("bad_args", f"argument {name!r} must be {self.type}, got {r}")
        if self.minimum is not None and v < self.minimum:
            raise CommandError("bad_args", f"argument {name!r}={r} is below {self.minimum}")
        if self.maximum is not None and v > self.maximum:
            raise CommandError("bad_args", f"argument {name!r}={r} is above {self.maximum}")
        if isinstance(v, str) and len(v) > self.max_length:
            raise CommandError("bad_args", f"argument {name!r} is {len(v)} characters long; at most {self.max_length}")
        if self.pattern is not None and not re.fullmatch(self.pattern, v):
            raise CommandError("bad_args", f"argument {name!r}={r} does not match {clip(self.pattern, 60)}")
        if self.choices is not None and v not in self.choices:
            raise CommandError("bad_args", f"argument {name!r}={r} not one of {self.choices}")
        return v


@dataclass(frozen=True)
class CommandSpec:
    """A command's name, arguments and what it does (for docs/mqtt.md and ``bedtime-fleet``)."""

    name: str
    doc: str
    args: dict[str, Arg] = field(default_factory=dict)
    max_bytes: int = MAX_COMMAND_BYTES
    """Largest body (bytes) of this command."""

    def validate_args(self, args: Any) -> dict:
        if not isinstance(args, dict):
            raise CommandError("bad_args", "args must be a JSON object")
        unknown = set(args) - set(self.args)
        if unknown:
            names = ", ".join(clip(repr(u), 40) for u in sorted(unknown)[:5])
            raise CommandError("bad_args", f"unknown argument(s) for {self.name}: {names}"
                                           + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
        out = {}
        for name, spec in self.args.items():
            if name in args:
                out[name] = spec.check(name, args[name])
            elif spec.required:
                raise CommandError("bad_args", f"missing required argument {name!r} for {self.name}")
        return out


NIGHT_RE = r"latest|\d{4}-\d{2}-\d{2}"

#: Every command a box understands. A box answers ``unknown_command`` to anything else, and to a
#: listed command for which the daemon registered no handler (``update`` without a pinned clinic key).
#:
#: There is deliberately no ``identify`` (blink the light so staff can find the box): the daemon runs only
#: while a night is recorded, so a child may be in bed whenever it could answer; the breather alone drives
#: the light (and forces it off outside a session), and no clinic command may light a bedroom.
COMMANDS: dict[str, CommandSpec] = {s.name: s for s in [
    CommandSpec("ping", "Answer with firmware, model versions and outbox depth (handled by the link itself)."),
    CommandSpec("report", "Return a night report (the morning report JSON).",
                {"night": Arg("str", pattern=NIGHT_RE)}),
    CommandSpec("set_breather", "Enable or disable the breather (the detector and alerts keep running).",
                {"enabled": Arg("bool", required=True)}),
    CommandSpec("selftest", "Run the self-test and return its pass/fail table."),
    CommandSpec("restart", "Restart the daemon (systemd brings it back).",
                {"reason": Arg("str", pattern=r".{1,200}")}),
    CommandSpec("update", "Apply a signed model or config (verified against the pinned key; health-checked; rolled "
                          "back on failure).",
                {"kind": Arg("str", required=True, choices=KINDS),
                 "payload_b64": Arg("str", required=True, pattern=r"[A-Za-z0-9+/=\s]+",
                                    max_length=b64_len(MAX_PAYLOAD_BYTES)),
                 "manifest": Arg("str", required=True, pattern=r"(?s)\{.*\}", max_length=MAX_MANIFEST_CHARS)},
                max_bytes=b64_len(MAX_PAYLOAD_BYTES) + 2 * MAX_MANIFEST_CHARS + 4096),
]}


def parse_command(name: str, body: bytes | str, *, now: dt.datetime | None = None) -> dict:
    """Validate a command request; return its arguments.

    The body must be at most the spec's ``max_bytes``, nest no deeper than the JSON parser's recursion limit,
    carry ``"schema": 1`` (the integer: not ``true``, not ``1.0``) if any, and a ``time_utc`` within
    :data:`MAX_COMMAND_AGE_S` before and :data:`MAX_COMMAND_FUTURE_S` after ``now`` if any.

    Raises
    ------
    CommandError
        ``unknown_command`` if ``name`` is not in :data:`COMMANDS`, ``bad_payload`` if the body is not
        a fresh v1 command object, ``bad_args`` if the arguments do not match the spec (or nest too deeply).
    """
    spec = COMMANDS.get(name)
    if spec is None:
        raise CommandError("unknown_command", f"unknown command {clip(repr(name), 80)}; known: {sorted(COMMANDS)}")
    if len(body) > spec.max_bytes:
        raise CommandError("bad_payload", f"command body is {len(body)} bytes; {name} takes at most {spec.max_bytes}")
    try:
        obj = json.loads(body) if body else {}
    except (ValueError, UnicodeDecodeError) as e:
        raise CommandError("bad_payload", f"command body is not JSON: {e}") from e
    except RecursionError:
        raise CommandError("bad_args", "command nested too deeply") from None
    if not isinstance(obj, dict):
        raise CommandError("bad_payload", "command body must be a JSON object")
    extra = set(obj) - {"schema", "time_utc", "args"}
    if extra:
        raise CommandError("bad_payload", f"unexpected fields in command body: {clip(str(sorted(extra)), 120)}")
    if not schema.is_schema_version(obj.get("schema", schema.SCHEMA_VERSION)):
        raise CommandError("bad_payload", f"schema must be the integer {schema.SCHEMA_VERSION}")
    if "time_utc" in obj:
        try:
            t = schema.parse_iso_utc(obj["time_utc"])
        except schema.SchemaError as e:
            raise CommandError("bad_payload", str(e)) from e
        now = now or dt.datetime.now(dt.timezone.utc)
        age = (now - t).total_seconds()
        if age > MAX_COMMAND_AGE_S or -age > MAX_COMMAND_FUTURE_S:
            raise CommandError("bad_payload", f"command time {clip(obj['time_utc'], 40)} is "
                                              f"{'stale' if age > 0 else 'in the future'} (box clock "
                                              f"{schema.iso_utc(now)}; allowed {MAX_COMMAND_AGE_S:.0f} s old, "
                                              f"{MAX_COMMAND_FUTURE_S:.0f} s ahead)")
    return spec.validate_args(obj.get("args", {}))
