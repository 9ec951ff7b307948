"""The morning PNG is drawn outside the daemon's process, and a drawing that fails or hangs never costs the report.

The daemon writes ``report.json`` first, then runs ``python -m appliance.report_draw NIGHT`` as a child with a
bounded wait (``appliance.morning_report.PNG_CHILD_TIMEOUT_S``). These tests run real nights: one through the real
``bedtime run --simulate`` command in a fresh interpreter (to see what that process imported), and two through
the real daemon whose drawing child meets a broken matplotlib (a package on ``PYTHONPATH`` that the child
imports instead of the real one: failing at import, or hanging).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from appliance import morning_report
from appliance.daemon import Daemon
from appliance.report import NightRecord
from appliance.report_load import write_report
from appliance.hardware import SimulationSource, open_hardware
from appliance.nightfolder import HYPNOGRAM_PNG, REPORT_JSON
from tests.daemon_helpers import box_config, pipeline_parts, short_night_with_loop

_RUN_AND_LOOK = """
import json, sys
from appliance.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "modules": sorted(m for m in sys.modules if m.split(".")[0] in
                  ("matplotlib", "appliance"))}))
"""


def test_a_night_run_by_bedtime_never_imports_matplotlib_yet_the_png_is_drawn(tmp_path: Path) -> None:
    cfg = tmp_path / "box.toml"
    cfg.write_text(f'[box]\nid = "box-png"\nstate_dir = "{tmp_path / "state"}"\n'
                   f'[recording]\ndir = "{tmp_path / "nights"}"\n[mqtt]\nenabled = false\n')
    p = subprocess.run([sys.executable, "-c", _RUN_AND_LOOK, "run", "--simulate", "--hours", "0.05", "--speed",
                        "inf", "--config", str(cfg)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    seen = json.loads(p.stdout.strip().splitlines()[-1])
    assert seen["rc"] == 0
    assert "appliance.daemon" in seen["modules"]
    assert not [m for m in seen["modules"] if m.startswith(("matplotlib", "appliance.report_draw"))], seen
    (night,) = sorted((tmp_path / "nights").glob("*Z"))
    assert (night / REPORT_JSON).is_file()
    assert (night / HYPNOGRAM_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("broken", ["fails", "hangs"])
def test_a_drawing_child_that_fails_or_hangs_leaves_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                broken: str) -> None:
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    body = ("raise ImportError('matplotlib is broken on this box')\n" if broken == "fails"
            else "import time\ntime.sleep(600)\n")
    (fake / "__init__.py").write_text(body)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(morning_report, "PNG_CHILD_TIMEOUT_S", 5.0)

    hyp, _ = short_night_with_loop(before_epochs=8, after_epochs=2)
    cfg = box_config(tmp_path, port=None, box_id="box-png")
    parts, _ = pipeline_parts(hyp)
    hw = open_hardware(cfg, simulate=True, source=SimulationSource(hypnogram=hyp, seed=3), speed=float("inf"))
    t0 = time.monotonic()
    result = Daemon(cfg, hardware=hw, parts=parts).run()
    took_s = time.monotonic() - t0
    assert result.report_json is not None and result.report_json.is_file()
    saved = json.loads(result.report_json.read_text())
    assert saved["box_id"] == "box-png" and saved["interventions"]["loops_detected"] >= 1
    assert result.report_png is None
    assert not (result.night_dir / HYPNOGRAM_PNG).exists()
    assert took_s < 300, "the daemon waited for a hung child well past its timeout"  # the child sleeps 600 s


@pytest.mark.parametrize("make", ["missing", "empty", "damaged report", "no arguments"])
def test_a_night_the_drawing_child_cannot_draw_is_one_line_exit_2(tmp_path: Path, make: str) -> None:
    d = tmp_path / "20261201T213000Z"
    if make != "missing":
        d.mkdir()
    if make == "damaged report":
        (d / REPORT_JSON).write_bytes(b'{"statistics": 3')
    before = sorted(tmp_path.rglob("*"))
    args = [] if make == "no arguments" else [str(d)]
    p = subprocess.run([sys.executable, "-m", "appliance.report_draw", *args], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    assert sorted(tmp_path.rglob("*")) == before


_LOOK_AT_THE_CHILD = """
# sitecustomize of the test below: at the child's os._exit, write what the child imported and ran with
import gc, json, os, sys
_real_exit = os._exit


def _look(code):
    with open(os.environ["BEDTIME_TEST_CHILD_LOOK"], "w") as f:
        json.dump({"code": code, "modules": sorted(sys.modules), "gc_enabled": gc.isenabled(),
                   "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS")}, f)
    _real_exit(code)


os._exit = _look
"""


def test_the_drawing_child_imports_only_what_it_draws_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The child costs the box CPU every night (Python, numpy and matplotlib starting up are most of it): it must
    # not pull in what a drawing does not need (scipy, the stager, the EDF+ writer, pyplot), it draws on one BLAS
    # thread with the cyclic GC off, and it ends by os._exit (no teardown of matplotlib, module by module).
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_LOOK_AT_THE_CHILD)
    look = tmp_path / "look.json"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("BEDTIME_TEST_CHILD_LOOK", str(look))
    night_dir = tmp_path / "20261201T213000Z"
    night_dir.mkdir()
    hyp, _ = short_night_with_loop(before_epochs=8, after_epochs=2)
    write_report(NightRecord(hypnogram=np.asarray(hyp, dtype=np.int8), box_id="box-png"), night_dir, png=False)

    png = morning_report.render_png_child(night_dir)

    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    seen = json.loads(look.read_text())  # written only when the child ended through os._exit
    assert seen["code"] == 0
    assert "matplotlib.figure" in seen["modules"]  # the hook saw the real child
    heavy = ("scipy", "pandas", "edfio", "yasa", "tflite_runtime", "ai_edge_litert", "matplotlib.pyplot",
             "appliance.stager", "appliance.dsp", "appliance.edfplus", "appliance.daemon")
    assert not [m for m in seen["modules"] if m.startswith(heavy)], seen["modules"]
    assert seen["gc_enabled"] is False
    assert seen["openblas_threads"] == "1"
