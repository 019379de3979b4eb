#!/usr/bin/env python3
"""Build the load generator's extension in place (bench/loadgen/_loadgen*.so).

    python bench/setup_loadgen.py

Not part of the package's build: the generator belongs to the benchmark only.
``bench/run.py`` runs this on demand when the extension is missing or older
than its source. Temporary files go to bench/out/build (ignored by git).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "loadgen" / "_loadgen.pyx"


def main() -> int:
    from Cython.Build import cythonize
    from setuptools import Extension, setup

    os.chdir(HERE)  # --inplace puts loadgen/_loadgen*.so next to its source
    ext = Extension("loadgen._loadgen", [str(SOURCE.relative_to(HERE))],
                    extra_compile_args=["-O2", "-Wno-unused-function"])
    setup(
        name="mqttd-bench-loadgen",
        ext_modules=cythonize([ext], quiet=True, compiler_directives={"language_level": 3}),
        script_args=["-q", "build_ext", "--inplace",
                     "--build-temp", str(HERE / "out" / "build")],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
