"""A protocol-level ADS1299 simulator behind a SpiDev-compatible object.

:class:`SimulatedADS1299` behaves like the chip at the SPI protocol level (``../shared/reference/ads1299.md``):
register map with reset values and read-only bits; RREG/WREG, RESET, SDATAC, RDATAC (ignores every opcode
but SDATAC while in it), RDATA, START/STOP; ID per variant (4/6/8 channels); internal test signal,
shorted inputs, lead-off current and comparators; DRDY on a gpiozero (mock) pin at the data rate, in real
time or accelerated by ``speed``. Frames that are not read before the next conversion are overwritten and
lost, as on the chip (no overrun flag). Wrong use shows up: commands before tPOR or within a RESET are
ignored, a register write in RDATAC is ignored, SPI mode 0 garbles the reply, a read without a new DRDY
returns the old frame again (counted in :attr:`SimulatedADS1299.truth`).

:class:`SimulatedSpiDev` is what the driver talks to (open, close, mode, max_speed_hz, xfer2, xfer,
readbytes, writebytes). It also offers :meth:`SimulatedSpiDev.read_frames`, a vectorised burst path that
returns many consecutive RDATAC frames at once for accelerated whole-night replay; real hardware has no
such path (each frame needs its own DRDY), so only the simulator offers it.

Signal sources follow one protocol: attributes ``fs_hz`` and ``n_channels`` and ``read(n_samples)``
returning float64 microvolts of shape (n_samples, n_channels). :class:`SineSource`, :class:`NoiseSource`,
:class:`EdfSource` live in :mod:`appliance.signal_sources`; :class:`appliance.synthetic_eeg.SyntheticSleepEEG` fits unchanged.

Daisy-chained chips (DAISY_EN) are not simulated.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from appliance import ads1299 as ads
from appliance import ads1299_frame as layout
from appliance.signal_sources import SineSource

logger = logging.getLogger(__name__)

# Input-referred noise at 250 SPS, uVrms. Gains 1 and 2 from datasheet Table 1; 24 is the cell
# consistent with "1 uVpp in 70 Hz" [ref 8, UNVERIFIED]; the others are interpolated (ours).
NOISE_UVRMS = {1: 1.08, 2: 0.57, 4: 0.33, 6: 0.25, 8: 0.21, 12: 0.17, 24: 0.14}
# First DRDY after START / a CONFIG1 write: tSETTLE. Not in our datasheet copy [ref 4, UNVERIFIED];
# modelled as 4 data periods + 136 tCLK (the digital filter's length plus a little).
SETTLE_PERIODS = 4
LOFF_CURRENT_A = {0b00: 6e-9, 0b01: 24e-9, 0b10: 6e-6, 0b11: 24e-6}
READ_ONLY = {ads.REG_ID, ads.REG_LOFF_STATP, ads.REG_LOFF_STATN}
# bits the chip forces regardless of what is written (reserved bits, read-only bits) [ref 3]
FORCED = {
    ads.REG_CONFIG1: (0b1001_1000, 0b1001_0000),   # (mask of forced bits, their value)
    ads.REG_CONFIG2: (0b1110_1000, 0b1100_0000),
    ads.REG_CONFIG3: (0b0110_0001, 0b0110_0000),   # bit 0 BIAS_STAT is read-only
    ads.REG_LOFF: (0b0001_0000, 0),
    ads.REG_MISC1: (0b1101_1111, 0),
    ads.REG_MISC2: (0xFF, 0),
    ads.REG_CONFIG4: (0b1111_0101, 0),
}
AS_FAST_AS_POSSIBLE = 1e6     # speeds from here up (and inf) run on the burst clock only
NOISE_TABLE_FRAMES = 2**17  # ~8.7 min at 250 SPS
BLOCK_FRAMES = 128   # frames rendered ahead for the DRDY thread (numpy per block, not per frame)
FAULT_KINDS = ("bitflip", "drop_drdy", "stuck", "electrode_off", "rail", "stall")


# ---- chip-rate feed ------------------------------------------------------------------------------
class _SourceBuffer:
    """Source samples indexed by conversion number, so a block rendered ahead can be re-rendered after a
    register change without consuming the source twice."""

    def __init__(self, adapter: "_RateAdapter") -> None:
        self.adapter = adapter
        self.k0 = 0
        self.buf = np.zeros((0, adapter.source.n_channels))

    def get(self, k0: int, n: int, fs_chip: float) -> np.ndarray:
        if k0 > self.k0:
            self.buf = self.buf[min(k0 - self.k0, self.buf.shape[0]):]
            self.k0 = k0
        have = self.buf.shape[0]
        if self.k0 + have < k0 + n:
            more = self.adapter.read(k0 + n - self.k0 - have, fs_chip)
            self.buf = more if have == 0 else np.concatenate([self.buf, more])
        return self.buf[k0 - self.k0:k0 - self.k0 + n]


class _RateAdapter:
    """Feeds a source to the chip at the chip's current rate (sample-and-hold index mapping)."""

    def __init__(self, source) -> None:
        self.source = source
        self._buf = np.zeros((0, source.n_channels))
        self._pos = 0.0   # position in source samples of the next chip sample, relative to _buf[0]

    def read(self, n: int, fs_chip: float) -> np.ndarray:
        if abs(self.source.fs_hz - fs_chip) < 1e-9 and self._buf.shape[0] == 0:
            return np.asarray(self.source.read(n), dtype=np.float64)
        step = self.source.fs_hz / fs_chip
        idx = self._pos + np.arange(n) * step
        need = int(np.floor(idx[-1])) + 1 if n else 0
        if need > self._buf.shape[0]:
            self._buf = np.concatenate([self._buf, self.source.read(need - self._buf.shape[0])])
        out = self._buf[np.floor(idx).astype(np.int64)]
        self._pos += n * step
        drop = int(np.floor(self._pos))
        self._buf = self._buf[drop:]
        self._pos -= drop
        return out


# ---- faults -------------------------------------------------------------------------------------
@dataclass
class Fault:
    """One injected fault, scheduled by conversion number (counting every conversion since power-up).

    kind:
        ``bitflip``: XOR ``mask`` into byte ``byte`` of ``n_frames`` frames (default: the sync nibble, so
        the frame is detectably corrupt; flips in data bytes are undetectable by design of the chip).
        ``drop_drdy``: the DRDY edges of ``n_frames`` conversions never reach the host (frames overwritten).
        ``stuck``: ``channel`` repeats one value for ``n_frames``.
        ``electrode_off``: ``channel``'s P electrode is off for ``n_frames``: the lead-off current (if on)
        drives the input to the rail and the comparator sets LOFF_STATP.
        ``rail``: ``channel`` sits at positive full scale for ``n_frames``.
        ``stall``: conversions stop at ``at_frame`` until the chip is RESET.
    """

    kind: str
    at_frame: int
    n_frames: int = 1
    channel: int = 0
    byte: int = 0
    mask: int = 0x80

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {self.kind!r}")
        if self.at_frame < 0 or self.n_frames < 1:
            raise ValueError("at_frame must be >= 0 and n_frames >= 1")


@dataclass
class SimTruth:
    """What really happened inside the simulated chip (for tests to compare with what the host saw)."""

    conversions: int = 0            # conversions completed (frames the chip produced)
    frames_read: int = 0            # fresh frames clocked out (each at most once)
    overwritten: int = 0            # frames lost because the host did not read them in time
    stale_reads: int = 0            # reads with no new DRDY (same frame again)
    ignored_commands: int = 0       # opcodes ignored (in RDATAC, before tPOR, during RESET)
    ignored_writes: int = 0         # WREGs dropped because the chip was in RDATAC
    drdy_dropped: int = 0           # injected lost DRDY edges
    stalls: int = 0
    resets: int = 0


# ---- the chip -----------------------------------------------------------------------------------
class SimulatedADS1299:
    """The chip behind :class:`SimulatedSpiDev`.

    Parameters
    ----------
    variant_channels : int
        4, 6 or 8 (ID NU_CH bits 00/01/10).
    source : signal source, optional
        What the electrodes see (uV, input-referred). Default: 10 Hz, 20 uV sines.
    drdy_pin : gpiozero mock pin or None
        Driven low when a frame is ready (a ``MockFactory`` pin). None: conversions still run in
        (accelerated) real time, but the host can only poll or use the burst path.
    speed : float
        Simulated seconds per real second (1 = real time). ``float("inf")`` (or anything >= 1e6): no
        real-time clock at all; simulated time advances only with SPI traffic and bursts (whole-night
        replay), and no conversion happens before the first burst.
    faults : list of Fault
    clock_ppm : float
        Chip oscillator error: +100 means the chip runs 100 ppm fast (shorter periods).
    electrode_impedance_ohm : float or list
        Electrode-skin impedance per channel, seen by the AC lead-off current.
    rev_id : int
        REV_ID bits (ID bits 7:5); 0b001 gives 0x3E for 8 channels.
    seed : int
        Noise seed.
    """

    def __init__(self, variant_channels: int = 8, *, source=None, drdy_pin=None, speed: float = 1.0,
                 faults: list[Fault] | None = None, clock_ppm: float = 0.0,
                 electrode_impedance_ohm: float | list = 5000.0, rev_id: int = 0b001, seed: int = 0) -> None:
        if variant_channels not in (4, 6, 8):
            raise ValueError("variant_channels must be 4, 6 or 8")
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.n_channels = variant_channels
        self.frame_bytes = layout.frame_bytes(variant_channels)
        self.source = source if source is not None else SineSource(n_channels=variant_channels, amplitude_uv=20.0)
        self._src = _SourceBuffer(_RateAdapter(self.source))
        self._block: np.ndarray | None = None      # frames rendered ahead for the DRDY thread
        self._block_k0 = 0
        self.drdy_pin = drdy_pin
        self.speed = float(speed)
        self.faults = sorted(faults or [], key=lambda f: f.at_frame)
        self.clock_ppm = float(clock_ppm)
        self.impedance_ohm = np.broadcast_to(np.asarray(electrode_impedance_ohm, float), (variant_channels,)).copy()
        self.rev_id = rev_id & 0b111
        self._rng = np.random.default_rng(seed)
        self.truth = SimTruth()
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._t0_real_ns = time.monotonic_ns()
        self._burst_clock_ns: int | None = None     # set once the burst path is used
        self.spi_hz = 1_000_000                      # set by SimulatedSpiDev from max_speed_hz
        self.power_on_ns = 0
        self._power_on_reset()
        self._closed = False
        self._thread: threading.Thread | None = None
        if self.drdy_pin is not None:
            self.drdy_pin.drive_high()
        if self.speed >= AS_FAST_AS_POSSIBLE:
            # as fast as possible: no real-time clock at all, time moves with SPI traffic and bursts;
            # start as if power came up long ago (past tPOR). No DRDY thread: it could not keep such a
            # pace and would only convert frames nobody reads.
            self._burst_clock_ns = int(ads.T_POR_S * 1e9) + 1
        else:
            self._thread = threading.Thread(target=self._drdy_loop, name="ads1299-sim-drdy", daemon=True)
            self._thread.start()

    # -- clock --------------------------------------------------------------------------------------
    def clock_ns(self) -> int:
        """Simulated monotonic time, ns (accelerated by ``speed``; advanced by bursts in burst mode)."""
        if self._burst_clock_ns is not None:
            return self._burst_clock_ns
        raw = int((time.monotonic_ns() - self._t0_real_ns) * self.speed)
        due = self._next_conv_ns
        if due is not None and self.running and not self.stalled and not self.standby:
            # While the DRDY thread is starved of CPU, simulated time waits for it (see _drdy_loop):
            # the chip is never late, so the host must not see a stall that is only the simulator's.
            return min(raw, int(due + self.period_ns / 2))
        return raw

    @property
    def sample_rate_sps(self) -> int:
        dr = self.regs[ads.REG_CONFIG1] & 0x07
        return {v: k for k, v in ads.DATA_RATES_SPS.items()}.get(dr, 250)

    @property
    def period_ns(self) -> float:
        """Data period by the chip's own (possibly drifting) oscillator, in host ns."""
        return 1e9 / self.sample_rate_sps / (1.0 + self.clock_ppm * 1e-6)

    # -- state --------------------------------------------------------------------------------------
    def _power_on_reset(self) -> None:
        self.regs = bytearray(ads.RESET_VALUES)
        self.regs[ads.REG_ID] = (self.rev_id << 5) | 0x1C | {4: 0b00, 6: 0b01, 8: 0b10}[self.n_channels]
        self.rdatac = True                 # the chip powers up in RDATAC [ref 6]
        self.running = False
        self.stalled = False
        self.standby = False
        self._busy_until_ns = 0
        self._next_conv_ns: float | None = None
        self._latest: bytes | None = None  # output register: the newest conversion
        self._unread = False
        self._drdy_low = False
        self._edge_ns = 0
        self._stuck_value: dict[int, int] = {}

    def _reset_registers(self) -> None:
        chip_id = self.regs[ads.REG_ID]
        self.regs = bytearray(ads.RESET_VALUES)
        self.regs[ads.REG_ID] = chip_id
        self.rdatac = True
        self.running = False
        self.stalled = False
        self.standby = False
        self._next_conv_ns = None
        self._unread = False
        self._block = None
        self._release_drdy()
        self.truth.resets += 1

    def _start_conversions(self) -> None:
        self.running = True
        self._next_conv_ns = self.clock_ns() + SETTLE_PERIODS * self.period_ns + 136 * ads.T_CLK_S * 1e9
        self._wake.notify_all()

    # -- SPI ----------------------------------------------------------------------------------------
    def transfer(self, tx: list[int]) -> list[int]:
        """One chip-select window: bytes in, bytes out."""
        with self._lock:
            if self._burst_clock_ns is not None:
                # burst mode: time moves only with traffic; a transfer takes its bits plus CS set-up
                self._burst_clock_ns += int(len(tx) * 8e9 / max(self.spi_hz, 1) + 2000)
            now = self.clock_ns()
            if now < self.power_on_ns + ads.T_POR_S * 1e9:
                self.truth.ignored_commands += 1
                return [0] * len(tx)          # interface not up yet: DOUT reads as zeros
            if self.rdatac:
                return self._transfer_rdatac(tx, now)
            return self._transfer_sdatac(tx, now)

    def _transfer_rdatac(self, tx: list[int], now: int) -> list[int]:
        out = self._clock_out_frame(len(tx))
        for i, b in enumerate(tx):
            if b == ads.SDATAC:
                self.rdatac = False           # bytes after it in the same window are not decoded
                break
            if b != 0x00:
                if (b & 0xE0) == ads.WREG:
                    self.truth.ignored_writes += 1
                self.truth.ignored_commands += 1
        return out

    def _clock_out_frame(self, n: int) -> list[int]:
        if self._latest is None:
            return [0] * n
        if self._unread:
            self._unread = False
            self.truth.frames_read += 1
            if self._drdy_low and self.drdy_pin is not None:
                self._drdy_low = False
                self.drdy_pin.drive_high()     # DRDY returns high on the first SCLK [ref 4]
        elif n >= self.frame_bytes:
            self.truth.stale_reads += 1           # a whole frame clocked out with no new DRDY
        frame = self._latest
        return list(frame[:n]) + [0] * max(0, n - len(frame))

    def _transfer_sdatac(self, tx: list[int], now: int) -> list[int]:
        out = [0] * len(tx)
        i = 0
        while i < len(tx):
            op = tx[i]
            if now < self._busy_until_ns:
                self.truth.ignored_commands += 1   # RESET still in progress: 18 tCLK
                i += 1
                continue
            if op == ads.RESET:
                self._reset_registers()
                self._busy_until_ns = now + int(ads.T_RESET_S * 1e9)
            elif op == ads.SDATAC or op == 0x00:
                pass
            elif op == ads.RDATAC:
                self.rdatac = True
            elif op == ads.START:
                if self.running:
                    self._start_conversions()      # re-sync
                else:
                    self._start_conversions()
            elif op == ads.STOP:
                self.running = False
                self._next_conv_ns = None
            elif op == ads.STANDBY:
                self.standby = True                # low power: no conversions until WAKEUP
            elif op == ads.WAKEUP:
                if self.standby and self.running:
                    self.standby = False
                    self._start_conversions()
                self.standby = False
            elif op == ads.RDATA:
                frame = self._clock_out_frame(self.frame_bytes)
                k = min(len(frame), len(tx) - i - 1)
                out[i + 1:i + 1 + k] = frame[:k]
                i += 1 + k
                continue
            elif (op & 0xE0) in (ads.RREG, ads.WREG):
                if i + 1 >= len(tx):
                    break                          # incomplete command: CS high resets the interface
                addr, n = op & 0x1F, (tx[i + 1] & 0x1F) + 1
                if (op & 0xE0) == ads.RREG:
                    for j in range(n):
                        if i + 2 + j < len(tx):
                            a = addr + j
                            out[i + 2 + j] = self._read_reg(a) if a < ads.N_REGISTERS else 0
                    i += 2 + n
                    continue
                data = tx[i + 2:i + 2 + n]
                for j, v in enumerate(data):
                    self._write_reg(addr + j, v)
                i += 2 + n
                continue
            else:
                self.truth.ignored_commands += 1
            i += 1
        return out

    def _read_reg(self, a: int) -> int:
        if a in (ads.REG_LOFF_STATP, ads.REG_LOFF_STATN):
            p, n = self._loff_bits(np.zeros(self.n_channels, bool))
            return p if a == ads.REG_LOFF_STATP else n
        return self.regs[a]

    def _write_reg(self, a: int, v: int) -> None:
        if a >= ads.N_REGISTERS or a in READ_ONLY:
            return
        mask, val = FORCED.get(a, (0, 0))
        v = (v & ~mask & 0xFF) | val
        if a == ads.REG_CONFIG3:
            v = (v & 0xFE) | (self.regs[a] & 0x01)
        if a == ads.REG_GPIO:
            v = (v & 0x0F) | (self.regs[a] & 0xF0 & ~((v & 0x0F) << 4))  # input pins keep their data bits
        if self.regs[a] != v:
            self._block = None
        self.regs[a] = v
        if a == ads.REG_CONFIG1 and self.running:
            self._start_conversions()              # a CONFIG1 write resets the digital filter [ref 2]

    # -- conversions ---------------------------------------------------------------------------------
    def _noise(self, n: int, nch: int) -> np.ndarray:
        """Unit Gaussian noise, (n, nch). Drawn as random windows of a fixed 2^17-frame table: drawing
        fresh normals costs more than everything else in a burst, and a window at a random offset per
        block does not repeat in any way the acquisition or the DSP could notice."""
        table = getattr(self, "_noise_table", None)
        if table is None or table.shape[1] != nch:
            table = self._noise_table = self._rng.standard_normal((NOISE_TABLE_FRAMES, nch)).astype(np.float32)
        if n > NOISE_TABLE_FRAMES // 2:
            return self._rng.standard_normal((n, nch))
        start = int(self._rng.integers(0, NOISE_TABLE_FRAMES - n))
        return table[start:start + n]

    def _loff_bits(self, off: np.ndarray) -> tuple[int, int]:
        if not self.regs[ads.REG_CONFIG4] & ads.CONFIG4_PD_LOFF_COMP:
            return 0, 0
        sensp = self.regs[ads.REG_LOFF_SENSP]
        bits = int(np.sum((off.astype(np.int64)) << np.arange(self.n_channels)))
        return bits & sensp, 0

    def _active_faults(self, k0: int, n: int, kind: str):
        for f in self.faults:
            if f.kind == kind and f.at_frame < k0 + n and f.at_frame + f.n_frames > k0:
                lo = max(f.at_frame, k0) - k0
                hi = min(f.at_frame + f.n_frames, k0 + n) - k0
                yield f, lo, hi

    def render(self, k0: int, n: int) -> np.ndarray:
        """Frames for conversions ``k0 .. k0+n-1`` as a (n, frame_bytes) uint8 array.

        Vectorised over frames and channels (a whole night is 7.2 M frames): the per-channel branches
        only run for channels not on their normal input, which is rare outside self-tests.
        """
        nch, fs = self.n_channels, self.sample_rate_sps
        src = self._src.get(k0, n, fs)
        if src.shape[1] != nch:
            src = src[:, np.arange(nch) % src.shape[1]]
        chset = np.frombuffer(bytes(self.regs[ads.REG_CH1SET:ads.REG_CH1SET + nch]), np.uint8)
        gains = np.array([ads.GAIN_FROM_BITS.get((c >> 4) & 0b111, 24) for c in chset])
        mux = chset & 0b111
        sigma = np.array([NOISE_UVRMS[g] for g in gains])
        x = self._noise(n, nch) * sigma
        normal = mux == ads.MUX_NORMAL
        if normal.all():
            x += src
        else:
            x[:, normal] += src[:, normal]
        loff = self.regs[ads.REG_LOFF]
        flead = loff & 0b11
        sensp = self.regs[ads.REG_LOFF_SENSP]
        sens = ((sensp >> np.arange(nch)) & 1).astype(bool)
        t = None
        if flead != ads.LOFF_FREQ_DC and (sens & normal).any():
            t = (k0 + np.arange(n)) / fs
            f_exc = {ads.LOFF_FREQ_7HZ8: ads.F_CLK_HZ / 2**18, ads.LOFF_FREQ_31HZ2: ads.LOFF_AC_31HZ2_HZ,
                     ads.LOFF_FREQ_FDR_4: fs / 4}[flead]
            # square-wave excitation current through each electrode's impedance
            sq = np.where((t * f_exc) % 1.0 < 0.5, 1.0, -1.0)
            amp_uv = LOFF_CURRENT_A[(loff >> 2) & 0b11] * self.impedance_ohm * 1e6 * (sens & normal)
            x += sq[:, None] * amp_uv[None, :]
        off = None
        for f, lo, hi in self._active_faults(k0, n, "electrode_off"):
            off = np.zeros((n, nch), bool) if off is None else off
            off[lo:hi, f.channel] = True
        if off is not None:
            # an off electrode is pulled to the rail by the lead-off current (or drifts there floating)
            x[off & normal[None, :]] = 1e9
        for c in np.flatnonzero(~normal):
            m = mux[c]
            if m == ads.MUX_SHORTED:
                x[:, c] += 1.5                        # small offset, uV
            elif m == ads.MUX_TEST:
                c2 = self.regs[ads.REG_CONFIG2]
                if c2 & ads.CONFIG2_INT_CAL:
                    amp = ads.TEST_SIGNAL_AMPLITUDE_V * 1e6 * (2 if c2 & ads.CONFIG2_CAL_AMP_2X else 1)
                    fb = c2 & 0b11
                    if fb == 0b11:
                        x[:, c] += amp
                    else:
                        t = (k0 + np.arange(n)) / fs if t is None else t
                        f_cal = ads.F_CLK_HZ / (2**21 if fb == 0b00 else 2**20)
                        x[:, c] += amp * np.where((t * f_cal) % 1.0 < 0.5, 1.0, -1.0)
            elif m == ads.MUX_TEMP:
                x[:, c] += 145_300.0                  # ~145 mV at 25 C [UNVERIFIED]
            elif m == ads.MUX_MVDD:
                x[:, c] += 2.5e6 / gains[c]
        x *= (1.0 / np.array([layout.uv_per_count(g) for g in gains]))[None, :]
        np.clip(x, layout.MIN_CODE, layout.FULL_SCALE_CODE, out=x)
        counts = np.rint(x).astype(np.int64)
        counts[:, (chset & ads.CHSET_PD) != 0] = 0
        for f, lo, hi in self._active_faults(k0, n, "rail"):
            counts[lo:hi, f.channel] = layout.FULL_SCALE_CODE
        for f, lo, hi in self._active_faults(k0, n, "stuck"):
            key = id(f)
            if key not in self._stuck_value:
                self._stuck_value[key] = int(counts[lo, f.channel])
            counts[lo:hi, f.channel] = self._stuck_value[key]
        # status word: 1100 | LOFF_STATP | LOFF_STATN | GPIOD [ref 4]
        status = np.full(n, layout.STATUS_SYNC, np.int64)
        if off is not None and self.regs[ads.REG_CONFIG4] & ads.CONFIG4_PD_LOFF_COMP and sensp:
            p = (off.astype(np.int64) << np.arange(nch)).sum(axis=1) & sensp
            status |= p << layout.LOFF_STATP_SHIFT
        status |= (self.regs[ads.REG_GPIO] >> 4) & 0x0F
        frames = layout.encode_frames(status, counts)
        for f, lo, hi in self._active_faults(k0, n, "bitflip"):
            frames[lo:hi, f.byte] ^= f.mask
        return frames

    def _edge_flags(self, k0: int, n: int) -> tuple[np.ndarray, int | None]:
        """(which conversions reach the host as a DRDY edge, index of a stall within the window)."""
        edge = np.ones(n, bool)
        for f, lo, hi in self._active_faults(k0, n, "drop_drdy"):
            edge[lo:hi] = False
        stall = None
        for f in self.faults:
            if f.kind == "stall" and k0 <= f.at_frame < k0 + n and not getattr(f, "_fired", False):
                stall = f.at_frame - k0 if stall is None else min(stall, f.at_frame - k0)
        return edge, stall

    def _fire_stall(self, k: int) -> None:
        for f in self.faults:
            if f.kind == "stall" and f.at_frame == k and not getattr(f, "_fired", False):
                f._fired = True
        self.stalled = True
        self.truth.stalls += 1
        logger.debug("sim: stall at conversion %d", k)

    # -- DRDY thread (protocol path) -----------------------------------------------------------------
    def _drdy_loop(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                if self._burst_clock_ns is not None:
                    return                                  # burst path took over the clock
                if not self.running or self.stalled or self.standby or self._next_conv_ns is None:
                    self._wake.wait(0.01)
                    continue
                due = self._next_conv_ns
                now = self.clock_ns()
                if now < due:
                    wait_s = (due - now) / 1e9 / self.speed
                else:
                    wait_s = 0.0
                    period = self.period_ns
                    if now - due > period / 2:
                        # This thread was late (the host was busy). The chip never is: shift the
                        # simulated clock back so conversions do not bunch up; only the reader's lateness
                        # relative to the conversions may lose frames.
                        self._t0_real_ns += int((now - due) / self.speed)
                    self._convert_one(int(due))
                    self._next_conv_ns = due + period
            if wait_s > 0:
                time.sleep(wait_s)

    def _convert_one(self, edge_ns: int) -> None:
        k = self.truth.conversions
        edge, stall = self._edge_flags(k, 1)
        if stall is not None:
            self._fire_stall(k)
            return
        if self._block is None or not self._block_k0 <= k < self._block_k0 + self._block.shape[0]:
            self._block = self.render(k, BLOCK_FRAMES)
            self._block_k0 = k
        frame = self._block[k - self._block_k0].tobytes()
        self.truth.conversions += 1
        if self._unread:
            self.truth.overwritten += 1
        self._release_drdy()                         # tUPDATE pulse before new data [ref 4]
        self._latest = frame
        self._unread = True
        if edge[0]:
            self._edge_ns = edge_ns
            self._drdy_low = True
            if self.drdy_pin is not None:
                self.drdy_pin.drive_low()
        else:
            self.truth.drdy_dropped += 1
        if self.truth.conversions % 4096 == 0 and hasattr(self.drdy_pin, "clear_states"):
            self.drdy_pin.clear_states()            # MockPin records every edge; keep memory flat

    def _release_drdy(self) -> None:
        if self._drdy_low and self.drdy_pin is not None:
            self.drdy_pin.drive_high()
        self._drdy_low = False

    # -- burst path ----------------------------------------------------------------------------------
    def read_burst(self, n: int) -> tuple[bytes, np.ndarray]:
        """The next ``n`` conversion periods in RDATAC, as (frames that reached the host, their edge times).

        Frames whose DRDY is dropped are missing (as on hardware, where they are overwritten); when not
        running or stalled, simulated time still advances by ``n`` periods and nothing comes back.
        """
        with self._lock:
            if self._burst_clock_ns is None:
                self._burst_clock_ns = int((time.monotonic_ns() - self._t0_real_ns) * self.speed)
                self._wake.notify_all()
            period = self.period_ns
            if not (self.running and self.rdatac) or self.stalled or self.standby or self._next_conv_ns is None:
                self._burst_clock_ns += int(n * period)
                return b"", np.zeros(0, np.int64)
            if self._next_conv_ns < self._burst_clock_ns:
                self._next_conv_ns = float(self._burst_clock_ns)
            k0 = self.truth.conversions
            edge, stall = self._edge_flags(k0, n)
            m = n if stall is None else stall
            frames = self.render(k0, m) if m else np.zeros((0, self.frame_bytes), np.uint8)
            times = (self._next_conv_ns + np.arange(m) * period).astype(np.int64)
            self.truth.conversions += m
            if stall is not None:
                self._fire_stall(k0 + m)
                self._burst_clock_ns = int(self._next_conv_ns + n * period)
            else:
                self._burst_clock_ns = int(times[-1]) if m else self._burst_clock_ns
            self._next_conv_ns += m * period
            keep = edge[:m]
            dropped = int(m - keep.sum())
            self.truth.drdy_dropped += dropped
            self.truth.frames_read += m - dropped
            self.truth.overwritten += dropped
            if m:
                self._latest = frames[-1].tobytes()
                self._unread = False
            if dropped:
                frames, times = frames[keep], times[keep]
            return frames.tobytes(), times

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)


class SimulatedSpiDev:
    """A ``spidev.SpiDev`` stand-in wired to a :class:`SimulatedADS1299`.

    Either pass ``chip=`` or the chip's keyword arguments (``variant_channels``, ``source``, ``drdy_pin``,
    ``speed``, ``faults``, ...).
    """

    MAX_HZ = 20_000_000      # tSCLK >= 50 ns at DVDD 2.7-3.6 V [ref 1]
    can_burst = True         # it is also the simulated board (:class:`appliance.ads1299.Board`)

    def __init__(self, chip: SimulatedADS1299 | None = None, **chip_kwargs) -> None:
        self.chip = chip if chip is not None else SimulatedADS1299(**chip_kwargs)
        self.mode = 0
        self.max_speed_hz = 500_000
        self.bits_per_word = 8
        self._open = False
        self.transfers = 0

    # spidev API ------------------------------------------------------------------------------------
    def open(self, bus: int = 0, device: int = 0) -> None:
        self.bus, self.device = bus, device
        self._open = True

    def close(self) -> None:
        self._open = False

    def shutdown(self) -> None:
        """:meth:`appliance.ads1299.Board.shutdown`: stop the simulated chip (its DRDY thread)."""
        self.chip.close()

    def xfer2(self, values, speed_hz: int = 0, delay_usecs: int = 0, bits_per_word: int = 8) -> list[int]:
        """One transfer with chip select held low throughout."""
        self._check()
        self.transfers += 1
        self.chip.spi_hz = self.max_speed_hz
        out = self.chip.transfer([int(v) & 0xFF for v in values])
        if self.mode != ads.SPI_MODE:
            # sampling on the wrong clock edge: every bit arrives one position late
            out = [((out[i] >> 1) | ((out[i - 1] & 1) << 7 if i else 0)) & 0xFF for i in range(len(out))]
        return out

    def xfer(self, values, speed_hz: int = 0, delay_usecs: int = 0, bits_per_word: int = 8) -> list[int]:
        """py-spidev ``xfer``: chip select is released between bytes, so each byte is its own command."""
        out = []
        for v in values:
            out += self.xfer2([v])
        return out

    def readbytes(self, n: int) -> list[int]:
        return self.xfer2([0] * n)

    def writebytes(self, values) -> None:
        self.xfer2(list(values))

    def _check(self) -> None:
        if not self._open:
            raise OSError(9, "Bad file descriptor (SimulatedSpiDev not open)")
        if self.max_speed_hz > self.MAX_HZ:
            raise OSError(22, f"max_speed_hz {self.max_speed_hz} beyond the ADS1299's 20 MHz")

    # simulator extras ------------------------------------------------------------------------------
    @property
    def speed(self) -> float:
        return self.chip.speed

    def clock_ns(self) -> int:
        """Simulated monotonic time, ns."""
        return self.chip.clock_ns()

    def drdy_edge_ns(self) -> int:
        """Simulated time of the latest DRDY falling edge, ns."""
        return self.chip._edge_ns

    def read_frames(self, n: int) -> bytes:
        """Burst path: up to ``n`` consecutive RDATAC frames as bytes (simulator only).

        Edge times of the returned frames are in :attr:`last_edges_ns`. Stops the DRDY thread's clock:
        from the first call on, simulated time advances only through bursts.
        """
        self._check()
        data, self.last_edges_ns = self.chip.read_burst(int(n))
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- one-call set-up ----------------------------------------------------------------------------
@dataclass
class SimulatedBoard:
    """A brought-up :class:`~appliance.ads1299.ADS1299` on a simulated chip, with its parts."""

    chip: "ads.ADS1299"
    spi: SimulatedSpiDev
    sim: SimulatedADS1299
    drdy: object | None

    def close(self) -> None:
        if self.drdy is not None:
            self.drdy.close()
        self.sim.close()
        self.spi.close()


def simulated_sleep(speed: float) -> Callable[[float], None]:
    """The driver's ``sleep`` for a chip at ``speed``: its datasheet waits (tPOR, RESET, reference settling)
    take simulated time, ``seconds / speed`` of real time, and none from ``AS_FAST_AS_POSSIBLE`` up."""
    scale = 0.0 if speed >= AS_FAST_AS_POSSIBLE else 1.0 / speed

    def sleep(seconds: float) -> None:
        if seconds * scale > 0:
            time.sleep(seconds * scale)

    return sleep


def open_simulated_spi(*, drdy_pin_number: int | None, pin_factory=None, bus: int = 0, device: int = 0,
                       **chip_kwargs) -> tuple[SimulatedSpiDev, object | None]:
    """The simulated board's parts the driver is given: an opened :class:`SimulatedSpiDev` and its DRDY input.

    Used by ``appliance.hardware.open_chip`` (simulation) and :func:`simulated_board`, so the two wire the
    simulator the same way.

    Parameters
    ----------
    drdy_pin_number : int or None
        The pin the simulator drives DRDY on and the driver's ``DigitalInputDevice`` reads (active = low);
        None: no DRDY line (burst path or polling only).
    pin_factory : gpiozero pin factory, optional
        A mock factory; None: gpiozero's current ``Device.pin_factory``.
    bus, device : int
        What ``open()`` is called with.
    **chip_kwargs
        :class:`SimulatedADS1299`'s (``variant_channels``, ``speed``, ``source``, ``faults``, ...).

    Returns
    -------
    (SimulatedSpiDev, gpiozero.DigitalInputDevice or None)
    """
    drdy = pin = None
    if drdy_pin_number is not None:
        from gpiozero import Device, DigitalInputDevice

        factory = pin_factory if pin_factory is not None else Device.pin_factory
        pin = factory.pin(drdy_pin_number)
        drdy = DigitalInputDevice(drdy_pin_number, pull_up=True, pin_factory=factory)   # active = DRDY low
    spi = SimulatedSpiDev(drdy_pin=pin, **chip_kwargs)
    spi.open(bus, device)
    return spi, drdy


def simulated_board(*, variant_channels: int = 8, source=None, speed: float = 1.0, faults: list[Fault] | None = None,
                    drdy_pin_number: int | None = 25, clock_ppm: float = 0.0,
                    electrode_impedance_ohm: float | list = 5000.0, seed: int = 0, **driver_kwargs) -> SimulatedBoard:
    """Simulated chip + SpiDev + DRDY input + driver, brought up, in one call: the driver's tests' and the
    benches' bench-top board (the box and ``--simulate`` open theirs with ``appliance.hardware.open_chip``).

    Uses gpiozero's current pin factory for DRDY (set ``Device.pin_factory = MockFactory(...)`` first);
    ``drdy_pin_number=None`` gives no DRDY line (burst path or polling only). The driver's datasheet waits
    are scaled by ``speed`` (:func:`simulated_sleep`), so bring-up takes simulated, not real, time.
    """
    spi, drdy = open_simulated_spi(drdy_pin_number=drdy_pin_number, variant_channels=variant_channels,
                                   source=source, speed=speed, faults=faults, clock_ppm=clock_ppm,
                                   electrode_impedance_ohm=electrode_impedance_ohm, seed=seed)
    driver_kwargs.setdefault("sleep", simulated_sleep(speed))
    chip = ads.ADS1299(spi, drdy=drdy, board=spi, **driver_kwargs)
    return SimulatedBoard(chip=chip, spi=spi, sim=spi.chip, drdy=drdy)
