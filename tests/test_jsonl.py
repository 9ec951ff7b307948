"""appliance.jsonl: rows written are rows read; a crash's torn last line is skipped, other damage named."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.jsonl import JsonlError, JsonlWriter, append_row, read_rows

_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                       max_leaves=10)
_rows = st.lists(st.dictionaries(st.text(max_size=8), _values, max_size=5), max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_rows)
def test_rows_written_are_rows_read(tmp_path, rows):
    p = tmp_path / "x.jsonl"
    p.unlink(missing_ok=True)
    w = JsonlWriter(p)
    for r in rows:
        w.write(r)
    w.close()
    assert w.closed
    assert read_rows(p) == rows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_rows.filter(bool), cut=st.integers(min_value=1), nuls=st.integers(min_value=0, max_value=64))
def test_a_torn_last_line_is_skipped(tmp_path, rows, cut, nuls):
    """A power cut leaves any prefix of the last line, perhaps followed by NUL padding: the rows before it stay."""
    p = tmp_path / "x.jsonl"
    lines = [json.dumps(r) for r in rows]
    last = lines[-1][: 1 + cut % len(lines[-1])]
    p.write_bytes(("".join(x + "\n" for x in lines[:-1]) + last).encode() + b"\x00" * nuls)
    got = read_rows(p)
    assert got == rows[:-1] or (got == rows and last == lines[-1])


@pytest.mark.parametrize("content, line, what", [
    (b'{"a": 1}\n{"a": \n{"a": 2}\n', 2, "not valid JSON"),
    (b'{"a": 1}\n\xff\xfe\n{"a": 2}\n', 2, "not UTF-8 text"),
    (b'{"a": 1}\n[1, 2]\n', 2, "must be a JSON object"),
    (b'{"a": 1}\n{"a": "x"}\n', 2, "'a' must be a number"),
])
def test_damage_is_one_line_naming_file_and_line(tmp_path, content, line, what):
    p = tmp_path / "x.jsonl"
    p.write_bytes(content)
    with pytest.raises(JsonlError) as e:
        read_rows(p, lambda r: None if isinstance(r["a"], int) else "'a' must be a number")
    assert str(e.value).startswith(f"{p}: line {line}") and what in str(e.value) and "\n" not in str(e.value)


def test_append_row_returns_its_line_and_keeps_options(tmp_path):
    p = tmp_path / "audit.jsonl"
    line = append_row(p, {"b": 1, "a": p}, sort_keys=True, default=str, fsync=True)
    assert line == json.dumps({"a": str(p), "b": 1})
    append_row(p, {"c": 2})
    assert read_rows(p) == [{"a": str(p), "b": 1}, {"c": 2}]
