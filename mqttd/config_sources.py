"""What the settings are in the end, and where each came from (``mqttd config show``), and
the commented default configuration (``mqttd config example``).

The sources themselves (defaults, file, ``MQTTD_<SECTION>__<KEY>`` environment variables,
command line) are read by :func:`mqttd.config.load_config`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from . import config
from .config import EnvValue, Loaded

__all__ = ["EXAMPLE_NAME", "Row", "effective", "example"]

#: What ``mqttd config example`` prints (package data).
EXAMPLE_NAME = "mqttd.toml"


def example() -> str:
    """The fully commented default configuration shipped in the package."""
    return resources.files("mqttd").joinpath(EXAMPLE_NAME).read_text(encoding="utf-8")


# --- the effective settings -------------------------------------------------------------

#: Keys whose value is a secret: shown as set or not, never printed.
_SECRET_WORDS = ("password", "secret", "token")


@dataclass(slots=True)
class Row:
    """One effective setting: its dotted key, its value and where it came from."""

    key: str
    value: Any
    source: str


def _plain(value: Any) -> Any:
    if isinstance(value, EnvValue):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _masked(key: str, value: Any) -> Any:
    if any(word in key.lower() for word in _SECRET_WORDS) and value:
        return "(set, not shown)"
    if isinstance(value, dict):
        return {k: _masked(k, v) for k, v in value.items()}
    return _plain(value)


def _fields(obj: Any, skip: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    return [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)
            if f.name not in skip]


def effective(loaded: Loaded, environ: Mapping[str, str] | None = None) -> list[Row]:
    """Every setting in force, with its source: ``default``, ``file``, ``env <VAR>`` or
    ``command line (<option>)``; secrets are not shown."""
    environ = os.environ if environ is None else environ
    s = loaded.settings
    rows: list[Row] = []

    def in_file(dotted: str) -> bool:
        node: Any = loaded.file_data
        for part in dotted.split("."):
            if not isinstance(node, dict):
                return False
            match = next((k for k in node if k.lower() == part.lower()), None)
            if match is None:
                return False
            node = node[match]
        return True

    def source(dotted: str, *also: str) -> str:
        for key in (dotted, *also):
            if key in loaded.cli:
                return f"command line ({loaded.cli[key]})"
            if key in loaded.env:
                return f"env {loaded.env[key]}"
            if in_file(key):
                return "file" if key == dotted else f"file ([{key.rsplit('.', 1)[0]}])"
        return "default"

    def add(dotted: str, value: Any, *also: str) -> None:
        rows.append(Row(dotted, _masked(dotted.rsplit(".", 1)[-1], value),
                        source(dotted, *also)))

    for key, attr in config._NODE_FIELDS.items():
        value = getattr(s, attr)
        if key == "data_dir" and not value:
            value = config.default_data_dir()
            src = source("node.data_dir")
            rows.append(Row("node.data_dir", value, src if src != "default" else
                            "env MQTTD_DATA_DIR" if environ.get("MQTTD_DATA_DIR") else src))
            continue
        if key == "log_level":  # [log] level, formerly [node] log_level
            add("log.level", value, "node.log_level")
        else:
            add(f"node.{key}", value)
    for key, value in _fields(s.zones["default"], ("name",)):
        add(f"mqtt.{key}", value)
    for name, zone in s.zones.items():
        if name != "default":
            for key, value in _fields(zone, ("name",)):
                add(f"zones.{name}.{key}", value, f"mqtt.{key}")
    for lst in s.listeners:
        for key, value in _fields(lst, ("name",)):
            add(f"listeners.{lst.name}.{key}", value)
    for spec in s.plugins:
        add(f"plugins.{spec.name}", {"class": spec.ref, "enabled": spec.enabled,
                                     **spec.options})
    for section, chain in (("auth", "providers"), ("authz", "sources")):
        obj = getattr(s, section)
        for key, value in _fields(obj, (chain,)):
            add(f"{section}.{key}", value)
        for i, spec in enumerate(getattr(obj, chain)):
            rows.append(Row(f"{section}.{chain}[{i}]",
                            _masked("", {"type": spec.type, **spec.options}), "file"
                            if not spec.path or in_file(section) else "default"))
    for f in dataclasses.fields(s):
        obj = getattr(s, f.name)
        if dataclasses.is_dataclass(obj) and f.name not in ("auth", "authz"):
            for key, value in _fields(obj):
                add(f"{f.name}.{key}", value)
    for name in type(s.modules)._fields:  # [modules.<name>], each a dataclass
        for key, value in _fields(getattr(s.modules, name)):
            if isinstance(value, list):  # rewrite rules, auto-subscribe topics
                value = [dataclasses.asdict(v) if dataclasses.is_dataclass(v)
                         and not isinstance(v, type) else v for v in value]
            add(f"modules.{name}.{key}", value)
    return rows
