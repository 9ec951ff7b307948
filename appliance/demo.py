"""``make demo``: a whole simulated night through the real daemon, at high speed, on this machine.

1. starts a private mosquitto on a free loopback port (Debian's ``/usr/sbin/mosquitto``);
2. subscribes to the box's alerts as a parent's phone would;
3. replays a night through the daemon: a real expert hypnogram from ``../shared`` (or a built-in one) with a
   scripted nightmare loop inserted, turned into EEG by the synthetic generator, played by the simulated chip,
   staged, watched for loops, answered by the breather on gpiozero mock pins, recorded as EDF+ and reported;
4. prints where the EDF+, the report PNG and the JSON are, and the alerts the phone received.

The output goes to ``./demo-output`` (ignored by git), which the next run replaces and ``make clean`` removes, so
runs do not pile up in ``/tmp``.

Only the hardware edge is simulated (the chip and the pins); everything downstream is the appliance's code.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from appliance.protocol.stages import Stage

logger = logging.getLogger(__name__)

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

W, N1, N2, R = int(Stage.W), int(Stage.N1), int(Stage.N2), int(Stage.REM)

LOOP_PATTERN: tuple[int, ...] = tuple(
    [R] * 6 + [W] * 2 + [R] * 5 + [W] * 2 + [R] * 5 + [W] * 2 + [R] * 20 + [W] * 3 + [N1] * 2 + [N2] * 4)
"""The scripted nightmare loop (30-s epochs): REM broken three times by distressed wake, each time returning to
REM within minutes (three returns in 10 min: a loop by docs/loops.md), then 10 min of REM with the loop under
way, then waking and settling.

Why this shape: a breather session (cue 60 s + light 120 s by default) stops at once when the sleeper wakes, and
one that ends with the loop no longer detected counts as having helped. The loop model shipped in models/loops
(checked on seeds 1-8) becomes sure of the loop after the third return, so its session runs its course in the long
REM stretch with the loop still detected and ends in an alert to the parent, which is what the demo shows. A
retrained model that fires after the second return would see its session stopped by the third arousal instead:
tests/test_daemon_e2e.py then tells."""

DEMO_BREATHER = {"confirm_epochs": 2}
"""Breather settings of the demo (inside the safety envelope): confirm a loop over two epochs (1 min)."""

DEMO_NIGHT = "SC4001E0"
"""Real Sleep-EDF night the demo uses when ../shared is present."""


def trim_to_night(hyp: np.ndarray, *, pad_epochs: int = 30, max_epochs: int = 960) -> np.ndarray:
    """Cut a Sleep-EDF whole-day recording to the night: from ``pad_epochs`` before the first sleep epoch to
    ``pad_epochs`` after the last one, at most ``max_epochs`` (8 h); unscored epochs become W."""
    h = np.where(hyp == Stage.UNSCORED, Stage.W, hyp).astype(np.int8)
    sleep = np.flatnonzero(np.isin(h, [1, 2, 3, 4]))
    if len(sleep) == 0:
        return h[:max_epochs]
    a = max(0, int(sleep[0]) - pad_epochs)
    b = min(len(h), int(sleep[-1]) + 1 + pad_epochs)
    return h[a:min(b, a + max_epochs)]


def scripted_night(hypnogram: np.ndarray | None = None, *, at_fraction: float = 0.6
                   ) -> tuple[np.ndarray, slice, str]:
    """A night with :data:`LOOP_PATTERN` written over it at the REM period nearest ``at_fraction`` of the night.

    Returns
    -------
    hypnogram : numpy.ndarray
    loop : slice
        Epochs of the scripted loop.
    name : str
        Where the night came from.
    """
    name = "built-in"
    if hypnogram is None:
        from appliance.hypnogram import real_hypnograms

        real = real_hypnograms()
        if DEMO_NIGHT in real:
            hypnogram, name = trim_to_night(real[DEMO_NIGHT]), f"Sleep-EDF {DEMO_NIGHT} (../shared)"
        else:
            from appliance.cli import builtin_hypnogram

            hypnogram = builtin_hypnogram()
    h = np.array(hypnogram, dtype=np.int8)
    n = len(LOOP_PATTERN)
    if len(h) < n + 20:
        raise ValueError(f"night of {len(h)} epochs is too short for the scripted loop ({n} epochs)")
    target = int(at_fraction * len(h))
    rem_starts = [i for i in range(1, len(h) - n) if h[i] == R and h[i - 1] != R]
    start = min(rem_starts, key=lambda i: abs(i - target)) if rem_starts else target
    start = min(start, len(h) - n - 1)
    h[start:start + n] = LOOP_PATTERN
    return h, slice(start, start + n), name


# ---- a private broker ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateBroker:
    """Debian's mosquitto on a free loopback port with a generated config (anonymous, loopback only)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 5.0) -> PrivateBroker:
        if not Path(MOSQUITTO).exists():
            raise FileNotFoundError(f"{MOSQUITTO} not found: install Debian's mosquitto (make demo does when root)")
        import getpass

        self.conf.write_text(f"persistence false\nlog_dest file {self.log}\nuser {getpass.getuser()}\n"
                             f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("mosquitto did not open its port")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None


class PhoneSubscriber:
    """A parent's phone: subscribes to the box's alerts (QoS 1) and keeps what arrives, with arrival times."""

    def __init__(self, host: str, port: int, box_id: str, *, channels: tuple[str, ...] = ("alert",)) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        from appliance.protocol import schema

        self.messages: list[dict] = []
        self.arrivals: list[float] = []
        self._got = threading.Event()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"phone-{box_id}-{free_port()}",
                                  protocol=paho.MQTTv5)
        topics = [(schema.topic(box_id, ch), 1) for ch in channels]

        def on_connect(client, userdata, flags, rc, props):
            client.subscribe(topics)

        def on_subscribe(client, userdata, mid, rcs, props):
            self._subscribed.set()

        def on_message(client, userdata, msg):
            self.arrivals.append(time.monotonic())
            try:
                payload = json.loads(msg.payload)
            except ValueError:
                payload = {"raw": msg.payload.decode(errors="replace")}
            payload["_topic"] = msg.topic
            self.messages.append(payload)
            self._got.set()

        self.client.on_connect, self.client.on_subscribe, self.client.on_message = on_connect, on_subscribe, on_message
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise RuntimeError("phone could not subscribe")

    def wait_for(self, n: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(self.messages) >= n

    def close(self) -> None:
        self.client.disconnect()  # a clean DISCONNECT first, while the network loop can still send it
        self.client.loop_stop()


DEFAULT_OUT = Path("demo-output")
"""Where ``make demo`` writes (relative to the checkout it runs in; listed in .gitignore)."""

DEMO_MARKER = ".bedtime-demo"
"""File that marks a folder as the demo's own, so that only such a folder is ever emptied."""


class DemoOutputError(Exception):
    """The output folder holds something that is not the demo's: it is left alone."""


def prepare_output(out: Path) -> Path:
    """Make ``out`` an empty folder for this run, removing a previous run's output only.

    Parameters
    ----------
    out : Path
        The output folder; created when missing.

    Returns
    -------
    Path
        ``out``, empty but for the marker file.

    Raises
    ------
    DemoOutputError
        When ``out`` exists, is not empty and was not made by the demo (no marker file): it is not touched.
    """
    if out.exists():
        if not out.is_dir():
            raise DemoOutputError(f"{out} exists and is not a folder")
        if any(out.iterdir()) and not (out / DEMO_MARKER).is_file():
            raise DemoOutputError(f"{out} is not empty and was not made by the demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / DEMO_MARKER).write_text("made by python -m appliance.demo; the next run replaces this folder\n")
    return out


_last_bar = [0.0]


def _progress_bar(done_s: float, total_s: float, t0: float, *, width: int = 40) -> None:
    frac = min(1.0, done_s / total_s) if total_s else 1.0
    now = time.monotonic()
    if now - _last_bar[0] < 0.2 and frac < 1.0:
        return
    _last_bar[0] = now
    fill = int(width * frac)
    h = done_s / 3600
    sys.stdout.write(f"\r  [{'#' * fill}{'.' * (width - fill)}] {100 * frac:5.1f}%  {h:4.1f} h of night "
                     f"in {time.monotonic() - t0:5.1f} s")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m appliance.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"where the night goes, replaced at each run (default ./{DEFAULT_OUT})")
    ap.add_argument("--speed", type=float, default=float("inf"), help="replay speed (default: as fast as it runs)")
    ap.add_argument("--seed", type=int, default=7, help="synthetic subject seed (default 7)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from appliance.daemon import Daemon
    from appliance.hardware import SimulationSource, open_hardware
    from appliance.protocol.boxconfig import validate_config

    try:
        out = prepare_output(args.out)
    except DemoOutputError as e:
        print(f"python -m appliance.demo: {e}", file=sys.stderr)
        return 2
    hyp, loop, name = scripted_night()
    print(f"bedtime demo: {len(hyp) * 30 / 3600:.1f} h night from {name}, scripted nightmare loop at "
          f"{loop.start * 30 / 3600:.2f}-{loop.stop * 30 / 3600:.2f} h")
    broker = PrivateBroker(out).start()
    print(f"  private mosquitto on 127.0.0.1:{broker.port}")
    box_id = "demo-box"
    phone = None
    try:
        phone = PhoneSubscriber("127.0.0.1", broker.port, box_id)
        cfg = validate_config({"box": {"id": box_id, "name": "Demo bedroom", "state_dir": str(out / "state")},
                               "mqtt": {"host": "127.0.0.1", "port": broker.port}, "breather": DEMO_BREATHER,
                               "recording": {"dir": str(out / "nights")}})
        hw = open_hardware(cfg, simulate=True, source=SimulationSource(hypnogram=hyp, seed=args.seed),
                           speed=args.speed)
        t0 = time.monotonic()
        daemon = Daemon(cfg, hardware=hw, progress=lambda d, t: _progress_bar(d, t, t0))
        result = daemon.run()
        print()
        stats = (result.report or {}).get("statistics", {})
        print(f"  replayed {result.epochs} epochs in {result.wall_s:.1f} s wall, {result.cpu_s:.1f} s CPU")
        if stats:
            print(f"  report: TST {stats['total_sleep_time_min']:.0f} min, SE {stats['sleep_efficiency_pct']:.0f}%, "
                  f"WASO {stats['waso_min']:.0f} min, REM latency {stats['rem_latency_min']} min")
        for sess in (result.report or {}).get("interventions", {}).get("breather_sessions", []):
            print(f"  breather at {sess['start_s'] / 3600:.2f} h: {' -> '.join(sess['steps'])}, "
                  f"outcome {sess['outcome']} (max light {sess.get('max_light')}, max volume {sess.get('max_volume')})")
        kinds = [e["kind"] for e in result.events]
        print(f"  events: {', '.join(f'{k} x{kinds.count(k)}' for k in dict.fromkeys(kinds))}")
        print(f"  EDF+:        {result.edf_path}")
        print(f"  report PNG:  {result.report_png}")
        print(f"  report JSON: {result.report_json}")
        print(f"  audit log:   {out / 'state' / 'audit.log'}  (check: bedtime audit verify FILE)")
        phone.wait_for(len(daemon.alerts_sent), timeout_s=10)
        print(f"\n  the parent's phone received {len(phone.messages)} alert(s):")
        for m in phone.messages:
            print(f"    [{m.get('severity')}] {m.get('title')}: {m.get('message')}")
        if not phone.messages:
            print("    (none)")
        size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
        print(f"\n  output kept in {out}/ ({size_mb:.0f} MB; ignored by git, replaced by the next run, "
              f"removed by make clean)")
        return 0
    finally:
        if phone is not None:
            phone.close()
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
