"""The one part of meshroute that is compiled: BFD's per-packet path
(bgpd/bfd/engine.c), a plain shared library that bgpd/bfd/engine.py loads
with ctypes. Everything else is declared in setup.cfg."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "bgpd.bfd._engine",
            ["bgpd/bfd/engine.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
        )
    ]
)
