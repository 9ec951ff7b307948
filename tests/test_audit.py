"""The hash-chained audit log: it verifies when intact and reports tampering and truncation."""
from __future__ import annotations

import json

import pytest

from appliance.audit import AuditError, AuditLog, head_path, main_verify, verify


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


def test_without_head_file_a_warning_is_given(tmp_path):
    p = write_log(tmp_path / "audit.jsonl")
    head_path(p).unlink()
    rep = verify(p)
    assert rep.ok and not rep.head_checked and "truncation" in str(rep)


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
