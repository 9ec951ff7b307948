"""cffi API-mode builder for ``appliance._native`` (the C frame decoder + ring buffer).

setup.py names ``native/build_native.py:ffibuilder``, so ``pip install .`` (or ``-e .``) compiles
native/ring.c and native/filter.c into ``appliance/_native*.so``. Run directly (``python native/build_native.py``) to build
in place without pip.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def _cdef_from_header(text: str) -> str:
    # cffi's cdef() takes declarations only: drop preprocessor lines; comments it strips itself.
    return "\n".join(line for line in text.splitlines() if not re.match(r"\s*#", line))


ffibuilder = FFI()
ffibuilder.cdef(_cdef_from_header((HERE / "ring.h").read_text()))
ffibuilder.cdef(_cdef_from_header((HERE / "filter.h").read_text()))
# Paths relative to the project root: pip and setuptools run the build from there, and setuptools
# wants relative source paths. Running this file directly chdirs there first.
ffibuilder.set_source(
    "appliance._native",
    '#include "ring.h"\n#include "filter.h"',
    sources=["native/ring.c", "native/filter.c"],
    include_dirs=["native"],
    # -ffp-contract=off: no fused multiply-add, so filter.c rounds exactly as scipy's sosfilt does (aarch64 has FMA).
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-ffp-contract=off"],
)

if __name__ == "__main__":
    os.chdir(HERE.parent)
    ffibuilder.compile(verbose=True)
