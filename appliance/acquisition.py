"""The acquisition thread: DRDY -> read one frame -> push it into the C ring, and notice when that fails.

Two ways to get frames:

* **DRDY path** (real hardware, and the simulator in real time): a falling DRDY edge (gpiozero callback)
  queues its timestamp; this thread wakes, clocks the 27-byte frame out with one ``xfer2`` and pushes it
  into the ring (decoded in C).
* **Burst path** (a board with ``can_burst``, i.e. the simulator, for accelerated replay): the board's
  :meth:`~appliance.ads1299.Board.read_frames` returns many consecutive frames, and ``last_edges_ns``
  their DRDY edge times; they go into the ring in one C call.

On both paths:

* **missed DRDY**: the gap between consecutive edge timestamps, in (drift-corrected) data periods, says
  how many frames were never read (the chip has no overrun flag and no sample counter; ref 4, 9);
* **stall**: no DRDY for more than ``stall_periods`` periods -> re-initialise the chip and say so;
* **corrupt run**: ``corrupt_run_limit`` frames in a row without the ``1100`` sync nibble -> re-initialise;
* **signal faults**, from the decoder's per-channel health: a channel stuck on one value, a channel on a
  rail, an electrode flagged off by the lead-off comparators;
* **timestamps** follow the chip's clock, not the nominal rate: a second-order tracking loop estimates
  the real data period from the edge times, so a chip oscillator 200 ppm fast does not walk the sample
  times away from the wall clock (:class:`DriftTracker`).

Every fault is counted in :attr:`Acquisition.counters`, logged, and passed to ``on_fault(kind, detail)``.
"""
from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass, asdict
from typing import Callable

import numpy as np

from appliance.ads1299 import ADS1299, ADS1299Error
from appliance.ads1299_frame import LOFF_BITS_MASK, is_synced, lead_off_bits, status_words
from appliance.ring import FrameRing

logger = logging.getLogger(__name__)

FAULT_KINDS = ("missed_drdy", "stall", "corrupt", "reinit", "stuck_channel", "railed", "lead_off", "ring_full",
               "reinit_failed")


@dataclass
class AcquisitionCounters:
    """Cumulative counts since :meth:`Acquisition.start`."""

    frames_read: int = 0       # frames clocked out of the chip
    frames_stored: int = 0     # frames the ring accepted
    missed_drdy: int = 0       # frames never read (edge gaps)
    stalls: int = 0
    reinits: int = 0
    corrupt: int = 0
    dropped: int = 0           # frames the ring refused (full): the consumer fell behind
    stuck_events: int = 0
    rail_events: int = 0
    lead_off_events: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class DriftTracker:
    """Sample timestamps that follow the chip's oscillator.

    A second-order tracking loop over DRDY edge times: each frame's stamp is predicted from the previous
    stamp plus the estimated period, then nudged toward the measured edge (``alpha``); the period estimate
    itself follows the residual (``beta = alpha**2/4``, critically damped). Edge jitter (interrupt
    latency) is smoothed; a constant clock error becomes a period estimate instead of a growing offset.

    Parameters
    ----------
    nominal_period_ns : float
        1e9 / sample rate.
    alpha : float
        Phase gain per frame (0.02: jitter averaged over ~50 frames).
    """

    def __init__(self, nominal_period_ns: float, *, alpha: float = 0.02) -> None:
        self.nominal_period_ns = float(nominal_period_ns)
        self.period_ns = float(nominal_period_ns)
        self.alpha = alpha
        self.beta = alpha * alpha / 4
        self.last_stamp_ns: float | None = None

    def reset(self) -> None:
        """Forget the phase (after a re-init); keep the period estimate."""
        self.last_stamp_ns = None

    def frames_since_last(self, edge_ns: int) -> int:
        """How many periods separate ``edge_ns`` from the last stamped frame (1 = consecutive)."""
        if self.last_stamp_ns is None:
            return 1
        return max(1, int(round((edge_ns - self.last_stamp_ns) / self.period_ns)))

    def stamp(self, edge_ns: int, frames: int = 1) -> int:
        """Timestamp (ns) for a frame whose DRDY edge was seen at ``edge_ns``, ``frames`` periods after the
        previous one."""
        if self.last_stamp_ns is None:
            self.last_stamp_ns = float(edge_ns)
            return int(edge_ns)
        pred = self.last_stamp_ns + self.period_ns * frames
        err = edge_ns - pred
        if abs(err) > 2 * self.period_ns:
            # a jump (re-init, clock step): resynchronise instead of slewing for seconds
            self.last_stamp_ns = float(edge_ns)
            return int(edge_ns)
        self.last_stamp_ns = pred + self.alpha * err
        self.period_ns += self.beta * err / frames
        return int(self.last_stamp_ns)

    def observe_block(self, first_edge_ns: int, last_edge_ns: int, n_frames: int) -> None:
        """Burst path: the block's own edge times give the period directly."""
        if n_frames > 1:
            measured = (last_edge_ns - first_edge_ns) / (n_frames - 1)
            self.period_ns += 0.1 * (measured - self.period_ns)
        self.last_stamp_ns = float(last_edge_ns)

    @property
    def drift_ppm(self) -> float:
        """Chip clock error estimate: + means the chip runs fast."""
        return (self.nominal_period_ns / self.period_ns - 1.0) * 1e6


class Acquisition:
    """Moves frames from an :class:`~appliance.ads1299.ADS1299` into a :class:`~appliance.ring.FrameRing`.

    Parameters
    ----------
    chip : ADS1299
        A brought-up chip (streaming).
    ring : FrameRing
        Its ``n_channels`` must match the chip's.
    on_fault : callable, optional
        ``on_fault(kind, detail)``; called from the acquisition thread (keep it short).
    mode : {"auto", "drdy", "poll", "burst"}
        "auto": burst when the board has a burst path (``chip.board.can_burst``) and either runs faster than
        ``burst_min_speed`` or has no DRDY pin; else the DRDY path. "poll": sample the DRDY level instead
        of waiting for edges (where edge interrupts are unreliable). The DRDY and poll paths set the DRDY
        device's ``when_activated``.
    stall_periods : float
        No DRDY for this many data periods is a stall (re-init).
    corrupt_run_limit : int
        This many corrupt frames in a row re-initialise the chip.
    stuck_frames : int, optional
        A channel repeating one value this many frames is stuck (default: 1 s of samples).
    burst_frames : int
        Frames per burst on the burst path.
    backpressure : bool
        Burst path only: wait for ring space instead of dropping (simulated time simply waits). Use it
        for as-fast-as-possible replay; real hardware cannot wait, so the DRDY path never does.
    gil_switch_interval_s : float or None
        Lower ``sys.setswitchinterval`` to this at start (CPython's default 5 ms exceeds a 4 ms frame
        period, so a busy Python thread could hold the reader off past the next DRDY). None: leave it.
    """

    def __init__(self, chip: ADS1299, ring: FrameRing, *, on_fault: Callable[[str, str], None] | None = None,
                 mode: str = "auto", stall_periods: float = 4.0, corrupt_run_limit: int = 8,
                 stuck_frames: int | None = None, burst_frames: int = 250, burst_min_speed: float = 20.0,
                 backpressure: bool = False, gil_switch_interval_s: float | None = 0.001,
                 health_every_frames: int | None = None) -> None:
        if ring.n_channels != chip.n_channels:
            raise ValueError(f"ring has {ring.n_channels} channels, chip {chip.n_channels}")
        if mode not in ("auto", "drdy", "poll", "burst"):
            raise ValueError("mode must be 'auto', 'drdy', 'poll' or 'burst'")
        self.chip = chip
        self.ring = ring
        self.on_fault = on_fault
        self.stall_periods = float(stall_periods)
        self.corrupt_run_limit = int(corrupt_run_limit)
        self.stuck_frames = int(stuck_frames or chip.sample_rate_sps)
        self.burst_frames = int(burst_frames)
        self.backpressure = backpressure
        self.gil_switch_interval_s = gil_switch_interval_s
        self.health_every_frames = int(health_every_frames or max(1, chip.sample_rate_sps // 4))
        speed = float(chip.board.speed)
        self.speed = speed
        has_burst = chip.board.can_burst
        if mode == "auto":
            mode = "burst" if has_burst and (speed >= burst_min_speed or chip.drdy is None) else "drdy"
        if mode == "burst" and not has_burst:
            raise ValueError("burst mode needs a board with a burst path (the simulator)")
        if mode in ("drdy", "poll") and chip.drdy is None:
            raise ValueError(f"{mode} mode needs the chip's DRDY input (gpiozero DigitalInputDevice)")
        self.mode = mode
        self.counters = AcquisitionCounters()
        self.tracker = DriftTracker(1e9 / chip.sample_rate_sps)
        self.faults: list[tuple[str, str]] = []   # (kind, detail), newest last, bounded
        self._edges: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._corrupt_run = 0
        self._last_edge_ns: int | None = None
        self._stuck_flagged = np.zeros(chip.n_channels, bool)
        self._railed_last = np.zeros(chip.n_channels, np.uint64)
        self._railed_flagged = np.zeros(chip.n_channels, bool)
        self._loff_seen = 0          # (STATP << 8 | STATN) bits seen since the last health check
        self._loff_flagged = 0
        self._since_health = 0
        self._ring_dropped_seen = 0
        self._fb = chip.frame_bytes
        self._zero_tx = [0] * self._fb
        self.exception: BaseException | None = None

    # ---- control -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the acquisition thread (daemon thread named ``acquisition``)."""
        if self._thread is not None:
            raise RuntimeError("already started")
        if self.gil_switch_interval_s is not None and sys.getswitchinterval() > self.gil_switch_interval_s:
            logger.info("lowering the GIL switch interval %.4f -> %.4f s for the %s-ms frame period",
                        sys.getswitchinterval(), self.gil_switch_interval_s, 1e3 / self.chip.sample_rate_sps)
            sys.setswitchinterval(self.gil_switch_interval_s)
        self._stop.clear()
        if self.mode == "drdy" and self.chip.drdy is not None:
            self.chip.drdy.when_activated = self._on_drdy
        target = {"burst": self._run_burst, "drdy": self._run_drdy, "poll": self._run_poll}[self.mode]
        thread = threading.Thread(target=self._guard, args=(target,), name="acquisition", daemon=True)
        try:
            thread.start()
        except RuntimeError:
            # the OS refused a thread: leave nothing half-started, so stop() and a later start() still work
            if self.mode == "drdy" and self.chip.drdy is not None:
                self.chip.drdy.when_activated = None
            raise
        self._thread = thread
        logger.info("acquisition started (%s path, %d SPS x %d ch)", self.mode, self.chip.sample_rate_sps,
                    self.chip.n_channels)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if self.mode == "drdy" and self.chip.drdy is not None:
            self.chip.drdy.when_activated = None
        self._health_check()      # report what the last frames showed

    @property
    def last_edge_ns(self) -> int | None:
        """DRDY edge time of the newest frame read (None before the first, and after a re-init)."""
        return self._last_edge_ns

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "Acquisition":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- faults --------------------------------------------------------------------------------
    def _fault(self, kind: str, detail: str) -> None:
        logger.warning("acquisition fault %s: %s", kind, detail)
        self.faults.append((kind, detail))
        del self.faults[:-1000]
        if self.on_fault is not None:
            try:
                self.on_fault(kind, detail)
            except Exception:  # a broken reporter must not stop acquisition
                logger.exception("on_fault callback failed")

    def _reinit(self, reason: str) -> None:
        self.counters.reinits += 1
        self._fault("reinit", reason)
        try:
            self.chip.reinitialise(reason)
        except (ADS1299Error, OSError) as e:
            self._fault("reinit_failed", f"{reason}: {e}")
            self._stop.wait(0.1)
        self._corrupt_run = 0
        self._last_edge_ns = None
        self.tracker.reset()
        lost = 0
        while True:                       # edges queued before the reset: frames of the old stream never read
            try:
                self._edges.get_nowait()
                lost += 1
            except queue.Empty:
                break
        if lost:
            self.counters.missed_drdy += lost
            self._fault("missed_drdy", f"{lost} frame(s) not read (DRDY edges pending at re-init)")

    def _guard(self, target) -> None:
        try:
            target()
        except BaseException as e:  # surface, never die silently
            try:
                logger.exception("acquisition thread died")
                self._fault("stall", f"acquisition thread died: {e!r}")
            finally:
                self.exception = e  # after the fault is queued: whoever sees the exception also finds the fault

    # ---- DRDY path -----------------------------------------------------------------------------
    def _on_drdy(self) -> None:
        # Runs in the thread that saw the edge; only wakes the reader. The edge time is read from the pin
        # (gpiozero keeps the edge's tick) just before the frame is clocked out.
        self._edges.put(True)

    def _run_drdy(self) -> None:
        period_ns = self.tracker.nominal_period_ns
        timeout_s = max(self.stall_periods * period_ns / 1e9 / self.speed, 0.02)
        chip, get, drdy = self.chip, self._edges.get, self.chip.drdy
        started_ns = chip.clock_ns()
        while not self._stop.is_set():
            try:
                get(timeout=timeout_s)    # the edge only wakes us; _read_one takes the edge time
            except queue.Empty:
                if not self._edges.empty() or self._stop.is_set():
                    continue          # an edge arrived while we were being woken: not a stall
                # The time is taken BEFORE the level is sampled: a reader preempted between the two (a busy
                # host) would otherwise count its own lateness as the chip's silence and re-initialise a chip
                # that was converting all along. DRDY high after `now` means nothing was converted up to `now`.
                now = chip.clock_ns()
                if drdy is not None and drdy.is_active:
                    # data is waiting but its edge never reached us (lost edge interrupt): read it
                    self._read_one()
                    continue
                since = now - (self._last_edge_ns if self._last_edge_ns is not None else started_ns)
                if since > self.stall_periods * period_ns + (0 if self._last_edge_ns is not None else 0.25e9):
                    # Confirm one period later: DRDY sampled inside the chip's tUPDATE pulse (high for a moment
                    # before new data; in the simulator, as long as its thread waits for the CPU between the
                    # two edges) is a conversion, not a stall. A real stall lasts far longer than this look.
                    self._stop.wait(period_ns / 1e9 / self.speed)
                    if not self._edges.empty() or (drdy is not None and drdy.is_active) or self._stop.is_set():
                        continue
                    self.counters.stalls += 1
                    self._fault("stall", f"no DRDY for {since / 1e6:.1f} ms (> {self.stall_periods:g} periods)")
                    self._reinit("DRDY stall")
                    started_ns = chip.clock_ns()
                continue
            while True:   # we are late if more edges queued up: only the newest frame is still there
                try:
                    self._edges.get_nowait()
                except queue.Empty:
                    break
            # The queue only wakes us; the DRDY level and the latest edge time decide. An edge whose frame
            # we already clocked out (it fell while we were reading) leaves DRDY high: nothing to read.
            if drdy is not None and not drdy.is_active:
                continue
            self._read_one()

    def _run_poll(self) -> None:
        """Polling fallback where edge interrupts are unreliable: sample the DRDY level every eighth of a
        period and read when it is low. Costs more CPU than the edge path; same checks."""
        period_ns = self.tracker.nominal_period_ns
        nap_s = period_ns / 8 / 1e9 / self.speed
        drdy, chip = self.chip.drdy, self.chip
        started_ns = last_ns = chip.clock_ns()
        while not self._stop.is_set():
            now = chip.clock_ns()     # before the level, for the reason given in _run_drdy
            if drdy.is_active:
                self._read_one()
                last_ns = chip.clock_ns()
                continue
            since = now - last_ns
            if since > self.stall_periods * period_ns + (0.25e9 if last_ns == started_ns else 0):
                self._stop.wait(period_ns / 1e9 / self.speed)    # confirm, as in _run_drdy
                if drdy.is_active or self._stop.is_set():
                    continue
                self.counters.stalls += 1
                self._fault("stall", f"DRDY not low for {since / 1e6:.1f} ms (> {self.stall_periods:g} periods)")
                self._reinit("DRDY stall")
                started_ns = last_ns = chip.clock_ns()
                continue
            time.sleep(nap_s)

    def _read_one(self) -> None:
        edge_ns = self.chip.drdy_edge_ns()
        raw = bytes(self.chip.spi.xfer2(self._zero_tx))
        self.counters.frames_read += 1
        self._after_frame(raw, edge_ns)

    def _after_frame(self, raw: bytes, edge_ns: int) -> None:
        tracker = self.tracker
        k = tracker.frames_since_last(edge_ns)
        if k > 1:
            self.counters.missed_drdy += k - 1
            self._fault("missed_drdy", f"{k - 1} frame(s) not read (DRDY edge gap {k} periods)")
        ts = tracker.stamp(edge_ns, k)
        self._last_edge_ns = edge_ns
        stored = self.ring.push_raw(raw, ts)
        status = int.from_bytes(raw[:3], "big")
        if not is_synced(status):
            self.counters.corrupt += 1
            self._corrupt_run += 1
            if self._corrupt_run == 1 or self._corrupt_run % 100 == 0:
                self._fault("corrupt", f"frame status 0x{raw[0]:02X}{raw[1]:02X}{raw[2]:02X} lacks the 1100 sync")
            if self._corrupt_run >= self.corrupt_run_limit:
                self._reinit(f"{self._corrupt_run} corrupt frames in a row")
            return
        self._corrupt_run = 0
        if stored:
            self.counters.frames_stored += 1
        else:
            self.counters.dropped += 1
        if status & LOFF_BITS_MASK:
            self._loff_seen |= lead_off_bits(status)
        self._since_health += 1
        if self._since_health >= self.health_every_frames:
            self._health_check()

    # ---- burst path ----------------------------------------------------------------------------
    def _run_burst(self) -> None:
        chip, ring, board = self.chip, self.ring, self.chip.board
        fb = self._fb
        period_nominal = self.tracker.nominal_period_ns
        sim_start = chip.clock_ns()
        real_start = time.monotonic()
        last_data_ns = sim_start
        while not self._stop.is_set():
            if self.backpressure:
                while ring.capacity - len(ring) < self.burst_frames and not self._stop.is_set():
                    time.sleep(0.0005)
            elif self.speed != float("inf"):
                ahead_s = (chip.clock_ns() - sim_start) / 1e9 / self.speed - (time.monotonic() - real_start)
                if ahead_s > 0:
                    self._stop.wait(ahead_s)
            if self._stop.is_set():
                break             # do not read a burst there may be no room for
            data = board.read_frames(self.burst_frames)
            edges = board.last_edges_ns
            now = chip.clock_ns()
            if not data:
                if now - last_data_ns > self.stall_periods * period_nominal:
                    self.counters.stalls += 1
                    self._fault("stall", f"no DRDY for {(now - last_data_ns) / 1e6:.1f} ms "
                                         f"(> {self.stall_periods:g} periods)")
                    self._reinit("DRDY stall")
                    last_data_ns = chip.clock_ns()
                continue
            n = len(data) // fb
            self.counters.frames_read += n
            last_data_ns = int(edges[-1])
            self._push_block(data, edges, n)

    def _push_block(self, data: bytes, edges: np.ndarray, n: int) -> None:
        fb = self._fb
        tracker = self.tracker
        period = tracker.period_ns
        b = np.frombuffer(data, np.uint8).reshape(n, fb)
        # missed DRDY: edge gaps, including the one from the previous block
        prev = tracker.last_stamp_ns
        gaps = np.diff(edges) if prev is None else np.diff(np.concatenate([[int(prev)], edges]))
        k = np.rint(gaps / period).astype(np.int64)
        missing = k > 1
        if missing.any():
            lost = int((k[missing] - 1).sum())
            self.counters.missed_drdy += lost
            self._fault("missed_drdy", f"{lost} frame(s) not read ({int(missing.sum())} DRDY edge gap(s))")
        # corrupt frames and runs of them
        status = status_words(b)
        bad = ~is_synced(status)
        n_bad = int(bad.sum())
        if n_bad:
            self.counters.corrupt += n_bad
            self._fault("corrupt", f"{n_bad} frame(s) without the 1100 sync in a block of {n}")
            run = self._longest_run(bad, self._corrupt_run)
            self._corrupt_run = self._trailing_run(bad, self._corrupt_run)
        else:
            run = self._corrupt_run = 0
        # push contiguous segments (split at edge gaps, so every frame gets its own edge's time base)
        cuts = np.flatnonzero(np.diff(edges) > 1.5 * period) + 1 if n > 1 else np.zeros(0, np.int64)
        bounds = [0, *cuts.tolist(), n]
        loff = lead_off_bits(status)
        loff[bad] = 0
        stored = 0
        for s0, s1 in zip(bounds[:-1], bounds[1:]):
            if s1 - s0 > 1:
                seg_period = (edges[s1 - 1] - edges[s0]) / (s1 - 1 - s0)
            else:
                seg_period = period
            stored += self.ring.push_raw(data[s0 * fb:s1 * fb], int(edges[s0]), int(round(seg_period)))
        self._loff_seen |= int(np.bitwise_or.reduce(loff))
        self._health_check()     # once per block: the decoder kept the longest same-value run for us
        tracker.observe_block(int(edges[0]), int(edges[-1]), n)
        self.counters.frames_stored += stored
        self.counters.dropped += (n - n_bad) - stored
        if run >= self.corrupt_run_limit:       # the valid frames of this block are stored already
            self._reinit(f"{run} corrupt frames in a row")

    @staticmethod
    def _longest_run(bad: np.ndarray, carry: int) -> int:
        best, run = 0, carry
        for v in bad:            # only called on blocks that contain corrupt frames
            run = run + 1 if v else 0
            best = max(best, run)
        return best

    @staticmethod
    def _trailing_run(bad: np.ndarray, carry: int) -> int:
        good = np.flatnonzero(~bad)
        return carry + len(bad) if good.size == 0 else len(bad) - 1 - int(good[-1])

    # ---- signal health -------------------------------------------------------------------------
    def _health_check(self) -> None:
        self._since_health = 0
        c = self.ring.counters
        if c.dropped > self._ring_dropped_seen:
            self._fault("ring_full", f"{c.dropped - self._ring_dropped_seen} frame(s) dropped: consumer behind")
            self._ring_dropped_seen = c.dropped
        run, railed, _ = self.ring.channel_health()
        longest = self.ring.take_max_run()                  # includes runs that ended since last check
        now_railed = railed > self._railed_last
        stuck = (longest >= self.stuck_frames) & ~now_railed  # a channel on a rail is reported as railed
        for ch in np.flatnonzero(stuck & ~self._stuck_flagged):
            self.counters.stuck_events += 1
            self._fault("stuck_channel", f"channel {ch + 1} repeated one value for {int(longest[ch])} frames")
        self._stuck_flagged = stuck
        for ch in np.flatnonzero(now_railed & ~self._railed_flagged):
            self.counters.rail_events += 1
            self._fault("railed", f"channel {ch + 1} at full scale ({int(railed[ch] - self._railed_last[ch])} frames)")
        self._railed_flagged = now_railed
        self._railed_last = railed
        new = self._loff_seen & ~self._loff_flagged
        if new:
            n = self.chip.n_channels
            for ch in range(n):
                for side, bit in (("P", 8 + ch), ("N", ch)):
                    if new >> bit & 1:
                        self.counters.lead_off_events += 1
                        self._fault("lead_off", f"channel {ch + 1} {side} electrode off")
        self._loff_flagged = self._loff_seen
        self._loff_seen = 0
