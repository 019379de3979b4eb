"""Build script: compiles the Cython fast paths in mqttd/_speedups.

Metadata lives in pyproject.toml. This file only decides which extensions to
build. Every extension is optional: on a machine without a C compiler the
install still succeeds and mqttd runs on its pure-Python reference
implementations, after a loud warning. ``MQTTD_NO_EXTENSIONS`` (anything but
"", 0, false, no, off) skips the extensions altogether.
"""

import glob
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

_FALSE = {"", "0", "false", "no", "off"}


def _no_extensions() -> bool:
    # Same rule as mqttd/_accel.py; setup.py cannot import the package it builds.
    return os.environ.get("MQTTD_NO_EXTENSIONS", "").strip().lower() not in _FALSE


_WARNING = """
********************************************************************************
WARNING: mqttd's Cython speedups could not be compiled ({name}: {err}).
mqttd will run on its pure-Python implementations, which are much slower.
Install a C compiler and the Python headers (Debian: apt-get install gcc
python3-dev) and reinstall to get the compiled fast paths.
********************************************************************************
"""


class OptionalBuildExt(build_ext):
    """build_ext that turns a failed extension into a visible warning."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as err:  # no compiler at all: distutils raises before any extension
            sys.stderr.write(_WARNING.format(name="all extensions", err=err))

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as err:
            sys.stderr.write(_WARNING.format(name=ext.name, err=err))


def _extensions() -> list:
    if _no_extensions():
        sys.stderr.write("MQTTD_NO_EXTENSIONS is set: building the pure-Python mqttd only\n")
        return []
    from Cython.Build import cythonize

    sources = sorted(glob.glob(os.path.join("mqttd", "_speedups", "*.pyx")))
    exts = [
        Extension(
            "mqttd._speedups." + os.path.splitext(os.path.basename(src))[0],
            [src],
            extra_compile_args=["-O3"],
        )
        for src in sources
    ]
    compiled = cythonize(
        exts,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
        quiet=True,
    )
    # cythonize() returns fresh Extension objects without the flag.
    for ext in compiled:
        ext.optional = True
    return compiled


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
