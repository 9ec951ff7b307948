"""The C ring buffer through its Python wrapper: storage, counters, full/corrupt handling, threads."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from appliance.ads1299_frame import frame_bytes
from appliance.ring import FrameRing, empty_frames


def frame(values, status=0xC00000, n_channels=8) -> bytes:
    vals = list(values) + [0] * (n_channels - len(values))
    out = bytearray((status & 0xFFFFFF).to_bytes(3, "big"))
    for v in vals:
        out += (v & 0xFFFFFF).to_bytes(3, "big")
    return bytes(out)


def test_push_pop_roundtrip_with_timestamps():
    ring = FrameRing(16, 8)
    data = b"".join(frame([i, -i, 2**23 - 1, -(2**23)]) for i in range(5))
    assert ring.push_raw(data, timestamp_ns=1_000, period_ns=4_000_000) == 5
    assert len(ring) == 5
    f = ring.pop(3)
    assert f.index.tolist() == [0, 1, 2]
    assert f.timestamp_ns.tolist() == [1_000, 4_001_000, 8_001_000]
    assert f.counts[:, 0].tolist() == [0, 1, 2]
    assert f.counts[:, 1].tolist() == [0, -1, -2]
    assert f.counts[0, 2] == 2**23 - 1 and f.counts[0, 3] == -(2**23)
    assert f.status.dtype == np.uint32 and f.counts.dtype == np.int32 and f.counts.shape == (3, 8)
    assert len(ring) == 2
    assert ring.counters.pushed == 5 and ring.counters.popped == 3


def test_full_ring_counts_drops_and_never_overwrites_unread():
    ring = FrameRing(4, 8)
    assert ring.push_raw(b"".join(frame([i]) for i in range(6)), 0) == 4
    c = ring.counters
    assert (c.pushed, c.dropped) == (4, 2)
    f = ring.pop(10)
    assert f.counts[:, 0].tolist() == [0, 1, 2, 3]        # oldest kept, newest refused
    # a dropped frame still consumed a sample index: the gap shows the loss
    ring.push_raw(frame([99]), 0)
    assert ring.pop(1).index.tolist() == [6]


def test_corrupt_frames_are_counted_not_stored():
    ring = FrameRing(8, 8)
    good, bad = frame([7]), frame([8], status=0x400000)
    assert ring.push_raw(good + bad + good, 0, 10) == 2
    assert ring.counters.corrupt == 1
    f = ring.pop(8)
    assert f.counts[:, 0].tolist() == [7, 7]
    assert f.timestamp_ns.tolist() == [0, 20]              # the corrupt frame kept its time slot


def test_partial_frame_is_rejected_with_a_clear_error_and_nothing_pushed():
    ring = FrameRing(8, 8)
    with pytest.raises(ValueError, match="whole number of 27-byte frames"):
        ring.push_raw(frame([1]) + b"\xc0\x00", 0)
    assert len(ring) == 0 and ring.counters.pushed == 0


def test_bad_constructor_arguments():
    with pytest.raises(ValueError):
        FrameRing(0, 8)
    with pytest.raises(ValueError):
        FrameRing(8, 0)
    with pytest.raises(ValueError):
        FrameRing(8, 65)


def test_pop_into_caller_arrays_and_type_checks():
    ring = FrameRing(32, 4)
    ring.push_raw(b"".join(frame([i, i, i, i], n_channels=4) for i in range(10)), 0, 1)
    out = empty_frames(6, 4)
    assert ring.pop_into(out.index, out.timestamp_ns, out.status, out.counts) == 6
    assert out.counts[:, 3].tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(TypeError):
        ring.pop_into(np.zeros(4, np.int32), out.timestamp_ns, out.status, out.counts)
    with pytest.raises(ValueError):
        ring.pop_into(out.index, out.timestamp_ns, out.status, np.zeros((6, 8), np.int32))
    with pytest.raises(TypeError):
        ring.pop_into(out.index, out.timestamp_ns, out.status, np.asfortranarray(np.zeros((6, 4), np.int32)))
    assert len(ring) == 4


def test_peek_last_does_not_consume():
    ring = FrameRing(8, 8)
    ring.push_raw(b"".join(frame([i]) for i in range(5)), 0)
    p = ring.peek_last(3)
    assert p.counts[:, 0].tolist() == [2, 3, 4]
    assert len(ring) == 5
    ring.pop(5)
    # popped frames can still be peeked (live display) while the producer is not reusing their slots
    assert ring.peek_last(7).counts[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_status_fields_and_channel_health():
    ring = FrameRing(300, 8)
    statp, statn = 0b0000_0101, 0b1000_0000
    status = 0xC00000 | statp << 12 | statn << 4 | 0x3
    ring.push_raw(b"".join(frame([2**23 - 1, 5, i]) for i in range(260)) + frame([0], status=status), 0)
    f = ring.pop(300)
    assert f.loff_statp[-1] == statp and f.loff_statn[-1] == statn and f.gpio[-1] == 3
    run, railed, last = ring.channel_health()
    assert railed[0] == 260 and railed[1] == 0
    assert run[1] == 0                    # channel 2 changed in the last frame (5 -> 0)
    assert last == status
    ring.push_raw(frame([0, 0, 0]), 0)
    run, _, _ = ring.channel_health()
    assert run[3] == 261                  # channel 4 was 0 in all 262 frames: 261 repeats
    assert frame_bytes(8) == 27


def test_threaded_producer_consumer_loses_nothing():
    ring = FrameRing(512, 8)
    n_total = 60_000
    done = threading.Event()

    def produce():
        i = 0
        while i < n_total:
            k = min(25, n_total - i)
            if ring.capacity - len(ring) < k:
                continue
            ring.push_raw(b"".join(frame([j & 0x7FFFFF, -j]) for j in range(i, i + k)), i, 1)
            i += k
        done.set()

    t = threading.Thread(target=produce)
    t.start()
    seen = []
    while not (done.is_set() and len(ring) == 0):
        f = ring.pop(200)
        seen.append(f.counts[:, 0].copy())
    t.join()
    got = np.concatenate(seen)
    assert got.size == n_total
    assert np.array_equal(got, np.arange(n_total))
    c = ring.counters
    assert (c.pushed, c.popped, c.dropped, c.corrupt) == (n_total, n_total, 0, 0)


def test_push_accepts_any_byte_buffer():
    ring = FrameRing(16, 8)
    raw = b"".join(frame([i]) for i in range(3))
    assert ring.push_raw(bytearray(raw), 0) == 3
    assert ring.push_raw(memoryview(raw), 0) == 3
    assert ring.push_raw(np.frombuffer(raw, np.uint8).reshape(3, 27), 0) == 3   # 2-D: counted in bytes
    assert ring.pop(16).counts[:, 0].tolist() == [0, 1, 2] * 3
