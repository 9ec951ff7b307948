"""`bedtime selftest` on the chip simulator and mock pins, with a real broker (and a missing one)."""
from __future__ import annotations

import threading

import pytest

from appliance.protocol.boxconfig import validate_config
from appliance.selftest import format_table, run_selftest


@pytest.mark.broker
def test_selftest_passes_on_the_simulator_with_a_real_broker(broker):
    cfg = validate_config({"mqtt": {"host": "127.0.0.1", "port": broker.port}})
    results = run_selftest(cfg, simulate=True)
    table = format_table(results)
    assert [r.name for r in results] == ["chip ID", "test signal", "noise (inputs shorted)", "lead-off", "impedance",
                                         "light", "sound", "broker"]
    assert all(r.passed for r in results), table
    assert "ALL CHECKS PASSED" in table


def test_selftest_fails_clearly_when_the_broker_is_unreachable():
    from tests.broker import free_port

    cfg = validate_config({"mqtt": {"host": "127.0.0.1", "port": free_port()}})
    before = set(threading.enumerate())
    results = {r.name: r for r in run_selftest(cfg, simulate=True)}
    assert results["broker"].passed is False and "127.0.0.1" in results["broker"].detail
    assert results["chip ID"].passed and results["light"].passed
    assert "1 CHECK(S) FAILED" in format_table(list(results.values()))
    # the chip is released: the simulator's DRDY thread ends with the self-test (it used to outlive it)
    left = [t for t in set(threading.enumerate()) - before if t.name == "ads1299-sim-drdy"]
    for t in left:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in left)


def test_selftest_speed_is_checked_and_reaches_the_simulator(capsys):
    # --speed exists for emulated boxes (make pi-test runs it at 1x); a nonsense value is one line and exit 2
    from appliance.cli import main

    assert main(["selftest", "--simulate", "--no-broker", "--speed", "500"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--speed 500" in err[0]
    rows = run_selftest(validate_config({}), simulate=True, check_broker=False, sim_speed=2.0)
    assert [r.name for r in rows if r.passed is False] == []
