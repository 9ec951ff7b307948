"""The ADS1299 EEG front end, driven over spidev with DRDY on a gpiozero input.

Sources for every constant: TI ADS1299 datasheet SBAS499 ([DS]) as collected, with cross-checks
against OpenBCI, BrainFlow and Portiloop, in ``../shared/reference/ads1299.md`` (section numbers below
point there). Works against a real ``spidev.SpiDev`` or :class:`appliance.ads1299_sim.SimulatedSpiDev`.
The frame layout and scaling are :mod:`appliance.ads1299_frame`'s; what the self-tests conclude from the
frames they capture is :mod:`appliance.ads1299_selftest`'s.

Typical use::

    spi = spidev.SpiDev(); spi.open(0, 0)
    drdy = DigitalInputDevice(25, pull_up=True)   # active = DRDY low
    chip = ADS1299(spi, drdy=drdy, sample_rate_sps=250, gains=24)
    raw = chip.read_frame()                        # after each DRDY falling edge
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from appliance.ads1299_frame import V_REF, decode_frames, frame_bytes, is_synced, uv_per_count
from appliance.ads1299_selftest import (
    LeadOffStatus, NoiseResult, TestSignalResult, analyse_lead_off, analyse_noise, analyse_test_signal,
    impedance_from_lead_off,
)

logger = logging.getLogger(__name__)

# ---- timing (ref 1, 2, 6) ------------------------------------------------------------------------
F_CLK_HZ = 2.048e6                    # internal oscillator [DS]
T_CLK_S = 1.0 / F_CLK_HZ              # ~488 ns
T_POR_S = 2**18 * T_CLK_S             # power-on reset wait, 2^18 tCLK ~ 128 ms [DS SBAS499C p.70, ref 6]
T_RESET_S = 18 * T_CLK_S              # RESET needs 18 tCLK to finish [DS, ref 2]
T_RESET_WAIT_S = 12e-6                # what OpenBCI waits (>= 18 tCLK) [OBCI]
T_CMD_GAP_S = 4 * T_CLK_S             # 4 tCLK after SDATAC/RDATAC/WAKEUP before the next command [DS]
T_REF_SETTLE_S = 0.15                 # internal reference settling; not in our copy of the datasheet
                                      # [UNVERIFIED], chosen above OpenBCI's 100 ms waits
MAX_SPI_HZ = 4_000_000                # issue: <= 4 MHz; also keeps tSDECODE without gaps [ref 1]
SPI_MODE = 1                          # CPOL=0, CPHA=1 [DS][x2]

# ---- opcodes (ref 2) -----------------------------------------------------------------------------
WAKEUP = 0x02
STANDBY = 0x04
RESET = 0x06
START = 0x08
STOP = 0x0A
RDATAC = 0x10
SDATAC = 0x11
RDATA = 0x12
RREG = 0x20   # | addr, then n-1
WREG = 0x40   # | addr, then n-1, then data

# ---- registers (ref 3) ---------------------------------------------------------------------------
REG_ID = 0x00
REG_CONFIG1 = 0x01
REG_CONFIG2 = 0x02
REG_CONFIG3 = 0x03
REG_LOFF = 0x04
REG_CH1SET = 0x05            # CHnSET = 0x05 + n - 1
REG_BIAS_SENSP = 0x0D
REG_BIAS_SENSN = 0x0E
REG_LOFF_SENSP = 0x0F
REG_LOFF_SENSN = 0x10
REG_LOFF_FLIP = 0x11
REG_LOFF_STATP = 0x12
REG_LOFF_STATN = 0x13
REG_GPIO = 0x14
REG_MISC1 = 0x15
REG_MISC2 = 0x16
REG_CONFIG4 = 0x17
N_REGISTERS = 0x18

REGISTER_NAMES = {
    0x00: "ID", 0x01: "CONFIG1", 0x02: "CONFIG2", 0x03: "CONFIG3", 0x04: "LOFF",
    **{0x05 + i: f"CH{i + 1}SET" for i in range(8)},
    0x0D: "BIAS_SENSP", 0x0E: "BIAS_SENSN", 0x0F: "LOFF_SENSP", 0x10: "LOFF_SENSN", 0x11: "LOFF_FLIP",
    0x12: "LOFF_STATP", 0x13: "LOFF_STATN", 0x14: "GPIO", 0x15: "MISC1", 0x16: "MISC2", 0x17: "CONFIG4",
}
# Reset values [DS], ref 3 table (ID depends on the part; 0x3E for an 8-channel REV_ID=001 part)
RESET_VALUES = bytes([0x3E, 0x96, 0xC0, 0x60, 0x00] + [0x61] * 8 + [0x00] * 7 + [0x0F, 0x00, 0x00, 0x00])

RO_MASK = {REG_CONFIG3: 0xFE}   # CONFIG3 bit 0 (BIAS_STAT) is read-only [ref 3]
ID_FAMILY_MASK = 0x1C        # bit 4 = 1 and DEV_ID = 11: "check (id & 0x1C) == 0x1C" [ref 3, ID]
ID_NU_CH = {0b00: 4, 0b01: 6, 0b10: 8}

# CONFIG1: reserved bit7=1, bit4=1; DAISY_EN-bar (bit 6) = 0 daisy / 1 multiple readback [ref 3]
CONFIG1_BASE = 0x90
DATA_RATES_SPS = {16000: 0b000, 8000: 0b001, 4000: 0b010, 2000: 0b011, 1000: 0b100, 500: 0b101, 250: 0b110}
# CONFIG2: 0xC0 base; INT_CAL bit 4; CAL_AMP0 bit 2; CAL_FREQ bits 1:0 [ref 3]
CONFIG2_BASE = 0xC0
CONFIG2_INT_CAL = 0x10
CONFIG2_CAL_AMP_2X = 0x04
CAL_FREQ_BITS = {"slow": 0b00, "fast": 0b01, "dc": 0b11}   # fCLK/2^21, fCLK/2^20, DC
CAL_FREQ_HZ = {"slow": F_CLK_HZ / 2**21, "fast": F_CLK_HZ / 2**20, "dc": 0.0}
# CONFIG3: 0xE0 = reference buffer on; 0xEC = + internal BIASREF + bias amplifier on (OpenBCI) [ref 3]
CONFIG3_REF_ONLY = 0xE0
CONFIG3_REF_AND_BIAS = 0xEC
# LOFF: COMP_TH[7:5] | 0 | ILEAD_OFF[3:2] | FLEAD_OFF[1:0] [ref 3, LOFF]
LOFF_CURRENT_BITS = {6e-9: 0b00, 24e-9: 0b01, 6e-6: 0b10, 24e-6: 0b11}
LOFF_FREQ_DC, LOFF_FREQ_7HZ8, LOFF_FREQ_31HZ2, LOFF_FREQ_FDR_4 = 0b00, 0b01, 0b10, 0b11
LOFF_AC_31HZ2_HZ = F_CLK_HZ / 2**16      # 31.25 Hz
CONFIG4_PD_LOFF_COMP = 0x02              # 1 = lead-off comparators on [ref 3, CONFIG4]
# CHnSET: PD bit 7 | GAIN[6:4] | SRB2 bit 3 | MUX[2:0] [ref 3, CHnSET]
CHSET_PD = 0x80
CHSET_SRB2 = 0x08
GAIN_BITS = {1: 0b000, 2: 0b001, 4: 0b010, 6: 0b011, 8: 0b100, 12: 0b101, 24: 0b110}
GAIN_FROM_BITS = {v: k for k, v in GAIN_BITS.items()}
MUX_NORMAL, MUX_SHORTED, MUX_BIAS_MEAS, MUX_MVDD, MUX_TEMP, MUX_TEST, MUX_BIAS_DRP, MUX_BIAS_DRN = range(8)

# ---- data (ref 4, 5): frame layout and scaling live in appliance.ads1299_frame -----------------------
TEST_SIGNAL_AMPLITUDE_V = V_REF / 2.4e3  # +-1 x (VREFP - VREFN)/2.4 mV = 1.875 mV [ref 3, CONFIG2]
LOFF_EXCITATION_A = 6e-9                 # 6 nA lead-off current used for impedance [ref 7]


class ADS1299Error(RuntimeError):
    """The chip did not answer as the datasheet says (wrong ID, a write that did not stick, no DRDY)."""


class Board(Protocol):
    """What the driver and the acquisition thread need from the board beyond its SPI bus (BrainFlow's sense).

    Two implementations: :class:`HostBoard`, the real chip on the Pi (host clock, DRDY edge times from
    gpiozero, no burst path), and :class:`appliance.ads1299_sim.SimulatedSpiDev`, the simulator (its own,
    possibly accelerated clock, and a burst path). ``appliance.hardware.open_chip`` builds either.

    Attributes
    ----------
    speed : float
        The chip clock in multiples of real time (1.0 for a real chip).
    can_burst : bool
        :meth:`read_frames` can return many frames per call (the simulator only).
    last_edges_ns : ndarray of int64
        DRDY edge times (ns, on :meth:`clock_ns`'s time base) of the frames the last :meth:`read_frames` returned.
    """

    speed: float
    can_burst: bool
    last_edges_ns: np.ndarray

    def clock_ns(self) -> int:
        """The board's monotonic time, ns."""
        ...

    def drdy_edge_ns(self) -> int:
        """Time of the latest DRDY falling edge, ns (same time base as :meth:`clock_ns`)."""
        ...

    def read_frames(self, n: int) -> bytes:
        """Burst path: up to ``n`` consecutive RDATAC frames (only when :attr:`can_burst`)."""
        ...

    def shutdown(self) -> None:
        """Release what the board runs besides the SPI device (the simulator's DRDY thread); after ``spi.close()``."""
        ...


class HostBoard:
    """The real ADS1299 on the host's SPI bus: ``time.monotonic_ns`` and gpiozero's DRDY edge times.

    Parameters
    ----------
    drdy : gpiozero.DigitalInputDevice or None
        The DRDY input (active = low); None: edge times are "now".
    """

    speed = 1.0
    can_burst = False

    def __init__(self, drdy=None) -> None:
        self.drdy = drdy
        self.last_edges_ns = np.zeros(0, np.int64)

    def clock_ns(self) -> int:
        """Host monotonic time, ns."""
        return time.monotonic_ns()

    def drdy_edge_ns(self) -> int:
        """Now minus gpiozero's ``active_time`` (the pin factory timestamps the edge when it sees it), ns."""
        now = time.monotonic_ns()
        if self.drdy is not None:
            active = self.drdy.active_time
            if active is not None:
                return now - int(active * 1e9)
        return now

    def read_frames(self, n: int) -> bytes:
        """A real chip has no burst path: each frame needs its own DRDY."""
        raise ADS1299Error("a real ADS1299 has no burst path: read one frame per DRDY")

    def shutdown(self) -> None:
        """Nothing to release: the real chip keeps converting until the next bring-up resets it."""


def channel_set_byte(*, gain: int = 24, mux: int = MUX_NORMAL, srb2: bool = True, power_down: bool = False) -> int:
    """Compose a CHnSET value (0x68 = gain 24, SRB2 on, normal input, as OpenBCI)."""
    if gain not in GAIN_BITS:
        raise ValueError(f"gain must be one of {sorted(GAIN_BITS)}, got {gain}")
    if not 0 <= mux <= 7:
        raise ValueError(f"mux must be 0..7, got {mux}")
    return (CHSET_PD if power_down else 0) | (GAIN_BITS[gain] << 4) | (CHSET_SRB2 if srb2 else 0) | mux


class ADS1299:
    """One ADS1299 (4, 6 or 8 channels) on a spidev bus.

    Parameters
    ----------
    spi : spidev.SpiDev or SimulatedSpiDev
        An opened SPI device. The driver sets mode 1 and ``max_speed_hz``.
    drdy : gpiozero.DigitalInputDevice or None
        DRDY, configured so that *active* means DRDY low (``pull_up=True`` or ``active_state=False``).
        None: fall back to timed polling (one read per data period), which is only safe with RDATA.
    sample_rate_sps : int
        250..16000 in powers of two (CONFIG1 DR bits).
    gains : int or sequence of int
        PGA gain for every channel, or one per channel (1, 2, 4, 6, 8, 12, 24).
    srb2 : bool
        Connect each channel's P input to SRB2 (common reference), as OpenBCI does.
    bias : bool
        Bias drive on (CONFIG3 0xEC and BIAS_SENSP/N on every channel); off: CONFIG3 0xE0.
    lead_off_dc : bool
        DC lead-off detection on the P electrodes while acquiring (6 nA, 95 % threshold; status bits).
    max_speed_hz : int
        SPI clock, at most 4 MHz.
    reset_pin : gpiozero.DigitalOutputDevice or None
        RESET line if wired (active low); otherwise the RESET opcode is used.
    wait_power_on : bool
        Wait tPOR (2^18 tCLK ~ 128 ms) before talking to the chip, as after power-up.
    bring_up : bool
        Run :meth:`bring_up` now.
    sleep : callable
        ``sleep(seconds)``; a stand-in for tests.
    board : Board or None
        The board's clock, DRDY edge times and burst path: the simulator passes its ``SimulatedSpiDev``;
        default :class:`HostBoard` (the real chip).
    """

    def __init__(
        self,
        spi,
        *,
        drdy=None,
        sample_rate_sps: int = 250,
        gains: int | Sequence[int] = 24,
        srb2: bool = True,
        bias: bool = True,
        lead_off_dc: bool = True,
        max_speed_hz: int = 1_000_000,
        reset_pin=None,
        wait_power_on: bool = True,
        bring_up: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        board: Board | None = None,
    ) -> None:
        if sample_rate_sps not in DATA_RATES_SPS:
            raise ValueError(f"sample_rate_sps must be one of {sorted(DATA_RATES_SPS)}, got {sample_rate_sps}")
        if not 0 < max_speed_hz <= MAX_SPI_HZ:
            raise ValueError(f"max_speed_hz must be in (0, {MAX_SPI_HZ}], got {max_speed_hz}")
        self.spi = spi
        self.drdy = drdy
        self.board: Board = board if board is not None else HostBoard(drdy)
        self.sample_rate_sps = int(sample_rate_sps)
        self._gains_arg = gains
        self.srb2 = srb2
        self.bias = bias
        self.lead_off_dc = lead_off_dc
        self.max_speed_hz = int(max_speed_hz)
        self.reset_pin = reset_pin
        self._sleep = sleep
        self._n_channels: int | None = None
        self._streaming = False
        self.gains: np.ndarray | None = None
        self.bring_ups = 0
        if bring_up:
            self.bring_up(wait_power_on=wait_power_on)

    # ---- properties ----------------------------------------------------------------------------
    @property
    def n_channels(self) -> int:
        """Channel count read from the ID register's NU_CH bits (4, 6 or 8)."""
        if self._n_channels is None:
            raise ADS1299Error("chip not brought up yet: the channel count comes from the ID register")
        return self._n_channels

    @property
    def frame_bytes(self) -> int:
        """Bytes per RDATAC frame for this chip."""
        return frame_bytes(self.n_channels)

    @property
    def period_s(self) -> float:
        """Nominal data period, 1 / sample rate."""
        return 1.0 / self.sample_rate_sps

    @property
    def streaming(self) -> bool:
        """True between :meth:`start_streaming` and :meth:`stop_streaming` (RDATAC + START)."""
        return self._streaming

    def counts_to_uv(self, counts: np.ndarray) -> np.ndarray:
        """Convert counts, shape (n, n_channels), to input-referred microvolts (float64)."""
        return np.asarray(counts, dtype=np.float64) * uv_per_count(self.gains)

    # ---- low-level SPI -------------------------------------------------------------------------
    def command(self, opcode: int) -> None:
        """Send a one-byte system command."""
        self.spi.xfer2([opcode])

    def read_registers(self, address: int, count: int = 1) -> bytes:
        """RREG: ``0x20|addr, count-1`` then clock out ``count`` bytes (chip must be in SDATAC)."""
        self._check_register_range(address, count)
        reply = self.spi.xfer2([RREG | address, count - 1] + [0x00] * count)
        return bytes(reply[2:])

    def write_registers(self, address: int, values: Sequence[int]) -> None:
        """WREG: ``0x40|addr, n-1`` then the data bytes (chip must be in SDATAC)."""
        values = [int(v) & 0xFF for v in values]
        self._check_register_range(address, len(values))
        if self._streaming:
            # The chip would silently ignore it (ref 2): a driver bug, so fail loudly.
            raise ADS1299Error("register write while in RDATAC; call stop_streaming() first")
        self.spi.xfer2([WREG | address, len(values) - 1] + values)

    def read_register(self, address: int) -> int:
        return self.read_registers(address, 1)[0]

    def write_register(self, address: int, value: int) -> None:
        self.write_registers(address, [value])

    @staticmethod
    def _check_register_range(address: int, count: int) -> None:
        if not (0 <= address < N_REGISTERS and 1 <= count and address + count <= N_REGISTERS):
            raise ValueError(f"register range 0x{address:02X}+{count} outside 0x00..0x17")

    # ---- bring-up (ref 6) ----------------------------------------------------------------------
    def bring_up(self, *, wait_power_on: bool = True) -> None:
        """Power-up sequence: tPOR, RESET, SDATAC, ID check, CONFIG1..3, CHnSET, BIAS, LOFF, RDATAC, START."""
        self.spi.mode = SPI_MODE
        self.spi.max_speed_hz = self.max_speed_hz
        self._streaming = False
        if wait_power_on:
            self._sleep(T_POR_S)
        self.reset()
        self.command(SDATAC)              # the chip wakes up in RDATAC: stop it before any register access
        self._sleep(T_CMD_GAP_S)
        self._read_id()
        self._configure()
        self.start_streaming()
        self.bring_ups += 1
        logger.info(
            "ADS1299-%d up: %d SPS, gains %s, bias %s, DC lead-off %s",
            self.n_channels, self.sample_rate_sps, self.gains.tolist(), self.bias, self.lead_off_dc,
        )

    def reinitialise(self, reason: str) -> None:
        """Recover from a stall or a corrupt stream: full bring-up without the power-on wait."""
        logger.warning("re-initialising ADS1299: %s", reason)
        self.bring_up(wait_power_on=False)

    def reset(self) -> None:
        """RESET pin pulse (if wired) or RESET opcode, then wait 18 tCLK."""
        if self.reset_pin is not None:
            self.reset_pin.off()          # active low pulse, >= 2 tCLK
            self._sleep(4e-6)
            self.reset_pin.on()
        else:
            # In RDATAC (the power-up default, or a stream we are recovering) the chip ignores every
            # opcode but SDATAC [ref 2], so leave RDATAC first or the RESET is lost.
            self.command(SDATAC)
            self._sleep(T_CMD_GAP_S)
            self.command(RESET)
        self._sleep(T_RESET_WAIT_S)
        self._streaming = False

    def _read_id(self) -> None:
        chip_id = self.read_register(REG_ID)
        if chip_id & ID_FAMILY_MASK != ID_FAMILY_MASK:
            raise ADS1299Error(
                f"ID register reads 0x{chip_id:02X}, not an ADS1299 ((id & 0x1C) != 0x1C); "
                "check power-up time, SPI mode 1 and that SDATAC was accepted"
            )
        nu_ch = chip_id & 0x03
        if nu_ch not in ID_NU_CH:
            raise ADS1299Error(f"ID 0x{chip_id:02X} has reserved channel-count bits {nu_ch:02b}")
        self.chip_id = chip_id
        self._n_channels = ID_NU_CH[nu_ch]
        gains = self._gains_arg
        if isinstance(gains, (int, np.integer)):
            gains = [int(gains)] * self._n_channels
        if len(gains) != self._n_channels:
            raise ValueError(f"gains has {len(gains)} entries but the chip has {self._n_channels} channels")
        for g in gains:
            if g not in GAIN_BITS:
                raise ValueError(f"gain must be one of {sorted(GAIN_BITS)}, got {g}")
        self.gains = np.array(gains, dtype=np.int64)

    def _register_plan(self, *, mux: int = MUX_NORMAL, config2: int = CONFIG2_BASE,
                       loff: int | None = None, loff_sensp: int | None = None,
                       loff_sensn: int = 0) -> dict[int, int]:
        n = self.n_channels
        all_ch = (1 << n) - 1
        plan = {
            REG_CONFIG1: CONFIG1_BASE | DATA_RATES_SPS[self.sample_rate_sps],
            REG_CONFIG2: config2,
            REG_CONFIG3: CONFIG3_REF_AND_BIAS if self.bias else CONFIG3_REF_ONLY,
            # DC lead-off: threshold 95 % (000), 6 nA, DC [ref 7]
            REG_LOFF: (LOFF_CURRENT_BITS[6e-9] << 2 | LOFF_FREQ_DC) if loff is None else loff,
            REG_BIAS_SENSP: all_ch if self.bias else 0,
            REG_BIAS_SENSN: all_ch if self.bias else 0,
            REG_LOFF_SENSP: (all_ch if self.lead_off_dc else 0) if loff_sensp is None else loff_sensp,
            REG_LOFF_SENSN: loff_sensn,
            REG_LOFF_FLIP: 0,
            REG_MISC1: 0x00,              # SRB1 open: the reference goes through SRB2 per channel
            REG_MISC2: 0x00,
            REG_CONFIG4: CONFIG4_PD_LOFF_COMP if (self.lead_off_dc or loff_sensp or loff_sensn) else 0x00,
        }
        for c in range(n):
            plan[REG_CH1SET + c] = channel_set_byte(gain=int(self.gains[c]), mux=mux, srb2=self.srb2)
        return plan

    def _apply(self, plan: dict[int, int]) -> None:
        config3 = plan.pop(REG_CONFIG3)
        self.write_register(REG_CONFIG3, config3)   # reference buffer first, then let it settle
        self._sleep(T_REF_SETTLE_S if self.bring_ups == 0 else 0.0)
        for addr in sorted(plan):
            self.write_register(addr, plan[addr])
        plan[REG_CONFIG3] = config3
        readback = self.read_registers(0x01, REG_CONFIG4)  # 0x01..0x17
        bad = [
            f"{REGISTER_NAMES[a]}=0x{readback[a - 1]:02X} (wrote 0x{v:02X})"
            for a, v in sorted(plan.items())
            if readback[a - 1] & RO_MASK.get(a, 0xFF) != v & RO_MASK.get(a, 0xFF)
        ]
        if bad:
            raise ADS1299Error("register writes did not stick: " + ", ".join(bad))

    def _configure(self, **plan_kw) -> None:
        self._apply(self._register_plan(**plan_kw))

    def start_streaming(self) -> None:
        """START, then RDATAC.

        OpenBCI sends RDATAC then START; the datasheet's rule that RDATAC ignores every opcode but
        SDATAC [ref 2] would drop that START. START first (in SDATAC) is right under either reading.
        """
        self.command(START)
        self.command(RDATAC)
        self._sleep(T_CMD_GAP_S)
        self._streaming = True

    def stop_streaming(self) -> None:
        """SDATAC, then STOP (same reasoning as :meth:`start_streaming`), so registers may be accessed."""
        self.command(SDATAC)
        self._sleep(T_CMD_GAP_S)
        self.command(STOP)
        self._streaming = False

    # ---- data ----------------------------------------------------------------------------------
    def read_frame(self) -> bytes:
        """Clock one RDATAC frame out (call after DRDY falls). Returns the raw bytes."""
        return bytes(self.spi.xfer2([0] * self.frame_bytes))

    def wait_drdy(self, timeout_s: float) -> bool:
        """Wait for DRDY low. Without a DRDY line, sleep one data period (polling fallback)."""
        if self.drdy is None:
            self._sleep(self.period_s)
            return True
        return self.drdy.wait_for_active(timeout_s)

    def drdy_edge_ns(self) -> int:
        """Monotonic time (ns) of the latest DRDY falling edge, from the board (:meth:`Board.drdy_edge_ns`).

        The simulator reports its exact (possibly accelerated) edge time; with a real pin the edge time
        is now minus gpiozero's ``active_time`` (the pin factory timestamps the edge when it sees it).
        """
        return self.board.drdy_edge_ns()

    def clock_ns(self) -> int:
        """The time base of :meth:`drdy_edge_ns` (the simulator's, or ``time.monotonic_ns``)."""
        return self.board.clock_ns()

    def read_frames(self, n_frames: int, *, timeout_s: float = 1.0) -> bytes:
        """Read ``n_frames`` frames the protocol way (DRDY, then one frame per transfer)."""
        return self.read_frames_timed(n_frames, timeout_s=timeout_s)[0]

    def read_frames_timed(self, n_frames: int, *, timeout_s: float = 1.0) -> tuple[bytes, np.ndarray]:
        """Like :meth:`read_frames`, plus each frame's DRDY edge time (ns, int64).

        A frame the host was too late for is simply absent; the edge times show the gap.
        """
        if not self._streaming:
            raise ADS1299Error("not streaming; call start_streaming() first")
        out = bytearray()
        edges = np.empty(n_frames, np.int64)
        for i in range(n_frames):
            if not self.wait_drdy(timeout_s):
                raise ADS1299Error(f"no DRDY within {timeout_s} s")
            edges[i] = self.drdy_edge_ns() if self.drdy is not None else self.clock_ns()
            out += self.read_frame()
        return bytes(out), edges

    def decode(self, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
        """Pure-numpy decode of concatenated frames: (status uint32 (n,), counts int32 (n, n_channels)).

        The acquisition path decodes in C (:class:`appliance.ring.FrameRing`); this one is for
        self-tests and as the reference the bench compares against.
        """
        return decode_frames(raw, self.n_channels)

    # ---- self-tests: capture here, conclusions in appliance.ads1299_selftest -------------------------
    @contextlib.contextmanager
    def _reconfigured(self, **plan_kw) -> Iterator[None]:
        """Stream with a self-test's register plan (:meth:`_register_plan` keywords), then restore the normal
        plan, streaming again only if the chip was streaming before."""
        was_streaming = self._streaming
        if was_streaming:
            self.stop_streaming()
        try:
            self._configure(**plan_kw)
            self.start_streaming()
            yield
        finally:
            self.stop_streaming()
            self._configure()
            if was_streaming:
                self.start_streaming()

    def _collect_uv(self, duration_s: float, settle_s: float = 0.2,
                    **plan_kw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reconfigure, stream ``settle_s + duration_s``, restore. Returns (status, uV, time_s) of the
        frames after settling; time_s comes from the DRDY edges, so frames the host missed leave gaps
        that the estimators (appliance.ads1299_selftest) take into account instead of assuming a regular grid."""
        with self._reconfigured(**plan_kw):
            n_settle = int(round(settle_s * self.sample_rate_sps))
            n = int(round(duration_s * self.sample_rate_sps))
            raw, edges = self.read_frames_timed(n_settle + n)
        status, counts = self.decode(raw)
        if not np.all(is_synced(status)):
            raise ADS1299Error("corrupt frames during self-test")
        t_s = (edges[n_settle:] - edges[n_settle]) / 1e9
        missed = int(round(t_s[-1] * self.sample_rate_sps)) + 1 - n if n else 0
        if missed > 3 * n:             # under a quarter of the frames: too thin to judge the chip
            raise ADS1299Error(f"self-test missed {missed} of {n + missed} frames: host too slow")
        if missed > n // 10:
            warnings.warn(f"self-test missed {missed} of {n + missed} frames (busy host); the estimates use "
                          "the frames' DRDY times, but check the host's load", RuntimeWarning, stacklevel=3)
        return status[n_settle:], self.counts_to_uv(counts[n_settle:]), t_s

    def test_signal(self, *, duration_s: float = 2.0, frequency: str = "fast", double_amplitude: bool = False,
                    tolerance: float = 0.1) -> TestSignalResult:
        """Route the internal test signal (CONFIG2 INT_CAL) to every channel and check it.

        Expected: square wave of +-1.875 mV (x2 with ``double_amplitude``) at fCLK/2^20 = 1.95 Hz
        (``"fast"``) or fCLK/2^21 = 0.98 Hz (``"slow"``) [ref 3, CONFIG2].
        """
        config2 = CONFIG2_BASE | CONFIG2_INT_CAL | (CONFIG2_CAL_AMP_2X if double_amplitude else 0) \
            | CAL_FREQ_BITS[frequency]
        _, uv, t_s = self._collect_uv(duration_s, mux=MUX_TEST, config2=config2)
        expected_uv = TEST_SIGNAL_AMPLITUDE_V * 1e6 * (2 if double_amplitude else 1)
        result = analyse_test_signal(uv, t_s, expected_amplitude_uv=expected_uv,
                                     expected_frequency_hz=CAL_FREQ_HZ[frequency], tolerance=tolerance)
        if not result.passed.all():
            logger.warning("test signal failed on channels %s: %s", np.flatnonzero(~result.passed) + 1, result)
        return result

    def input_noise(self, *, duration_s: float = 2.0) -> NoiseResult:
        """Inputs shorted (MUX 001): input-referred noise per channel (datasheet: ~0.14 uVrms at gain 24)."""
        _, uv, _ = self._collect_uv(duration_s, mux=MUX_SHORTED)
        return analyse_noise(uv)

    def lead_off_status(self, *, duration_s: float = 0.2) -> LeadOffStatus:
        """DC lead-off comparators on both electrodes of every channel; True = off (any frame in window)."""
        all_ch = (1 << self.n_channels) - 1
        with self._reconfigured(loff_sensp=all_ch, loff_sensn=all_ch):
            status, _ = self.decode(self.read_frames(max(1, int(duration_s * self.sample_rate_sps))))
        return analyse_lead_off(status, n_channels=self.n_channels)

    def impedance_ohm(self, *, duration_s: float = 2.0, series_resistance_ohm: float = 0.0) -> np.ndarray:
        """Electrode impedance from the 6 nA AC lead-off excitation at 31.25 Hz [ref 7].

        The current is driven into each P electrode (LOFF_SENSP); the voltage it makes across the
        electrode is read back and its 31.25 Hz component measured by least squares against a sine and
        a cosine at the frames' DRDY times (a lock-in; missed frames only thin the fit).
        OpenBCI uses ``sqrt(2) * rms / 6 nA`` after a band-pass, i.e. the fundamental's amplitude; the
        excitation is a square wave, whose amplitude is pi/4 of its fundamental's, so we apply that
        factor [square-wave shape: UNVERIFIED in our datasheet copy; the simulator draws a square wave].
        ``series_resistance_ohm`` (2200 on a Cyton) is subtracted.
        """
        loff = (LOFF_CURRENT_BITS[LOFF_EXCITATION_A] << 2) | LOFF_FREQ_31HZ2
        all_ch = (1 << self.n_channels) - 1
        _, uv, t_s = self._collect_uv(duration_s, loff=loff, loff_sensp=all_ch)
        return impedance_from_lead_off(uv, t_s, excitation_a=LOFF_EXCITATION_A, excitation_hz=LOFF_AC_31HZ2_HZ,
                                       series_resistance_ohm=series_resistance_ohm)
