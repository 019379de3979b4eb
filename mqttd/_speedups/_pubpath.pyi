"""Type stub for the compiled PUBLISH fast path (``_pubpath.pyx``); mirrors
``mqttd.core._pubpath_py.PublishPathPy``."""

from collections.abc import Callable
from typing import Any

__all__ = ["PublishPath"]

class PublishPath:
    """The PUBLISH fast path, configured once."""

    def __init__(self, broker_cls: type, channel_cls: type, message_cls: type,
                 overfull: list[Any], connected: object, publish_type: int,
                 encode_publish: Callable[..., bytes], counters: dict[str, int],
                 slotted: dict[str, type] | None = None) -> None: ...
    def take(self, channel: Any, p: Any) -> bool: ...
    def run(self, channel: Any, packets: list[Any]) -> int: ...
