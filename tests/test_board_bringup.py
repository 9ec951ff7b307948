"""The ADS1299 is brought up in one place (hardware.open_chip), for the daemon and the self-test alike."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from appliance.config import validate_config
from appliance.hardware import mock_pin_factory, open_chip

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
