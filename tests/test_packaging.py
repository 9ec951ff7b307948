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
