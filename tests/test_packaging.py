"""What `pip install .` puts on a box: the wheel must carry the compiled ring buffer, the console's templates,
and both models with their cards, and an installed copy (not the source tree) must load the models."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # a clean copy: pip builds in the source tree, and a stale build/ there would hide a missing file
    src = out / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "*.so",
                                                             "__pycache__", ".hypothesis", "var", "demo-output"))
    # --no-build-isolation: build with this venv's setuptools and cffi instead of fetching fresh ones
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = out.glob("bedtime-*.whl")
    return whl


def test_wheel_carries_native_code_templates_and_both_models_with_their_cards(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert any(n.startswith("appliance/_native") and n.endswith(".so") for n in names)
    assert "appliance/fleet/web/templates/fleet.html" in names
    for model in ("models/stager/stager.tflite", "models/loops/loop.tflite"):
        assert model in names
        assert str(Path(model).with_name("model_card.json")) in names
        assert str(Path(model).with_name("MODEL_CARD.md")) in names
    assert not any(n.startswith("tests/") for n in names)


def test_an_installed_copy_loads_both_models_away_from_the_source_tree(wheel, tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                        str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    code = ("import appliance, appliance.stager as s, appliance.loop_model as l; "
            "print(appliance.__file__); s.Stager(); l.LoopDetector(); print('loaded')")
    env = {**os.environ, "PYTHONPATH": str(target)}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    where, status = r.stdout.split()[-2:]
    assert Path(where).is_relative_to(target), where  # the installed copy, not the checkout
    assert status == "loaded"


def test_editable_install_prints_no_build_backend_warning(wheel, tmp_path):
    """`make venv` is `pip install -e`; setuptools' import-hook editable mode printed a BuildBackendWarning
    ("Editable installation ...") every time. The hook pip calls, run on the same clean copy."""
    src = wheel.parent / "src"
    code = ("import sys; from setuptools import build_meta as b; "
            f"print(b.build_editable({str(tmp_path)!r}))")
    r = subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=src, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "BuildBackendWarning" not in r.stderr and "Editable installation" not in r.stderr, r.stderr[-3000:]
    (editable,) = tmp_path.glob("bedtime-*.whl")
    names = zipfile.ZipFile(editable).namelist()
    assert any(n.endswith(".pth") for n in names), names  # a plain path entry for the checkout


def test_the_test_extra_gives_starlette_its_http_client_without_a_deprecation_warning():
    """With only httpx installed, Starlette's TestClient warned on every pytest run (StarletteDeprecationWarning);
    the test extra now carries httpx2, which it uses."""
    pytest.importorskip("fastapi")
    r = subprocess.run([sys.executable, "-W", "error", "-c", "import fastapi.testclient"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


# ---- what a box installs is what a box runs (issue 14) -----------------------------------------------------

CLINIC_AND_TRAINING = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "psycopg", "jinja2", "argon2-cffi",
                       "itsdangerous", "python-multipart", "tensorflow", "tensorflow-cpu", "yasa", "playwright")


def _requirement_name(req: str) -> str:
    import re

    return re.split(r"[\s;<>=!~\[(]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_the_base_install_pulls_no_console_or_training_dependency(wheel):
    # read from the built wheel's own metadata: what `pip install bedtime` would install on a box
    meta = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
    lines = zipfile.ZipFile(wheel).read(meta).decode().splitlines()
    base = [ln.split(":", 1)[1] for ln in lines if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    extras = {ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Provides-Extra:")}
    assert base and {"fleet", "train"} <= extras
    assert not [r for r in base if _requirement_name(r) in CLINIC_AND_TRAINING], base


def test_a_night_in_the_daemon_loads_neither_the_clinic_nor_matplotlib_nor_scipy(tmp_path):
    """A whole short night (a daemon on the simulated chip, its morning report and PNG included): the daemon's own
    process never imports the console's packages, the clinic's code, matplotlib (the PNG is drawn in a child
    process) or scipy (appliance.filters)."""
    code = f"""
import json, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, {str(REPO)!r})
import appliance.daemon
at_import = sorted(sys.modules)
from appliance.hardware import SimulationSource, open_hardware
from tests.daemon_helpers import box_config, pipeline_parts
hyp = np.array([0] * 6 + [1] * 4 + [2] * 10, dtype=np.int8)
cfg = box_config(Path({str(tmp_path)!r}), port=None)
parts, _ = pipeline_parts(hyp)
hw = open_hardware(cfg, simulate=True, source=SimulationSource(hypnogram=hyp, seed=1), speed=float("inf"))
r = appliance.daemon.Daemon(cfg, hardware=hw, parts=parts).run()
print(json.dumps({{"at_import": at_import, "after_night": sorted(sys.modules), "epochs": r.epochs,
                  "png": str(r.report_png) if r.report_png else None}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["epochs"] == 20 and got["png"] and Path(got["png"]).stat().st_size > 0
    for when in ("at_import", "after_night"):
        loaded = [m for m in got[when] if m.split(".")[0] in ("fastapi", "sqlalchemy", "matplotlib", "scipy",
                                                             "starlette", "tensorflow")
                  or m == "appliance.fleet" or m.startswith("appliance.fleet.")]
        assert not loaded, f"{when}: {loaded[:10]}"


def test_both_programs_report_the_wheels_version(wheel):
    # one version string (appliance.protocol.version), and it is the one the wheel is built with
    import tomllib

    from appliance import __version__ as package_version
    from appliance.protocol.version import __version__

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert package_version is __version__ == project["version"]
    assert wheel.name.startswith(f"bedtime-{__version__}-")
