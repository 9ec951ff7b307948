"""Issue 11 (low): a symlink planted in a shared recording folder is not followed.

Neither the box's own writes (the night's JSON-lines files), nor a report reading them back, nor the list of
nights (which retention measures and deletes from) follow a link to a file or folder outside the night.
"""
from __future__ import annotations

import errno
import os

import pytest

from appliance.jsonl import JsonlError, JsonlWriter, append_row, read_rows
from appliance.nightfolder import list_nights


def test_the_box_does_not_append_through_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    night = tmp_path / "20261202T220000Z"
    night.mkdir()
    (night / "events.jsonl").symlink_to(victim)
    with pytest.raises(OSError) as e:
        JsonlWriter(night / "events.jsonl")
    assert e.value.errno == errno.ELOOP
    with pytest.raises(OSError):
        append_row(night / "events.jsonl", {"kind": "x"})
    assert victim.read_text() == "precious\n"


def test_a_report_does_not_read_through_a_planted_symlink(tmp_path):
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"password": "hunter2"}\n')
    link = tmp_path / "epochs.jsonl"
    link.symlink_to(secret)
    with pytest.raises(JsonlError, match="cannot read"):
        read_rows(link)


def test_a_symlinked_night_is_not_a_night(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "big.bin").write_bytes(b"x" * 10)
    root = tmp_path / "nights"
    root.mkdir()
    real = root / "20261201T220000Z"
    real.mkdir()
    os.symlink(elsewhere, root / "20261202T220000Z")
    assert list_nights(root) == [real]


def test_a_normal_night_file_still_appends_and_reads(tmp_path):
    w = JsonlWriter(tmp_path / "epochs.jsonl")
    w.write({"i": 1})
    w.close()
    append_row(tmp_path / "epochs.jsonl", {"i": 2})
    assert [r["i"] for r in read_rows(tmp_path / "epochs.jsonl")] == [1, 2]
