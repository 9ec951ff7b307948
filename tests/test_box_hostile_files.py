"""Files a person (or a damaged disk) hands the box: hostile ones get one line and exit status 2, never a hang, a
traceback or a box that will not start.

Generated hostile files: a FIFO nobody writes to (a plain ``open`` waits for ever), a link to ``/dev/zero`` (reading
it "whole" never ends), a folder, a dangling or looping link, a sparse file far larger than anything real, binary
bytes, JSON or TOML nested thousands deep (Python's parsers raise ``RecursionError``, which ``except ValueError``
does not catch), empty files. They go where the box reads files: ``--config`` (every command reads it),
``--hypnogram``, a night's ``report.json`` / ``epochs.jsonl`` / ``events.jsonl`` for ``bedtime report``, an audit
log for ``bedtime audit verify``, and the night reports the daemon checks its audit log against at every start.

The commands run in this process (``appliance.cli.main``), each under a bound: before the fixes of 2026-12-03 a
FIFO or ``/dev/zero`` as ``--config`` or ``--hypnogram`` hung, a nested TOML config, report or audit line was a
traceback, and one nested ``report.json`` in the recording folder stopped the daemon at every start.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from appliance.cli import main
from appliance.protocol.cliparse import MAX_LINE_CHARS, one_line
from tests.hostile_files import hostile_spec, make_hostile_at

HOSTILE_KINDS = ("fifo", "dev_zero", "folder", "dangling", "link_loop", "oversize", "binary", "nested_json",
                 "nested_toml", "nested_inline_table", "huge_number_json", "huge_number_toml")
BIG_SPARSE_BYTES = 64 * 1024 * 1024  # over every cap (config 1 MiB, hypnogram 4 MiB, JSON lines 32 MiB)


def hostile_files(kinds: tuple[str, ...] = HOSTILE_KINDS) -> st.SearchStrategy:
    """(kind, writer): ``writer(path)`` puts that kind of hostile file (:mod:`tests.hostile_files`) at ``path``."""
    return hostile_spec(kinds).map(lambda spec: (spec[0], lambda path: make_hostile_at(path, spec,
                                                                                       cap=BIG_SPARSE_BYTES - 1)))


def run_bedtime(argv: list[str]) -> tuple[int, str]:
    """``bedtime ARGV`` in this process: (exit status, what it wrote to stderr)."""
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 2
    return rc, err.getvalue()


def assert_one_line_refusal(rc: int, stderr: str, *, about: str) -> None:
    assert rc == 2, f"exit status {rc}, stderr: {stderr[-2000:]!r}"
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"not one line: {stderr[-2000:]!r}"
    assert "Traceback" not in stderr
    assert about in lines[0], lines[0]
    assert len(lines[0]) < 1000


HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.timeout(300)
@HYPOTHESIS
@given(hostile=hostile_files())
def test_a_hostile_config_file_is_one_line_and_exit_2_for_every_command(hostile) -> None:
    kind, write = hostile
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bedtime.toml"
        write(cfg)
        for argv in (["config", "check", str(cfg)], ["run", "--config", str(cfg), "--simulate", "--hours", "0.01"],
                     ["report", "--config", str(cfg)], ["outputs-off", "--config", str(cfg)],
                     ["selftest", "--config", str(cfg), "--simulate", "--no-broker"]):
            rc, err = run_bedtime(argv)
            assert_one_line_refusal(rc, err, about=str(cfg))


@pytest.mark.timeout(300)
@HYPOTHESIS
@given(hostile=hostile_files())
def test_a_hostile_hypnogram_file_is_one_line_and_exit_2(hostile) -> None:
    kind, write = hostile
    with tempfile.TemporaryDirectory() as tmp:
        hyp = Path(tmp) / "night.txt"
        write(hyp)
        rc, err = run_bedtime(["run", "--simulate", "--hours", "0.01", "--hypnogram", str(hyp),
                               "--config", str(_quiet_config(Path(tmp)))])
        assert_one_line_refusal(rc, err, about="--hypnogram")


def _quiet_config(folder: Path) -> Path:
    """A box config with its state under ``folder`` and no broker."""
    p = folder / "box.toml"
    p.write_text(f'[box]\nid = "hostile-files"\nstate_dir = "{folder / "state"}"\n[mqtt]\nenabled = false\n')
    return p


@pytest.fixture(scope="module")
def recorded_box(tmp_path_factory) -> Path:
    """A box's state folder after one short simulated night (its nights/, audit.log and head)."""
    root = tmp_path_factory.mktemp("box")
    cfg = _quiet_config(root)
    rc, err = run_bedtime(["run", "--config", str(cfg), "--simulate", "--speed", "inf", "--hours", "0.1"])
    assert rc == 0, err
    return root


def _copy_box(recorded: Path, to: Path) -> tuple[Path, Path]:
    """A fresh copy of the recorded box under ``to``: (its config, its one night's folder)."""
    shutil.copytree(recorded, to, symlinks=True, dirs_exist_ok=True)
    cfg = _quiet_config(to)
    (night,) = sorted((to / "state" / "nights").iterdir())
    return cfg, night


@pytest.mark.timeout(600)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hostile=hostile_files(), which=st.sampled_from(["report.json", "epochs.jsonl", "events.jsonl"]),
       saved=st.booleans())
def test_bedtime_report_on_a_night_with_a_hostile_file_answers_in_one_line(recorded_box, hostile, which,
                                                                           saved) -> None:
    # A file the report cannot use is a damaged night: one line, 2. Only a saved report.json that stands
    # (``saved``) may make the report not read a hostile epochs.jsonl or events.jsonl at all (0). Never a hang, a
    # traceback, or a rebuilt report written over whatever sits at report.json.
    kind, write = hostile
    with tempfile.TemporaryDirectory() as tmp:
        cfg, night = _copy_box(recorded_box, Path(tmp))
        if not saved or which == "report.json":
            (night / "report.json").unlink()
        if which != "report.json":
            (night / which).unlink()
        write(night / which)
        rc, err = run_bedtime(["report", "--config", str(cfg), str(night)])
        assert "Traceback" not in err
        if saved and which != "report.json" and rc == 0:
            return
        assert_one_line_refusal(rc, err, about=which)


_NO_FLOAT = [10**400, -(10**400), 10**4000]  # JSON integers no float holds
_ROW_VALUES = st.one_of(
    st.sampled_from(_NO_FLOAT), st.sampled_from(_NO_FLOAT).map(lambda v: [v] * 5),
    st.sampled_from([2**64, -1, 1e308, -1e308, True, None, "", "x" * 10000, [], {}, [1e308] * 5, [None] * 5,
                     [[]] * 5, {"a": [{}]}]),
    st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
    st.lists(st.integers() | st.floats(allow_nan=False, allow_infinity=False), max_size=6))


@pytest.mark.timeout(600)
@pytest.mark.filterwarnings("ignore:Glyph:UserWarning")  # a saved box name of control characters, drawn as boxes
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(which="epochs.jsonl", line=3, field="probs", value=[10**400] * 5)  # both were a TypeError traceback
@example(which="events.jsonl", line=1, field="time_s", value=10**400)
@given(which=st.sampled_from(["epochs.jsonl", "events.jsonl", "report.json"]), line=st.integers(0, 3),
       field=st.sampled_from(["index", "end_time_s", "stage", "probs", "p_loop", "ok", "flags", "time_s", "kind",
                              "night_start", "hypnogram", "statistics", "interventions", "signal_quality",
                              "box_id", "box_name", "epoch_s", "new"]),
       value=_ROW_VALUES)
def test_bedtime_report_on_a_night_whose_rows_hold_hostile_values_answers_in_one_line(recorded_box, which, line,
                                                                                      field, value) -> None:
    # A whole line with a wrong value (an integer no float holds: numpy's isfinite raised a TypeError) is a damaged
    # night: a report (0) or one line (2), never a traceback.
    with tempfile.TemporaryDirectory() as tmp:
        cfg, night = _copy_box(recorded_box, Path(tmp))
        path = night / which
        if which == "report.json":
            doc = json.loads(path.read_text())
            doc[field] = value
            path.write_text(json.dumps(doc))
            (night / "hypnogram.png").unlink(missing_ok=True)  # drawn again from the saved report
        else:
            (night / "report.json").unlink()  # rebuilt from the sidecars, which are then read
            rows = path.read_text().splitlines()
            row = json.loads(rows[line % len(rows)])
            row[field] = value
            rows[line % len(rows)] = json.dumps(row)
            path.write_text("\n".join(rows) + "\n")
        rc, err = run_bedtime(["report", "--config", str(cfg), str(night)])
        assert "Traceback" not in err, err[-3000:]
        if rc != 0:
            assert_one_line_refusal(rc, err, about=which)
        elif which != "report.json":  # a report rebuilt from the rows is one the next ``bedtime report`` reads
            (night / "hypnogram.png").unlink()
            rc, err = run_bedtime(["report", "--config", str(cfg), str(night)])
            assert rc == 0, err[-3000:]


# what a night with a loop, a breather, an alert and a fault adds to the events the short simulated night has
_EVENTFUL = [{"time_s": 120.0, "kind": "loop_detected", "p_loop": 0.9},
             {"time_s": 150.0, "kind": "breather_started"}, {"time_s": 200.0, "kind": "breather_light"},
             {"time_s": 260.0, "kind": "breather_ended", "outcome": "completed", "max_light": 0.2},
             {"time_s": 300.0, "kind": "alert", "reason": "loop_persists_after_breather"},
             {"time_s": 310.0, "kind": "fault", "reason": "lead_off"}]


@pytest.fixture(scope="module")
def eventful_box(recorded_box, tmp_path_factory) -> Path:
    """The recorded box, its night's events grown by :data:`_EVENTFUL` and its report rebuilt from them."""
    root = tmp_path_factory.mktemp("eventful")
    cfg, night = _copy_box(recorded_box, root)
    with (night / "events.jsonl").open("a") as f:
        f.writelines(json.dumps(e) + "\n" for e in _EVENTFUL)
    (night / "report.json").unlink()
    (night / "hypnogram.png").unlink()
    rc, err = run_bedtime(["report", "--config", str(cfg), str(night)])
    assert rc == 0, err
    iv = json.loads((night / "report.json").read_text())["interventions"]
    assert iv["breather_sessions"] and iv["alerts"] and iv["faults"] and iv["loops_detected"]
    return root


def _paths(doc: object, at: tuple = ()) -> list[tuple]:
    """Every path (keys and indexes) into a JSON document, the document itself included."""
    out = [at]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*at, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:3]):  # a hypnogram's first epochs stand for all of them
            out += _paths(v, (*at, i))
    return out


def _set_at(doc: dict, path: tuple, value: object) -> None:
    """Put ``value`` at ``path`` in ``doc``; the Ellipsis deletes what is there."""
    *parents, last = path
    for k in parents:
        doc = doc[k]
    if value is ...:
        del doc[last]
    else:
        doc[last] = value


@pytest.mark.timeout(600)
@pytest.mark.filterwarnings("ignore:Glyph:UserWarning")  # a saved box name of control characters, drawn as boxes
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(path=("interventions", "loop_times_s", 0), value=1e308)  # the clock axis overflowed: a traceback
@example(path=("statistics", "awakenings"), value=...)  # format_report's KeyError
@example(path=("interventions", "breather_sessions", 0, "start_s"), value="x")
@example(path=("interventions", "faults", 0, "time_s"), value=...)  # found by a run at 6x the examples
@example(path=("interventions", "loop_times_s"), value=...)  # found at 10x
@given(path=st.integers(0, 10**6), value=_ROW_VALUES | st.just(...))
def test_a_saved_report_with_any_field_made_hostile_is_shown_or_refused_in_one_line(eventful_box, path, value):
    # Any one field of a saved report.json, at any depth, given a wrong value or taken away: ``bedtime report``
    # shows the night (0) or refuses in one line naming the file (2); the report is never rewritten. Before,
    # only the top-level fields' types were checked and a wrong one inside was a traceback.
    with tempfile.TemporaryDirectory() as tmp:
        cfg, night = _copy_box(eventful_box, Path(tmp))
        doc = json.loads((night / "report.json").read_text())
        paths = [p for p in _paths(doc) if p]
        where = path if isinstance(path, tuple) else paths[path % len(paths)]
        _set_at(doc, where, value)
        saved = json.dumps(doc)
        (night / "report.json").write_text(saved)
        (night / "hypnogram.png").unlink()  # drawn again from the saved report
        rc, err = run_bedtime(["report", "--config", str(cfg), str(night)])
        assert "Traceback" not in err, (where, err[-3000:])
        if rc != 0:
            assert_one_line_refusal(rc, err, about="report.json")
        assert (night / "report.json").read_text() == saved, "the saved report was rewritten"


@pytest.mark.timeout(300)
@HYPOTHESIS
@given(hostile=hostile_files())
def test_audit_verify_of_a_hostile_log_is_a_verdict_or_one_line(hostile) -> None:
    kind, write = hostile
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "audit.log"
        write(log)
        rc, err = run_bedtime(["audit", "verify", str(log)])
        assert "Traceback" not in err
        if rc == 2:
            assert_one_line_refusal(rc, err, about=str(log))
        else:
            assert rc == 1, err  # a file it could read, which does not verify


@pytest.mark.timeout(600)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hostile=hostile_files(kinds=("nested_json", "binary", "oversize", "fifo", "dev_zero", "folder")))
def test_a_hostile_night_report_does_not_stop_the_box_from_starting(recorded_box, hostile) -> None:
    # At every start the daemon checks its audit log against the heads the last night reports promised. One
    # nested report.json in the recording folder made that a RecursionError, and the box failed every start.
    kind, write = hostile
    with tempfile.TemporaryDirectory() as tmp:
        cfg, night = _copy_box(recorded_box, Path(tmp))
        (night / "report.json").unlink()
        write(night / "report.json")
        rc, err = run_bedtime(["run", "--config", str(cfg), "--simulate", "--speed", "inf", "--hours", "0.02"])
        assert rc == 0, err[-3000:]
        rc, err = run_bedtime(["audit", "verify", str(Path(tmp) / "state")])
        assert rc == 0 and "Traceback" not in err, err


def test_an_audit_log_whose_last_line_is_nested_too_deeply_is_set_aside_not_a_crash(tmp_path: Path) -> None:
    from appliance.audit import AuditError, AuditLog

    log = tmp_path / "audit.log"
    log.write_text("[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(AuditError, match="does not verify"):
        AuditLog(log)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=5000) | st.binary(max_size=3000).map(lambda b: b.decode("latin-1")))
def test_one_line_is_one_bounded_line(text: str) -> None:
    line = one_line(text)
    assert "\n" not in line and "\r" not in line
    assert len(line) <= MAX_LINE_CHARS + len("... (99999 more characters)")
    if len(" ".join(text.split())) <= MAX_LINE_CHARS // 4:
        assert "more characters" not in line or "more characters" in text


def test_dev_null_reads_as_an_empty_file_and_dev_zero_is_refused() -> None:
    from appliance.protocol.userfiles import UserFileError, read_small_regular_file

    assert read_small_regular_file(os.devnull, max_bytes=10) == b""  # ``--config /dev/null``: the defaults
    with pytest.raises(UserFileError, match="not a regular file"):
        read_small_regular_file("/dev/zero", max_bytes=10)
