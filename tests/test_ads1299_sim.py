"""The chip simulator at the protocol level: what a driver sees when it gets things right or wrong."""
from __future__ import annotations

import time

import numpy as np
import pytest

from appliance import ads1299 as ads
from appliance.ads1299_frame import decode_frames, uv_per_count
from appliance.ads1299_sim import Fault, SimulatedADS1299, SimulatedSpiDev, simulated_board
from appliance.signal_sources import EdfSource, NoiseSource, SineSource


def powered_spi(**kw) -> SimulatedSpiDev:
    """A simulated chip past tPOR, in SDATAC, SPI mode 1 (no DRDY thread)."""
    kw.setdefault("speed", float("inf"))
    spi = SimulatedSpiDev(**kw)
    spi.open(0, 0)
    spi.mode = 1
    spi.xfer2([ads.SDATAC])
    return spi


def rreg(spi, addr, n=1):
    return spi.xfer2([ads.RREG | addr, n - 1] + [0] * n)[2:]


@pytest.mark.parametrize("channels,chip_id", [(4, 0x3C), (6, 0x3D), (8, 0x3E)])
def test_id_per_variant_and_reset_values(channels, chip_id):
    spi = powered_spi(variant_channels=channels)
    regs = rreg(spi, 0, ads.N_REGISTERS)
    assert regs[0] == chip_id
    assert bytes(regs[1:]) == ads.RESET_VALUES[1:]


def test_wreg_rreg_and_read_only_bits():
    spi = powered_spi()
    spi.xfer2([ads.WREG | ads.REG_CH1SET, 1, 0x68, 0x50])
    assert rreg(spi, ads.REG_CH1SET, 2) == [0x68, 0x50]
    spi.xfer2([ads.WREG | ads.REG_ID, 0, 0x00])               # ID is read-only
    assert rreg(spi, ads.REG_ID) == [0x3E]
    spi.xfer2([ads.WREG | ads.REG_CONFIG1, 0, 0x00])           # reserved bits 7 and 4 stay 1
    assert rreg(spi, ads.REG_CONFIG1) == [0x90]
    spi.xfer2([ads.WREG | ads.REG_CONFIG3, 0, 0x00])           # bits 6:5 reserved = 1
    assert rreg(spi, ads.REG_CONFIG3) == [0x60]
    spi.xfer2([ads.RESET])
    assert rreg(spi, ads.REG_CH1SET) == [0]                    # back in RDATAC after RESET: no reply
    spi.xfer2([ads.SDATAC])
    assert rreg(spi, ads.REG_CH1SET) == [0x61]                 # reset value


def test_rdatac_ignores_everything_but_sdatac():
    spi = powered_spi()
    spi.xfer2([ads.RDATAC])
    spi.xfer2([ads.WREG | ads.REG_CH1SET, 0, 0x00])
    assert spi.chip.truth.ignored_writes == 1
    spi.xfer2([ads.SDATAC])
    assert rreg(spi, ads.REG_CH1SET) == [0x61]                 # the write in RDATAC was lost


def test_commands_before_tpor_are_ignored():
    spi = SimulatedSpiDev(speed=1.0)
    spi.open()
    spi.mode = 1
    spi.xfer2([ads.SDATAC])
    assert rreg(spi, ads.REG_ID) == [0]                        # too early: DOUT reads zeros
    time.sleep(ads.T_POR_S)
    spi.xfer2([ads.SDATAC])
    assert rreg(spi, ads.REG_ID) == [0x3E]
    spi.chip.close()


def test_wrong_spi_mode_garbles_replies():
    spi = powered_spi()
    spi.mode = 0
    assert rreg(spi, ads.REG_ID) != [0x3E]


def test_xfer_releases_cs_between_bytes_so_rreg_breaks():
    spi = powered_spi()
    assert spi.xfer([ads.RREG | ads.REG_ID, 0, 0])[2] == 0     # each byte its own CS window
    assert spi.xfer2([ads.RREG | ads.REG_ID, 0, 0])[2] == 0x3E
    assert spi.readbytes(3) == [0, 0, 0]
    spi.writebytes([ads.WREG | ads.REG_MISC1, 0, 0x20])
    assert rreg(spi, ads.REG_MISC1) == [0x20]


def test_closed_device_and_too_fast_clock_fail_like_spidev():
    spi = SimulatedSpiDev(speed=float("inf"))
    with pytest.raises(OSError):
        spi.xfer2([0])
    spi.open()
    spi.max_speed_hz = 30_000_000
    with pytest.raises(OSError):
        spi.xfer2([0])


def test_rdata_in_sdatac_and_frame_layout():
    spi = powered_spi(source=SineSource(amplitude_uv=0.0, offset_uv=100.0), seed=1)
    spi.xfer2([ads.START, ads.RDATAC])
    burst = spi.read_frames(5)                                 # let conversions run (burst clock)
    spi.xfer2([ads.SDATAC])
    reply = spi.xfer2([ads.RDATA] + [0] * 27)
    frame = bytes(reply[1:])
    assert frame == burst[-27:]                                # RDATA clocks out the output register
    assert frame[0] >> 4 == 0b1100
    v = int.from_bytes(frame[3:6], "big")
    # reset CHnSET is 0x61: gain 24 with the input shorted (MUX 001), so the 100 uV source is not seen
    assert abs(v if v < 2**23 else v - 2**24) < 200


def test_drdy_pin_toggles_at_the_data_rate(mock_pins):
    pin = mock_pins.pin(25)
    spi = SimulatedSpiDev(drdy_pin=pin, speed=4.0)
    spi.open()
    spi.mode = 1
    time.sleep(ads.T_POR_S / 4)
    spi.xfer2([ads.SDATAC])
    spi.xfer2([ads.START])
    lows = []

    def on_change(ticks, state):      # gpiozero keeps only a weak reference: hold it here
        if not state:
            lows.append(ticks)

    pin.edges = "falling"
    pin.when_changed = on_change
    t_start = spi.clock_ns()
    time.sleep(0.5)                                            # ~2 simulated s
    # A busy host starves the simulator's DRDY thread (here: 0.25 s on purpose; a loaded host does it by chance). While the chip runs,
    # its clock waits for that thread, so the rate holds in simulated time; after STOP the clock runs free, so
    # the elapsed time is read before it (read after, it counted 1 s without edges: 418 edges for 690 expected)
    with spi.chip._lock:
        time.sleep(0.25)
        t_end = spi.clock_ns()
        spi.xfer2([ads.STOP])
    elapsed_s = (t_end - t_start) / 1e9
    n = len(lows)
    assert elapsed_s > 1.0
    assert n == pytest.approx(elapsed_s * 250 - 4, abs=8)      # 250 SPS, minus ~4 periods of settling
    # nobody read them: all but the newest were overwritten, and the chip said nothing (no overrun flag)
    assert spi.chip.truth.overwritten >= n - 1
    spi.chip.close()


def test_read_without_new_drdy_repeats_the_old_frame():
    spi = powered_spi()
    spi.xfer2([ads.START, ads.RDATAC])
    spi.read_frames(3)
    a = spi.xfer2([0] * 27)
    b = spi.xfer2([0] * 27)
    assert a == b and spi.chip.truth.stale_reads >= 1


@pytest.mark.parametrize("channels", [4, 6, 8])
def test_burst_frames_have_the_variant_size_and_sync(channels):
    spi = powered_spi(variant_channels=channels)
    spi.xfer2([ads.START])
    spi.xfer2([ads.RDATAC])
    data = spi.read_frames(100)
    fb = 3 + 3 * channels
    assert len(data) == 100 * fb
    frames = np.frombuffer(data, np.uint8).reshape(100, fb)
    assert np.all(frames[:, 0] & 0xF0 == 0xC0)
    assert np.all(np.diff(spi.last_edges_ns) == spi.last_edges_ns[1] - spi.last_edges_ns[0])


def test_clock_drift_shows_in_edge_spacing():
    spi = powered_spi(clock_ppm=500.0)
    spi.xfer2([ads.START])
    spi.xfer2([ads.RDATAC])
    spi.read_frames(10)
    period = np.diff(spi.last_edges_ns).mean()
    assert period == pytest.approx(4e6 / 1.0005, rel=1e-6)


def burst_board(**kw):
    return simulated_board(speed=float("inf"), drdy_pin_number=None, **kw)


def test_faults_in_the_burst_path():
    faults = [Fault("bitflip", 100), Fault("drop_drdy", 200, n_frames=2), Fault("stuck", 300, n_frames=50, channel=2),
              Fault("rail", 400, n_frames=5, channel=4), Fault("electrode_off", 500, n_frames=5, channel=1),
              Fault("stall", 900)]
    board = burst_board(faults=faults, source=NoiseSource(rms_uv=20.0))
    spi, sim = board.spi, board.sim
    k0 = sim.truth.conversions
    assert k0 == 0
    data = spi.read_frames(1000)
    fr = np.frombuffer(data, np.uint8).reshape(-1, 27)
    assert fr.shape[0] == 900 - 2                              # stall at 900, two edges dropped
    edges = spi.last_edges_ns
    gaps = np.rint(np.diff(edges) / np.diff(edges).min()).astype(int)
    assert sorted(set(gaps.tolist())) == [1, 3]                # one gap of 3 periods: 2 missing frames
    assert fr[100, 0] & 0xF0 == 0x40                           # sync nibble flipped
    st, counts = decode_frames(data, 8)
    assert np.all(counts[300 - 2 + 0:300 - 2 + 50, 2] == counts[298, 2])
    assert np.all(counts[398:403, 4] == 2**23 - 1)
    loffp = (st >> 12) & 0xFF
    assert np.all(loffp[498:503] == 0b10) and np.all(loffp[:498] == 0)
    assert np.all(counts[498:503, 1] == 2**23 - 1)             # the lead-off current rails the input
    assert sim.stalled and spi.read_frames(100) == b""
    board.chip.reinitialise("test")                            # RESET ends the stall
    assert len(spi.read_frames(10)) == 270
    board.close()


def test_test_signal_shorted_and_gains_scale_counts():
    board = burst_board()
    chip, spi = board.chip, board.spi
    chip.stop_streaming()
    chip.write_register(ads.REG_CONFIG2, 0xD5)                  # INT_CAL, 2x amplitude, fCLK/2^20
    for c in range(8):
        chip.write_register(ads.REG_CH1SET + c, ads.channel_set_byte(gain=[1, 24][c % 2], mux=ads.MUX_TEST))
    chip.start_streaming()
    st, counts = decode_frames(spi.read_frames(1000), 8)
    uv = counts * np.array([uv_per_count([1, 24][c % 2]) for c in range(8)])   # gains written by hand
    assert np.percentile(uv, 95, axis=0) == pytest.approx(3750, rel=0.01)
    assert np.percentile(uv, 5, axis=0) == pytest.approx(-3750, rel=0.01)
    board.close()


def test_edf_replay_resampled_and_scaled(tmp_path):
    edfio = pytest.importorskip("edfio")
    fs_file = 100.0
    t = np.arange(int(60 * fs_file)) / fs_file
    sig = 40.0 * np.sin(2 * np.pi * 5.0 * t)                   # 40 uV, 5 Hz
    edf = edfio.Edf([edfio.EdfSignal(sig, fs_file, label="EEG C3", physical_dimension="uV",
                                     physical_range=(-200, 200)),
                     edfio.EdfSignal(sig / 1000.0, fs_file, label="EEG C4", physical_dimension="mV",
                                     physical_range=(-0.2, 0.2))])
    path = tmp_path / "night.edf"
    edf.write(path)
    src = EdfSource(path, fs_hz=250.0)
    assert src.n_channels == 2 and src.fs_hz == 250.0
    x = src.read(2500)
    assert x.shape == (2500, 2)
    assert np.abs(x[500:2000]).max() == pytest.approx(40.0, rel=0.03)
    assert np.allclose(x[:, 0], x[:, 1], atol=0.5)             # mV signal came back in uV
    # through the chip at gain 24: counts = uV / 0.02235
    board = burst_board(source=EdfSource(path, fs_hz=250.0), variant_channels=4)
    st, counts = decode_frames(board.spi.read_frames(2500), 4)
    uv = board.chip.counts_to_uv(counts)
    assert np.abs(uv[500:2000, 0]).max() == pytest.approx(40.0, rel=0.05)
    assert np.allclose(uv[:, 2], uv[:, 0], atol=2.0)           # 2 file signals feed 4 channels cyclically
    board.close()


def test_edf_replay_of_real_psg_excerpt(shared):
    path = shared / "data" / "dreams-spindles" / "excerpt3.edf"
    if not path.exists():
        pytest.skip("excerpt3.edf not in ../shared")
    src = EdfSource(path, fs_hz=250.0, channels=[0])
    x = src.read(250 * 30)
    assert x.shape == (7500, 1) and np.isfinite(x).all() and x.std() > 1.0


def test_synthetic_sleep_eeg_is_accepted_unchanged():
    synthetic_eeg = pytest.importorskip("appliance.synthetic_eeg")
    from appliance.protocol.stages import Stage

    src = synthetic_eeg.SyntheticSleepEEG(np.array([Stage.N2, Stage.N3]), fs_hz=250.0, n_channels=8, seed=3)
    board = burst_board(source=src)
    st, counts = decode_frames(board.spi.read_frames(2 * 7500), 8)
    uv = board.chip.counts_to_uv(counts)
    assert uv[:, 0].std() > 5.0                                # real EEG-sized signal came through
    assert np.corrcoef(uv[:, 0], src.render_channel(0)[:15000])[0, 1] > 0.99
    board.close()


def test_fault_validation():
    with pytest.raises(ValueError):
        Fault("melt", 0)
    with pytest.raises(ValueError):
        Fault("stuck", -1)
    with pytest.raises(ValueError):
        SimulatedADS1299(variant_channels=5)


def test_standby_stops_conversions_until_wakeup():
    spi = powered_spi()
    spi.xfer2([ads.START, ads.RDATAC])
    assert len(spi.read_frames(10)) == 270
    spi.xfer2([ads.STANDBY])                                   # ignored in RDATAC
    assert len(spi.read_frames(10)) == 270
    spi.xfer2([ads.SDATAC])
    spi.xfer2([ads.STANDBY, ads.RDATAC])
    assert spi.read_frames(10) == b""
    spi.xfer2([ads.SDATAC])
    spi.xfer2([ads.WAKEUP, ads.RDATAC])
    assert len(spi.read_frames(10)) == 270
