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
