"""Fixtures of the system tests: a broker on the host, a booted container with bedtime installed by install-pi.sh."""
from __future__ import annotations

import os

import pytest

from tests.system.nspawn import missing_tools


@pytest.fixture(scope="session", autouse=True)
def _system_test_prerequisites():
    if os.geteuid() != 0:
        pytest.skip("the system tests need root (debootstrap, systemd-nspawn, overlay mounts)")
    missing = missing_tools()
    if missing:
        pytest.skip(f"missing host tools: {', '.join(missing)} (apt-get install debootstrap systemd-container "
                    f"qemu-user-static binfmt-support)")
