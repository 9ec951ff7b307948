"""``make demo`` as a newcomer meets it: only the broker installed, output in one git-ignored folder that the
next run replaces (nothing piling up in /tmp), and a clean end (no "disconnected" warning)."""
from __future__ import annotations

import logging
import time
import re
import subprocess
from pathlib import Path

import pytest

from appliance.demo import DEFAULT_OUT, DEMO_MARKER, DemoOutputError, prepare_output

ROOT = Path(__file__).resolve().parent.parent


def _make(*args: str) -> str:
    return subprocess.run(["make", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60,
                          check=True).stdout


def _prerequisites(database: str, target: str) -> set[str]:
    m = re.search(rf"^{re.escape(target)}: ?(.*)$", database, re.M)
    assert m, f"no rule for {target}"
    return set(m.group(1).split())


def test_make_demo_installs_only_the_broker():
    """The demo once pulled chromium and PostgreSQL (481 MB, and system upgrades) through `system-deps`."""
    database = _make("-pn", "demo")
    demo = _prerequisites(database, "demo")
    assert "demo-deps" in demo and not {"test-deps", "system-deps"} & demo, demo
    packages = re.search(r"for pkg in ([^;]*);", _make("-n", "demo-deps")).group(1).split()
    assert packages == ["mosquitto"]
    test_packages = re.search(r"for pkg in ([^;]*);", _make("-n", "test-deps")).group(1).split()
    assert {"mosquitto", "chromium", "postgresql"} <= set(test_packages)
    assert "test-deps" in _prerequisites(database, "test")


def test_demo_output_is_one_ignored_folder_replaced_by_the_next_run(tmp_path):
    assert not DEFAULT_OUT.is_absolute() and "/demo-output/" in (ROOT / ".gitignore").read_text().split()
    out = tmp_path / "demo-output"
    prepare_output(out)
    (out / "nights").mkdir()
    (out / "nights" / "night.edf").write_bytes(b"x" * 1000)
    prepare_output(out)  # a second run starts empty: runs do not pile up
    assert sorted(p.name for p in out.iterdir()) == [DEMO_MARKER]


def test_demo_never_empties_a_folder_it_did_not_make(tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("precious")
    with pytest.raises(DemoOutputError, match="not made by the demo"):
        prepare_output(mine)
    assert (mine / "chapter1.tex").read_text() == "precious"
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(DemoOutputError, match="not a folder"):
        prepare_output(a_file)


def test_demo_refuses_a_foreign_folder_in_one_line(tmp_path, capsys):
    from appliance.demo import main

    (tmp_path / "keep.txt").write_text("x")
    assert main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not made by the demo" in err
    assert (tmp_path / "keep.txt").exists()


@pytest.mark.broker
def test_stopping_the_link_is_not_a_warning_but_losing_the_broker_is(broker, tmp_path, caplog):
    """The demo ended on "WARNING appliance.mqtt: disconnected from broker: Normal disconnection"."""
    from appliance.mqtt import BoxLink

    link = BoxLink(box_id="demo-end", host=broker.host, port=broker.port, outbox_path=tmp_path / "outbox.db",
                   firmware_version="1.0", model_versions={})
    link.start()
    try:
        assert link.wait_connected(60)
    finally:
        with caplog.at_level(logging.INFO, logger="appliance.mqtt"):
            link.stop()
    ours = [r for r in caplog.records if r.name == "appliance.mqtt" and "disconnected" in r.getMessage()]
    assert ours and all(r.levelno == logging.INFO for r in ours), [(r.levelname, r.getMessage()) for r in ours]

    caplog.clear()
    link = BoxLink(box_id="demo-end2", host=broker.host, port=broker.port, outbox_path=tmp_path / "outbox2.db",
                   firmware_version="1.0", model_versions={})
    link.start()
    try:
        assert link.wait_connected(60)
        with caplog.at_level(logging.INFO, logger="appliance.mqtt"):
            broker.stop()
            deadline = time.monotonic() + 60
            while link.connected and time.monotonic() < deadline:
                time.sleep(0.05)
        assert not link.connected
        assert any(r.levelno == logging.WARNING and "disconnected" in r.getMessage() for r in caplog.records)
    finally:
        link.stop(timeout_s=5)
