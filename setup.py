"""Build hook for the one thing pyproject.toml cannot say: the cffi extension.

cffi in API mode compiles native/ring.c into ``appliance._native`` at ``pip install`` time,
so no prebuilt binary is ever kept in git.
"""
from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder"])
