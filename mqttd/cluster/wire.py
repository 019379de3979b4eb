"""What crosses between nodes besides the payload: MQTT 5 properties as JSON (bytes as
base64; the Message Expiry Interval as the time left)."""

from __future__ import annotations

import base64
import json
from typing import Any

__all__ = ["props_in", "props_out"]


def props_out(props: dict[str, Any], remaining: int | None) -> str:
    out: dict[str, Any] = {}
    for key, value in props.items():
        if isinstance(value, bytes):
            out[key] = {"b": base64.b64encode(value).decode()}
        elif isinstance(value, list):
            out[key] = [list(v) if isinstance(v, tuple) else v for v in value]
        else:
            out[key] = value
    if remaining is not None:
        out["message_expiry_interval"] = max(remaining, 1)
    return json.dumps(out, separators=(",", ":"))


def props_in(text: str) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for key, value in json.loads(text).items():
        if isinstance(value, dict):
            props[key] = base64.b64decode(value["b"])
        elif key == "user_property":
            props[key] = [tuple(v) for v in value]
        else:
            props[key] = value
    return props
