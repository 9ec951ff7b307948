"""The bench measures the box's code as a box runs it: from compiled bytecode, never compiling at start-up.

A box's modules are compiled by pip when it installs the wheel; a checkout run with ``PYTHONDONTWRITEBYTECODE``
compiles them in every process, which added ~7 MB to the daemon's peak memory in ``make bench`` (2026-12-03).
"""
from __future__ import annotations

import json
import subprocess
import sys

import bench
from bench import box_env


def test_bench_workers_import_the_box_from_compiled_bytecode(monkeypatch):
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # as in a read-only or locked-down checkout
    monkeypatch.delenv("PYTHONPYCACHEPREFIX", raising=False)
    monkeypatch.setattr(bench, "_compiled", False)
    env = box_env()
    probe = ("import json, os, sys, appliance.filter_designs as m, appliance.daemon as d; "
             "print(json.dumps([os.path.exists(m.__cached__), os.path.exists(d.__cached__), sys.dont_write_bytecode]))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=bench.REPO, env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    designs_cached, daemon_cached, dont_write = json.loads(out.stdout.splitlines()[-1])
    assert dont_write  # the setting stays; the bytecode was written beforehand, where the worker looks
    assert designs_cached and daemon_cached
