"""Cold start: process start to READY=1 of ``bedtime run --simulate``, and what the daemon's process holds.

Each run starts the real ``bedtime`` command in a fresh process with ``NOTIFY_SOCKET`` pointing at a datagram
socket of this process (systemd's protocol), and times from just before ``exec`` to the ``READY=1`` datagram (the
daemon sends it once the first frames are in). The baseline, timed the same way in the same run, is a bare
``python -c pass``: the ratio moves less with the machine than either figure.

The memory section imports what the daemon's process imports at start-up, one group at a time, and reads
VmRSS after each (``/proc/self/status``), so each megabyte is named.
"""
from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import box_env

REPO = Path(__file__).resolve().parent.parent
RUNS = 5


def _bedtime() -> list[str]:
    return [sys.executable, "-c", "import sys; from appliance.cli import main; sys.exit(main())"]


def time_to_ready(tmp: Path, *, timeout_s: float = 120.0) -> float:
    """Seconds from process start to its READY=1 notification (``bedtime run --simulate --speed 1``)."""
    cfg = tmp / "bedtime.toml"
    cfg.write_text(f'[box]\nid = "bench-cold"\nstate_dir = "{tmp / "state"}"\n'
                   f'[recording]\ndir = "{tmp / "nights"}"\n[mqtt]\nenabled = false\n')
    sock_path = tmp / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.5)
    env = box_env(NOTIFY_SOCKET=str(sock_path))
    t0 = time.monotonic()
    p = subprocess.Popen([*_bedtime(), "run", "--config", str(cfg), "--simulate", "--speed", "1"], cwd=tmp, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while time.monotonic() - t0 < timeout_s:
            try:
                msg = sock.recv(4096).decode()
            except TimeoutError:
                if p.poll() is not None:
                    raise RuntimeError(f"bedtime run exited {p.returncode}: {p.stderr.read().decode()[-2000:]}")
                continue
            if "READY=1" in msg.split("\n"):
                return time.monotonic() - t0
        raise RuntimeError("no READY=1 within the timeout")
    finally:
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        sock.close()


def time_bare_python() -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.monotonic() - t0


MEMORY_STEPS = [
    ("Python interpreter", []),
    ("numpy", ["numpy"]),
    ("gpiozero (pins; mock factory in simulation)", ["gpiozero"]),
    ("paho-mqtt", ["paho.mqtt.client"]),
    ("cryptography (Ed25519 verification of updates)", ["cryptography.hazmat.primitives.asymmetric.ed25519"]),
    ("edfio (EDF+ recording)", ["edfio"]),
    ("TFLite runtime (ai-edge-litert)", ["appliance.tflite", "appliance.tflite:_interpreter_class"]),
    ("the box's own modules (daemon, DSP, stager, loops, breather, MQTT, EDF+ writer...)",
     ["appliance.daemon", "appliance.dsp", "appliance.stager", "appliance.loop_model", "appliance.breather",
      "appliance.mqtt", "appliance.edfplus", "appliance.nightfolder", "appliance.updates", "appliance.hardware",
      "appliance.ads1299_sim"]),
]


def memory_worker() -> str:
    """Runs in a fresh process: VmRSS after each import group, and the heavy packages that stayed out."""
    def rss_mb() -> float:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    rows, last = [], rss_mb()
    rows.append((MEMORY_STEPS[0][0], last, last))
    for label, mods in MEMORY_STEPS[1:]:
        for m in mods:
            mod, _, call = m.partition(":")
            __import__(mod)
            if call:
                getattr(sys.modules[mod], call)()  # the import happens inside this function
        now = rss_mb()
        rows.append((label, now - last, now))
        last = now
    absent = [m for m in ("scipy", "matplotlib", "fastapi", "sqlalchemy", "tensorflow", "appliance.fleet")
              if m not in sys.modules]
    import json

    return json.dumps({"rows": rows, "absent": absent})


def run(*, quick: bool = False) -> str:
    import json

    runs = 2 if quick else RUNS
    ready, bare = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="bedtime-cold-") as d:
            ready.append(time_to_ready(Path(d)))
        bare.append(time_bare_python())
    env = box_env()
    mem = json.loads(subprocess.run([sys.executable, "-m", "bench.coldstart", "memory"], cwd=REPO, env=env,
                                    capture_output=True, text=True, check=True, timeout=300).stdout.splitlines()[-1])
    r, b = statistics.median(ready), statistics.median(bare)
    lines = [
        "## Cold start and memory",
        "",
        f"Process start to READY=1 of `bedtime run --simulate` (chip simulator, MQTT off), median of {runs} runs,"
        " against a bare `python -c pass` timed the same way in the same run.",
        "",
        "| measure | value | goal |",
        "|---|---|---|",
        f"| process start -> READY=1 | {r:.2f} s (runs: {', '.join(f'{x:.2f}' for x in ready)}) | half of before |",
        f"| baseline: `python -c pass` | {b:.3f} s | |",
        f"| **ratio** | **{r / b:.0f}x** | |",
        "",
        "What the daemon's process holds after its start-up imports (VmRSS, fresh process, one group at a time):",
        "",
        "| import | adds | total |",
        "|---|---|---|",
        *(f"| {label} | {add:.1f} MB | {tot:.1f} MB |" for label, add, tot in mem["rows"]),
        "",
        f"Not loaded: {', '.join(mem['absent'])}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] == ["memory"]:
        print(memory_worker())
    else:
        print(run(quick="--quick" in sys.argv))
