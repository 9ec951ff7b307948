"""Recorded check: does a refactor leave the night's outputs byte for byte as they were?

Runs the same short simulated night (``bedtime run --simulate --hypnogram F --hours H --speed inf --seed S``,
the demo's scripted nightmare loop and breather, no MQTT, ``TZ=UTC``) once with the code of a git revision (exported with ``git archive``; the compiled
``appliance._native`` of this tree is copied in) and once with this working tree, then compares

* ``night.edf``: every byte, after blanking the header's start date and time (and the recording field's
  ``Startdate``) and the UTC start in the onset-0 annotation, the only things that carry the wall clock;
* ``epochs.jsonl``, ``events.jsonl``, ``report.json``: every row, after dropping the wall-clock fields
  (:data:`WALL_CLOCK_KEYS`);
* ``hypnogram.png``: drawn by each tree's drawing code from one and the same night folder (the base run's), so
  the clock times on its axis are the same; compared byte for byte.

Usage::

    python bench/compare_night_outputs.py [--base main] [--hours 0.8] [--seed 3]

Exit status 0 when everything is identical, 1 when something differs (printed), 2 on bad usage.

Until 2026-12-03 about one run in fifty differed in a breather event's time, the same code against itself:
pops of frames ending mid-second moved the breather's ticks off the whole seconds. The breather is now ticked
on a grid of signal time (``tests/test_night_pipeline.py::test_a_night_is_the_same_however_its_frames_arrive``).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
WALL_CLOCK_KEYS = frozenset({"generated", "night_start", "hash", "first"})
"""Fields whose value follows the wall clock of the run (report time, night start, audit-log hashes over
records that carry timestamps)."""
_ISO_TIME = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
"""A UTC time in an annotation (the night's start, in the onset-0 annotation and the night_started event)."""
_LETTER = {0: "W", 1: "1", 2: "2", 3: "3", 4: "R"}
_NIGHT = [0] * 4 + [1] * 2 + [2] * 18 + [-1] + [2] * 20
"""The night the check replays: settle into N2, then the demo's scripted nightmare loop (inserted at ``-1``,
from :data:`appliance.demo.LOOP_PATTERN`), then N2 again; with the demo's breather this exercises loop
detection, breather steps and alerts."""
_DRAW = ("import sys\n"
         "try:\n    from appliance.report_draw import render_png\n"
         "except ImportError:\n    from appliance.report import render_png\n"
         "render_png(sys.argv[1])\n")


def _export(rev: str, dest: Path) -> Path:
    tree = dest / "tree"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    for so in (REPO / "appliance").glob("_native*"):
        shutil.copy2(so, tree / "appliance" / so.name)
    return tree


def _env(tree: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(tree), "TZ": "UTC", "PYTHONHASHSEED": "0"}


def _run_night(tree: Path, work: Path, *, hours: float, seed: int) -> Path:
    work.mkdir()
    demo = json.loads(subprocess.run(
        [sys.executable, "-c", "import json; from appliance.demo import DEMO_BREATHER as b, LOOP_PATTERN as p; "
         "print(json.dumps([b, p]))"], env=_env(tree), check=True, capture_output=True, text=True).stdout)
    breather, loop = demo
    stages = [x for s in _NIGHT for x in (loop if s == -1 else [s])]
    hyp = work / "night.txt"
    hyp.write_text("".join(_LETTER[s] + "\n" for s in stages))
    cfg = work / "box.toml"
    cfg.write_text(f'[box]\nid = "box-check"\nname = "Check bedroom"\nstate_dir = "{work / "state"}"\n'
                   f'[recording]\ndir = "{work / "nights"}"\n[mqtt]\nenabled = false\n[breather]\n'
                   + "".join(f"{k} = {json.dumps(v)}\n" for k, v in breather.items()))
    cmd = [sys.executable, "-c", "import sys; from appliance.cli import main; sys.exit(main())", "run", "--simulate",
           "--hypnogram", str(hyp), "--hours", str(hours), "--speed", "inf", "--seed", str(seed),
           "--config", str(cfg)]
    p = subprocess.run(cmd, cwd=work, env=_env(tree), capture_output=True, text=True, timeout=1800)
    nights = sorted((work / "nights").glob("*Z"))
    if len(nights) != 1:
        raise SystemExit(f"{tree}: expected one night, got {nights} (exit {p.returncode}): {p.stderr[-2000:]}")
    return nights[0]


def _edf_normalised(path: Path) -> bytes:
    """Header (wall clock blanked) + every signal sample + the annotations in order, each with its onset.

    Which data record an annotation lands in depends on when the pipeline thread queues it relative to the
    samples being written (at ``--speed inf`` the threads race), so the annotations are compared as the ordered
    list of TALs (time-keeping TALs left out), not by record; everything else byte for byte.
    """
    b = path.read_bytes()
    head = bytearray(b[:256])
    head[168:184] = b" " * 16  # start date and time (local wall clock)
    head[88:168] = re.sub(rb"Startdate \S+", b"Startdate X", bytes(head[88:168])).ljust(80)
    ns = int(head[252:256])
    header_bytes = int(head[184:192])
    spr = [int(b[256 + ns * 216 + 8 * i:256 + ns * 216 + 8 * i + 8]) for i in range(ns)]
    labels = [b[256 + 16 * i:256 + 16 * i + 16].strip() for i in range(ns)]
    ann = labels.index(b"EDF Annotations")
    rec_bytes = 2 * sum(spr)
    ann_at = 2 * sum(spr[:ann])
    signal, tals = [bytes(head), b[256:header_bytes]], []
    for r in range(header_bytes, len(b), rec_bytes):
        rec = b[r:r + rec_bytes]
        signal.append(rec[:ann_at] + rec[ann_at + 2 * spr[ann]:])
        for tal in rec[ann_at:ann_at + 2 * spr[ann]].split(b"\x00"):
            if tal and not tal.endswith(b"\x14\x14"):  # not the record's time-keeping TAL
                tals.append(_ISO_TIME.sub(b"<time>", tal))
    return b"".join(signal) + b"\x00".join(tals)


def _strip(x: object) -> object:
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in WALL_CLOCK_KEYS}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def _json_normalised(path: Path) -> bytes:
    if path.suffix == ".jsonl":
        rows = [_strip(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    else:
        rows = _strip(json.loads(path.read_text()))
    return json.dumps(rows, sort_keys=True).encode()


def _digests(night: Path) -> dict[str, str]:
    out = {"night.edf": hashlib.sha256(_edf_normalised(night / "night.edf")).hexdigest()}
    for name in ("epochs.jsonl", "events.jsonl", "report.json"):
        out[name] = hashlib.sha256(_json_normalised(night / name)).hexdigest()
    return out


def _draw(tree: Path, night: Path, dest: Path) -> str:
    shutil.copytree(night, dest)
    (dest / "hypnogram.png").unlink(missing_ok=True)
    subprocess.run([sys.executable, "-c", _DRAW, str(dest)], env=_env(tree), check=True, timeout=600)
    return hashlib.sha256((dest / "hypnogram.png").read_bytes()).hexdigest()


@contextlib.contextmanager
def _kept(folder: Path) -> Iterator[str]:
    yield str(folder)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="main", help="git revision to compare with (default main)")
    ap.add_argument("--tree", default=None,
                    help="compare this git revision instead of the working tree (e.g. to see the check is stable)")
    ap.add_argument("--hours", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--keep", type=Path, default=None, help="work in this (new) folder and keep it, to look")
    args = ap.parse_args(argv)
    if args.keep is not None:
        args.keep.mkdir(parents=True)
    with (tempfile.TemporaryDirectory(prefix="night-compare-") if args.keep is None else _kept(args.keep)) as tmp:
        t = Path(tmp)
        old_tree = _export(args.base, t / "base")
        old = _run_night(old_tree, t / "run-base", hours=args.hours, seed=args.seed)
        new_tree = _export(args.tree, t / "tree") if args.tree else REPO
        new = _run_night(new_tree, t / "run-new", hours=args.hours, seed=args.seed)
        a, b = _digests(old), _digests(new)
        a["hypnogram.png"] = _draw(old_tree, old, t / "png-base")
        b["hypnogram.png"] = _draw(new_tree, old, t / "png-new")
        ev = [json.loads(x) for x in (new / "events.jsonl").read_text().splitlines() if x.strip()]
        kinds = sorted({e["kind"] for e in ev})
        print(f"night of {args.hours} h, seed {args.seed}: {len(ev)} events ({', '.join(kinds)}), "
              f"{(new / 'night.edf').stat().st_size} EDF bytes")
        differ = False
        for name in a:
            same = a[name] == b[name]
            differ |= not same
            print(f"{'same  ' if same else 'DIFFER'} {name:14s} {args.base}: {a[name][:16]}  tree: {b[name][:16]}")
        return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
