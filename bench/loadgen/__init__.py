"""The benchmark's MQTT load generator: a Cython epoll engine plus packet templates.

``engine()`` returns the compiled ``_loadgen`` module, building it first
(``bench/setup_loadgen.py``) when it is missing or older than its source.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "_loadgen.pyx"
SETUP = HERE.parent / "setup_loadgen.py"


class BuildError(RuntimeError):
    """The generator's extension could not be built (no compiler or Cython?)."""


def _built() -> Path | None:
    found = sorted(HERE.glob("_loadgen.*.so")) + sorted(HERE.glob("_loadgen.*.pyd"))
    return found[0] if found else None


def engine(rebuild: bool = False) -> ModuleType:
    """The compiled engine module, built on demand."""
    so = _built()
    if rebuild or so is None or so.stat().st_mtime < SOURCE.stat().st_mtime:
        proc = subprocess.run([sys.executable, str(SETUP)], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0 or _built() is None:
            raise BuildError("building the load generator failed "
                             f"({sys.executable} {SETUP}):\n{proc.stdout}{proc.stderr}")
        if "loadgen._loadgen" in sys.modules:
            raise BuildError("the load generator was rebuilt after import: restart")
    return importlib.import_module("loadgen._loadgen")
