"""Reading one provider's or source's options (the keys of its ``[[auth.providers]]`` table).

The config loader hands each provider its table untouched (only ``type`` is taken out), so
each provider checks its own keys. :class:`Options` does that the same way everywhere:
every problem becomes one line prefixed with where it was configured
(``auth.providers[1].timeout: expected a number``), a misspelt key gets a "did you mean",
and :meth:`Options.done` raises one :class:`~mqttd.access.authn.AccessError` with all of
them, so ``mqttd config check`` shows every mistake at once.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from ..config import AccessSpec
from .authn import AccessError

__all__ = ["Options"]

_MISSING: Any = object()

_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def type_name(value: object) -> str:
    """How an error line names a TOML value's type."""
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


class Options:
    """Typed reads of ``spec.options``; each getter returns the default (or None) when the
    value is wrong, having recorded why."""

    def __init__(self, spec: AccessSpec) -> None:
        self.spec = spec
        self.values = spec.options
        self.errors: list[str] = []
        self._known: list[str] = []

    def error(self, key: str, what: str) -> None:
        """Record one problem with ``key``."""
        self.errors.append(f"{self.spec.path}.{key}: {what}")

    def _get(self, key: str, default: Any) -> Any:
        self._known.append(key)
        if key in self.values:
            return self.values[key]
        if default is _MISSING:
            self.error(key, "missing")
            return None
        return default

    def has(self, key: str) -> bool:
        self._known.append(key)
        return key in self.values

    def string(self, key: str, default: Any = _MISSING, *,
               choices: tuple[str, ...] = (), empty: bool = False) -> str | None:
        """A string (one of ``choices`` if given; non-empty unless ``empty``)."""
        value = self._get(key, default)
        if key not in self.values:
            return value  # type: ignore[no-any-return]  # the default, or None if missing
        if not isinstance(value, str):
            self.error(key, f"expected a string, got {type_name(value)}")
            return None
        if choices and value not in choices:
            self.error(key, f"{value!r} is not one of {', '.join(choices)}")
            return None
        if not value and not empty:
            self.error(key, "must not be empty")
            return None
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            self.error(key, f"expected true or false, got {type_name(value)}")
            return default
        return value

    def seconds(self, key: str, default: float, *, low: float, high: float) -> float:
        """A duration: seconds, or a string such as ``"500ms"``, ``"5s"``, ``"2m"``."""
        value = self._get(key, default)
        if isinstance(value, str):
            m = _DURATION.fullmatch(value)
            if m is None:
                self.error(key, f"not a duration: {value!r} (use seconds or e.g. \"5s\", "
                                "\"500ms\")")
                return default
            value = float(m.group(1)) * _UNITS[m.group(2)]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.error(key, f"expected a number of seconds, got {type_name(value)}")
            return default
        if not low <= value <= high:
            self.error(key, f"{value:g} is out of range ({low:g}..{high:g})")
            return default
        return float(value)

    def integer(self, key: str, default: int, *, low: int, high: int) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"expected an integer, got {type_name(value)}")
            return default
        if not low <= value <= high:
            self.error(key, f"{value} is out of range ({low}..{high})")
            return default
        return value

    def strings(self, key: str, default: list[str]) -> list[str]:
        """A non-empty list of non-empty strings."""
        value = self._get(key, default)
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, str) and v for v in value)):
            self.error(key, f"expected a non-empty list of strings, got {type_name(value)}")
            return default
        return value

    def table(self, key: str, default: dict[str, Any]) -> dict[str, Any]:
        value = self._get(key, default)
        if not isinstance(value, dict):
            self.error(key, f"expected a table, got {type_name(value)}")
            return default
        return value

    def done(self) -> None:
        """Every unread key is unknown; raise AccessError if anything was wrong."""
        known = self._known
        for key in self.values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                self.error(key, f"unknown key{hint}")
        if self.errors:
            raise AccessError(self.errors)
