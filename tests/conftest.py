"""Shared pytest fixtures. Keep additions small; a layer's own fixtures live beside its tests."""
from __future__ import annotations

import pytest

from appliance.hypnogram import shared_dir


@pytest.fixture(scope="session")
def shared():
    """The ``../shared`` folder; tests that need it skip cleanly when it is absent."""
    root = shared_dir()
    if root is None:
        pytest.skip("../shared is not present beside the checkout")
    return root


@pytest.fixture
def mock_pins():
    """gpiozero's mock pin factory with PWM-capable pins, installed for one test and torn down after."""
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    old = Device.pin_factory
    Device.pin_factory = MockFactory(pin_class=MockPWMPin)
    yield Device.pin_factory
    Device.pin_factory.reset()
    Device.pin_factory = old


@pytest.fixture(scope="session")
def mqtt_pki(tmp_path_factory):
    """A test CA, server and client certificates for the mosquitto TLS listeners (made once)."""
    from tests.broker import make_pki, mosquitto_available

    if not mosquitto_available():
        pytest.skip("mosquitto is not installed (Debian: apt-get install mosquitto); MQTT tests need a real broker")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(tmp_path, mqtt_pki):
    """A private, running mosquitto (tests/broker.py): open, password+ACL, TLS and mutual-TLS listeners."""
    from tests.broker import MosquittoBroker

    b = MosquittoBroker(tmp_path / "mosquitto", mqtt_pki).start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster (tests/postgres.py), started once; skips when it cannot run here."""
    from tests.postgres import PostgresCluster

    try:
        cluster = PostgresCluster()
    except RuntimeError as e:
        pytest.skip(f"PostgreSQL unavailable: {e}")
    yield cluster
    cluster.stop()


# The system tests (tests/system: a Debian root filesystem booted under a real systemd, amd64 and emulated arm64)
# need root, debootstrap and systemd-nspawn and take minutes: `make system-test` / `make pi-test` run them,
# a plain `make test` does not collect them.
import os as _os  # noqa: E402

if not _os.environ.get("BEDTIME_SYSTEM_TESTS"):
    collect_ignore_glob = ["system/*"]
