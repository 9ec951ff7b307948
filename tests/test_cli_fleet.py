"""``bedtime-fleet`` as a clinic's newcomer types it: an absolute default database, broker options before or
after the subcommand, a refused connection said at once in one line, and help on every option."""
from __future__ import annotations

import argparse
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.fleet import cli as fleet_cli


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = fleet_cli.main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    return rc, out, err


def _actions(parser: argparse.ArgumentParser, name: str):
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub_name, sub in a.choices.items():
                yield from _actions(sub, f"{name} {sub_name}")
        else:
            yield name, a


def test_every_option_of_both_commands_has_help():
    from appliance.cli import build_parser as box_parser

    missing = [f"{name} {a.option_strings or a.dest}"
               for parser, prog in ((fleet_cli.build_parser(), "bedtime-fleet"), (box_parser(), "bedtime"))
               for name, a in _actions(parser, prog) if not a.help]
    assert not missing, missing


@pytest.mark.parametrize("euid", [0, 1000])
def test_the_default_database_is_absolute_and_not_in_the_working_folder(tmp_path, monkeypatch, capsys, euid):
    monkeypatch.delenv("BEDTIME_CONSOLE_DB", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setattr("os.geteuid", lambda: euid)
    monkeypatch.chdir(tmp_path)
    args = fleet_cli.build_parser().parse_args(["user", "list"])
    assert args.db.startswith("sqlite:////"), args.db
    if euid == 0:
        assert args.db == "sqlite:////var/lib/bedtime-clinic/fleet.db"
        return  # not created here: it is the machine's own folder
    assert args.db == f"sqlite:///{tmp_path / 'state' / 'bedtime-clinic' / 'fleet.db'}"
    rc, _out, err = _run(["user", "list"], capsys)
    assert rc == 0, err
    assert (tmp_path / "state" / "bedtime-clinic" / "fleet.db").is_file()
    assert not (tmp_path / "var").exists()  # the old relative default made ./var/fleet.db here


def test_broker_options_before_or_after_the_subcommand():
    parse = fleet_cli.build_parser().parse_args
    assert parse(["--port", "1234", "--host", "h1", "list"]).port == 1234
    after = parse(["list", "--port", "1234", "--host", "h1"])
    assert (after.port, after.host) == (1234, "h1")
    both = parse(["--port", "1", "ping", "--box", "b", "--port", "2"])
    assert both.port == 2  # the later one wins, as on any command line
    assert parse(["--host", "h1", "list"]).host == "h1"  # not reset by the subcommand's copy of the option


@pytest.mark.broker
def test_broker_options_after_the_subcommand_reach_a_real_broker(broker, capsys):
    rc, out, err = _run(["list", "--host", "127.0.0.1", "--port", str(broker.port), "--wait", "0.2"], capsys)
    assert rc == 0, err
    assert "box(es)" in out


def test_a_refused_connection_fails_fast_in_one_line(capsys):
    from tests.broker import free_port

    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    rc, _out, err = _run(["--host", "127.0.0.1", "--port", str(port), "list"], capsys)
    elapsed = time.monotonic() - t0
    assert rc == 3
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"127.0.0.1:{port}" in err and "refused" in err
    assert elapsed < 5.0, elapsed  # the old wait was the full 10 s


@pytest.mark.broker
def test_a_broker_refusing_the_login_fails_fast_in_one_line(broker, capsys):
    t0 = time.monotonic()  # the password listener refuses an anonymous client with a CONNACK reason
    rc, _out, err = _run(["--host", "127.0.0.1", "--port", str(broker.auth_port), "list"], capsys)
    assert rc == 3
    assert len(err.strip().splitlines()) == 1 and "refused" in err
    assert time.monotonic() - t0 < 5.0


def test_a_missing_password_file_is_one_line(tmp_path, capsys):
    rc, _out, err = _run(["list", "--password-file", str(tmp_path / "nope.pw")], capsys)
    assert rc == 2  # bad input, said before connecting (3 is for a broker that cannot be reached or refuses)
    assert len(err.strip().splitlines()) == 1 and "nope.pw" in err and "Traceback" not in err


def test_the_commands_the_docs_name_exist():
    """Docs and code agree on command names (the docs once said `bedtime-fleet keygen`; the command is `keys`)."""
    import re
    from pathlib import Path

    from appliance.cli import build_parser as box_parser

    root = Path(__file__).resolve().parent.parent
    texts = {p: p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("*.md")),
                                        *sorted((root / "docs").glob("*.toml")), *sorted((root / "systemd").glob("*"))]
             if p.is_file()}

    def subcommands(parser: argparse.ArgumentParser) -> set[str]:
        return {n for a in parser._actions if isinstance(a, argparse._SubParsersAction) for n in a.choices}

    fleet, box = subcommands(fleet_cli.build_parser()), subcommands(box_parser())
    wrong = []
    for path, text in texts.items():
        for m in re.finditer(r"bedtime-fleet (?:\.\.\. )?([a-z][a-z-]*)", text):
            if m.group(1) not in fleet:
                wrong.append(f"{path.name}: bedtime-fleet {m.group(1)}")
        for m in re.finditer(r"(?:`|^|/bin/)bedtime (?:\.\.\. )?([a-z][a-z-]*)", text, re.M):
            if m.group(1) not in box:
                wrong.append(f"{path.name}: bedtime {m.group(1)}")
    assert not wrong, wrong


# ---- numbers, ports and group names: parsed, or refused in one line before anything connects ------------------
_NUMERIC = [  # (subcommand or "" for the top level, its required arguments, the option)
    ("", ["list"], "--port"), ("", ["list"], "--wait"), ("list", [], "--port"), ("list", [], "--wait"),
    ("alerts", [], "--count"), ("alerts", [], "--timeout"), ("alerts", [], "--group"),
    ("ping", ["--box", "a"], "--timeout"), ("report", ["--box", "a"], "--timeout"),
    ("push-config", ["x.json", "--box", "a"], "--ack-timeout"),
    ("serve", ["--no-mqtt"], "--share-group"), ("serve", ["--no-mqtt"], "--listen"),
    ("rollout", ["x", "--kind", "model", "--canary", "a"], "--timeout"),
    ("rollout", ["x", "--kind", "model", "--canary", "a"], "--batch"),
]
_HOSTILE_NUMBERS = st.one_of(
    st.sampled_from(["0", "-1", "nan", "-nan", "inf", "-inf", "1e309", "1e-320", "65536", "99999999999999999999",
                     "0x10", "1_000", " 5", "٣", "", "a/b", "+", "#", "$share", "x" * 300]),
    st.integers(min_value=-10**25, max_value=10**25).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=30))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(_NUMERIC), value=_HOSTILE_NUMBERS)
def test_numbers_ports_and_groups_parse_to_sane_values_or_a_one_line_refusal(where, value, capsys):
    """The values reached the socket or ``threading`` (``--port 0``: a ValueError traceback; ``--port 10**20``: an
    OverflowError; ``alerts --group /x``: a SchemaError) or waited forever (``--timeout nan``)."""
    import math

    sub, required, option = where
    argv = ([sub] if sub else []) + required + [f"{option}={value}"]
    try:
        args = fleet_cli.build_parser().parse_args(argv)
    except SystemExit as e:
        err = capsys.readouterr().err
        assert e.code == 2 and err.count("\n") == 1 and option in err and "Traceback" not in err, err
        return
    got = getattr(args, option.lstrip("-").replace("-", "_"))
    if option == "--port":
        assert 1 <= got <= 65535
    elif option in ("--count", "--batch"):
        assert 1 <= got <= 10**9
    elif option in ("--timeout", "--ack-timeout", "--wait"):
        assert math.isfinite(got) and 0 <= got <= 7 * 86400 and (got > 0 or option == "--wait")
    elif option in ("--group", "--share-group"):
        assert got and not any(c in got for c in "/+#")
    elif option == "--listen":
        assert 1 <= got[1] <= 65535
