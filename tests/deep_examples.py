"""``make test-deep``: every hypothesis test with DEEP times its examples (and its timeout), to shake out before CI does.

CI draws new examples at every run (no example database is kept), so a rare input a test can generate will one
day fail there; running the generated tests deeper here finds it first (2026-12-03: a saved report whose fault
had no ``time_s``, a traceback, at 6x). Loaded as a pytest plugin (``-p tests.deep_examples``); the tests'
own settings stay what CI runs.
"""
from __future__ import annotations

import os

import hypothesis
import pytest

DEEP = max(1, int(os.environ.get("DEEP", "10")))
_settings_init = hypothesis.settings.__init__


def _deeper(self, parent=None, **kwargs):  # noqa: ANN001 - hypothesis.settings' own signature
    # a test's explicit max_examples would override any profile: scale it where it is given
    if "max_examples" in kwargs:
        kwargs["max_examples"] *= DEEP
    _settings_init(self, parent, **kwargs)


hypothesis.settings.__init__ = _deeper
hypothesis.settings.register_profile("deep", max_examples=100 * DEEP)  # tests that name no max_examples
hypothesis.settings.load_profile("deep")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        mark = item.get_closest_marker("timeout")
        if mark is not None and mark.args:
            item.add_marker(pytest.mark.timeout(mark.args[0] * DEEP), append=False)
