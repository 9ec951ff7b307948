"""The ADS1299's RDATAC frame: layout, status bits and scaling, defined once.

One frame is what the chip shifts out after one DRDY in RDATAC mode (``../shared/reference/ads1299.md``
section 4, datasheet SBAS499 "Data Output Format"): a 24-bit status word
``1100 | LOFF_STATP[7:0] | LOFF_STATN[7:0] | GPIOD[4:1]``, then ``n_channels`` 24-bit two's-complement
big-endian channel codes. Counts become input-referred microvolts by ``VREF / gain / (2^23 - 1)``
(section 5).

The C decoder needs them at compile time, so ``native/ring.h`` repeats the layout (status and channel
bytes, sync nibble, full-scale codes) as an enum that cffi passes through (``appliance._native.lib.BT_*``);
``tests/test_frame_layout.py`` checks those compiled values, and ``bt_frame_bytes``, against this module,
so the two sides cannot drift.
"""
from __future__ import annotations

import numpy as np

STATUS_BYTES = 3
"""Bytes of the status word at the start of each frame."""
BYTES_PER_CHANNEL = 3
"""Bytes of one channel's 24-bit code."""

STATUS_SYNC_MASK = 0xF00000
"""Top nibble of the 24-bit status word ..."""
STATUS_SYNC = 0xC00000
"""... which must read binary 1100 (otherwise the frame is corrupt)."""
LOFF_STATP_SHIFT = 12
"""LOFF_STATP[7:0] sits in status bits 19..12 (bit n-1 = channel n's positive electrode off)."""
LOFF_STATN_SHIFT = 4
"""LOFF_STATN[7:0] sits in status bits 11..4 (bit n-1 = channel n's negative electrode off)."""
LOFF_MASK = 0xFF
"""Width of LOFF_STATP and LOFF_STATN (one bit per channel, up to 8)."""
GPIO_MASK = 0xF
"""GPIOD[4:1] in status bits 3..0."""

V_REF = 4.5
"""Internal reference, volts [DS]."""
FULL_SCALE_CODE = 2**23 - 1
"""Positive full-scale code (0x7FFFFF); LSB = VREF / gain / (2^23 - 1) [DS][OBCI][BF], ref 5."""
MIN_CODE = -2**23
"""Negative full-scale code (0x800000 as 24-bit two's complement)."""


def frame_bytes(n_channels: int) -> int:
    """Bytes per RDATAC frame: 3 status + 3 per channel (27 for 8 channels).

    Parameters
    ----------
    n_channels : int
        Channels of the chip (4, 6 or 8 for one ADS1299).

    Returns
    -------
    int
        Frame length in bytes.
    """
    return STATUS_BYTES + BYTES_PER_CHANNEL * n_channels


def uv_per_count(gain: int | float | np.ndarray) -> float | np.ndarray:
    """Input-referred microvolts per ADC count at PGA ``gain``: ``4.5 V / gain / (2**23 - 1)``.

    Parameters
    ----------
    gain : int, float or ndarray
        PGA gain (1, 2, 4, 6, 8, 12 or 24), one value or one per channel.

    Returns
    -------
    float or ndarray of float64
        uV per count (0.02235 uV at gain 24), same shape as ``gain``.
    """
    return V_REF / np.asarray(gain, dtype=np.float64) / FULL_SCALE_CODE * 1e6


def loff_statp(status: int | np.ndarray) -> int | np.ndarray:
    """LOFF_STATP from status word(s): bit n-1 set = channel n's positive electrode off."""
    return (status >> LOFF_STATP_SHIFT) & LOFF_MASK


def loff_statn(status: int | np.ndarray) -> int | np.ndarray:
    """LOFF_STATN from status word(s): bit n-1 set = channel n's negative electrode off."""
    return (status >> LOFF_STATN_SHIFT) & LOFF_MASK


def gpio_bits(status: int | np.ndarray) -> int | np.ndarray:
    """GPIOD[4:1] data bits from status word(s)."""
    return status & GPIO_MASK


LOFF_BITS_MASK = (LOFF_MASK << LOFF_STATP_SHIFT) | (LOFF_MASK << LOFF_STATN_SHIFT)
"""Every lead-off bit of the status word (LOFF_STATP and LOFF_STATN)."""


def lead_off_bits(status: int | np.ndarray) -> int | np.ndarray:
    """Both lead-off bytes as one 16-bit value, ``LOFF_STATP << 8 | LOFF_STATN``, from status word(s)."""
    return (loff_statp(status) << 8) | loff_statn(status)


def status_words(frames: np.ndarray) -> np.ndarray:
    """The 24-bit status word of each frame, int64 of shape (n,), from raw frames of shape (n, frame_bytes) uint8."""
    b = frames[:, :STATUS_BYTES].astype(np.int64)
    return (b[:, 0] << 16) | (b[:, 1] << 8) | b[:, 2]


def is_synced(status: int | np.ndarray) -> bool | np.ndarray:
    """True where the status word starts with binary 1100 (a frame that is not, is corrupt)."""
    return (status & STATUS_SYNC_MASK) == STATUS_SYNC


def decode_frames(raw: bytes | np.ndarray, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Pure-numpy frame decoder, the reference for the C one (``native/ring.c``), used by the self-tests.

    Parameters
    ----------
    raw : bytes or ndarray of uint8
        Concatenated frames.
    n_channels : int
        Channels per frame.

    Returns
    -------
    status : ndarray of uint32, shape (n,)
        The 24-bit status words.
    counts : ndarray of int32, shape (n, n_channels)
        The sign-extended channel codes.

    Raises
    ------
    ValueError
        If ``raw`` is not a whole number of frames.
    """
    fb = frame_bytes(n_channels)
    b = np.frombuffer(raw, dtype=np.uint8) if not isinstance(raw, np.ndarray) else raw.astype(np.uint8)
    if b.size % fb:
        raise ValueError(f"{b.size} bytes is not a whole number of {fb}-byte frames")
    # the status word is a 24-bit word like the channel codes (STATUS_BYTES == BYTES_PER_CHANNEL): all the
    # frame's words in one pass (taking the status word apart first cost 8.0 instead of 5.6 us per frame)
    w = b.reshape(-1, n_channels + 1, BYTES_PER_CHANNEL).astype(np.int32)
    v = (w[:, :, 0] << 16) | (w[:, :, 1] << 8) | w[:, :, 2]
    counts = (v[:, 1:] ^ 0x800000) - 0x800000   # sign-extend 24 -> 32 bits
    return v[:, 0].astype(np.uint32), counts.astype(np.int32)


def encode_frames(status: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Frames as the chip shifts them out (the simulator's side of :func:`decode_frames`).

    Parameters
    ----------
    status : ndarray of int, shape (n,)
        24-bit status words (sync nibble included).
    counts : ndarray of int, shape (n, n_channels)
        Channel codes within ``MIN_CODE..FULL_SCALE_CODE``.

    Returns
    -------
    ndarray of uint8, shape (n, frame_bytes(n_channels))
        Big-endian 24-bit status, then big-endian 24-bit two's-complement codes.
    """
    n, nch = counts.shape
    frames = np.empty((n, frame_bytes(nch)), np.uint8)
    # byte by byte: 3x faster than a '>u4' view and a strided copy
    frames[:, 0] = status >> 16
    frames[:, 1] = status >> 8
    frames[:, 2] = status
    c32 = counts.astype(np.int32)
    v = frames[:, STATUS_BYTES:].reshape(n, nch, BYTES_PER_CHANNEL)
    v[:, :, 0] = c32 >> 16
    v[:, :, 1] = c32 >> 8
    v[:, :, 2] = c32
    return frames
