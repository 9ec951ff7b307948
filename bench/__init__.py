"""`make bench`: speed and memory measured as ratios against a baseline run in the same process.

Each area has a module here with ``run(*, quick: bool = False) -> str`` returning a markdown section.
The machines are shared and noisy, so every figure that matters is a ratio against a baseline measured
in the same process, next to the absolute number. These are measurements, never timed tests.
"""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BOX_SOURCES = ("appliance", "bench", "tests/daemon_helpers.py")
"""What the bench workers import from the checkout; compiled by :func:`box_env`."""

_compiled = False


def box_env(**extra: str) -> dict[str, str]:
    """The environment a bench worker runs the box's code in: the checkout on the path, its modules compiled.

    A box never compiles its modules at start-up: pip writes every module's bytecode when it installs the wheel.
    A checkout run with ``PYTHONDONTWRITEBYTECODE`` set (or from a read-only tree) compiles every module in every
    process instead, and the compiler's peak memory and CPU would then count as the box's (the stored filter
    designs alone: ~7 MB of peak resident memory, measured 2026-12-03). So the first call compiles the checkout's
    modules into their ``__pycache__`` folders (ignored by git), where any interpreter looks, whatever the setting.
    (Not ``PYTHONPYCACHEPREFIX``: that moves the cache of the standard library and every installed package too,
    which then compile in every worker.)
    """
    global _compiled
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    if not _compiled:
        subprocess.run([sys.executable, "-m", "compileall", "-q", *BOX_SOURCES], cwd=REPO, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        _compiled = True
    return env
