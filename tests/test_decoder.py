"""The C frame decoder against a pure-Python reference, on random frames (hypothesis)."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.ads1299_frame import decode_frames, encode_frames
from appliance.ring import FrameRing


def reference_decode(frame: bytes, n_channels: int):
    """Straight from the datasheet (ref 4): 24-bit status, then 24-bit two's complement, MSB first."""
    status = frame[0] << 16 | frame[1] << 8 | frame[2]
    counts = []
    for c in range(n_channels):
        b0, b1, b2 = frame[3 + 3 * c:6 + 3 * c]
        v = b0 << 16 | b1 << 8 | b2
        if v & 0x800000:
            v -= 1 << 24
        counts.append(v)
    valid = (status >> 20) == 0b1100
    return valid, status, counts


def encode(status: int, counts: list[int]) -> bytes:
    return b"".join((v & 0xFFFFFF).to_bytes(3, "big") for v in [status, *counts])


channel_value = st.integers(min_value=-(2**23), max_value=2**23 - 1)
valid_status = st.integers(min_value=0, max_value=0xFFFFF).map(lambda s: 0xC00000 | s)


@st.composite
def frame_lists(draw):
    n_channels = draw(st.sampled_from([1, 4, 6, 8, 16]))
    frames = draw(st.lists(
        st.one_of(
            st.tuples(valid_status, st.lists(channel_value, min_size=n_channels, max_size=n_channels))
            .map(lambda t: encode(*t)),
            st.binary(min_size=3 + 3 * n_channels, max_size=3 + 3 * n_channels),   # anything, often corrupt
        ),
        min_size=1, max_size=40,
    ))
    return n_channels, frames


@settings(max_examples=300, deadline=None)
@given(frame_lists(), st.integers(min_value=0, max_value=2**40), st.integers(min_value=0, max_value=10**7),
       st.booleans())
def test_c_decoder_matches_reference(case, t0_ns, period_ns, one_call):
    n_channels, frames = case
    ring = FrameRing(64, n_channels)
    if one_call:
        stored = ring.push_raw(b"".join(frames), t0_ns, period_ns)
    else:
        stored = sum(ring.push_raw(f, t0_ns + i * period_ns) for i, f in enumerate(frames))
    expected = [(i, *reference_decode(f, n_channels)) for i, f in enumerate(frames)]
    valid = [e for e in expected if e[1]]
    assert stored == len(valid)
    assert ring.counters.corrupt == len(frames) - len(valid)
    out = ring.pop(64)
    assert out.index.tolist() == list(range(len(valid)))
    assert out.timestamp_ns.tolist() == [t0_ns + i * period_ns for i, *_ in valid]
    assert out.status.tolist() == [s for _, _, s, _ in valid]
    assert out.counts.tolist() == [c for *_, c in valid]
    # the numpy decoder (self-tests, bench baseline) agrees as well
    status, counts = decode_frames(b"".join(frames), n_channels)
    assert status.tolist() == [s for _, _, s, _ in expected]
    assert counts.tolist() == [c for *_, c in expected]


@settings(max_examples=100, deadline=None)
@given(st.lists(channel_value, min_size=8, max_size=8))
def test_extremes_and_sign_extension(values):
    ring = FrameRing(2, 8)
    ring.push_raw(encode(0xC00000, values), 0)
    assert ring.pop(1).counts[0].tolist() == values


def test_full_scale_codes():
    ring = FrameRing(2, 2)
    ring.push_raw(bytes([0xC0, 0, 0, 0x7F, 0xFF, 0xFF, 0x80, 0x00, 0x00]), 0)
    assert ring.pop(1).counts[0].tolist() == [2**23 - 1, -(2**23)]
    assert np.int32(-(2**23)) == -8388608


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([1, 4, 8]).flatmap(lambda nch: st.lists(
    st.tuples(valid_status, st.lists(channel_value, min_size=nch, max_size=nch)), min_size=1, max_size=20)))
def test_the_simulators_encoder_is_the_decoders_inverse(rows):
    status = np.array([s for s, _ in rows], np.int64)
    counts = np.array([c for _, c in rows], np.int64)
    frames = encode_frames(status, counts)
    assert frames.tobytes() == b"".join(encode(s, c) for s, c in rows)    # the datasheet's byte order
    st_back, counts_back = decode_frames(frames.tobytes(), counts.shape[1])
    assert st_back.tolist() == status.tolist() and counts_back.tolist() == counts.tolist()
