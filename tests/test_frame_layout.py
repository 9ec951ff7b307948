"""The ADS1299 frame layout is defined once (appliance/ads1299_frame.py) and the C decoder agrees with it."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from hypothesis import given, strategies as st

from appliance import ads1299_frame as layout
from appliance._native import lib

RING_C = Path(__file__).resolve().parent.parent / "native" / "ring.c"


def _c_defines() -> dict[str, int]:
    """``#define NAME value`` lines of native/ring.c whose value is an integer literal (hex or decimal, signed)."""
    out = {}
    for m in re.finditer(r"^#define\s+(BT_\w+)\s+\(?(-?)(0x[0-9A-Fa-f]+|\d+)u?\)?", RING_C.read_text(), re.M):
        out[m.group(1)] = int(m.group(2) + m.group(3), 0)
    return out


def test_c_constants_equal_the_python_ones() -> None:
    d = _c_defines()
    assert d["BT_SYNC_MASK"] == layout.STATUS_SYNC_MASK
    assert d["BT_SYNC_BITS"] == layout.STATUS_SYNC
    assert d["BT_CODE_MAX"] == layout.FULL_SCALE_CODE
    assert d["BT_CODE_MIN"] == layout.MIN_CODE


def test_c_frame_size_equals_the_python_one() -> None:
    for n in range(1, 65):
        assert lib.bt_frame_bytes(n) == layout.frame_bytes(n)
    assert layout.frame_bytes(8) == 27


def test_uv_per_count_one_function_scalar_and_per_channel() -> None:
    assert layout.uv_per_count(24) == 4.5 / 24 / (2**23 - 1) * 1e6
    gains = np.array([1, 2, 4, 6, 8, 12, 24])
    np.testing.assert_array_equal(layout.uv_per_count(gains), [layout.uv_per_count(int(g)) for g in gains])


@given(st.binary(min_size=3, max_size=3))
def test_status_helpers_match_the_byte_arithmetic_they_replace(raw: bytes) -> None:
    # acquisition.py used to compute these straight from the three status bytes
    status = int.from_bytes(raw, "big")
    assert layout.lead_off_bits(status) == ((raw[0] & 0x0F) << 12) | (raw[1] << 4) | (raw[2] >> 4)
    assert bool(status & layout.LOFF_BITS_MASK) == bool(raw[0] & 0x0F or raw[1] or raw[2] & 0xF0)
    assert layout.is_synced(status) == (raw[0] & 0xF0 == 0xC0)
    assert (layout.loff_statp(status), layout.loff_statn(status), layout.gpio_bits(status)) == (
        (status >> 12) & 0xFF, (status >> 4) & 0xFF, status & 0xF)
    frames = np.frombuffer(raw + bytes(3), np.uint8).reshape(1, 6)
    assert int(layout.status_words(frames)[0]) == status
