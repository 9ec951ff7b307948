"""The frame ring: raw ADS1299 frames in, decoded numpy arrays out.

A thin wrapper around the C decoder + single-producer/single-consumer lock-free ring in
``native/ring.c`` (compiled by cffi into ``appliance._native`` at ``pip install`` time).
The acquisition thread is the one producer (:meth:`FrameRing.push_raw`); the DSP thread is the one
consumer (:meth:`FrameRing.pop`, :meth:`FrameRing.pop_into`, :meth:`FrameRing.peek_last`).
Counters and ``len()`` may be read from any thread.

Status word bits (ADS1299 datasheet SBAS499, "Data Output Format"):
``1100 | LOFF_STATP[7:0] | LOFF_STATN[7:0] | GPIOD[4:1]``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from appliance.ads1299_frame import frame_bytes, gpio_bits, loff_statn, loff_statp

try:
    from appliance._native import ffi, lib
except ImportError as exc:  # pragma: no cover - only without a compiled extension
    raise ImportError(
        "appliance._native is not built; run `pip install -e .` (it compiles native/ring.c with cffi)"
    ) from exc

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class RingCounters:
    """Cumulative frame counts since the ring was created."""

    pushed: int
    popped: int
    dropped: int
    corrupt: int


@dataclass
class Frames:
    """A block of decoded frames, oldest first.

    Attributes
    ----------
    index : ndarray of int64, shape (n,)
        Sample index assigned on push. Dropped frames also take an index, so a gap means loss.
    timestamp_ns : ndarray of int64, shape (n,)
        Monotonic host time of each frame's DRDY, in nanoseconds.
    status : ndarray of uint32, shape (n,)
        The 24 status bits.
    counts : ndarray of int32, shape (n, n_channels)
        Channel values in ADC counts (sign-extended 24-bit).
    """

    index: np.ndarray
    timestamp_ns: np.ndarray
    status: np.ndarray
    counts: np.ndarray

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def loff_statp(self) -> np.ndarray:
        """LOFF_STATP per frame (bit n-1 = channel n positive electrode off), uint8."""
        return loff_statp(self.status).astype(np.uint8)

    @property
    def loff_statn(self) -> np.ndarray:
        """LOFF_STATN per frame (bit n-1 = channel n negative electrode off), uint8."""
        return loff_statn(self.status).astype(np.uint8)

    @property
    def gpio(self) -> np.ndarray:
        """GPIOD[4:1] data bits per frame, uint8."""
        return gpio_bits(self.status).astype(np.uint8)


def empty_frames(n: int, n_channels: int) -> Frames:
    """Preallocated arrays for :meth:`FrameRing.pop_into`."""
    return Frames(
        index=np.empty(n, np.int64),
        timestamp_ns=np.empty(n, np.int64),
        status=np.empty(n, np.uint32),
        counts=np.empty((n, n_channels), np.int32),
    )


class FrameRing:
    """Fixed-capacity ring of decoded ADS1299 frames.

    Parameters
    ----------
    capacity_frames : int
        Frames the ring holds (e.g. 60 s x 250 SPS = 15000). When full, new frames are counted as
        dropped and never overwrite unread ones.
    n_channels : int
        Channels per frame (4, 6 or 8 for one ADS1299; up to 64).
    """

    def __init__(self, capacity_frames: int, n_channels: int) -> None:
        if not 1 <= int(capacity_frames) <= 2**31 - 1:
            raise ValueError(f"capacity_frames must be 1..2**31-1, got {capacity_frames}")
        if not 1 <= int(n_channels) <= 64:
            raise ValueError(f"n_channels must be 1..64, got {n_channels}")
        ptr = lib.bt_ring_new(int(capacity_frames), int(n_channels))
        if ptr == ffi.NULL:
            raise MemoryError(f"cannot allocate a ring of {capacity_frames} x {n_channels} channels")
        self._ring = ffi.gc(ptr, lib.bt_ring_free)
        self.capacity = int(capacity_frames)
        self.n_channels = int(n_channels)
        self.frame_bytes = frame_bytes(self.n_channels)
        self._counters = ffi.new("bt_counters *")
        # bound once: attribute lookups are a visible share of a single-frame push
        self._push = lib.bt_ring_push_raw
        self._push_bytes = lib.bt_ring_push_bytes
        self._from_buffer = ffi.from_buffer

    # -- producer ------------------------------------------------------------------------------
    def push_raw(self, data: bytes | bytearray | memoryview, timestamp_ns: int, period_ns: int = 0) -> int:
        """Decode and store one or more concatenated raw frames.

        Parameters
        ----------
        data : bytes-like
            ``k * frame_bytes`` bytes exactly as read from the chip.
        timestamp_ns : int
            Monotonic time of the first frame's DRDY, ns.
        period_ns : int
            Time between consecutive frames in ``data``, ns (frame i gets ``timestamp_ns + i*period_ns``).

        Returns
        -------
        int
            Frames stored. Corrupt frames (status not ``1100...``) are counted, not stored; frames that
            find the ring full are counted as dropped.

        Raises
        ------
        ValueError
            If ``len(data)`` is not a whole number of frames (nothing is pushed then).
        """
        if type(data) is bytes:
            nbytes = len(data)
            n = self._push_bytes(self._ring, data, nbytes, timestamp_ns, period_ns)
        else:
            buf = self._from_buffer(data)     # bytearray, memoryview, numpy uint8 (any shape)
            nbytes = ffi.sizeof(buf)
            n = self._push(self._ring, buf, nbytes, timestamp_ns, period_ns)
        if n < 0:
            if n == lib.BT_ERR_LENGTH:
                raise ValueError(
                    f"{nbytes} bytes is not a whole number of {self.frame_bytes}-byte frames; nothing pushed"
                )
            raise ValueError(f"push_raw failed with code {n}")
        return n

    # -- consumer ------------------------------------------------------------------------------
    def pop(self, max_frames: int) -> Frames:
        """Take up to ``max_frames`` of the oldest frames (one copy, into fresh arrays)."""
        n = min(int(max_frames), len(self))
        out = empty_frames(n, self.n_channels)
        if n:
            got = self.pop_into(out.index, out.timestamp_ns, out.status, out.counts)
            # only this (consumer) thread removes frames, so at least n are there
            assert got == n, (got, n)
        return out

    def pop_into(
        self,
        index: np.ndarray,
        timestamp_ns: np.ndarray,
        status: np.ndarray,
        counts: np.ndarray,
    ) -> int:
        """Pop into caller-provided C-contiguous arrays (int64, int64, uint32, int32 (n, n_channels)).

        Returns the number of frames written at the front of the arrays.
        """
        n = self._check_out(index, timestamp_ns, status, counts)
        return lib.bt_ring_pop(self._ring, n, *self._ptrs(index, timestamp_ns, status, counts))

    def peek_last(self, n: int) -> Frames:
        """The newest ``n`` frames, read or unread, without consuming anything (consumer thread only).

        May return fewer than ``n`` if the ring holds fewer, or if the producer may be reusing the
        oldest of those slots; up to ``capacity - 1`` are returned while the producer is idle.
        """
        n = max(0, min(int(n), self.capacity))
        out = empty_frames(n, self.n_channels)
        got = lib.bt_ring_peek_last(self._ring, n, *self._ptrs(out.index, out.timestamp_ns, out.status, out.counts))
        if got < n:
            out = Frames(out.index[:got], out.timestamp_ns[:got], out.status[:got], out.counts[:got])
        return out

    # -- any thread ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return lib.bt_ring_available(self._ring)

    @property
    def counters(self) -> RingCounters:
        """Cumulative pushed / popped / dropped / corrupt frame counts."""
        c = self._counters
        lib.bt_ring_counters(self._ring, c)
        return RingCounters(pushed=c.pushed, popped=c.popped, dropped=c.dropped, corrupt=c.corrupt)

    def channel_health(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Per-channel signal health the decoder keeps while pushing.

        Returns
        -------
        run_length : ndarray of uint32, shape (n_channels,)
            Consecutive frames in which each channel repeated exactly the same value (stuck channel).
        railed : ndarray of uint64, shape (n_channels,)
            Frames in which each channel sat on a full-scale code.
        last_status : int
            Status word of the newest valid frame.
        """
        run = np.empty(self.n_channels, np.uint32)
        railed = np.empty(self.n_channels, np.uint64)
        st = ffi.new("uint32_t *")
        lib.bt_ring_channel_health(
            self._ring, ffi.from_buffer("uint32_t[]", run), ffi.from_buffer("uint64_t[]", railed), st
        )
        return run, railed, int(st[0])

    def take_max_run(self) -> np.ndarray:
        """Longest same-value run per channel since the previous call (uint32, frames); resets it.

        Call it from one thread (the producer's health check).
        """
        out = np.empty(self.n_channels, np.uint32)
        lib.bt_ring_take_max_run(self._ring, ffi.from_buffer("uint32_t[]", out))
        return out

    def __repr__(self) -> str:
        c = self.counters
        return (
            f"FrameRing(capacity_frames={self.capacity}, n_channels={self.n_channels}, available={len(self)}, "
            f"pushed={c.pushed}, popped={c.popped}, dropped={c.dropped}, corrupt={c.corrupt})"
        )

    # -- helpers -------------------------------------------------------------------------------
    def _check_out(self, index, timestamp_ns, status, counts) -> int:
        for name, arr, dtype in (
            ("index", index, np.int64),
            ("timestamp_ns", timestamp_ns, np.int64),
            ("status", status, np.uint32),
            ("counts", counts, np.int32),
        ):
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype or not arr.flags.c_contiguous:
                raise TypeError(f"{name} must be a C-contiguous numpy array of {np.dtype(dtype).name}")
            if not arr.flags.writeable:
                raise ValueError(f"{name} is read-only")
        if counts.ndim != 2 or counts.shape[1] != self.n_channels:
            raise ValueError(f"counts must have shape (n, {self.n_channels}), got {counts.shape}")
        return min(index.shape[0], timestamp_ns.shape[0], status.shape[0], counts.shape[0])

    @staticmethod
    def _ptrs(index, timestamp_ns, status, counts):
        return (
            ffi.from_buffer("int64_t[]", index),
            ffi.from_buffer("int64_t[]", timestamp_ns),
            ffi.from_buffer("uint32_t[]", status),
            ffi.from_buffer("int32_t[]", counts),
        )
