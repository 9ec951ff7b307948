"""``bedtime``: the box's command line (the systemd unit runs ``bedtime run``).

Commands::

    bedtime run [--simulate] [--edf FILE | --synthetic] [--speed X] [--config FILE]
    bedtime selftest [--simulate] [--config FILE]
    bedtime report [NIGHT] [--config FILE] [--json]
    bedtime config check FILE
    bedtime audit verify FILE [FILE...]
    bedtime outputs-off [--simulate] [--config FILE]

Exit codes: 0 success, 1 a check failed, 2 bad usage, a bad configuration or no box here (one line on stderr,
and nothing changed on disk).

Without a configuration file (no ``--config`` and no ``/etc/bedtime/bedtime.toml``) every command keeps its
state in :func:`appliance.config.simulation_state_dir` (``~/.local/state/bedtime-sim``), so ``bedtime run
--simulate`` and a following ``bedtime report`` meet; on a box the file's ``box.state_dir`` (default
``/var/lib/bedtime``) is used.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from appliance import __version__
from appliance.cliparse import OneLineParser, one_line
from appliance.config import (DEFAULT_CONFIG_PATH, BoxConfig, ConfigError, check_on_this_machine, load_config,
                              permission_warnings, simulation_state_dir, validate_config)

if TYPE_CHECKING:
    from appliance.hardware import SimulationSource

logger = logging.getLogger("bedtime")


class UsageError(Exception):
    """Bad input on the command line, found before anything is written: ``main`` prints it in one line and
    exits with status 2."""


def _speed(text: str) -> float:
    """``--speed``: a replay speed, > 0 (``inf``: as fast as the pipeline runs)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"{text!r}: the speed must be > 0 (1 = real time, 600 = 8 h in 48 s)")
    return v


def _hours(text: str) -> float:
    """``--hours``: hours of signal, finite and > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"{text!r}: the hours must be a finite number > 0")
    return v


def _seed(text: str) -> int:
    """``--seed``: a synthetic subject, an integer >= 0."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the seed must be >= 0")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (tests check the systemd unit's command lines against it)."""
    ap = OneLineParser(prog="bedtime", description="bedtime bedside sleep appliance")
    ap.add_argument("--version", action="version", version=f"bedtime {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, default=None,
                       help=f"TOML configuration (default {DEFAULT_CONFIG_PATH} when it exists, else built-in "
                            f"defaults with the state in ~/.local/state/bedtime-sim)")

    run = sub.add_parser("run", help="run the appliance (all night; under systemd on the box)")
    with_config(run)
    run.add_argument("--simulate", action="store_true", help="chip simulator and mock GPIO instead of hardware")
    src = run.add_mutually_exclusive_group()
    src.add_argument("--edf", type=Path, help="simulate: replay this EDF/EDF+ file through the chip simulator")
    src.add_argument("--synthetic", action="store_true",
                     help="simulate: synthetic sleep EEG over a real (../shared) or built-in hypnogram (default)")
    run.add_argument("--hypnogram", type=Path, help="simulate: hypnogram file the synthetic EEG follows")
    run.add_argument("--speed", type=_speed, default=1.0,
                     help="simulate: replay speed, > 0 (600 = 8 h in 48 s; inf = as fast as it runs)")
    run.add_argument("--seed", type=_seed, default=0, help="simulate: synthetic subject seed (>= 0)")
    run.add_argument("--hours", type=_hours, default=None, help="stop after this many hours of signal")

    st = sub.add_parser("selftest", help="check chip, electrodes, light, sound and broker; pass/fail table")
    with_config(st)
    st.add_argument("--simulate", action="store_true", help="run against the chip simulator and mock GPIO")
    st.add_argument("--no-broker", action="store_true", help="skip the broker check")

    rp = sub.add_parser("report", help="show (and rebuild) the morning report of a night")
    with_config(rp)
    rp.add_argument("night", nargs="?", help="night id (directory name) or path; default: the latest")
    rp.add_argument("--json", action="store_true", help="print the JSON report")
    rp.add_argument("--publish", action="store_true", help="also publish it on MQTT")

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    chk = cfg_sub.add_parser("check", help="validate a configuration file, and the files and folders it names")
    chk.add_argument("file", type=Path, help="the TOML configuration (on the box /etc/bedtime/bedtime.toml)")

    au = sub.add_parser("audit", help="audit-log tools")
    au_sub = au.add_subparsers(dest="audit_command", required=True)
    ver = au_sub.add_parser("verify", help="verify hash-chained audit logs")
    ver.add_argument("files", nargs="+", type=Path, help="audit log files (state_dir/audit.log)")

    off = sub.add_parser("outputs-off", help="force light and sound off (systemd ExecStopPost)")
    with_config(off)
    off.add_argument("--simulate", action="store_true", help="reset the simulated outputs instead")
    return ap


def _load(path: Path | None) -> BoxConfig:
    """The configuration: ``--config``, else the box's file, else the defaults with the simulation's state folder
    (the one place that decides it, so that run, report and outputs-off meet)."""
    if path is not None:
        return load_config(path)
    if DEFAULT_CONFIG_PATH.is_file():
        return load_config(DEFAULT_CONFIG_PATH)
    return validate_config({"box": {"state_dir": str(simulation_state_dir())}})


def _no_config_file(path: Path | None) -> bool:
    return path is None and not DEFAULT_CONFIG_PATH.is_file()


def _usage_error_if_unusable(cfg: BoxConfig) -> None:
    """Refuse, before a night folder exists, a configuration naming files or folders this machine lacks."""
    problems = check_on_this_machine(cfg)
    if problems:
        raise ConfigError(problems[0].key, problems[0].message)


def builtin_hypnogram():
    """A plausible 8-h hypnogram (960 epochs, five cycles, N3 early and REM late) for when ../shared is absent."""
    import numpy as np

    from appliance.hypnogram import Stage

    W, N1, N2, N3, R = Stage.W, Stage.N1, Stage.N2, Stage.N3, Stage.REM
    night: list[int] = [W] * 30 + [N1] * 6
    cycles = [(90, 50, 15), (100, 35, 25), (110, 15, 35), (120, 5, 45), (130, 0, 50)]  # (N2, N3, REM) epochs
    for n2, n3, rem in cycles:
        night += [N2] * (n2 // 2) + [N3] * n3 + [N2] * (n2 - n2 // 2) + [R] * rem + [W] * 2 + [N1] * 2
    night += [N2] * (950 - len(night))
    night += [W] * 10
    return np.array(night, dtype=np.int8)


def _with_pushed_config(cfg: BoxConfig) -> BoxConfig:
    """Merge the config the clinic last pushed over MQTT (kept in the state directory) over the file's."""
    from appliance.config import merge_config
    from appliance.daemon import PUSHED_CONFIG

    path = Path(cfg.box.state_dir) / PUSHED_CONFIG
    if not path.is_file():
        return cfg
    try:
        pushed = json.loads(path.read_text())
        # the box's identity, broker and state directory stay those of the file on the box
        for local in ("box", "mqtt"):
            pushed.pop(local, None)
        merged = merge_config(cfg, pushed)
    except (ValueError, ConfigError) as e:
        logger.error("ignoring the clinic's pushed config %s: %s", path, e)
        return cfg
    logger.info("applied the clinic's pushed config from %s", path)
    return merged


def _simulation_source(args: argparse.Namespace) -> SimulationSource:
    """What the simulated chip plays, read and checked now so that a bad file is a one-line refusal."""
    from appliance.hardware import SimulationSource

    if args.edf is not None:
        if not args.edf.is_file():
            raise UsageError(f"--edf {args.edf}: {'not a file' if args.edf.exists() else 'no such file'}")
        return SimulationSource(edf_path=args.edf, seed=args.seed)
    if args.hypnogram is None:
        return SimulationSource(hypnogram=builtin_hypnogram(), seed=args.seed)
    from appliance.hypnogram import read_hypnogram

    try:
        hyp = read_hypnogram(args.hypnogram)
    except OSError as e:
        raise UsageError(f"--hypnogram {args.hypnogram}: {e.strerror or e}") from None
    except ValueError as e:
        raise UsageError(f"--hypnogram {one_line(e)}") from None
    if len(hyp) == 0:
        raise UsageError(f"--hypnogram {args.hypnogram}: no epochs in it")
    return SimulationSource(hypnogram=hyp, seed=args.seed)


def _cmd_run(args: argparse.Namespace) -> int:
    from appliance.daemon import Daemon
    from appliance.hardware import open_hardware

    if not args.simulate and (args.edf or args.synthetic or args.hypnogram):
        raise UsageError("--edf/--synthetic/--hypnogram need --simulate")
    cfg = _with_pushed_config(_load(args.config))
    _usage_error_if_unusable(cfg)
    source = _simulation_source(args) if args.simulate else None
    try:
        hw = open_hardware(cfg, simulate=args.simulate, source=source, speed=args.speed)
    except (OSError, ValueError) as e:
        if args.edf is None:
            raise
        raise UsageError(f"--edf {args.edf}: not a readable EDF/EDF+ recording ({one_line(e)})") from None
    if args.simulate and _no_config_file(args.config):
        print(f"bedtime: no {DEFAULT_CONFIG_PATH}; simulated nights go to {cfg.recording_dir}")
    hours = args.hours if args.hours else cfg.recording.max_night_hours
    daemon = Daemon(cfg, hardware=hw, max_signal_s=hours * 3600)
    result = daemon.run()
    print(f"night recorded in {result.night_dir}")
    if result.edf_path:
        print(f"  EDF+:   {result.edf_path}")
    if result.report_json:
        print(f"  report: {result.report_json}\n  PNG:    {result.report_png}")
    # EX_TEMPFAIL: the clinic asked for a restart, or a box's night reached recording.max_night_hours;
    # systemd's Restart=on-failure starts the daemon again, and with it the next night
    return 75 if daemon.restart_requested or (daemon.ended_by_limit and not args.simulate and not args.hours) else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from appliance.recorder import list_nights
    from appliance.report import format_report, load_night, write_report

    cfg = _load(args.config)
    if args.night and Path(args.night).is_dir():
        night_dir = Path(args.night)
    else:
        nights = list_nights(cfg.recording_dir)
        if args.night:
            nights = [n for n in nights if n.name == args.night]
        if not nights:
            print(f"bedtime report: no night {args.night or ''} under {cfg.recording_dir}", file=sys.stderr)
            return 1
        night_dir = nights[-1]
    night = load_night(night_dir)
    night.box_id = cfg.box.id
    rep, js, png = write_report(night, night_dir)
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        print(format_report(rep))
        print(f"  JSON {js}\n  PNG  {png}")
    if args.publish:
        from appliance.daemon import make_link

        link = make_link(cfg, model_versions={})
        link.start()
        link.publish_report(rep)
        ok = link.wait_delivered(timeout_s=10)
        link.stop()
        print("published" if ok else "queued in the outbox (broker not reachable)")
    return 0


def _cmd_outputs_off(args: argparse.Namespace) -> int:
    from appliance.hardware import SIM_OUTPUTS_FILE, BoxOutputs, write_sim_outputs

    cfg = _load(args.config)
    if args.simulate:
        path = Path(cfg.box.state_dir) / SIM_OUTPUTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_sim_outputs(path, light=0.0, sound=0.0)
        print(f"simulated outputs off ({path})")
        return 0
    from appliance.hardware import gpio_pin_factory

    outs = BoxOutputs(cfg, gpio_pin_factory())  # constructing forces both off on the real pins
    outs.close()
    print("light and sound off")
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.file)
    problems = check_on_this_machine(cfg)
    for w in permission_warnings(args.file, cfg):
        print(f"bedtime config check: warning: {w}", file=sys.stderr)
    if problems:
        # every problem at once (one line each): a technician fixes them in one pass
        for e in problems:
            print(f"bedtime: configuration error: {args.file}: {e}", file=sys.stderr)
        return 2
    print(f"{args.file}: OK (box {cfg.box.id}, {cfg.acquisition.channels} channels at "
          f"{cfg.acquisition.sample_rate_sps} SPS, broker {cfg.mqtt.host}:{cfg.mqtt.port})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``bedtime``: parse ``argv`` and run the command; returns the exit status."""
    from appliance.hardware import HardwareUnavailable

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "selftest":
            from appliance.selftest import main_selftest

            return main_selftest(_load(args.config), simulate=args.simulate, check_broker=not args.no_broker)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "config":
            return _cmd_config_check(args)
        if args.command == "audit":
            from appliance.audit import main_verify

            return main_verify([str(f) for f in args.files])
        if args.command == "outputs-off":
            return _cmd_outputs_off(args)
    except ConfigError as e:
        print(f"bedtime: configuration error: {one_line(e)}", file=sys.stderr)
        return 2
    except (UsageError, HardwareUnavailable) as e:
        print(f"bedtime {args.command}: {one_line(e)}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
