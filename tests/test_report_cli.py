"""`bedtime report` on real nights: re-reporting keeps what the daemon wrote, damaged or empty night folders are a
one-line error (exit 2) or a skipped night, and a failed start leaves no empty night folder behind."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.cli import main
from appliance.daemon import Daemon
from appliance.hardware import SimulationSource, open_hardware
from appliance.nightfolder import EPOCHS_JSONL, EVENTS_JSONL, REPORT_JSON, list_nights
from tests.daemon_helpers import box_config, pipeline_parts, short_night_with_loop


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def daemon_night(tmp_path_factory):
    """One short night recorded by the real daemon (no broker), box id ``demo-box``."""
    tmp = tmp_path_factory.mktemp("night")
    hyp, _ = short_night_with_loop()
    cfg = box_config(tmp, port=None, box_id="demo-box", box={"name": "Demo bedroom"})
    parts, _ = pipeline_parts(hyp)
    hw = open_hardware(cfg, simulate=True, source=SimulationSource(hypnogram=hyp, seed=3), speed=float("inf"))
    result = Daemon(cfg, hardware=hw, parts=parts).run()
    assert result.report_json is not None and result.report_json.is_file()
    return result.night_dir


def test_rereport_keeps_every_key_the_daemon_wrote(daemon_night):
    written = json.loads((daemon_night / REPORT_JSON).read_text())
    assert written["box_id"] == "demo-box" and written["signal_quality"].get("frames", 0) > 0
    mtime = (daemon_night / REPORT_JSON).stat().st_mtime_ns
    t0 = time.monotonic()
    rc, out, err = _run(["report", str(daemon_night), "--config", os.devnull])  # an empty config: box-0001
    took = time.monotonic() - t0
    assert rc == 0, err
    again = json.loads((daemon_night / REPORT_JSON).read_text())
    for key, value in written.items():
        assert again.get(key) == value, key
    assert (daemon_night / REPORT_JSON).stat().st_mtime_ns == mtime  # not rewritten at all
    assert "box demo-box" in out and "box-0001" not in out
    print(f"\n[report] re-report of a daemon night took {took:.2f} s")


def test_a_night_without_its_report_is_rebuilt_with_its_own_box_id(daemon_night, tmp_path):
    import shutil

    d = tmp_path / daemon_night.name
    shutil.copytree(daemon_night, d)
    written = json.loads((d / REPORT_JSON).read_text())
    (d / REPORT_JSON).unlink()  # the daemon was killed before writing it
    (d / "hypnogram.png").unlink(missing_ok=True)
    rc, out, err = _run(["report", str(d), "--config", os.devnull])
    assert rc == 0, err
    rebuilt = json.loads((d / REPORT_JSON).read_text())
    assert rebuilt["box_id"] == "demo-box" and rebuilt["box_name"] == "Demo bedroom"
    assert rebuilt["night_start"] == written["night_start"]
    assert rebuilt["interventions"] == written["interventions"]
    assert (d / "hypnogram.png").is_file()
    assert "drawing the hypnogram" in err  # the slow steps say what they do


def test_a_daemon_breather_reads_the_same_in_report_and_demo(daemon_night):
    rep = json.loads((daemon_night / REPORT_JSON).read_text())
    events = [json.loads(ln) for ln in (daemon_night / EVENTS_JSONL).read_text().splitlines()]
    sessions = rep["interventions"]["breather_sessions"]
    assert sessions, "the scripted loop should have started a breather"
    for s in sessions:
        # what really happened, from the breather's own events inside this session
        inside = [e["kind"] for e in events if e["kind"].startswith("breather_")
                  and s["start_s"] <= e["time_s"] <= s.get("end_s", float("inf"))]
        expected = ["cue"] + (["light"] if "breather_light" in inside else []) + ["ended"]
        assert s["steps"] == expected


# ---- damaged and empty nights -------------------------------------------------------------------------
def _good_rows(n: int) -> list[bytes]:
    return [json.dumps({"stage": i % 5, "ok": True, "flags": []}).encode() for i in range(n)]


def _good_events() -> list[bytes]:
    return [json.dumps(e).encode() for e in ({"time_s": 0.0, "kind": "night_started", "box_id": "b"},
                                              {"time_s": 300.0, "kind": "loop_detected"},
                                              {"time_s": 600.0, "kind": "night_ended"})]


_bad_value = st.one_of(st.none(), st.text(max_size=5), st.floats(allow_nan=True), st.booleans(),
                       st.integers().filter(lambda i: i not in range(-1, 5)), st.lists(st.integers(), max_size=3),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_bad_epoch_row = st.one_of(
    st.builds(lambda v: {"stage": v, "ok": True}, _bad_value),
    st.builds(lambda v: {"stage": 2, "ok": v}, _bad_value.filter(lambda v: not isinstance(v, bool))),
    st.builds(lambda v: {"stage": 2, "probs": v}, _bad_value.filter(lambda v: v is not None)),
    st.builds(lambda v: {"stage": 2, "flags": v}, st.one_of(st.text(min_size=1, max_size=4), st.integers(),
                                                          st.lists(st.integers(), min_size=1, max_size=3))),
    st.one_of(st.lists(st.integers(), max_size=3), st.integers(), st.text(max_size=5)),  # not an object at all
)
_bad_event = st.one_of(
    st.builds(lambda v: {"time_s": 10.0, "kind": v}, _bad_value.filter(lambda v: not isinstance(v, str))),
    st.builds(lambda v: {"time_s": v, "kind": "alert"}, _bad_value.filter(
        lambda v: isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"))),
    st.lists(st.integers(), max_size=2),
)
_not_json_line = st.one_of(
    st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b).map(lambda b: b"\xff" + b),  # not UTF-8
    st.text(min_size=1, max_size=40).filter(lambda t: "\n" not in t and "\r" not in t and t.strip())
    .filter(lambda t: not _parses(t)).map(str.encode),
)


def _parses(t: str) -> bool:
    try:
        json.loads(t)
        return True
    except ValueError:
        return False


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from([EPOCHS_JSONL, EVENTS_JSONL]), bad=st.data(), where=st.floats(0.0, 0.99))
def test_a_damaged_sidecar_is_one_line_exit_2_and_nothing_written(tmp_path_factory, which, bad, where):
    d = tmp_path_factory.mktemp("night") / "20261201T213000Z"
    d.mkdir()
    rows, events = _good_rows(20), _good_events()
    lines = rows if which == EPOCHS_JSONL else events
    kind = bad.draw(st.sampled_from(["line", "value"]))
    if kind == "line":
        damage = bad.draw(_not_json_line)
    else:
        damage = json.dumps(bad.draw(_bad_epoch_row if which == EPOCHS_JSONL else _bad_event)).encode()
    i = int(where * (len(lines) - 1))  # never the last line: a torn last line is a crash, handled
    lines = lines[:i] + [damage] + lines[i:]
    (d / EPOCHS_JSONL).write_bytes(b"\n".join(rows if which == EVENTS_JSONL else lines) + b"\n")
    (d / EVENTS_JSONL).write_bytes(b"\n".join(events if which == EPOCHS_JSONL else lines) + b"\n")
    before = sorted(p.name for p in d.iterdir())
    rc, out, err = _run(["report", str(d), "--config", os.devnull])
    assert rc == 2, (damage, out, err)
    assert len(err.strip().splitlines()) == 1 and which in err and "Traceback" not in err, err
    assert sorted(p.name for p in d.iterdir()) == before  # nothing written


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(min_size=1, max_size=300))
def test_a_binary_epochs_file_is_one_line_exit_2(tmp_path_factory, blob):
    d = tmp_path_factory.mktemp("night") / "20261201T213000Z"
    d.mkdir()
    (d / EPOCHS_JSONL).write_bytes(b"\x89PNG\r\n\x1a\n" + blob)
    rc, out, err = _run(["report", str(d), "--config", os.devnull])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (d / REPORT_JSON).exists()


def test_a_torn_last_line_is_still_reported(tmp_path):
    d = tmp_path / "20261201T213000Z"
    d.mkdir()
    (d / EPOCHS_JSONL).write_bytes(b"\n".join(_good_rows(20)) + b'\n{"stage": 2, "o')
    (d / EVENTS_JSONL).write_bytes(b"\n".join(_good_events()) + b"\n" + b'{"time_s": 61')
    rc, out, err = _run(["report", str(d), "--config", os.devnull])
    assert rc == 0, err
    assert json.loads((d / REPORT_JSON).read_text())["statistics"]["n_epochs"] == 20


@pytest.mark.parametrize("make", ["empty_night", "not_a_night", "missing", "garbage_edf", "empty_sidecars"])
def test_a_folder_without_a_night_is_one_line_exit_2(tmp_path, make):
    d = tmp_path / "20261201T213000Z"
    if make == "empty_night":
        d.mkdir()
    elif make == "garbage_edf":  # only an EDF+, and not one
        d.mkdir()
        (d / "night.edf").write_bytes(b"0       " + bytes(range(256)) * 3)
    elif make == "empty_sidecars":  # the start got as far as opening its files
        d.mkdir()
        (d / EPOCHS_JSONL).write_bytes(b"")
        (d / EVENTS_JSONL).write_bytes(b"")
    elif make == "not_a_night":
        d = tmp_path / "photos"
        d.mkdir()
        (d / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    else:
        d = tmp_path / "nope"
    before = sorted(tmp_path.rglob("*"))
    # the command a user types, in its own process: no traceback, exit 2
    p = subprocess.run([sys.executable, "-m", "appliance.cli", "report", str(d), "--config", os.devnull],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr
    assert str(d.name) in p.stderr
    assert sorted(tmp_path.rglob("*")) == before


def test_the_latest_night_skips_a_night_without_a_recording(daemon_night, tmp_path):
    import shutil

    root = tmp_path / "nights"
    good = root / daemon_night.name
    shutil.copytree(daemon_night, good)
    empty = root / "20991231T220000Z"  # a later failed start left an empty folder (old daemons did)
    empty.mkdir()
    cfg = tmp_path / "box.toml"
    cfg.write_text(f'[box]\nstate_dir = "{tmp_path}"\n[recording]\ndir = "{root}"\n')
    rc, out, err = _run(["report", "--config", str(cfg)])
    assert rc == 0, err
    assert f"skipping {empty.name}" in err and "no recording" in err
    assert "box demo-box" in out
    # the folder of nights given as a path works the same way
    rc, out, err = _run(["report", str(root), "--config", os.devnull])
    assert rc == 0 and "box demo-box" in out, err


def test_a_failed_start_leaves_no_empty_night_folder(tmp_path):
    bad_model = tmp_path / "stager.tflite"
    bad_model.write_bytes(b"not a model")
    hyp, _ = short_night_with_loop()
    cfg = box_config(tmp_path, port=None, staging={"model_path": str(bad_model)})
    hw = open_hardware(cfg, simulate=True, source=SimulationSource(hypnogram=hyp, seed=3), speed=float("inf"))
    with pytest.raises(Exception):
        Daemon(cfg, hardware=hw).run()  # the stage model does not load: the start fails
    assert list_nights(cfg.recording_dir) == []
    assert not cfg.recording_dir.exists() or not any(cfg.recording_dir.iterdir())


def test_the_daemon_edf_names_its_electrodes_and_says_its_utc_offset(daemon_night):
    import edfio

    from appliance.config import DEFAULT_MONTAGE

    edf = edfio.read_edf(daemon_night / "night.edf")
    labels = [s.label for s in edf.signals]
    assert labels[0] == "EEG Fpz-Cz" and labels == [f"EEG {m}" for m in DEFAULT_MONTAGE[:len(labels)]]
    assert any(a.onset == 0 and a.text.startswith("Local time UTC") for a in edf.annotations)


def test_the_clinics_report_command_returns_the_daemons_report(daemon_night, tmp_path):
    """The MQTT ``report`` command a clinic sends: the saved report as written, past a failed start's folder."""
    import shutil

    cfg = box_config(tmp_path, port=None, box_id="other-box")
    shutil.copytree(daemon_night, cfg.recording_dir / daemon_night.name)
    (cfg.recording_dir / "20991231T220000Z").mkdir()  # an empty folder an older version left
    hyp, _ = short_night_with_loop()
    hw = open_hardware(cfg, simulate=True, source=SimulationSource(hypnogram=hyp, seed=3), speed=float("inf"))
    daemon = Daemon(cfg, hardware=hw)
    daemon.night_dir = cfg.recording_dir / "21000101T000000Z"  # the night being recorded (not reported)
    rep = daemon.commands.report({})
    assert rep == json.loads((daemon_night / REPORT_JSON).read_text())
    with pytest.raises(ValueError, match="no recording"):
        daemon.commands.report({"night": "2099-12-31"})


@pytest.mark.parametrize("damage", [b"\x00\xff binary", b'{"schema": 1, "hypnogram": "W"}', b"[1, 2]"])
def test_a_damaged_report_json_is_not_overwritten(daemon_night, tmp_path, damage):
    import shutil

    d = tmp_path / daemon_night.name
    shutil.copytree(daemon_night, d)
    (d / REPORT_JSON).write_bytes(damage)
    rc, out, err = _run(["report", str(d), "--config", os.devnull])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and REPORT_JSON in err, err
    assert (d / REPORT_JSON).read_bytes() == damage
