"""The clinic web console (``bedtime-fleet serve``): :func:`create_app` builds the FastAPI app.

Imported lazily, so ``bedtime-fleet keys``/``sign`` work where the web extra (FastAPI) is not installed.
"""
from __future__ import annotations

from typing import Any

__all__ = ["create_app", "ConsoleSettings"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from appliance.fleet.web.app import create_app

        return create_app
    if name == "ConsoleSettings":
        from appliance.fleet.web.settings import ConsoleSettings

        return ConsoleSettings
    raise AttributeError(name)
