"""The clinic's commands to a box: their schema and validation.

A command arrives on ``bedtime/v1/<box_id>/cmd/<name>`` with a JSON body
``{"schema": 1, "time_utc": "...", "args": {...}}``. :func:`parse_command` either returns the
validated arguments or raises :class:`CommandError` with a machine-readable ``code``; the box then
answers with an error reply and calls no handler, so an unknown or malformed command changes nothing.

The argument specs are written by hand rather than as JSON Schema: there are a handful of flat
arguments, and a JSON Schema engine would add a native dependency (rpds-py) to the box for that.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from appliance import mqtt_schema as schema


class CommandError(ValueError):
    """A command the box refuses; ``code`` is one of ``unknown_command``, ``bad_payload``,
    ``bad_args``, ``handler_error``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
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
    """

    type: str
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    pattern: str | None = None
    choices: tuple | None = None

    def check(self, name: str, v: Any) -> Any:
        ok_type = {
            "bool": lambda x: isinstance(x, bool),
            "int": lambda x: isinstance(x, int) and not isinstance(x, bool),
            "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x),
            "str": lambda x: isinstance(x, str),
        }[self.type]
        if not ok_type(v):
            raise CommandError("bad_args", f"argument {name!r} must be {self.type}, got {v!r}")
        if self.minimum is not None and v < self.minimum:
            raise CommandError("bad_args", f"argument {name!r}={v!r} is below {self.minimum}")
        if self.maximum is not None and v > self.maximum:
            raise CommandError("bad_args", f"argument {name!r}={v!r} is above {self.maximum}")
        if self.pattern is not None and not re.fullmatch(self.pattern, v):
            raise CommandError("bad_args", f"argument {name!r}={v!r} does not match {self.pattern}")
        if self.choices is not None and v not in self.choices:
            raise CommandError("bad_args", f"argument {name!r}={v!r} not one of {self.choices}")
        return v


@dataclass(frozen=True)
class CommandSpec:
    """A command's name, arguments and what it does (for docs/mqtt.md and ``bedtime-fleet``)."""

    name: str
    doc: str
    args: dict[str, Arg] = field(default_factory=dict)

    def validate_args(self, args: Any) -> dict:
        if not isinstance(args, dict):
            raise CommandError("bad_args", "args must be a JSON object")
        unknown = set(args) - set(self.args)
        if unknown:
            raise CommandError("bad_args", f"unknown argument(s) for {self.name}: {sorted(unknown)}")
        out = {}
        for name, spec in self.args.items():
            if name in args:
                out[name] = spec.check(name, args[name])
            elif spec.required:
                raise CommandError("bad_args", f"missing required argument {name!r} for {self.name}")
        return out


NIGHT_RE = r"latest|\d{4}-\d{2}-\d{2}"

#: Every command a box understands. A box answers ``unknown_command`` to anything else, and to a
#: listed command for which the daemon registered no handler.
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
]}


def parse_command(name: str, body: bytes | str) -> dict:
    """Validate a command request; return its arguments.

    Raises
    ------
    CommandError
        ``unknown_command`` if ``name`` is not in :data:`COMMANDS`, ``bad_payload`` if the body is not
        a v1 command object, ``bad_args`` if the arguments do not match the spec.
    """
    spec = COMMANDS.get(name)
    if spec is None:
        raise CommandError("unknown_command", f"unknown command {name!r}; known: {sorted(COMMANDS)}")
    try:
        obj = json.loads(body) if body else {}
    except (ValueError, UnicodeDecodeError) as e:
        raise CommandError("bad_payload", f"command body is not JSON: {e}") from e
    if not isinstance(obj, dict):
        raise CommandError("bad_payload", "command body must be a JSON object")
    extra = set(obj) - {"schema", "time_utc", "args"}
    if extra:
        raise CommandError("bad_payload", f"unexpected fields in command body: {sorted(extra)}")
    if obj.get("schema", schema.SCHEMA_VERSION) != schema.SCHEMA_VERSION:
        raise CommandError("bad_payload", f"schema must be {schema.SCHEMA_VERSION}")
    if "time_utc" in obj:
        try:
            schema.parse_iso_utc(obj["time_utc"])
        except schema.SchemaError as e:
            raise CommandError("bad_payload", str(e)) from e
    return spec.validate_args(obj.get("args", {}))
