"""The ADS1299 frame layout is defined once (appliance/ads1299_frame.py) and the C decoder agrees with it."""
from __future__ import annotations

import numpy as np
from hypothesis import given, strategies as st

from appliance import ads1299_frame as layout
from appliance._native import lib


def test_c_constants_equal_the_python_ones() -> None:
    # read from the compiled library (native/ring.h's enum, through cffi), not from the C source text
    assert (lib.BT_STATUS_BYTES, lib.BT_BYTES_PER_CHANNEL) == (layout.STATUS_BYTES, layout.BYTES_PER_CHANNEL)
    assert lib.BT_SYNC_MASK == layout.STATUS_SYNC_MASK
    assert lib.BT_SYNC_BITS == layout.STATUS_SYNC
    assert lib.BT_CODE_MAX == layout.FULL_SCALE_CODE
    assert lib.BT_CODE_MIN == layout.MIN_CODE


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
