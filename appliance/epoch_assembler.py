"""From the ring's frames to 30-s epochs: microvolts, gap fill, the model-rate signal, epoch slicing.

The one signal layer between the ring buffer (:mod:`appliance.ring`) and the night's per-epoch work
(:mod:`appliance.night_pipeline`)::

    Frames (ADC counts, sample index, lead-off bits)
      --> microvolts (the chip's gain) --> lost frames counted; a gap up to MAX_GAP_FILL_FRAMES filled flat
      --> staging channel through the streaming DSP (appliance.dsp, to MODEL_FS_HZ)
      --> slices that end at epoch boundaries, and at each boundary one AssembledEpoch

Time here is the sample count: nothing reads the wall clock, so a replay at any speed slices the same epochs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from appliance.ads1299_frame import LOFF_MASK, LOFF_STATN_SHIFT, LOFF_STATP_SHIFT, uv_per_count
from appliance.dsp import MODEL_FS_HZ, StreamingPreprocessor
from appliance.protocol.stages import EPOCH_S

logger = logging.getLogger(__name__)

MAX_GAP_FILL_FRAMES = 250 * 600
"""A stretch of lost frames up to this long (10 min at 250 SPS) is filled with a flat line so that the recording,
the epochs and the breather's clock stay on the night's timeline; the filled epochs are flagged ``frames_lost``."""


@dataclass(frozen=True)
class Chunk:
    """One pop from the ring, converted.

    Attributes
    ----------
    uv : ndarray of float32, shape (n, n_channels)
        Every channel in microvolts, lost frames filled with zeros when the gap was filled.
    lost : int
        Frames that took a sample index but never arrived (the ring was full), before this pop's frames.
    filled : bool
        The lost stretch is in ``uv`` as a flat line (it was at most :data:`MAX_GAP_FILL_FRAMES` long).
    lead_off : ndarray of uint8, shape (n,)
        LOFF_STATP | LOFF_STATN per sample of ``uv`` (0 for filled samples).
    model : ndarray of float64
        The staging channel after the streaming DSP, at :data:`appliance.dsp.MODEL_FS_HZ`, microvolts (the
        resampler's output for this chunk; :meth:`EpochAssembler.slices` cuts it into epochs).
    staging : ndarray of float64, shape (n,)
        The staging channel of ``uv`` (what the DSP was given, and what an epoch's signal checks read).
    """

    uv: np.ndarray
    lost: int
    filled: bool
    lead_off: np.ndarray
    model: np.ndarray
    staging: np.ndarray


@dataclass(frozen=True)
class AssembledEpoch:
    """One finished 30-s epoch, as the pipeline stages it.

    Attributes
    ----------
    staging_uv : ndarray of float64, shape (samples_per_epoch,)
        The staging channel over the epoch at the chip's rate, microvolts (a buffer the assembler reuses: read it
        before the next slice). Only this channel: the recording takes every channel from the chunks, and
        copying all of them into each epoch too cost a quarter of the framing's time for nothing.
    model_uv : ndarray of float64, shape (EPOCH_S * MODEL_FS_HZ,)
        The staging channel after the DSP, at :data:`appliance.dsp.MODEL_FS_HZ`, microvolts.
    frames_lost : int
        Frames lost in this epoch (ring overflow and DRDY edges the driver never saw).
    lead_off_bits : int
        LOFF_STATP | LOFF_STATN over the epoch: bit n-1 set when an electrode of channel n was off.
    """

    staging_uv: np.ndarray
    model_uv: np.ndarray
    frames_lost: int
    lead_off_bits: int


class EpochAssembler:
    """Turns the ring's frames into microvolts and 30-s epochs.

    Parameters
    ----------
    fs_hz : int
        The chip's data rate, samples per second.
    n_channels : int
        Channels per frame.
    gain : int
        The channels' PGA gain (for :func:`appliance.ads1299_frame.uv_per_count`).
    staging_channel : int
        The channel (0-based) the stager sees.
    missed_frames : callable
        ``missed_frames() -> int``: DRDY edges the driver never saw so far (frames that never reached the ring
        and took no index); read at each epoch boundary.
    """

    def __init__(self, *, fs_hz: int, n_channels: int, gain: int, staging_channel: int,
                 missed_frames: Callable[[], int]) -> None:
        self.fs_hz = int(fs_hz)
        self.n_channels = int(n_channels)
        self.uv_per_count = float(uv_per_count(gain))
        self._uv_per_count_f32 = np.float32(self.uv_per_count)
        self.staging_channel = int(staging_channel)
        self.samples_per_epoch = int(round(EPOCH_S * self.fs_hz))
        self._missed_frames = missed_frames
        self._pre = StreamingPreprocessor(fs_hz=float(self.fs_hz))
        self._staging = np.empty(self.samples_per_epoch, dtype=np.float64)
        self._fill = 0  # samples of the current epoch so far
        self._lost = 0  # frames lost in the current epoch so far
        self._loff = 0
        self._missed_seen = 0
        self._model: list[np.ndarray] = [np.empty(0)]
        self._last_index = -1

    def convert(self, frames: object) -> Chunk:
        """Convert one pop from the ring (:class:`appliance.ring.Frames`, not empty) and run the DSP over it.

        Frames the ring dropped still took an index: a gap is signal that never arrived. It is counted into
        the current epoch's ``frames_lost``, and filled flat when at most :data:`MAX_GAP_FILL_FRAMES` long.
        """
        idx = frames.index
        first = self._last_index + 1 if self._last_index >= 0 else int(idx[0])
        lost = int(idx[-1]) - first + 1 - len(idx)
        self._last_index = int(idx[-1])
        # counts.astype(float32) * float32(uv_per_count), in one pass without the float32 copy of the counts
        uv = np.multiply(frames.counts, self._uv_per_count_f32, dtype=np.float32)
        # LOFF_STATP | LOFF_STATN in one pass over the status words (frames.loff_statp | frames.loff_statn)
        loff = frames.status >> LOFF_STATN_SHIFT
        loff |= frames.status >> LOFF_STATP_SHIFT
        loff &= LOFF_MASK
        loff = loff.astype(np.uint8)
        filled = False
        if lost > 0:
            self._lost += lost
            if lost <= MAX_GAP_FILL_FRAMES:
                at = idx - first
                full = np.zeros((len(idx) + lost, self.n_channels), np.float32)
                full[at] = uv
                loff_full = np.zeros(len(full), loff.dtype)
                loff_full[at] = loff
                uv, loff, filled = full, loff_full, True
        staging = uv[:, self.staging_channel].astype(np.float64)
        model = self._pre.process(staging)
        return Chunk(uv=uv, lost=lost, filled=filled, lead_off=loff, model=model, staging=staging)

    def slices(self, chunk: Chunk) -> Iterator[tuple[int, AssembledEpoch | None]]:
        """Cut ``chunk`` at epoch boundaries: yields ``(samples, epoch)`` in signal order, where ``epoch`` is the
        :class:`AssembledEpoch` the slice of ``samples`` completed, or None when the epoch is not yet full."""
        self._model.append(chunk.model)
        staging, n, pos = chunk.staging, len(chunk.uv), 0
        while pos < n:
            take = min(n - pos, self.samples_per_epoch - self._fill)
            self._staging[self._fill:self._fill + take] = staging[pos:pos + take]
            self._loff |= int(np.bitwise_or.reduce(chunk.lead_off[pos:pos + take]))
            self._fill += take
            pos += take
            if self._fill < self.samples_per_epoch:
                yield take, None
                continue
            yield take, self._finish_epoch()

    def _finish_epoch(self) -> AssembledEpoch:
        need = int(EPOCH_S * MODEL_FS_HZ)
        ym = np.concatenate(self._model) if len(self._model) > 1 else self._model[0]
        if len(ym) < need:  # the resampler lags by a few samples at the very start
            ym = np.concatenate([np.zeros(need - len(ym)), ym])
        self._model = [ym[need:]]
        missed = self._missed_frames()
        self._lost += missed - self._missed_seen
        self._missed_seen = missed
        staging = self._staging.view()
        staging.flags.writeable = False  # the next epoch's buffer: read it, never change it
        epoch = AssembledEpoch(staging_uv=staging, model_uv=ym[:need], frames_lost=self._lost,
                               lead_off_bits=self._loff)
        self._fill = self._lost = self._loff = 0
        return epoch
