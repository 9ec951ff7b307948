"""Hypnogram readers: the three formats in ../shared, and their mapping to AASM stages."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from appliance.hypnogram import dreams_to_epochs, read_hypnogram, read_sleep_edf_txt, read_yasa_txt, real_hypnograms
from appliance.protocol.stages import Stage


def test_sleep_edf_letters_merge_rk_3_and_4(tmp_path):
    p = tmp_path / "h.txt"
    p.write_bytes(b"W\r1\r2\r3\r4\rR\r?\r")
    assert read_sleep_edf_txt(p).tolist() == [0, 1, 2, 3, 3, 4, -1]


def test_yasa_numbers_are_not_rk_numbers(tmp_path):
    p = tmp_path / "h.txt"
    p.write_text("# 0: Wake, 1: N1, 2: N2, 3: N3, 4: REM\n0\n3\n4\n")
    assert read_yasa_txt(p).tolist() == [Stage.W, Stage.N3, Stage.REM]
    assert read_hypnogram(p).tolist() == [Stage.W, Stage.N3, Stage.REM]


@settings(max_examples=50, deadline=None)
@given(stages=st.lists(st.sampled_from([-1, 0, 1, 2, 3, 4]), min_size=1, max_size=60),
       sep=st.sampled_from(["\n", "\r\n", "\r"]))
def test_a_headerless_file_of_numbers_is_yasa_numbering_where_4_is_rem(tmp_path_factory, stages, sep):
    # A night typed as 0-4 without a '#' header was read as R&K (4 = deep sleep): its REM, and so any nightmare
    # loop in it, vanished without a word. Numbers only cannot be a Sleep-EDF export (those have W and R).
    p = tmp_path_factory.mktemp("h") / "night.txt"
    p.write_text(sep.join(str(x) for x in stages) + sep, newline="")
    assert read_hypnogram(p).tolist() == stages


def test_unknown_label_is_a_clear_error(tmp_path):
    p = tmp_path / "h.txt"
    p.write_text("W\nX\n")
    with pytest.raises(ValueError, match="line 2"):
        read_sleep_edf_txt(p)


def test_dreams_majority_and_unanimous():
    # 6 codes per 30-s epoch: first epoch all S2, second mixes W (5) and REM (4) 4:2, third has movement.
    codes = np.array([2] * 6 + [5, 5, 5, 5, 4, 4] + [-1] * 6, dtype=np.int8)
    majority, unanimous = dreams_to_epochs(codes)
    assert majority.tolist() == [Stage.N2, Stage.W, Stage.UNSCORED]
    assert unanimous.tolist() == [True, False, False]


def test_real_hypnograms_load(shared):
    nights = real_hypnograms()
    assert len(nights) == 41
    for name, h in nights.items():
        assert h.dtype == np.int8 and len(h) > 90, name
        assert set(np.unique(h)) <= {-1, 0, 1, 2, 3, 4}
