"""Acquisition benchmarks: native decode+ring vs numpy, the Python cost of the read loop, CPU share at
250 SPS x 8 in real time, and the cost of a simulated night on the burst path.

Every figure is a ratio against, or a measurement next to, a baseline run in the same process.
"""
from __future__ import annotations

import logging
import threading
import time
import types

import numpy as np

from appliance.acquisition import Acquisition
from appliance.ads1299_frame import decode_frames, frame_bytes, is_synced
from appliance.ads1299_sim import SimulatedADS1299, simulated_board
from appliance.signal_sources import NoiseSource
from appliance.ring import FrameRing

FS = 250
N_CH = 8
FB = frame_bytes(N_CH)


def _frames(n: int) -> list[bytes]:
    sim = SimulatedADS1299(N_CH, speed=float("inf"), source=NoiseSource(rms_uv=30.0))
    sim.regs[5:13] = bytes([0x68] * 8)          # normal inputs, gain 24
    data = sim.render(0, n).tobytes()
    return [data[i * FB:(i + 1) * FB] for i in range(n)]


class NumpyRing:
    """The baseline: the same job (decode one frame, store it, pop blocks) in numpy + Python."""

    def __init__(self, capacity: int, n_channels: int) -> None:
        self.counts = np.empty((capacity, n_channels), np.int32)
        self.status = np.empty(capacity, np.uint32)
        self.ts = np.empty(capacity, np.int64)
        self.head = self.tail = 0
        self.capacity = capacity

    def push_raw(self, data: bytes, timestamp_ns: int) -> int:
        status, counts = decode_frames(data, N_CH)
        if not is_synced(int(status[0])):
            return 0
        slot = self.head % self.capacity
        self.counts[slot] = counts[0]
        self.status[slot] = status[0]
        self.ts[slot] = timestamp_ns
        self.head += 1
        return 1

    def pop(self, n: int):
        k = min(n, self.head - self.tail)
        idx = np.arange(self.tail, self.tail + k) % self.capacity
        self.tail += k
        return self.counts[idx], self.status[idx], self.ts[idx]


def _decode_ratio(n: int) -> tuple[float, float]:
    frames = _frames(n)
    ring = FrameRing(4096, N_CH)
    push = ring.push_raw
    t = time.perf_counter()
    for i, f in enumerate(frames):
        push(f, i)
        if i & 255 == 255:
            ring.pop(256)
    ring.pop(4096)
    native = n / (time.perf_counter() - t)
    base = NumpyRing(4096, N_CH)
    m = max(n // 4, 1000)
    t = time.perf_counter()
    for i, f in enumerate(frames[:m]):
        base.push_raw(f, i)
        if i & 255 == 255:
            base.pop(256)
    numpy_fps = m / (time.perf_counter() - t)
    return native, numpy_fps


def _bulk_ratio(n_blocks: int) -> tuple[float, float]:
    frames = b"".join(_frames(FS))
    ring = FrameRing(4 * FS, N_CH)
    t = time.perf_counter()
    for i in range(n_blocks):
        ring.push_raw(frames, i, 4_000_000)
        ring.pop(FS)
    native = n_blocks * FS / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(n_blocks):
        decode_frames(frames, N_CH)
    numpy_fps = n_blocks * FS / (time.perf_counter() - t)
    return native, numpy_fps


class _FakeSpi:
    """Returns a fixed frame: isolates the driver loop's own Python cost from the bus."""

    def __init__(self, frame: bytes) -> None:
        self._frame = list(frame)

    def xfer2(self, values):
        return self._frame


class _FakeDrdy:
    is_active = True
    active_time = 0.0


class _FakeChip:
    n_channels = N_CH
    frame_bytes = FB
    sample_rate_sps = FS
    drdy = _FakeDrdy()

    def __init__(self, frame: bytes) -> None:
        self.spi = _FakeSpi(frame)
        self._t = 0
        # what Acquisition asks of the board (appliance.ads1299.Board): real time, no burst path
        self.board = types.SimpleNamespace(speed=1.0, can_burst=False)

    def drdy_edge_ns(self) -> int:
        self._t += 4_000_000
        return self._t

    def clock_ns(self) -> int:
        return self._t


def _read_loop_cost(n: int) -> tuple[float, float]:
    """Python CPU per frame of the acquisition's DRDY-path body (edge handling, read, checks, push)."""
    frame = _frames(1)[0]
    chip = _FakeChip(frame)
    ring = FrameRing(n + 1, N_CH)
    acq = Acquisition(chip, ring, mode="drdy", gil_switch_interval_s=None)
    put, get = acq._edges.put, acq._edges.get_nowait
    t = time.process_time()
    for _ in range(n):
        put(0)                      # what the edge callback does
        get()
        acq._read_one()
    per_frame = (time.process_time() - t) / n
    spi = chip.spi
    t = time.process_time()
    for _ in range(n):
        bytes(spi.xfer2(None))
    stub = (time.process_time() - t) / n
    return per_frame * 1e6, stub * 1e6


def _realtime_share(seconds: float) -> tuple[float, float, float, int, int]:
    """Real-time 250 SPS x 8 on the DRDY path with the simulator: (acquisition thread CPU share without
    the simulated bus, the same with it, whole process incl. the simulator, frames read, missed)."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    old = Device.pin_factory
    Device.pin_factory = MockFactory(pin_class=MockPWMPin)
    try:
        board = simulated_board(speed=1.0, source=NoiseSource(rms_uv=30.0))
        ring = FrameRing(10 * FS, N_CH)
        acq = Acquisition(board.chip, ring, mode="drdy")
        thread_cpu = {}
        # The simulated chip runs inside xfer2 on the caller's thread; on the box that is spidev's ioctl.
        # Time it separately so the acquisition's own share can be told apart from the simulator's.
        bus = {"s": 0.0}
        real_xfer2 = board.spi.xfer2

        def timed_xfer2(values, *a, **k):
            t0 = time.thread_time()
            try:
                return real_xfer2(values, *a, **k)
            finally:
                bus["s"] += time.thread_time() - t0

        board.spi.xfer2 = timed_xfer2
        orig = acq._run_drdy

        def timed():
            t0 = time.thread_time()
            try:
                orig()
            finally:
                thread_cpu["s"] = time.thread_time() - t0

        acq._run_drdy = timed
        stop = threading.Event()

        def consume():
            while not stop.is_set():
                ring.pop(1000)
                stop.wait(0.1)

        cons = threading.Thread(target=consume, daemon=True)
        cons.start()
        p0, w0 = time.process_time(), time.monotonic()
        acq.start()
        time.sleep(seconds)
        acq.stop()
        wall = time.monotonic() - w0
        proc = time.process_time() - p0
        stop.set()
        cons.join()
        board.close()
        c = acq.counters
        return ((thread_cpu["s"] - bus["s"]) / wall, thread_cpu["s"] / wall, proc / wall, c.frames_read,
                c.missed_drdy)
    finally:
        Device.pin_factory.reset()
        Device.pin_factory = old


def _night_cost(hours: float) -> tuple[float, float, int]:
    """Whole-night burst replay: simulator + acquisition + a consumer popping everything."""
    n = int(hours * 3600 * FS)
    board = simulated_board(speed=float("inf"), drdy_pin_number=None, source=NoiseSource(rms_uv=30.0))
    ring = FrameRing(60 * FS, N_CH)
    acq = Acquisition(board.chip, ring, mode="burst", burst_frames=2500, backpressure=True)
    got = 0
    p0, w0 = time.process_time(), time.monotonic()
    acq.start()
    while got < n:
        k = len(ring.pop(10_000))
        got += k
        if not k:
            time.sleep(0.001)
    acq.stop()
    cpu, wall = time.process_time() - p0, time.monotonic() - w0
    board.close()
    return cpu, wall, got


def run(*, quick: bool = False) -> str:
    # the stub chip repeats one frame (a "stuck channel") and a shared host misses frames: both are
    # reported as faults; keep them out of the bench output
    log = logging.getLogger("appliance.acquisition")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return _run(quick=quick)
    finally:
        log.setLevel(level)


def _run(*, quick: bool) -> str:
    n = 20_000 if quick else 200_000
    # best of three: the host is shared, and the best run is the least disturbed one for both sides
    native_fps, numpy_fps = (max(v) for v in zip(*[_decode_ratio(n) for _ in range(3)]))
    bulk_native, bulk_numpy = (max(v) for v in zip(*[_bulk_ratio(40 if quick else 400) for _ in range(3)]))
    loop_us, stub_us = _read_loop_cost(20_000 if quick else 100_000)
    rt_s = 2.0 if quick else 6.0
    acq_share, acq_bus_share, proc_share, frames, missed = _realtime_share(rt_s)
    hours = 0.5 if quick else 8.0
    night_cpu, night_wall, night_frames = _night_cost(hours)
    return "\n".join([
        "## Acquisition",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| native decode + push + pop, single-frame pushes | {native_fps:,.0f} frames/s |",
        f"| numpy decoder + numpy ring, same bytes, single-frame pushes (baseline) | {numpy_fps:,.0f} frames/s |",
        f"| **ratio native / numpy, single frames** (goal >= 20x) | **{native_fps / numpy_fps:.1f}x** |",
        f"| native decode + push + pop, 250-frame pushes | {bulk_native:,.0f} frames/s |",
        f"| numpy decode only (no store), 250-frame blocks | {bulk_numpy:,.0f} frames/s |",
        f"| ratio, 250-frame blocks (numpy is fine in bulk; the native path matters per frame) | "
        f"{bulk_native / bulk_numpy:.1f}x |",
        f"| Python CPU per frame, DRDY-path read loop (edge wake, level check, read, checks, push) | "
        f"{loop_us:.1f} us (of which {stub_us:.1f} us is the stub SPI transfer) |",
        f"| **CPU share of one core, acquisition thread, real time 250 SPS x 8** (goal < 2 %) | "
        f"**{acq_share * 100:.2f} %** ({frames} frames in {rt_s:.0f} s, {missed} missed) |",
        f"| same, including the simulated chip that runs inside xfer2 on that thread | {acq_bus_share * 100:.2f} % |",
        f"| same run, whole process incl. the chip simulator's DRDY thread and gpiozero mock pin | "
        f"{proc_share * 100:.1f} % |",
        f"| simulated night on the burst path ({hours:g} h = {night_frames:,} frames) | "
        f"{night_cpu:.2f} s CPU, {night_wall:.2f} s wall |",
        "",
        "Single-frame pushes are what the DRDY path does on the box (one 27-byte frame per DRDY). The read-loop",
        "cost uses a stub SPI object; on a Pi the spidev ioctl adds its own time outside Python. The real-time",
        "run uses the simulator's DRDY thread and gpiozero's mock pin, whose cost is in the whole-process line,",
        "not on the box. This machine is shared with other jobs, so a missed count above 0 here is the host",
        "being late, and each such frame is counted (see tests/test_acquisition_soak.py).",
    ])


if __name__ == "__main__":
    print(run(quick=True))
