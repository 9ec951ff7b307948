"""Run the benchmarks and write their sections into docs/benchmarks.md.

``python -m bench`` runs every area; ``python -m bench acquisition staging`` runs some; each area's
section in the file is replaced between its markers, so a partial run leaves the others as they were.
"""
from __future__ import annotations

import argparse
import importlib
import platform
import re
import sys
import time
from pathlib import Path

AREAS = ["acquisition", "staging", "loops", "mqtt_load", "daemon", "coldstart", "console"]


def _replace_section(doc: str, area: str, body: str) -> str:
    start, end = f"<!-- bench:{area} -->", f"<!-- /bench:{area} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in doc:
        return re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _m: block, doc, flags=re.S)
    return doc.rstrip() + "\n\n" + block + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("areas", nargs="*", default=AREAS, help=f"areas to run (default all: {' '.join(AREAS)})")
    ap.add_argument("--write", type=Path, help="update this markdown file (docs/benchmarks.md)")
    ap.add_argument("--quick", action="store_true", help="smaller runs, for a smoke check")
    args = ap.parse_args(argv)
    doc = args.write.read_text() if args.write and args.write.exists() else "# Benchmarks\n"
    failed = []
    for area in args.areas:
        try:
            mod = importlib.import_module(f"bench.{area}")
        except ModuleNotFoundError as e:
            print(f"[bench] {area}: not available ({e})", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        try:
            body = mod.run(quick=args.quick)
        except Exception as e:  # one area failing must not hide the others' figures
            print(f"[bench] {area}: FAILED: {e!r}", file=sys.stderr)
            failed.append(area)
            continue
        stamp = f"_Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, " \
                f"{platform.python_implementation()} {platform.python_version()}, took {time.perf_counter() - t0:.0f} s._\n\n"
        body = body.replace("\n", "\n" + stamp, 1) if body.startswith("#") else stamp + body
        print(body)
        doc = _replace_section(doc, area, body)
    if args.write:
        args.write.write_text(doc)
        print(f"[bench] wrote {args.write}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
