"""``bedtime-fleet``: the clinic's command-line console.

Subcommands::

    bedtime-fleet list                         boxes: online/offline, last seen, firmware, models, signal
    bedtime-fleet alerts [--follow]            follow alerts live (an observer: takes nothing from consoles)
    bedtime-fleet push-config FILE --box ID... validate a TOML/JSON config and set it on boxes
    bedtime-fleet report --box ID [--night N]  request a night report and save it as JSON
    bedtime-fleet ping --box ID                check a box answers commands
    bedtime-fleet family-acl --family N=BOX,.. broker ACL blocks of family (Home Assistant) accounts

Broker options (``--host``, ``--port``, ``--username``, ``--password-file``, ``--ca``...) go before or after
the subcommand and also read ``BEDTIME_MQTT_*`` environment variables. A broker that cannot be reached or
refuses the connection is one line on stderr and exit status 3, at once (not after a timeout).

Subcommands live in a registry (:func:`subcommand`), so other parts of the fleet tooling add theirs
(e.g. the web console's ``serve``) by registering in a module listed in :data:`PLUGIN_MODULES`.
"""
from __future__ import annotations

import argparse
import fnmatch
import importlib
import importlib.util
import json
import logging
import os
import ssl
import stat
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Callable

from appliance.fleet.ingest import CommandTimeout, FleetIngest, TLSClientSettings
from appliance.protocol import schema
from appliance.protocol.cliparse import OneLineParser, count, one_line, seconds, seconds_or_zero, tcp_port
from appliance.protocol.commands import CommandError
from appliance.protocol.userfiles import MAX_KEY_FILE_BYTES
from appliance.protocol.updates import MAX_CONFIG_PAYLOAD_BYTES
from appliance.protocol.userfiles import UserFileError, parse_json, parse_toml, read_user_text
from appliance.protocol.version import __version__

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Subcommand:
    """One ``bedtime-fleet`` subcommand: how to parse its arguments and how to run it."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    uses_broker: bool = True  # takes the broker options after its name too


#: name -> Subcommand, in the order ``--help`` lists them.
SUBCOMMANDS: dict[str, Subcommand] = {}

#: Modules imported before parsing so they can register subcommands (only if installed/present).
PLUGIN_MODULES: tuple[str, ...] = ("appliance.fleet.web.cli", "appliance.fleet.broker_acl")


def subcommand(name: str, *, help: str,
               add_arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None,
               uses_broker: bool = True):
    """Decorator: register ``run(args) -> exit code`` as ``bedtime-fleet <name>`` (``uses_broker``: it
    connects to the broker, so the broker options are accepted after its name as well as before)."""
    def deco(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        if name in SUBCOMMANDS:
            raise ValueError(f"bedtime-fleet subcommand {name!r} registered twice")
        SUBCOMMANDS[name] = Subcommand(name, help, add_arguments, run, uses_broker)
        return run
    return deco


# ---- shared: broker connection ------------------------------------------------------------------

def add_broker_arguments(ap: argparse.ArgumentParser, *, after_subcommand: bool = False) -> None:
    """The broker options. ``after_subcommand``: the copy on a subcommand's parser, whose defaults are
    suppressed so that an option given before the subcommand is not overwritten by the default after it."""
    env = os.environ.get

    def default(value: object) -> object:
        return argparse.SUPPRESS if after_subcommand else value

    g = ap.add_argument_group("broker", "before or after the subcommand; BEDTIME_MQTT_* variables set defaults")
    g.add_argument("--host", default=default(env("BEDTIME_MQTT_HOST", "localhost")),
                   help="broker host (default localhost; env BEDTIME_MQTT_HOST)")
    g.add_argument("--port", type=tcp_port, default=default(env("BEDTIME_MQTT_PORT", "1883")),
                   help="broker port (default 1883; env BEDTIME_MQTT_PORT)")
    g.add_argument("--username", default=default(env("BEDTIME_MQTT_USERNAME")),
                   help="user name (default anonymous; env BEDTIME_MQTT_USERNAME)")
    g.add_argument("--password-file", type=Path, default=default(env("BEDTIME_MQTT_PASSWORD_FILE")),
                   help="file holding the password (never pass passwords on the command line)")
    g.add_argument("--ca", default=default(env("BEDTIME_MQTT_CA")), help="CA certificate; turns TLS on")
    g.add_argument("--cert", default=default(env("BEDTIME_MQTT_CERT")), help="client certificate (mutual TLS)")
    g.add_argument("--key", default=default(env("BEDTIME_MQTT_KEY")), help="client key (mutual TLS)")
    g.add_argument("--wait", type=seconds_or_zero, default=default(1.0),
                   help="seconds to collect retained status before listing/selecting boxes (default 1)")


CONNECT_WAIT_S = 10.0
"""Longest wait for the broker to accept the subscriptions once it has accepted the connection."""


MAX_TLS_FILE_BYTES = 1024 * 1024
"""Largest ``--ca``/``--cert``/``--key`` file accepted: a CA bundle is at most a few hundred kB (the system's is
~220 kB); a bigger file is the wrong path, refused before OpenSSL reads it."""


def read_password_file(path: str | Path) -> str:
    """The broker password in ``path`` (``--password-file``): a UTF-8 regular file of at most
    :data:`~appliance.protocol.userfiles.MAX_KEY_FILE_BYTES`, surrounding whitespace dropped.

    Raises
    ------
    UserFileError
        One line naming the option and the file: it cannot be read, is not a regular file, is too large, is not
        UTF-8, or holds no password.
    """
    try:
        password = read_user_text(path, max_bytes=MAX_KEY_FILE_BYTES, what="text").strip()
    except UserFileError as e:
        raise UserFileError(f"--password-file {path}: {e}") from None
    if not password:
        raise UserFileError(f"--password-file {path}: empty (no password in it)")
    return password


def _check_tls_file(option: str, value: str) -> None:
    """Refuse a TLS file that is missing, not a regular file or over :data:`MAX_TLS_FILE_BYTES` (OpenSSL would
    wait on a FIFO or read a device without end)."""
    try:
        st = os.stat(value)
    except OSError as e:
        raise UserFileError(f"{option} {value}: cannot read: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserFileError(f"{option} {value}: not a regular file (a folder, device or FIFO)")
    if st.st_size > MAX_TLS_FILE_BYTES:
        raise UserFileError(f"{option} {value}: larger than {MAX_TLS_FILE_BYTES} bytes")


def connect(args: argparse.Namespace, *, group: str | None = None, **callbacks) -> FleetIngest:
    """An observer :class:`FleetIngest` from the broker options (started; fails at the first refusal).

    Raises
    ------
    UserFileError
        One line: the password file or a TLS file cannot be used (checked before connecting; exit status 2).
    ConnectionError
        One line: the broker cannot be reached or refuses the connection, or the TLS files are refused by
        OpenSSL.
    """
    password = read_password_file(args.password_file) if args.password_file else None
    for option, value in (("--ca", args.ca), ("--cert", args.cert), ("--key", args.key)):
        if value:
            _check_tls_file(option, value)
    tls = TLSClientSettings(args.ca, args.cert, args.key) if args.ca else None
    try:
        ingest = FleetIngest(args.host, args.port, tls=tls, username=args.username, password=password,
                             group=group, **callbacks)
    except ssl.SSLError as e:
        raise ConnectionError(f"TLS files: {e}") from None
    return ingest.start(wait_s=CONNECT_WAIT_S, fail_fast=True)


def _fmt_time(t) -> str:
    return "-" if t is None else t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def select_boxes(ingest: FleetIngest, patterns: list[str]) -> list[str]:
    """Box ids matching any of ``patterns`` (exact ids or shell-style groups such as ``ward3-*``)."""
    known = list(ingest.boxes)
    out: list[str] = []
    for p in patterns:
        if any(ch in p for ch in "*?["):
            out += [b for b in known if fnmatch.fnmatchcase(b, p) and b not in out]
        elif p not in out:
            out.append(schema.check_box_id(p))
    return out


# ---- list ---------------------------------------------------------------------------------------

@subcommand("list", help="list boxes: online/offline, last seen, firmware and model versions, signal quality",
            add_arguments=lambda p: p.add_argument("--json", action="store_true", help="machine-readable output"))
def cmd_list(args: argparse.Namespace) -> int:
    with connect(args) as ingest:
        time.sleep(args.wait)  # retained status and telemetry arrive right after subscribing
        boxes = ingest.boxes
    if args.json:
        print(json.dumps([{
            "box_id": v.box_id, "online": v.online, "state": v.state,
            "last_seen_utc": None if v.last_seen_utc is None else schema.iso_utc(v.last_seen_utc),
            "firmware_version": v.firmware_version, "model_versions": v.model_versions,
            "config_version": v.config_version, "signal_quality_percent": v.signal_quality_percent,
        } for v in boxes.values()], indent=2))
        return 0
    header = f"{'BOX':<20} {'STATE':<10} {'LAST SEEN (UTC)':<21} {'FIRMWARE':<10} {'SIGNAL':>7}  MODELS"
    print(header)
    for v in boxes.values():
        sq = "-" if v.signal_quality_percent is None else f"{v.signal_quality_percent:.0f}%"
        models = ", ".join(f"{k} {m}" for k, m in sorted(v.model_versions.items())) or "-"
        print(f"{v.box_id:<20} {v.state:<10} {_fmt_time(v.last_seen_utc):<21} "
              f"{(v.firmware_version or '-'):<10} {sq:>7}  {models}")
    print(f"{len(boxes)} box(es), {sum(v.online for v in boxes.values())} online")
    return 0


def share_group(text: str) -> str:
    """An argparse type: an MQTT v5 shared-subscription group name (no ``/``, ``+``, ``#``; see
    :func:`appliance.protocol.schema.shared_filter`)."""
    try:
        schema.shared_filter(text, "alert")
    except schema.SchemaError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


# ---- alerts -------------------------------------------------------------------------------------

def _alerts_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--box", action="append", default=[], help="only these boxes (ids or patterns); repeatable")
    p.add_argument("--count", type=count, default=None, help="stop after this many alerts")
    p.add_argument("--timeout", type=seconds, default=None, help="stop after this many seconds")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--group", type=share_group, default=None,
                   help="join this shared-subscription group (default: observe without taking alerts "
                        "away from the consoles)")


@subcommand("alerts", help="follow alerts live", add_arguments=_alerts_args)
def cmd_alerts(args: argparse.Namespace) -> int:
    done = threading.Event()
    seen = 0
    lock = threading.Lock()

    def on_alert(box_id: str, p: dict) -> None:
        nonlocal seen
        if args.box and not any(fnmatch.fnmatchcase(box_id, pat) for pat in args.box):
            return
        with lock:
            if done.is_set():
                return
            if args.json:
                print(json.dumps(p), flush=True)
            else:
                print(f"{p['time_utc']}  {box_id:<16} [{p['severity'].upper():<8}] {p['title']}: {p['message']}",
                      flush=True)
            seen += 1
            if args.count is not None and seen >= args.count:
                done.set()

    with connect(args, group=args.group, on_alert=on_alert):
        try:
            done.wait(args.timeout)
        except KeyboardInterrupt:
            pass
    return 0


# ---- push-config --------------------------------------------------------------------------------

def _box_validator() -> Callable[[dict], object]:
    """The box's own schema (appliance.protocol.boxconfig), so the clinic cannot push what a box would refuse;
    run offline (:mod:`appliance.fleet.configcheck`): paths in the config name the box's files, not ours."""
    from appliance.fleet.configcheck import validate_offline
    return validate_offline


def read_config_file(path: Path) -> tuple[dict, bytes]:
    """Read a config file, TOML (the box's format) or JSON (by its suffix): the document and the file's text as
    UTF-8 bytes (what its version label hashes).

    Only a regular file of at most :data:`~appliance.protocol.updates.MAX_CONFIG_PAYLOAD_BYTES` (the largest
    config a box takes) is read, so a FIFO or ``/dev/zero`` is refused rather than waited on or read without end.

    Raises
    ------
    ValueError
        One line (:class:`~appliance.protocol.userfiles.UserFileError` for the file itself): it cannot be read,
        is not a regular file, is too large, empty, not UTF-8, not valid (or too deeply nested) TOML/JSON, or not
        a table.
    """
    is_json = path.suffix.lower() == ".json"
    text = read_user_text(path, max_bytes=MAX_CONFIG_PAYLOAD_BYTES, what="JSON text" if is_json else "TOML text")
    if not text.strip():
        raise UserFileError("empty file (a config pushed sets at least one key)")
    obj = parse_json(text) if is_json else parse_toml(text)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: a config is a table/object")
    return obj, text.encode()


def _push_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="config file, TOML or JSON (the keys of bedtime.toml)")
    p.add_argument("--box", action="append", default=[], required=True,
                   help="box id or a shell-style group pattern (e.g. 'ward3-*'); repeatable")
    p.add_argument("--version", dest="config_version", default=None,
                   help="config version label (default: the file name and its sha256 prefix)")
    p.add_argument("--ack-timeout", type=seconds, default=10.0, help="seconds to wait for the boxes' answers")


@subcommand("push-config", help="validate a config and set it on one box or a group", add_arguments=_push_args)
def cmd_push_config(args: argparse.Namespace) -> int:
    import hashlib

    try:
        config, data = read_config_file(args.file)
        validate = _box_validator()
        validate(config)
    except Exception as e:  # any validation failure: say why, publish nothing
        print(f"refused: {args.file}: {one_line(e)}", file=sys.stderr)
        return 2
    version = args.config_version or f"{args.file.stem}-{hashlib.sha256(data).hexdigest()[:12]}"
    answers: dict[str, dict] = {}
    cond = threading.Condition()

    def on_event(box_id: str, p: dict) -> None:
        if p.get("kind") in ("config_applied", "config_rejected") and p.get("config_version") == version:
            with cond:
                answers[box_id] = p
                cond.notify_all()

    with connect(args, on_event=on_event) as ingest:
        time.sleep(args.wait if any(ch in "".join(args.box) for ch in "*?[") else 0)
        targets = select_boxes(ingest, args.box)
        if not targets:
            print("no box matches", file=sys.stderr)
            return 2
        for box_id in targets:
            ingest.push_config(box_id, config, config_version=version, validator=validate)
            print(f"pushed {version} to {box_id}")
        with cond:
            cond.wait_for(lambda: all(b in answers for b in targets), timeout=args.ack_timeout)
    failed = 0
    for box_id in targets:
        a = answers.get(box_id)
        if a is None:
            print(f"{box_id}: no answer yet (offline? it applies the retained config when it comes back)")
        elif a["kind"] == "config_applied":
            print(f"{box_id}: applied")
        else:
            failed += 1
            print(f"{box_id}: REJECTED: {a.get('error')}")
    return 1 if failed else 0


# ---- report / ping ------------------------------------------------------------------------------

def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--box", action="append", required=True, help="box id or pattern; repeatable")
    p.add_argument("--night", default="latest", help="'latest' (default) or YYYY-MM-DD")
    p.add_argument("--out", type=Path, default=Path("."), help="folder for <box>-<night>.json")
    p.add_argument("--timeout", type=seconds, default=30.0, help="seconds to wait for each box's answer (default 30)")
    p.add_argument("--retained", action="store_true",
                   help="save the last report each box published (retained at the broker; works while the box "
                        "is offline) instead of asking the box")


@subcommand("report", help="request night reports and save them as JSON", add_arguments=_report_args)
def cmd_report(args: argparse.Namespace) -> int:
    rc = 0
    with connect(args) as ingest:
        time.sleep(args.wait if args.retained or any(ch in "".join(args.box) for ch in "*?[") else 0)
        args.out.mkdir(parents=True, exist_ok=True)
        for box_id in select_boxes(ingest, args.box):
            if args.retained:
                view = ingest.box(box_id)
                if view is None or view.last_report is None:
                    print(f"{box_id}: no retained report", file=sys.stderr)
                    rc = 1
                    continue
                night = str(view.last_report["report"].get("night_start") or view.last_report["time_utc"])[:10]
                path = args.out / f"{box_id}-{night}.json"
                path.write_text(json.dumps(view.last_report["report"], indent=2))
                print(f"{box_id}: saved {path} (published {view.last_report['time_utc']})")
                continue
            try:
                reply = ingest.request(box_id, "report", {"night": args.night}, timeout_s=args.timeout)
            except CommandTimeout as e:
                print(f"{box_id}: {e}", file=sys.stderr)
                rc = 1
                continue
            if not reply.get("ok"):
                print(f"{box_id}: refused: {reply.get('error')}", file=sys.stderr)
                rc = 1
                continue
            path = args.out / f"{box_id}-{args.night}.json"
            path.write_text(json.dumps(reply["result"], indent=2))
            print(f"{box_id}: saved {path}")
    return rc


@subcommand("ping", help="check that boxes answer commands",
            add_arguments=lambda p: (p.add_argument("--box", action="append", required=True,
                                                    help="box id or pattern; repeatable"),
                                     p.add_argument("--timeout", type=seconds, default=5.0,
                                                    help="seconds to wait for each box's answer (default 5)")))
def cmd_ping(args: argparse.Namespace) -> int:
    rc = 0
    with connect(args) as ingest:
        time.sleep(args.wait if any(ch in "".join(args.box) for ch in "*?[") else 0)
        for box_id in select_boxes(ingest, args.box):
            t0 = time.perf_counter()
            try:
                reply = ingest.request(box_id, "ping", timeout_s=args.timeout)
            except CommandTimeout as e:
                print(f"{box_id}: {e}")
                rc = 1
                continue
            print(f"{box_id}: {'ok' if reply.get('ok') else 'error'} in {1000 * (time.perf_counter() - t0):.0f} ms "
                  f"{json.dumps(reply.get('result') or reply.get('error'))}")
    return rc


# ---- entry point --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    for mod in PLUGIN_MODULES:
        try:
            present = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:
            present = False
        if present:
            importlib.import_module(mod)  # registers its subcommands; errors in it are real errors
    ap = OneLineParser(prog="bedtime-fleet", description="Follow and manage a fleet of bedtime boxes.")
    ap.add_argument("--version", action="version", version=f"bedtime-fleet {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="log what the MQTT ingest does")
    add_broker_arguments(ap)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for sc in SUBCOMMANDS.values():
        p = sub.add_parser(sc.name, help=sc.help, description=sc.help)
        sc.add_arguments(p)
        if sc.uses_broker:
            add_broker_arguments(p, after_subcommand=True)
        p.set_defaults(_run=sc.run)
    return ap


def main(argv: list[str] | None = None) -> int:
    """``bedtime-fleet``: parse ``argv`` and run the subcommand; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args._run(args)
    except CommandError as e:
        print(f"bedtime-fleet: refused before sending: {one_line(e)}", file=sys.stderr)
        return 2
    except UserFileError as e:  # a file named on the command line cannot be used: said before anything is done
        print(f"bedtime-fleet: {one_line(e)}", file=sys.stderr)
        return 2
    except ConnectionError as e:
        print(f"bedtime-fleet: {one_line(e)}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    # Under ``python -m`` this file is __main__; plugins register into appliance.fleet.cli, so run that.
    from appliance.fleet.cli import main as _main

    sys.exit(_main())
