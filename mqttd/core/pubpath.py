"""The PUBLISH fast path facade: picks the compiled twin when available.

``PublishPathPy`` always exists; ``PublishPathC`` only when the Cython build loaded;
``PublishPath`` is the best available. :func:`build` configures one with core's classes
and counters and returns its ``take(channel, packet) -> bool``, which the connection
tries before ``Channel.handle_in`` (see ``mqttd/core/_pubpath_py.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._accel import use_c
from ..config import Zone
from ..hooks import Hooks
from ..metrics import (
    CLIENT_ACL_IGNORE,
    MESSAGES_ACKED,
    MESSAGES_DELIVERED,
    MESSAGES_DROPPED_NO_SUBSCRIBERS,
    MESSAGES_PUBLISH,
    MESSAGES_QOS0_RECEIVED,
    MESSAGES_QOS0_SENT,
    MESSAGES_QOS1_RECEIVED,
    MESSAGES_QOS1_SENT,
    PACKETS_PUBACK_RECEIVED,
    PACKETS_PUBACK_SENT,
)
from ..mqtt.codec import encode_publish
from ..mqtt.packets import PUBLISH, Puback, Publish, SubOpts
from ._pubpath_py import PublishPathPy
from .broker import Broker
from .channel import CONNECTED, Channel
from .dispatch import Dispatcher
from .message import Message
from .router import Route, Router
from .services import CommitGate, LocalLane
from .session import OVERFULL, Limits, Session

__all__ = ["PublishPath", "PublishPathPy", "build", "build_run"]

if use_c("pubpath"):
    from .._speedups._pubpath import PublishPath as PublishPathC

    PublishPath: type = PublishPathC
    __all__ += ["PublishPathC"]
else:
    PublishPath = PublishPathPy

COUNTERS: dict[str, int] = {
    "qos0_received": MESSAGES_QOS0_RECEIVED,
    "qos1_received": MESSAGES_QOS1_RECEIVED,
    "acl_ignore": CLIENT_ACL_IGNORE,
    "messages_publish": MESSAGES_PUBLISH,
    "messages_delivered": MESSAGES_DELIVERED,
    "dropped_no_subscribers": MESSAGES_DROPPED_NO_SUBSCRIBERS,
    "qos0_sent": MESSAGES_QOS0_SENT,
    "puback_sent": PACKETS_PUBACK_SENT,
    "puback_received": PACKETS_PUBACK_RECEIVED,
    "messages_acked": MESSAGES_ACKED,
    "qos1_sent": MESSAGES_QOS1_SENT,
}

#: Core's classes whose attributes the compiled twin reads from their slots (or, for the
#: Dispatcher and Router, which have none, from the instance's dict).
SLOTTED: dict[str, type] = {"Publish": Publish, "Zone": Zone, "Hooks": Hooks, "Route": Route,
                            "Session": Session, "Limits": Limits, "SubOpts": SubOpts,
                            "Dispatcher": Dispatcher, "Router": Router, "LocalLane": LocalLane,
                            "Puback": Puback, "CommitGate": CommitGate}


def build_run(impl: type = PublishPath  # type: ignore[explicit-any]
              ) -> Callable[[Any, list[Any]], int]:
    """A configured fast path's ``run(channel, packets) -> int`` (see PublishPathPy.run)."""
    path = impl(Broker, Channel, Message, OVERFULL, CONNECTED, PUBLISH, encode_publish,
                COUNTERS, SLOTTED)
    run: Callable[[Any, list[Any]], int] = path.run  # type: ignore[explicit-any]
    return run


def build(impl: type = PublishPath) -> Callable[[Any, Any], bool]:  # type: ignore[explicit-any]
    """A configured fast path's ``take`` (``impl``: PublishPathPy or PublishPathC)."""
    path = impl(Broker, Channel, Message, OVERFULL, CONNECTED, PUBLISH, encode_publish,
                COUNTERS, SLOTTED)
    take: Callable[[Any, Any], bool] = path.take  # type: ignore[explicit-any]
    return take
