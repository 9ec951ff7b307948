"""The hardware edge: everything the daemon touches that is hardware, real or simulated.

:func:`open_hardware` is the one place where a box and a simulation differ. On a box it opens spidev and the
DRDY line and drives the real ADS1299; in simulation it puts the same driver and acquisition thread on the
protocol-level chip simulator (``appliance.ads1299_sim``) and gpiozero's mock pins. Everything downstream
(ring, DSP, models, breather, MQTT, recording) is the same code either way.

:class:`BoxOutputs` is the other side of the edge: the light, speaker and button, with a file mirror that
stands in for GPIO lines keeping their level after a crash in simulation.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from appliance.outputs import BedsideLight, OkButton, Speaker
from appliance.protocol.boxconfig import BoxConfig

if TYPE_CHECKING:
    from gpiozero import Factory

    from appliance.ring import FrameRing

logger = logging.getLogger(__name__)

SIM_OUTPUTS_FILE = "sim-outputs.json"
"""In simulation, the light and sound levels are mirrored here, playing the part of the GPIO lines that keep
their level when a process dies; ``bedtime outputs-off --simulate`` and the next start reset it."""


# ---- is this a box? -------------------------------------------------------------------------------------
class HardwareUnavailable(RuntimeError):
    """The box's GPIO or SPI device is not there (not a Raspberry Pi, SPI not enabled, no permission).

    Its message is one line a person can act on; the command line prints it as it is.
    """


def spi_device_path(cfg: BoxConfig) -> Path:
    """The spidev device node of the configured bus and chip select, e.g. ``/dev/spidev0.0``."""
    return Path(f"/dev/spidev{cfg.acquisition.spi_bus}.{cfg.acquisition.spi_device}")


def check_spi(cfg: BoxConfig) -> Path:
    """The chip's spidev node, checked to exist and be openable before anything else is touched.

    Raises
    ------
    HardwareUnavailable
        Naming the device and suggesting ``--simulate``.
    """
    path = spi_device_path(cfg)
    if not path.exists():
        raise HardwareUnavailable(f"no SPI device {path} (SPI not enabled, or not a Raspberry Pi with the "
                                  f"ADS1299 board); to try without the chip use --simulate")
    if not os.access(path, os.R_OK | os.W_OK):
        raise HardwareUnavailable(f"{path}: permission denied (run as the bedtime user, in group spi)")
    return path


def gpio_pin_factory() -> Factory:
    """gpiozero's default pin factory (the real GPIO), made once; the simulation uses :func:`mock_pin_factory`.

    gpiozero tries each pin library in turn and warns about every one it falls back from; those warnings are
    folded into the one-line reason here instead of reaching the terminal.

    Raises
    ------
    HardwareUnavailable
        When no pin library can drive this machine's GPIO (not a Raspberry Pi).
    """
    import warnings

    from gpiozero import Device
    from gpiozero.exc import BadPinFactory, PinFactoryFallback

    if Device.pin_factory is not None:
        return Device.pin_factory
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PinFactoryFallback)
        try:
            Device.ensure_pin_factory()
        except (BadPinFactory, ImportError, OSError, RuntimeError) as e:
            tried = [str(w.message).removeprefix("Falling back from ") for w in caught
                     if issubclass(w.category, PinFactoryFallback)]
            why = tried[-1] if tried else str(e)  # the last pin library tried says why this is no Pi
            raise HardwareUnavailable(f"no GPIO on this machine, not a Raspberry Pi? (gpiozero {why}); "
                                      f"to try without the box use --simulate") from None
    return Device.pin_factory


# ---- the outputs ---------------------------------------------------------------------------------------
class BoxOutputs:
    """The box's light, speaker and "I'm OK" button (``appliance.outputs``), switched off on creation.

    In simulation ``mirror`` names a file that plays the part of the GPIO lines, which keep their level when
    a process dies: every change of level is written there (``SIM_OUTPUTS_FILE``).
    """

    def __init__(self, cfg: BoxConfig, pin_factory: Factory, mirror: Path | None = None) -> None:
        self.mirror = mirror
        self._last_mirror: tuple[float, float] | None = None
        self.light = BedsideLight(cfg.outputs.light_pin, pin_factory=pin_factory)
        self.speaker = Speaker(cfg.outputs.sound_pin, pin_factory=pin_factory)
        self.button = OkButton(cfg.outputs.button_pin, pin_factory=pin_factory)
        self.all_off()

    def levels(self) -> tuple[float, float]:
        """The light's and the speaker's current levels, fractions of full PWM duty."""
        return self.light.level, self.speaker.level

    def all_off(self) -> None:
        for dev in (self.light, self.speaker):
            try:
                dev.off()
            except Exception as e:  # keep going: the other output must still go off
                logger.error("could not switch %r off: %s", dev, e)
        self.sync_mirror()

    def sync_mirror(self) -> None:
        if self.mirror is None:
            return
        lv = self.levels()
        if lv != self._last_mirror:
            write_sim_outputs(self.mirror, light=lv[0], sound=lv[1])
            self._last_mirror = lv

    def close(self) -> None:
        self.all_off()
        for dev in (self.light, self.speaker, self.button):
            try:
                dev.close()
            except Exception:  # closing is best effort; the outputs are already off
                pass


def write_sim_outputs(path: Path, *, light: float, sound: float) -> None:
    """Mirror the simulated light and sound levels (0..1) to ``path``, atomically (write, then rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"light": light, "sound": sound, "pid": os.getpid(), "time": time.time()}))
    tmp.replace(path)


def read_sim_outputs(path: Path) -> dict:
    """The mirrored levels: ``{"light": float, "sound": float, "pid": int, "time": float}``."""
    return json.loads(Path(path).read_text())


# ---- the hardware edge ---------------------------------------------------------------------------------
@dataclass
class ScriptedFault:
    """A fault injected into a simulated night (tests and the demo), in signal time.

    Passed to the chip simulator as an :class:`appliance.ads1299_sim.Fault`: ``"drdy_stall"`` (conversions stop
    until the driver re-initialises the chip), ``"electrode_off"`` (the lead-off comparator flags ``channel``'s
    electrode and its input goes to the rail), or any of that class's other kinds (``bitflip``, ``drop_drdy``,
    ``stuck``, ``rail``). ``start_s``/``duration_s`` in seconds of signal; ``channel`` 0-based.
    """

    kind: str
    start_s: float
    duration_s: float
    channel: int = 0


@dataclass
class SimulationSource:
    """What the simulated chip plays: the synthetic generator over a hypnogram, or an EDF file."""

    hypnogram: np.ndarray | None = None
    edf_path: Path | None = None
    edf_channels: list[str | int] | None = None  # None: the file's EEG signals (signal_sources.select_edf_signals)
    seed: int = 0
    distressed_arousals: Any = True
    faults: list[ScriptedFault] = field(default_factory=list)

    def open(self, *, fs_hz: int, n_channels: int) -> Any:
        """A signal source (``read(n) -> (n, n_channels)`` microvolts, ``fs_hz``, ``n_channels``, ``n_samples``)."""
        if self.edf_path is not None:
            from appliance.signal_sources import EdfSource

            edf = EdfSource(self.edf_path, fs_hz=fs_hz, channels=self.edf_channels, loop=False)
            return _ChannelAdapter(edf, n_channels=n_channels, n_samples=edf.samples.shape[0])
        from appliance.synthetic_eeg import SyntheticSleepEEG

        return SyntheticSleepEEG(self.hypnogram, fs_hz=fs_hz, n_channels=n_channels, seed=self.seed,
                                 distressed_arousals=self.distressed_arousals)


class _ChannelAdapter:
    """Gives a recording with fewer (or more) signals than the chip has channels the chip's channel count,
    repeating its signals in turn (a 2-signal EDF fills 8 channels as 1,2,1,2,...)."""

    def __init__(self, source: Any, *, n_channels: int, n_samples: int) -> None:
        self.source, self.n_channels, self.n_samples = source, n_channels, n_samples
        self.fs_hz = source.fs_hz
        self._map = [i % source.n_channels for i in range(n_channels)]

    def read(self, n: int) -> np.ndarray:
        return np.asarray(self.source.read(n))[:, self._map]


class AcquisitionControl(Protocol):
    """What the daemon needs from the acquisition (:class:`_AcquisitionAdapter` around
    :class:`appliance.acquisition.Acquisition`, real or simulated chip alike).

    Attributes
    ----------
    counters : dict
        :class:`appliance.acquisition.AcquisitionCounters` as a dict (empty before :meth:`start`).
    """

    counters: dict

    def start(self) -> None:
        """Bring the chip up and start moving frames into the ring."""
        ...

    def stop(self) -> None:
        """Stop reading and release the chip."""
        ...

    def poll_events(self) -> list[dict]:
        """The acquisition's faults since the last call, oldest first (``kind``, ``reason``)."""
        ...

    def frames_accounted(self, frames_seen: int) -> bool:
        """True when a replay has delivered (or provably lost) its last frame; never for a real chip."""
        ...

    def failure(self) -> BaseException | None:
        """What ended the acquisition thread, if something did (None while it reads, and after a clean stop)."""
        ...


@dataclass
class HardwareEdge:
    """Everything the daemon touches that is hardware: the chip's frame ring and acquisition, the pins."""

    ring: FrameRing
    acquisition: AcquisitionControl
    pin_factory: Factory
    sample_rate_sps: int
    n_channels: int
    gain: int
    simulated: bool
    total_signal_s: float | None = None
    poll_interval_s: float = 0.2  # real time: the pipeline wakes 5 times a second (the breather ticks >= 1 Hz)

    @property
    def total_frames(self) -> int | None:
        """Frames in a replay's source (None for a real chip: the night ends when the daemon is stopped)."""
        return None if self.total_signal_s is None else int(round(self.total_signal_s * self.sample_rate_sps))

    def finished(self, frames_seen: int) -> bool:
        """True when a replay has delivered its last frame (never for a real chip)."""
        return bool(self.acquisition.frames_accounted(frames_seen))

    def start(self) -> None:
        self.acquisition.start()

    def stop(self) -> None:
        self.acquisition.stop()

    def missed_frames(self) -> int:
        """Frames the driver knows it missed (DRDY edge gaps), cumulative."""
        return int(self.acquisition.counters.get("missed_drdy", 0))

    def poll_events(self) -> list[dict]:
        """The acquisition's faults since the last call (:meth:`AcquisitionControl.poll_events`)."""
        return self.acquisition.poll_events()

    def acquisition_failure(self) -> BaseException | None:
        """What ended the acquisition thread, if something did: no frame will come any more."""
        return self.acquisition.failure()


def mock_pin_factory() -> Factory:
    """gpiozero's mock pins with PWM, the simulation's light, speaker and button."""
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    return MockFactory(pin_class=MockPWMPin)


def open_chip(cfg: BoxConfig, *, simulate: bool, pin_factory: Factory | None = None, speed: float = 1.0, drdy: bool = True,
              **sim_kwargs: Any) -> tuple[Any, Any]:
    """Bring the ADS1299 up: the real chip on spidev with DRDY on the GPIO, or the protocol-level simulator.

    The one place the chip is opened (the daemon's acquisition, real and simulated, and ``bedtime selftest``).
    A real box's callers first check the SPI node and make the GPIO pin factory (:func:`check_spi`,
    :func:`gpio_pin_factory`), so a machine without the hardware fails in one line before this.

    Parameters
    ----------
    cfg : BoxConfig
        Its ``acquisition`` section: SPI bus/device and clock (Hz), DRDY pin, sample rate (SPS), gain.
    simulate : bool
        The simulator (:class:`appliance.ads1299_sim.SimulatedSpiDev`) instead of ``spidev``.
    pin_factory : gpiozero pin factory, optional
        Simulation only: the mock factory the simulator drives DRDY on.
    speed : float
        Simulation only: the simulated chip's clock in multiples of real time; the driver's datasheet waits
        (tPOR, RESET) are scaled by it, so bring-up takes simulated time.
    drdy : bool
        Simulation only: wire DRDY (False: no DRDY line, for the simulator's burst path).
    **sim_kwargs
        Simulation only: passed to the simulator (``source``, ``faults``, ``seed``).

    Returns
    -------
    (ADS1299, spi)
        The brought-up driver and its opened SPI device (the caller closes it).
    """
    from gpiozero import DigitalInputDevice

    from appliance.ads1299 import ADS1299, HostBoard

    a = cfg.acquisition
    if not simulate:
        import spidev

        spi = spidev.SpiDev()
        spi.open(a.spi_bus, a.spi_device)
        drdy_dev = DigitalInputDevice(a.drdy_pin, pull_up=True)  # DRDY is active low
        board, sleep = HostBoard(drdy_dev), time.sleep
    else:
        from appliance.ads1299_sim import open_simulated_spi, simulated_sleep

        spi, drdy_dev = open_simulated_spi(drdy_pin_number=a.drdy_pin if drdy else None, pin_factory=pin_factory,
                                           bus=a.spi_bus, device=a.spi_device, variant_channels=a.channels,
                                           speed=speed, **sim_kwargs)
        # the driver's waits (tPOR, RESET) are in simulated time: scale them like the chip's clock
        board, sleep = spi, simulated_sleep(speed)
    chip = ADS1299(spi, drdy=drdy_dev, sample_rate_sps=a.sample_rate_sps, gains=a.gain,
                   max_speed_hz=a.spi_max_speed_hz, wait_power_on=True, sleep=sleep, board=board)
    return chip, spi


def open_hardware(cfg: BoxConfig, *, simulate: bool, source: SimulationSource | None = None,
                  speed: float = 1.0) -> HardwareEdge:
    """Build the hardware edge: the real ADS1299 on spidev + GPIO, or the simulator on mock pins.

    Only this function differs between a box and a simulation; everything downstream is the same code.
    """
    from appliance.ring import FrameRing

    a = cfg.acquisition
    ring = FrameRing(a.ring_capacity_frames, a.channels)
    if not simulate:
        from appliance.acquisition import Acquisition

        # before any night folder exists: a machine without the box fails here, in one line
        pins = gpio_pin_factory()
        check_spi(cfg)

        def bring_up() -> tuple[Any, Any]:
            chip, spi = open_chip(cfg, simulate=False)
            return Acquisition(chip, ring, mode="drdy"), spi

        acq = _AcquisitionAdapter(bring_up)
        return HardwareEdge(ring=ring, acquisition=acq, pin_factory=pins, sample_rate_sps=a.sample_rate_sps,
                            n_channels=a.channels, gain=a.gain, simulated=False)
    if source is None:
        raise ValueError("a simulated run needs a source (synthetic hypnogram or EDF file)")
    signal_source = source.open(fs_hz=a.sample_rate_sps, n_channels=a.channels)
    total_s = signal_source.n_samples / a.sample_rate_sps
    pins = mock_pin_factory()
    acq = _simulated_acquisition(cfg, ring, signal_source, source, speed, pins)
    return HardwareEdge(ring=ring, acquisition=acq, pin_factory=pins,
                        sample_rate_sps=a.sample_rate_sps, n_channels=a.channels, gain=a.gain, simulated=True,
                        total_signal_s=total_s, poll_interval_s=0.002 if speed > 10 else 0.2)


def _simulated_acquisition(cfg: BoxConfig, ring: FrameRing, signal_source: Any, source: SimulationSource,
                           speed: float, pin_factory: Factory) -> AcquisitionControl:
    """The acquisition layer's real driver and thread, on its protocol-level chip simulator.

    Real time (speed < 20): the simulator drives DRDY on a gpiozero mock pin and the driver reads one frame
    per edge, as on the box. Accelerated: the driver's burst path reads many frames per call; with
    ``speed=inf`` it waits for ring space (back-pressure) instead of dropping, so the replay runs exactly as
    fast as the pipeline.
    """
    from appliance.acquisition import Acquisition
    from appliance.ads1299_sim import Fault

    a = cfg.acquisition
    fs = a.sample_rate_sps
    kinds = {"drdy_stall": "stall", "electrode_off": "electrode_off"}
    faults = [Fault(kinds.get(f.kind, f.kind), at_frame=int(f.start_s * fs), n_frames=max(1, int(f.duration_s * fs)),
                    channel=f.channel) for f in source.faults]
    realtime = speed < 20
    sim_speed = speed if np.isfinite(speed) else 1e9  # 1e9: as fast as possible; back-pressure paces the replay

    def bring_up() -> tuple[Any, Any]:
        # Built when the daemon is ready to read: a real (and a faithful simulated) chip converts from START
        # on whether or not anyone reads, so bringing it up earlier would lose the start of the night.
        chip, spi = open_chip(cfg, simulate=True, pin_factory=pin_factory, speed=sim_speed, drdy=realtime,
                              source=signal_source, faults=faults, seed=source.seed)
        acq = Acquisition(chip, ring, mode="drdy" if realtime else "burst", backpressure=not np.isfinite(speed),
                          burst_frames=2500)
        return acq, spi

    return _AcquisitionAdapter(bring_up, total_frames=int(signal_source.n_samples))


class _AcquisitionAdapter:
    """What the daemon needs from :class:`appliance.acquisition.Acquisition`: start/stop, its faults as events
    (a bounded queue: the acquisition thread never waits on the pipeline), and the end of a replay."""

    def __init__(self, bring_up: Callable[[], tuple[Any, Any]], *, total_frames: int | None = None) -> None:
        self._bring_up = bring_up
        self.acq: Any = None
        self.spi: Any = None
        self.total_frames = total_frames
        self._events: collections.deque = collections.deque(maxlen=1000)

    @property
    def counters(self) -> dict:
        return self.acq.counters.as_dict() if self.acq is not None else {}

    def start(self) -> None:
        """Bring the chip up and start reading it at once."""
        self.acq, self.spi = self._bring_up()
        self.acq.on_fault = lambda kind, detail: self._events.append({"kind": kind, "reason": detail})
        self.acq.start()

    def stop(self) -> None:
        if self.acq is None:
            return
        self.acq.stop()
        if self.spi is not None:
            self.spi.close()
            self.acq.chip.board.shutdown()

    def poll_events(self) -> list[dict]:
        out = []
        while self._events:
            out.append(self._events.popleft())
        return out

    def failure(self) -> BaseException | None:
        return self.acq.exception if self.acq is not None else None

    def frames_accounted(self, frames_seen: int) -> bool:
        """True when a replay has delivered (or provably lost) every frame of its source."""
        if self.total_frames is None or self.acq is None:
            return False
        return frames_seen + self.acq.counters.missed_drdy >= self.total_frames
