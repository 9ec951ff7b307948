"""The release's version string, one for both programs (``bedtime --version``, ``bedtime-fleet --version``) and
for what a box reports as its ``firmware_version`` in its status.

Box and clinic ship in one wheel, so they are one release; the string lives in the protocol layer because it is
the only code both sides import. ``appliance.__version__`` is this same object (the package's conventional name
for it); ``tests/test_packaging.py`` checks it against ``pyproject.toml``'s ``version``.
"""
from __future__ import annotations

__version__ = "0.1.0"
