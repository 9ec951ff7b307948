"""``bedtime``: the box's command line (the systemd unit runs ``bedtime run``).

Commands::

    bedtime run [--simulate] [--edf FILE [--channels A,B] | --synthetic] [--speed X] [--config FILE]
    bedtime selftest [--simulate] [--config FILE]
    bedtime report [NIGHT] [--config FILE] [--json]
    bedtime config check FILE
    bedtime audit verify PATH [PATH...] [--reports DIR] [--expect-hash HASH]
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
import gc
import json
import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from appliance import __version__
from appliance.config import (DEFAULT_CONFIG_PATH, check_on_this_machine, load_config, permission_warnings,
                              simulation_state_dir)
from appliance.protocol.boxconfig import EXAMPLE_BOX_ID, BoxConfig, ConfigError, validate_config
from appliance.protocol.cliparse import OneLineParser, checked_number, one_line

if TYPE_CHECKING:
    from appliance.hardware import SimulationSource

logger = logging.getLogger("bedtime")

EX_ACQUISITION_STOPPED = 70
"""EX_SOFTWARE: the acquisition thread stopped (no frame would come any more); the night was closed, and the
unit's Restart=on-failure starts the daemon again (StartLimitBurst stops a box that cannot start at all)."""
EX_NEXT_NIGHT = 75
"""EX_TEMPFAIL: the night ended (max_night_hours) or the clinic asked for a restart; the unit's
RestartForceExitStatus=75 starts the daemon again, and with it the next night."""


class UsageError(Exception):
    """Bad input on the command line, found before anything is written: ``main`` prints it in one line and
    exits with status 2."""


_speed = checked_number(float, "a number", lambda v: v > 0,
                        "the speed must be > 0 (1 = real time, 600 = 8 h in 48 s)")
"""``--speed``: a replay speed, > 0 (``inf``: as fast as the pipeline runs)."""
_hours = checked_number(float, "a number", lambda v: 0 < v < math.inf, "the hours must be a finite number > 0")
"""``--hours``: hours of signal, finite and > 0."""
_seed = checked_number(int, "an integer", lambda v: v >= 0, "the seed must be >= 0")
"""``--seed``: a synthetic subject, an integer >= 0."""


def _channel_list(text: str) -> list[str | int]:
    """``--channels C3-A1,O1-A1`` or ``--channels 6,0``: labels or indices, comma-separated."""
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"empty signal name in {text!r}")
    return [int(t) if t.isdigit() else t for t in items]


def _check_edf(path: Path, channels: list[str | int] | None) -> str | None:
    """Why ``--edf PATH [--channels ...]`` cannot be replayed (one line), or None when it can.

    Reads only the header, so a bad file or channel choice is refused before the box starts.
    """
    import edfio

    from appliance.signal_sources import select_edf_signals

    if not path.is_file():
        return f"{path}: no such file"
    try:
        with warnings.catch_warnings():  # edfio warns (on stderr) of a record count the file does not hold
            warnings.simplefilter("ignore")
            edf = edfio.read_edf(path, lazy_load_data=True)
            signals = list(edf.signals)
            records = int(edf.num_data_records)
    except Exception as e:  # edfio raises several kinds on a malformed header  # noqa: BLE001
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"{path}: not a readable EDF file ({why})"
    if records <= 0:
        # replaying a header alone would "record" a night of no signal at all
        return f"{path}: no data records in the file (a header only, or one counting records the file does not hold)"
    try:
        select_edf_signals(signals, channels=channels, source=str(path))
    except ValueError as e:
        return str(e).splitlines()[0]
    return None


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
    src.add_argument("--edf", type=Path, help="simulate: replay this EDF/EDF+ file (e.g. a whole PSG) through the "
                     "chip simulator; its EEG signals are taken by unit and label, the others skipped")
    src.add_argument("--synthetic", action="store_true",
                     help="simulate: synthetic sleep EEG over a real (../shared) or built-in hypnogram (default)")
    run.add_argument("--channels", type=_channel_list, default=None, metavar="A,B,...",
                     help="simulate --edf: the signals to replay, by label or 0-based index, in chip-channel order "
                          "(default: the file's EEG signals, central first)")
    run.add_argument("--hypnogram", type=Path, help="simulate: hypnogram file the synthetic EEG follows")
    run.add_argument("--speed", type=_speed, default=1.0,
                     help="simulate: replay speed, > 0 (600 = 8 h in 48 s; inf = as fast as it runs)")
    run.add_argument("--seed", type=_seed, default=0, help="simulate: synthetic subject seed (>= 0)")
    run.add_argument("--hours", type=_hours, default=None, help="stop after this many hours of signal")

    st = sub.add_parser("selftest", help="check chip, electrodes, light, sound and broker; pass/fail table")
    with_config(st)
    st.add_argument("--simulate", action="store_true", help="run against the chip simulator and mock GPIO")
    st.add_argument("--no-broker", action="store_true", help="skip the broker check")
    st.add_argument("--speed", type=float, default=None,
                    help="simulate: chip simulator speed, x real time (default 4; lower under emulation)")

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
    ver.add_argument("files", nargs="+", type=Path, metavar="PATH",
                     help="audit log file(s) (state_dir/audit.log), or folder(s) holding audit.log (the state "
                          "directory)")
    ver.add_argument("--reports", default=None, metavar="DIR",
                     help="nights whose report.json promised audit heads (default: PATH's nights/)")
    ver.add_argument("--expect-hash", action="append", default=[], metavar="HASH",
                     help="a head hash the log must contain (the clinic's copy of a night report's)")

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

    from appliance.protocol.stages import Stage

    W, N1, N2, N3, R = Stage.W, Stage.N1, Stage.N2, Stage.N3, Stage.REM
    night: list[int] = [W] * 30 + [N1] * 6
    cycles = [(90, 50, 15), (100, 35, 25), (110, 15, 35), (120, 5, 45), (130, 0, 50)]  # (N2, N3, REM) epochs
    for n2, n3, rem in cycles:
        night += [N2] * (n2 // 2) + [N3] * n3 + [N2] * (n2 - n2 // 2) + [R] * rem + [W] * 2 + [N1] * 2
    night += [N2] * (950 - len(night))
    night += [W] * 10
    return np.array(night, dtype=np.int8)


def _start_again() -> None:
    """Replace this process by a fresh start of the same command line (same PID, so systemd counts no restart):
    a failed start's memory, threads and open devices all go with the old image."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, list(sys.orig_argv))


def _simulation_source(args: argparse.Namespace, *, seed: int) -> SimulationSource:
    """What the simulated chip plays, read and checked now so that a bad file is a one-line refusal."""
    from appliance.hardware import SimulationSource

    if args.edf is not None:
        try:
            is_file, exists = args.edf.is_file(), args.edf.exists()
        except OSError as e:  # a name the system refuses to look up (too long, a folder it may not enter)
            raise UsageError(f"--edf {str(args.edf)[:200]}: {e.strerror or e}") from None
        if not is_file:
            raise UsageError(f"--edf {args.edf}: {'not a file' if exists else 'no such file'}")
        problem = _check_edf(args.edf, args.channels)
        if problem:
            raise UsageError(f"--edf {problem}")
        return SimulationSource(edf_path=args.edf, edf_channels=args.channels, seed=seed)
    if args.hypnogram is None:
        return SimulationSource(hypnogram=builtin_hypnogram(), seed=seed)
    from appliance.hypnogram import read_hypnogram

    try:
        hyp = read_hypnogram(args.hypnogram)
    except OSError as e:
        raise UsageError(f"--hypnogram {args.hypnogram}: {e.strerror or e}") from None
    except ValueError as e:
        raise UsageError(f"--hypnogram {one_line(e)}") from None
    if len(hyp) == 0:
        raise UsageError(f"--hypnogram {args.hypnogram}: no epochs in it")
    return SimulationSource(hypnogram=hyp, seed=seed)


def _cmd_run(args: argparse.Namespace) -> int:
    from appliance.daemon import Daemon
    from appliance.hardware import open_hardware
    from appliance.pushed_config import PROBATION_S, PushedConfigStore

    if not args.simulate and (args.edf or args.synthetic or args.hypnogram or args.channels):
        raise UsageError("--edf/--channels/--synthetic/--hypnogram need --simulate")
    if args.channels and args.edf is None:
        raise UsageError("--channels needs --edf")
    file_cfg = _load(args.config)
    if not args.simulate and not _no_config_file(args.config) and file_cfg.box.id == EXAMPLE_BOX_ID:
        # a box left with the example's id would share its MQTT topics with every other such box (without any
        # configuration file this is not a box yet: opening the hardware says what is missing)
        where = args.config or DEFAULT_CONFIG_PATH
        raise ConfigError("box.id", f"{EXAMPLE_BOX_ID!r} is the example's id; set [box] id in {where} to a name "
                                    f"unique to this box (install-pi.sh writes box-<machine id>)")
    _usage_error_if_unusable(file_cfg)
    # the systemd unit runs `bedtime run --config ...` on real and simulated boxes alike: [hardware] chooses
    simulate = args.simulate or file_cfg.hardware.simulate
    speed = args.speed if args.simulate else file_cfg.hardware.sim_speed
    seed = args.seed if args.simulate else file_cfg.hardware.sim_seed
    if file_cfg.hardware.simulate and not args.simulate:
        logger.warning("[hardware] simulate = true: running on the chip simulator and mock pins, not the hardware")
    source = _simulation_source(args, seed=seed) if simulate else None
    if args.simulate and _no_config_file(args.config):
        print(f"bedtime: no {DEFAULT_CONFIG_PATH}; simulated nights go to {file_cfg.recording_dir}")
    # The clinic's pushed config (if any) over the box's own file: tried once, kept as the last known good one
    # once the daemon runs with it; a start that fails with it falls back by itself (appliance.pushed_config).
    store = PushedConfigStore(file_cfg.box.state_dir)
    choice = store.choose(file_cfg)
    cfg = choice.config
    if choice.source != "box_file":
        logger.info("starting with the clinic's pushed config (%s, %s)", choice.source, choice.sha256[:12])
    daemon = hw = failed_start = None
    try:
        try:
            hw = open_hardware(cfg, simulate=simulate, source=source, speed=speed)
        except (OSError, ValueError) as e:
            if args.edf is None:
                raise
            raise UsageError(f"--edf {args.edf}: not a readable EDF/EDF+ recording ({one_line(e)})") from None
        hours = args.hours if args.hours else cfg.recording.max_night_hours
        daemon = Daemon(cfg, hardware=hw, max_signal_s=hours * 3600, file_config=file_cfg,
                        on_running=lambda: store.started(choice), start_reports=choice.rejected,
                        proven_after_s=0.0 if choice.source == "box_file" else PROBATION_S)
        result = daemon.run()
    except UsageError:
        store.trying.unlink(missing_ok=True)
        raise  # the command line's fault, whatever the config
    except Exception as e:
        if choice.source == "box_file" or (daemon is not None and daemon.proven):
            raise  # the box's own file, or a failure once the night was staging: not the pushed config's doing
        first = e  # the first failure, not one from cleaning up after it
        while first.__context__ is not None and isinstance(first.__context__, Exception):
            first = first.__context__
        failed_start = f"the daemon did not start with it: {type(first).__name__}: {first}"[:400]
        first = None
    else:
        if daemon.acquisition_stopped and not daemon.proven and choice.source != "box_file":
            failed_start = (f"the daemon did not start with it: the acquisition stopped "
                            f"({daemon.acquisition_stopped})")[:400]
    if failed_start is not None:
        # Out of the except block, with the failed start's objects dropped: what did not fit (a huge ring, one
        # thread too many) is given back before the failure is recorded, which needs memory of its own.
        daemon = hw = None
        gc.collect()
        try:
            store.failed(choice, failed_start)
        except (MemoryError, OSError) as e:  # the trying marker still names it: the next start rejects it
            logger.error("could not record the pushed config's failure (%s); the next start rejects it", one_line(e))
        logger.error("pushed config (%s) %s; starting again without it", choice.sha256[:12], failed_start)
        _start_again()
    if not daemon.proven:
        store.trying.unlink(missing_ok=True)  # stopped within its probation: says nothing about the config
    print(f"night recorded in {result.night_dir}")
    if result.edf_path:
        print(f"  EDF+:   {result.edf_path}")
    if result.report_json:
        print(f"  report: {result.report_json}\n  PNG:    {result.report_png}")
    if daemon.acquisition_stopped:
        print(f"bedtime: the acquisition stopped ({daemon.acquisition_stopped}); the night was closed, exiting with"
              f" status {EX_ACQUISITION_STOPPED} so that the service starts again", file=sys.stderr)
        return EX_ACQUISITION_STOPPED
    # EX_TEMPFAIL: the clinic asked for a restart, or a box's night reached recording.max_night_hours;
    # systemd's Restart=on-failure starts the daemon again, and with it the next night
    if daemon.restart_requested or (daemon.ended_by_limit and not args.simulate and not args.hours):
        # systemd logs a SuccessExitStatus= exit only at debug level: say it here, for the journal
        logger.info("exiting with status %d (%s): systemd starts the next night", EX_NEXT_NIGHT,
                    "restart requested" if daemon.restart_requested else "recording.max_night_hours reached")
        return EX_NEXT_NIGHT
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from appliance.nightfolder import EPOCHS_JSONL, EVENTS_JSONL, NIGHT_EDF, list_nights
    from appliance.report import format_report
    from appliance.report_load import NightError, report_night

    cfg = _load(args.config)

    def progress(msg: str) -> None:  # the slow steps (smoothing, drawing) say what they are doing
        print(f"bedtime report: {msg}...", file=sys.stderr, flush=True)

    # One named night: any problem with it is bad input (exit 2). Otherwise the latest night that has a
    # recording: nights without one (a failed start) or with damaged files are skipped with a note.
    explicit = None
    candidates: list[Path] = []
    try:
        named_folder = bool(args.night) and Path(args.night).is_dir()
    except OSError as e:  # a name the system refuses to look up (too long, a folder it may not enter)
        print(f"bedtime report: {args.night[:200]}: {e.strerror or e}", file=sys.stderr)
        return 2
    if named_folder:
        given = Path(args.night)
        inside = list_nights(given)
        if inside and not any((given / f).exists() for f in (EPOCHS_JSONL, EVENTS_JSONL, NIGHT_EDF)):
            candidates = inside  # the folder of nights itself: report its latest
        else:
            explicit = given
    elif args.night:
        named = [n for n in list_nights(cfg.recording_dir) if n.name == args.night]
        if not named:
            print(f"bedtime report: no night {args.night!r} (not a folder, and not a night under "
                  f"{cfg.recording_dir})", file=sys.stderr)
            return 2
        explicit = named[0]
    else:
        candidates = list_nights(cfg.recording_dir)
    try:
        if explicit is not None:
            try:
                rep, js, png, _ = report_night(explicit, progress=progress)
            except NightError as e:
                print(f"bedtime report: {e}", file=sys.stderr)
                return 2
        else:
            for night_dir in reversed(candidates):
                try:
                    rep, js, png, _ = report_night(night_dir, progress=progress)
                    break
                except NightError as e:
                    print(f"bedtime report: skipping {night_dir.name}: {e}", file=sys.stderr)
            else:
                where = Path(args.night) if args.night else cfg.recording_dir
                print(f"bedtime report: no recorded night under {where}", file=sys.stderr)
                return 1
    except OSError as e:
        print(f"bedtime report: cannot write the report: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rep, indent=1))
    else:
        print(format_report(rep))
        print(f"  JSON {js}\n  PNG  {png}")
    if args.publish:
        from appliance.clinic_commands import make_link

        link = make_link(cfg, model_versions={}, simulated=cfg.hardware.simulate)
        link.start()
        link.publish_report(rep)
        ok = link.wait_delivered(timeout_s=10)
        link.stop()
        print("published" if ok else "queued in the outbox (broker not reachable)")
    return 0


def _cmd_outputs_off(args: argparse.Namespace) -> int:
    from appliance.hardware import SIM_OUTPUTS_FILE, BoxOutputs, write_sim_outputs

    cfg = _load(args.config)
    if args.simulate or cfg.hardware.simulate:
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

            from appliance.selftest import SIM_SELFTEST_SPEED

            cfg = _load(args.config)
            speed = args.speed if args.speed is not None else SIM_SELFTEST_SPEED
            if not (0.05 <= speed <= 100.0):
                print(f"bedtime selftest: --speed {speed} is outside 0.05..100", file=sys.stderr)
                return 2
            return main_selftest(cfg, simulate=args.simulate or cfg.hardware.simulate,
                                 check_broker=not args.no_broker, sim_speed=speed)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "config":
            return _cmd_config_check(args)
        if args.command == "audit":
            from appliance.audit import main_verify

            return main_verify([str(f) for f in args.files]
                               + (["--reports", args.reports] if args.reports is not None else [])
                               + [a for h in args.expect_hash for a in ("--expect-hash", h)])
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
