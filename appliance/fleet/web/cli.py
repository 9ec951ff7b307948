"""``bedtime-fleet`` subcommands of the web console and signed rollouts (registered into
:data:`appliance.fleet.cli.SUBCOMMANDS`)::

    bedtime-fleet keys [--dir D]                         make the clinic's Ed25519 signing keypair
    bedtime-fleet sign FILE --kind model|config --version V [--key K] [--card C]
                                                         write FILE.sig.json (detached signed manifest;
                                                         a model's model_card.json is signed with it)
    bedtime-fleet user add NAME --role viewer|operator   add a console account (password asked twice)
    bedtime-fleet serve [--db URL] [--listen 127.0.0.1:8080] [--signing-key K] ...
                                                         run the web console (ingest in a shared group)
    bedtime-fleet rollout FILE --kind K --canary IDS [--rest IDS] [--manifest M | --key K --version V]
                                                         a canary-first rollout from the command line
"""
from __future__ import annotations

import argparse
import getpass
import ipaddress
import os
import sys
from pathlib import Path

from appliance.fleet.cli import read_password_file, share_group, subcommand
from appliance.fleet.db import clinic_state_dir, default_database_url
from appliance.protocol.cliparse import count, one_line, seconds
from appliance.protocol.userfiles import UserFileError

DEFAULT_KEY = Path(os.environ.get("BEDTIME_SIGNING_KEY", "fleet-signing.key"))


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=default_database_url(),
                   help="database URL (default: sqlite:///PATH with PATH /var/lib/bedtime-clinic/fleet.db as root, "
                        "~/.local/state/bedtime-clinic/fleet.db otherwise; env BEDTIME_CONSOLE_DB)")


def _open_db(url: str):
    """The console database at ``url`` (migrated), its folder made for a new SQLite file.

    Raises
    ------
    UserFileError
        One line naming ``--db``: the SQLite file is not a regular file (a FIFO would hang SQLite, a device be
        chmod-ed), or the database cannot be opened (not a database, no permission).
    """
    import sqlalchemy.exc

    from appliance.fleet.db import FleetDB

    try:
        if url.startswith("sqlite:///"):  # the file's folder (absolute sqlite:////..., or relative) must exist
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return FleetDB(url)
    except (UserFileError, OSError, sqlalchemy.exc.SQLAlchemyError) as e:
        reason = getattr(e, "orig", None) or (e.strerror if isinstance(e, OSError) and e.strerror else e)
        raise UserFileError(f"--db {url}: {reason}") from None


# ---- keys / sign ----------------------------------------------------------------------------------
def _keys_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", type=Path, default=Path("."), help="where to write the keypair (default .)")
    p.add_argument("--name", default="fleet-signing", help="file name stem (default fleet-signing)")


@subcommand("keys", help="make the clinic's Ed25519 signing keypair (NAME.key private, NAME.pub public)",
            add_arguments=_keys_args, uses_broker=False)
def cmd_keys(args: argparse.Namespace) -> int:
    from appliance.protocol.signing import PASSPHRASE_ENV, generate_keypair

    priv, pub = args.dir / f"{args.name}.key", args.dir / f"{args.name}.pub"
    passphrase = os.environ.get(PASSPHRASE_ENV)
    try:
        kid = generate_keypair(priv, pub, passphrase=passphrase.encode() if passphrase else None)
    except OSError as e:  # an existing key (never overwritten), or --dir not a usable folder
        print(f"bedtime-fleet keys: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"private key: {priv} (mode 0600{', encrypted' if passphrase else ''}; keep it off the boxes)")
    print(f"public key:  {pub} (pin it in each box's config)\nkey id: {kid}")
    return 0


def _sign_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="model (.tflite) or config (.json) to sign")
    p.add_argument("--kind", choices=("model", "config"), help="default: config for .json/.toml, else model")
    p.add_argument("--version", required=True, help="the version the box will report once it runs this")
    p.add_argument("--key", type=Path, default=DEFAULT_KEY, help=f"private key (default {DEFAULT_KEY})")
    p.add_argument("--out", type=Path, help="manifest path (default FILE.sig.json)")
    p.add_argument("--card", type=Path, help="a model's model card (default: model_card.json beside FILE)")
    p.add_argument("--box", action="append", default=[], metavar="ID",
                   help="a box this update is for (repeat; at least one --box or --group)")
    p.add_argument("--group", action="append", default=[], metavar="NAME",
                   help="a group of boxes (their box.groups) this update is for (repeat)")
    p.add_argument("--serial", type=int, help="serial, above every earlier update of this kind (default: "
                                              "microseconds since 1970 now)")
    p.add_argument("--expires-in-days", type=float,
                   help="days until boxes refuse it (default 14, at most 366)")


@subcommand("sign", help="sign a model or config file: writes a detached FILE.sig.json manifest",
            add_arguments=_sign_args, uses_broker=False)
def cmd_sign(args: argparse.Namespace) -> int:
    from appliance.protocol.signing import DEFAULT_LIFETIME_S, SignatureError, load_private_key, sign_file
    from appliance.protocol.updates import MAX_CONFIG_PAYLOAD_BYTES
    from appliance.protocol.userfiles import parse_json, read_user_text

    kind = args.kind or ("config" if args.file.suffix in (".json", ".toml") else "model")
    if kind == "config":
        from appliance.fleet.configcheck import validate_offline
        from appliance.protocol.boxconfig import ConfigError

        try:  # a regular file of at most the largest config a box takes (appliance.protocol.userfiles says why)
            doc = parse_json(read_user_text(args.file, max_bytes=MAX_CONFIG_PAYLOAD_BYTES, what="JSON text"))
        except UserFileError as e:
            print(f"bedtime-fleet sign: {args.file}: {one_line(e)}", file=sys.stderr)
            return 2
        try:
            validate_offline(doc)
        except (ValueError, ConfigError, RecursionError) as e:
            print(f"bedtime-fleet sign: {args.file}: refused, the box would not accept it: {one_line(e)}",
                  file=sys.stderr)
            return 2
    if not args.box and not args.group:
        print(f"bedtime-fleet sign: {args.file}: name the boxes (--box ID) or groups (--group NAME) it is for",
              file=sys.stderr)
        return 2
    try:
        key = load_private_key(args.key)
    except SignatureError as e:
        print(f"bedtime-fleet sign: --key: {one_line(e)}", file=sys.stderr)
        return 2
    try:
        out = sign_file(args.file, key, kind=kind, version=args.version, out=args.out,
                        card=args.card, boxes=args.box, groups=args.group, serial=args.serial,
                        lifetime_s=DEFAULT_LIFETIME_S if args.expires_in_days is None else args.expires_in_days * 86400)
    except (OSError, ValueError) as e:  # no card / wrong card / unreadable file: the box would refuse the update
        print(f"bedtime-fleet sign: {args.file}: refused, the box would not accept it: {one_line(e)}",
              file=sys.stderr)
        return 2
    print(out)
    return 0


# ---- users ----------------------------------------------------------------------------------------
def _user_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("add", "list"), help="add an account, or list them")
    p.add_argument("name", nargs="?", help="the account's user name (add)")
    p.add_argument("--role", choices=("viewer", "operator"), default="viewer",
                   help="viewer (reads) or operator (also pushes configs and rollouts); default viewer")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin (scripts)")
    _db_arg(p)


MAX_PASSWORD_CHARS = 1024
"""Longest console password read from ``--password-stdin``: a passphrase is far shorter; stdin without a newline
(``< /dev/zero``) is refused after this many characters instead of filling memory."""


@subcommand("user", help="manage web console accounts (add NAME --role viewer|operator; list)",
            add_arguments=_user_args, uses_broker=False)
def cmd_user(args: argparse.Namespace) -> int:
    from appliance.fleet.auth import create_user

    db = _open_db(args.db)
    if args.action == "list":
        for u in db.list_users():
            print(f"{u['username']}\t{u['role']}")
        return 0
    if not args.name:
        print("bedtime-fleet user add: NAME is required", file=sys.stderr)
        return 2
    if args.password_stdin:
        password = sys.stdin.readline(MAX_PASSWORD_CHARS + 1).rstrip("\n")  # bounded: stdin may be /dev/zero
        if len(password) > MAX_PASSWORD_CHARS:
            print(f"bedtime-fleet user add: password longer than {MAX_PASSWORD_CHARS} characters", file=sys.stderr)
            return 2
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("passwords differ", file=sys.stderr)
            return 2
    try:
        create_user(db, args.name, password, args.role)
    except ValueError as e:
        print(f"bedtime-fleet user add: {e}", file=sys.stderr)
        return 2
    db.audit("cli", "user.added", args.name, {"role": args.role})
    print(f"added {args.name} ({args.role})")
    return 0


# ---- serve ----------------------------------------------------------------------------------------
def listen_address(text: str) -> tuple[str, int]:
    """``--listen``: ``ADDRESS:PORT`` (``[v6]:PORT`` for IPv6; an empty address is 127.0.0.1) as (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text[:80]!r}: give ADDRESS:PORT with a port from 1 to 65535 "
                                         "(e.g. 127.0.0.1:8080)")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if any(c.isspace() or not c.isprintable() for c in host) or "[" in host or "]" in host:
        raise argparse.ArgumentTypeError(f"{text[:80]!r}: not an address to listen on")
    return host or "127.0.0.1", int(port)


def _serve_args(p: argparse.ArgumentParser) -> None:
    _db_arg(p)
    p.add_argument("--listen", type=listen_address, default="127.0.0.1:8080",
                   help="address:port to serve on (default 127.0.0.1:8080; [v6]:port for IPv6)")
    p.add_argument("--secret-file", type=Path, default=clinic_state_dir() / "session.key",
                   help="session-signing key, shared by every instance (created if missing; default session.key "
                        "beside the default database)")
    p.add_argument("--signing-key", type=Path, help="clinic private key: lets the console sign config pushes")
    p.add_argument("--public-key", type=Path, help="clinic public key: refuse uploads that do not verify")
    p.add_argument("--share-group", type=share_group, default="bedtime-console", help="MQTT shared-subscription group")
    p.add_argument("--no-mqtt", action="store_true", help="serve the database only (no broker connection)")
    p.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDR[/BITS]",
                   help="a reverse proxy whose X-Forwarded-For is believed (repeatable; default: none, the client "
                        "address is the TCP peer)")
    p.add_argument("--plain-http", action="store_true",
                   help="session cookie without Secure (only behind no proxy, on loopback, for trying it out)")


@subcommand("serve", help="run the clinic web console", add_arguments=_serve_args)
def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from appliance.fleet.web import ConsoleSettings, create_app
    from appliance.fleet.web.server import ConsoleServer, uvicorn_options

    host, port = args.listen
    for proxy in args.trusted_proxy:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            print(f"bedtime-fleet serve: --trusted-proxy {proxy!r}: not an IP address or network", file=sys.stderr)
            return 2
    from appliance.protocol.signing import SignatureError

    try:  # every file named is read (and refused in one line) before the database or the app is touched
        password = read_password_file(args.password_file) if args.password_file else None
        settings = ConsoleSettings(
            database_url=args.db, secret_key_file=args.secret_file, https_only=not args.plain_http,
            mqtt_host=None if args.no_mqtt else args.host, mqtt_port=args.port, mqtt_username=args.username,
            mqtt_password=password, mqtt_tls_ca=args.ca, share_group=args.share_group,
            signing_key_file=args.signing_key, public_key_file=args.public_key,
            trusted_proxies=tuple(args.trusted_proxy))
        settings.read_key_files()
        _open_db(args.db).close()  # creates the folder and migrates before the app starts
        app = create_app(settings)
    except (UserFileError, SignatureError) as e:
        print(f"bedtime-fleet serve: {one_line(e)}", file=sys.stderr)
        return 2
    server = ConsoleServer(uvicorn.Config(app, **uvicorn_options(host=host, port=port)))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn raises the captured Ctrl-C again once it has shut down
        pass
    return 0 if server.started else 3  # 3: uvicorn's own status for a start that failed (it said why)


# ---- rollout --------------------------------------------------------------------------------------
def _rollout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="the model (.tflite) or config (.json) to roll out")
    p.add_argument("--kind", choices=("model", "config"), required=True, help="what FILE is")
    p.add_argument("--manifest", type=Path, help="FILE.sig.json from `bedtime-fleet sign` (default: beside FILE)")
    p.add_argument("--canary", required=True, help="comma-separated canary box ids")
    p.add_argument("--rest", default="", help="comma-separated box ids updated after the canaries")
    p.add_argument("--timeout", type=seconds, default=60.0, help="seconds to wait for each box's health report")
    p.add_argument("--batch", type=count, default=10, help="after the canaries, boxes per batch (default 10)")
    _db_arg(p)


@subcommand("rollout", help="canary-first signed rollout of a model or config", add_arguments=_rollout_args)
def cmd_rollout(args: argparse.Namespace) -> int:
    from appliance.fleet.cli import connect
    from appliance.fleet.rollout import RolloutRunner, create_rollout
    from appliance.protocol.signing import SignatureError, parse_manifest
    from appliance.protocol.updates import MAX_CONFIG_PAYLOAD_BYTES, MAX_MANIFEST_CHARS, MAX_PAYLOAD_BYTES
    from appliance.protocol.userfiles import read_user_file, read_user_text

    # both files are read, bounded (the largest manifest and payload a box takes), before the database is touched
    manifest_path = args.manifest or args.file.with_name(args.file.name + ".sig.json")
    try:
        manifest = parse_manifest(read_user_text(manifest_path, max_bytes=MAX_MANIFEST_CHARS, what="JSON text"))
    except (UserFileError, SignatureError) as e:
        print(f"bedtime-fleet rollout: {manifest_path}: {one_line(e)}", file=sys.stderr)
        return 2
    try:
        payload = read_user_file(args.file, max_bytes=MAX_CONFIG_PAYLOAD_BYTES if args.kind == "config"
                                 else MAX_PAYLOAD_BYTES)
    except UserFileError as e:
        print(f"bedtime-fleet rollout: {args.file}: {one_line(e)}", file=sys.stderr)
        return 2
    canary = [b for b in args.canary.split(",") if b]
    rest = [b for b in args.rest.split(",") if b]
    db = _open_db(args.db)
    for b in canary + rest:
        if db.get_box(b) is None:
            db.upsert_box(b)
    rid = create_rollout(db, kind=args.kind, payload=payload, manifest=manifest, canary=canary,
                         rest=rest, created_by=f"cli:{getpass.getuser()}")
    with connect(args) as ingest:
        state = RolloutRunner(db, ingest, timeout_s=args.timeout, batch_size=args.batch, actor="cli").run(rid)
    ro = db.get_rollout(rid)
    for t in ro["targets"]:
        print(f"{t['box_id']}\t{t['phase']}\t{t['state']}\t{t['detail']}")
    print(f"rollout {rid}: {state}: {ro['detail']}")
    return 0 if state == "completed" else 1
