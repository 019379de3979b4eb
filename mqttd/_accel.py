"""Which implementation each accelerated component uses: the one switch.

``MQTTD_NO_EXTENSIONS`` set to anything but "", 0, false, no or off forces the
pure-Python reference implementations (setup.py reads the same rule at build
time). ``LOADED`` maps each component to ``"c"`` or ``"py"``; the daemon logs it
at start and ``mqttd ctl status`` shows it.
"""

from __future__ import annotations

import importlib
import os

_FALSE = {"", "0", "false", "no", "off"}

#: Components with a Cython fast path in ``mqttd/_speedups/_<name>.pyx``.
COMPONENTS: tuple[str, ...] = ("codec", "trie", "metrics", "pubpath", "records", "kdf")


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() not in _FALSE


NO_EXTENSIONS: bool = _flag(os.environ.get("MQTTD_NO_EXTENSIONS"))


def _probe(name: str) -> str:
    if NO_EXTENSIONS:
        return "py"
    try:
        importlib.import_module(f"mqttd._speedups._{name}")
    except ImportError:
        return "py"
    return "c"


LOADED: dict[str, str] = {name: _probe(name) for name in COMPONENTS}


def use_c(name: str) -> bool:
    """True when component ``name`` should use its compiled implementation."""
    return LOADED[name] == "c"
