"""The ADS1299 is brought up in one place (hardware.open_chip), for the daemon and the self-test alike."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from appliance.hardware import mock_pin_factory, open_chip
from appliance.protocol.boxconfig import validate_config

APPLIANCE = Path(__file__).resolve().parent.parent / "appliance"


def _constructs_driver(path: Path) -> list[str]:
    """Names of the functions in ``path`` that call ``ADS1299(...)``."""
    found = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Call):
                    f = node.func
                    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
                    if name == "ADS1299":
                        found.append(fn.name)
    return found


def test_only_open_chip_builds_the_driver() -> None:
    # ads1299_sim.simulated_board is the driver tests' and benches' own bench-top board, not the box's
    where = {p.name: sorted(set(_constructs_driver(p))) for p in APPLIANCE.rglob("*.py")
             if p.name != "ads1299_sim.py" and _constructs_driver(p)}
    assert where == {"hardware.py": ["open_chip"]}


def test_open_chip_brings_the_simulator_up_as_configured() -> None:
    cfg = validate_config({"acquisition": {"channels": 4, "gain": 12, "sample_rate_sps": 500}})
    pins = mock_pin_factory()
    chip, spi = open_chip(cfg, simulate=True, pin_factory=pins, speed=50.0)
    try:
        assert chip.n_channels == 4 and chip.sample_rate_sps == 500
        np.testing.assert_array_equal(chip.gains, [12] * 4)
        assert chip.drdy is not None and chip.bring_ups == 1
    finally:
        chip.drdy.close()
        spi.close()
        spi.chip.close()
    chip, spi = open_chip(cfg, simulate=True, pin_factory=pins, speed=1e9, drdy=False)
    try:
        assert chip.drdy is None and chip.n_channels == 4
    finally:
        spi.close()
        spi.chip.close()


def test_driver_acquisition_and_hardware_do_not_sniff_for_the_simulator() -> None:
    # they used getattr(spi, "drdy_edge_ns"/"clock_ns"/"speed"/"read_frames"); now they ask chip.board;
    # hardware.py used getattr on the acquisition (counters, poll_events) and on the outputs (level, value)
    for name in ("ads1299.py", "acquisition.py", "hardware.py"):
        calls = [n for n in ast.walk(ast.parse((APPLIANCE / name).read_text()))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("getattr", "hasattr")]
        assert not calls, f"{name} line {calls[0].lineno}"


def test_the_real_board_has_the_host_clock_and_no_burst_path() -> None:
    import time

    import pytest

    from appliance.ads1299 import ADS1299Error, HostBoard
    from appliance.ads1299_sim import SimulatedSpiDev

    board = HostBoard(None)
    assert board.speed == 1.0 and board.can_burst is False
    t0 = time.monotonic_ns()
    assert t0 <= board.clock_ns() <= time.monotonic_ns() and t0 <= board.drdy_edge_ns() <= time.monotonic_ns()
    with pytest.raises(ADS1299Error, match="no burst path"):
        board.read_frames(10)
    assert SimulatedSpiDev.can_burst is True   # the simulated board behind the same interface


def test_open_chip_gives_the_simulated_chip_its_own_board() -> None:
    from appliance.acquisition import Acquisition
    from appliance.ring import FrameRing

    cfg = validate_config({})
    chip, spi = open_chip(cfg, simulate=True, pin_factory=mock_pin_factory(), speed=1e9, drdy=False)
    try:
        assert chip.board is spi and chip.clock_ns() == spi.clock_ns()
        assert Acquisition(chip, FrameRing(100, chip.n_channels)).mode == "burst"
    finally:
        spi.close()
        spi.chip.close()


def test_hardware_does_not_sniff_the_spi_object_for_a_simulated_chip() -> None:
    # _AcquisitionAdapter.stop used getattr(getattr(spi, "chip", None), "close", ...); now board.shutdown()
    src = (APPLIANCE / "hardware.py").read_text()
    assert 'getattr(self.spi' not in src and 'board.shutdown()' in src


def test_board_shutdown_stops_the_simulated_drdy_thread() -> None:
    cfg = validate_config({})
    chip, spi = open_chip(cfg, simulate=True, pin_factory=mock_pin_factory(), speed=50.0)
    try:
        spi.close()
        chip.board.shutdown()
        assert spi.chip._thread is None or not spi.chip._thread.is_alive()
    finally:
        chip.drdy.close()


def test_open_chip_puts_the_real_chip_on_the_host_board(monkeypatch) -> None:
    """The box's branch of open_chip (spidev + the GPIO DRDY pin), with a chip wired to the configured pin."""
    import sys
    import types

    from gpiozero import Device

    from appliance.ads1299 import HostBoard
    from appliance.ads1299_sim import SimulatedSpiDev

    cfg = validate_config({})
    pins = mock_pin_factory()
    monkeypatch.setattr(Device, "pin_factory", pins)

    class WiredSpiDev(SimulatedSpiDev):
        """Stands in for ``spidev.SpiDev``: a chip whose DRDY drives the configured GPIO pin."""

        def __init__(self) -> None:
            super().__init__(drdy_pin=pins.pin(cfg.acquisition.drdy_pin))

    monkeypatch.setitem(sys.modules, "spidev", types.SimpleNamespace(SpiDev=WiredSpiDev))
    chip, spi = open_chip(cfg, simulate=False)
    try:
        assert isinstance(chip.board, HostBoard) and chip.board.drdy is chip.drdy is not None
        assert chip.bring_ups == 1 and chip.n_channels == cfg.acquisition.channels and chip.streaming
        raw, edges = chip.read_frames_timed(25)
        assert len(raw) == 25 * chip.frame_bytes and np.all(np.diff(edges) > 0)   # host-clock DRDY times
    finally:
        chip.drdy.close()
        spi.close()
        spi.chip.close()
        pins.reset()
