"""The hash-chained audit log: it verifies when intact and reports tampering and truncation."""
from __future__ import annotations

import json

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.audit import AuditError, AuditLog, anchors_from_reports, head_path, main_verify, verify


def write_log(path, n=5):
    with AuditLog(path, fsync=False, clock=lambda: 1.0) as log:
        for i in range(n):
            log.append("light_level", session=1, level=0.01 * i)
    return path


def test_intact_log_verifies(tmp_path):
    p = write_log(tmp_path / "audit.jsonl")
    rep = verify(p)
    assert rep.ok and rep.records == 5 and rep.head_checked, str(rep)
    assert main_verify([str(p)]) == 0


def test_reopening_continues_the_chain(tmp_path):
    p = write_log(tmp_path / "audit.jsonl", 3)
    with AuditLog(p, fsync=False) as log:
        rec = log.append("fault", reason="test")
    assert rec["seq"] == 3
    assert verify(p).ok and verify(p).records == 4


def _lines(p):
    return p.read_text().splitlines(keepends=True)


def test_edited_record_is_reported(tmp_path):
    p = write_log(tmp_path / "audit.jsonl")
    lines = _lines(p)
    rec = json.loads(lines[2])
    rec["data"]["level"] = 0.9
    lines[2] = json.dumps(rec) + "\n"
    p.write_text("".join(lines))
    rep = verify(p)
    assert not rep.ok and rep.records == 2 and "line 3" in rep.problems[0] and "edited" in rep.problems[0]
    assert main_verify([str(p)]) == 1


def test_deleted_record_breaks_the_chain(tmp_path):
    p = write_log(tmp_path / "audit.jsonl")
    lines = _lines(p)
    del lines[1]
    p.write_text("".join(lines))
    rep = verify(p)
    assert not rep.ok and "chain broken" in rep.problems[0]


def test_rehashed_edit_still_breaks_the_chain(tmp_path):
    from appliance.audit import record_hash

    p = write_log(tmp_path / "audit.jsonl")
    lines = _lines(p)
    rec = json.loads(lines[1])
    rec["event"] = "nothing_happened"
    rec["hash"] = record_hash(rec)
    lines[1] = json.dumps(rec) + "\n"
    p.write_text("".join(lines))
    rep = verify(p)
    assert not rep.ok and "line 3" in rep.problems[0]


def test_truncation_at_the_end_is_reported(tmp_path):
    p = write_log(tmp_path / "audit.jsonl")
    p.write_text("".join(_lines(p)[:3]))
    rep = verify(p)
    assert not rep.ok and "truncated" in rep.problems[0]


def test_cut_mid_record_is_reported_and_not_appended_to(tmp_path):
    p = write_log(tmp_path / "audit.jsonl")
    raw = p.read_bytes()
    p.write_bytes(raw[:-20])
    rep = verify(p)
    assert not rep.ok and "incomplete last line" in " ".join(rep.problems)
    with pytest.raises(AuditError, match="incomplete"):
        AuditLog(p, fsync=False)


def test_a_missing_head_fails(tmp_path):
    """Deleting the head is how one would hide a truncation: verify fails (it used to pass with a warning)."""
    p = write_log(tmp_path / "audit.jsonl")
    head_path(p).unlink()
    rep = verify(p)
    assert not rep.ok and not rep.head_checked and "missing" in str(rep)


def test_truncation_plus_deleted_head_fails(tmp_path):
    p = write_log(tmp_path / "audit.jsonl")
    p.write_text("".join(_lines(p)[:2]))
    head_path(p).unlink()
    assert not verify(p).ok


def _rewrite_head_to_match(p):
    """What a careful tamperer does after cutting records off: make the head agree with the new end."""
    lines = _lines(p)
    last = json.loads(lines[-1]) if lines else None
    head_path(p).write_text(json.dumps({"seq": last["seq"], "hash": last["hash"]} if last
                                       else {"seq": -1, "hash": "0" * 64}))


def _report_with_head(folder, head):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({"schema": 1, "audit_head": head}))


def test_truncation_plus_rewritten_head_fails_against_the_night_report(tmp_path):
    """A truncated log with a head rewritten to match passes every local check; the night report's copy
    of the head (report.json, also sent over MQTT) catches it. It passed before the fix."""
    state = tmp_path / "state"
    p = write_log(state / "audit.log", 6)
    with AuditLog(p, fsync=False) as log:
        _report_with_head(state / "nights" / "2026-11-22", log.head())
    p.write_text("".join(_lines(p)[:3]))
    _rewrite_head_to_match(p)
    assert verify(p).ok  # locally consistent: no local check can tell...
    assert main_verify([str(state)]) == 1  # ...the report's anchor can
    rep = verify(p, anchors=anchors_from_reports(state / "nights"))
    assert not rep.ok and "truncated" in rep.problems[0] and "report.json" in rep.problems[0]
    # The clinic's copy of the head hash (from MQTT) does it too, wherever the reports went.
    head = json.loads((state / "nights" / "2026-11-22" / "report.json").read_text())["audit_head"]
    (state / "nights" / "2026-11-22" / "report.json").unlink()
    assert main_verify([str(state)]) == 0
    assert main_verify([str(p), "--expect-hash", head["hash"]]) == 1


def test_reopening_after_truncation_refuses_and_keeps_the_head(tmp_path):
    """A restart after truncation must not silently write a new head over the evidence (it did)."""
    p = write_log(tmp_path / "audit.jsonl")
    head_before = head_path(p).read_bytes()
    p.write_text("".join(_lines(p)[:3]))
    with pytest.raises(AuditError, match="truncated"):
        AuditLog(p, fsync=False)
    assert head_path(p).read_bytes() == head_before
    assert not verify(p).ok


def test_reopening_without_a_head_or_with_a_rewritten_one_refuses(tmp_path):
    p = write_log(tmp_path / "a.jsonl")
    head_path(p).unlink()
    with pytest.raises(AuditError, match="missing"):
        AuditLog(p, fsync=False)
    q = write_log(tmp_path / "b.jsonl")
    head_path(q).write_text(json.dumps({"seq": 4, "hash": "f" * 64}))
    with pytest.raises(AuditError, match="rewritten"):
        AuditLog(q, fsync=False)
    r = write_log(tmp_path / "c.jsonl")
    head_path(r).write_text(json.dumps({"seq": 1, "hash": "f" * 64}))  # far behind the log
    with pytest.raises(AuditError):
        AuditLog(r, fsync=False)


def test_a_head_one_record_behind_is_a_crash_not_tampering(tmp_path):
    """A power cut between the record's write and the head's: the log goes on."""
    p = write_log(tmp_path / "audit.jsonl")
    lines = _lines(p)
    prev = json.loads(lines[-2])
    head_path(p).write_text(json.dumps({"seq": prev["seq"], "hash": prev["hash"]}))
    with AuditLog(p, fsync=False) as log:
        assert log.append("fault", reason="after a power cut")["seq"] == 5
    assert verify(p).ok


def test_an_empty_log_has_a_head_and_one_whose_head_says_records_exist_fails(tmp_path):
    p = tmp_path / "audit.log"
    AuditLog(p, fsync=False).close()
    assert p.read_text() == "" and json.loads(head_path(p).read_text())["seq"] == -1
    assert verify(p).ok and verify(p).records == 0
    q = write_log(tmp_path / "q.log", 3)
    q.write_text("")
    rep = verify(q)
    assert not rep.ok and "truncated" in rep.problems[0]
    with pytest.raises(AuditError, match="truncated"):
        AuditLog(q, fsync=False)
    q.unlink()  # the log deleted, its head left behind
    with pytest.raises(AuditError, match="truncated"):
        AuditLog(q, fsync=False)


def test_anchors_of_a_log_set_aside_are_checked_against_that_log(tmp_path):
    """The daemon starts a new log when it finds one broken; older reports' anchors then refer to the
    log set aside (matched by its first record), not to the new one."""
    state = tmp_path / "state"
    old = write_log(state / "audit.log", 4)
    with AuditLog(old, fsync=False) as log:
        _report_with_head(state / "nights" / "n1", log.head())
    old.replace(state / "audit.broken-1.log")
    head_path(old).replace(head_path(state / "audit.broken-1.log"))
    write_log(state / "audit.log", 2)
    assert main_verify([str(state)]) == 0
    # ...and a report whose log is nowhere fails.
    _report_with_head(state / "nights" / "n2", {"seq": 1, "hash": "a" * 64, "records": 2, "first": "b" * 64})
    assert main_verify([str(state)]) == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 12), data=st.data())
def test_any_truncation_below_a_reported_head_fails_whatever_the_head_says(tmp_path_factory, n, data):
    folder = tmp_path_factory.mktemp("audit")
    p = write_log(folder / "audit.log", n)
    m = data.draw(st.integers(0, n - 1), label="records when the report was written") + 1
    lines = _lines(p)
    head_at_m = {"seq": m - 1, "hash": json.loads(lines[m - 1])["hash"], "records": m,
                 "first": json.loads(lines[0])["hash"]}
    _report_with_head(folder / "nights" / "n", head_at_m)
    k = data.draw(st.integers(0, n - 1), label="records left after the cut")
    p.write_text("".join(lines[:k]))
    action = data.draw(st.sampled_from(["keep", "delete", "match", "garbage"]), label="head")
    if action == "delete":
        head_path(p).unlink()
    elif action == "match":
        _rewrite_head_to_match(p)
    elif action == "garbage":
        head_path(p).write_bytes(data.draw(st.binary(max_size=200), label="head bytes"))
    rep = verify(p, anchors=anchors_from_reports(folder / "nights"))
    if k < m or action != "match":
        assert not rep.ok, (n, m, k, action, str(rep))
    else:  # records after the last report, cut with a consistent head: no copy anywhere to tell (documented)
        assert rep.ok


def test_cli_verify_on_a_folder_finds_the_log_or_says_in_one_line_what_is_wrong(tmp_path, capsys):
    state = tmp_path / "state"
    write_log(state / "audit.log", 3)
    assert main_verify([str(state)]) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv in ([str(empty)], [str(tmp_path / "nope")], [str(state), "--expect-hash", "xyz"],
                 [str(state), "--reports", str(tmp_path / "nope")]):
        capsys.readouterr()
        assert main_verify(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_missing_or_garbage_file(tmp_path):
    assert not verify(tmp_path / "nope.jsonl").ok
    g = tmp_path / "g.jsonl"
    g.write_text("hello\n")
    rep = verify(g)
    assert not rep.ok and "not a JSON record" in rep.problems[0]


def test_numpy_values_are_logged(tmp_path):
    import numpy as np

    with AuditLog(tmp_path / "a.jsonl", fsync=False) as log:
        log.append("loop_detected", p_loop=np.float32(0.8), flags=frozenset({"b", "a"}))
    assert verify(tmp_path / "a.jsonl").ok
