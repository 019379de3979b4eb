"""The cluster (``mqttd ctl cluster status|nodes``): this node's part in a cluster over
NATS as management sees it. The cluster link lives a layer above (mqttd/cluster); the
process layer hands it in, typed here by what management calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import Unavailable
from .listing import Row, iso

__all__ = ["ClusterView", "ClusterArea", "Gathered", "RemoteTraceView"]


class RemoteTraceView(Protocol):
    """A client trace running on the other nodes (:class:`mqttd.cluster.control.RemoteTrace`):
    which nodes run it (``nodes``: {"node", "answered", "reason"}), and how to end it."""

    nodes: list[dict[str, Any]]

    async def stop(self) -> None: ...


class ClusterView(Protocol):
    """What :class:`mqttd.cluster.routing.Cluster` offers management."""

    def status(self) -> dict[str, Any]: ...
    def nodes(self) -> list[dict[str, Any]]: ...
    async def ask(self, op: str, arg: str | None = None, node: str | None = None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]: ...
    async def trace(self, client_id: str, payload_limit: int | None, json_mode: bool,
                    write: Callable[[str, str, dict[str, Any]], None],
                    ended: Callable[[str, str | None], None],
                    kind: str = "clientid") -> RemoteTraceView: ...


@dataclass(slots=True)
class Gathered:
    """The other nodes' answers to a cluster-wide request: their rows, each with its
    ``node``, and one entry per other node known (``node``, ``answered``, ``reason``)."""

    rows: list[Row] = field(default_factory=list)
    nodes: list[Row] = field(default_factory=list)
    #: Why the answer may be incomplete beyond the nodes listed (None: it is not).
    note: str | None = None

    @property
    def silent(self) -> list[Row]:
        """The nodes whose rows are missing, and why."""
        return [n for n in self.nodes if not n["answered"]]


class ClusterArea:
    """The node's cluster link, if it is configured (``[cluster] nats_url``)."""

    def __init__(self, cluster: ClusterView | None) -> None:
        self.cluster = cluster

    @property
    def active(self) -> bool:
        """Whether this node is configured as part of a cluster (commands then answer for
        every node unless asked for --local)."""
        return self.cluster is not None

    async def gather(self, op: str, arg: str | None = None, node: str | None = None,
                     extra: dict[str, Any] | None = None) -> Gathered:
        """Ask every other node up (``node``: that one alone) (``clients``, ``client <id>``,
        ``kick <id>``, ``routes [<topic>]``, ``sessions [<kind>]``, ``session <id>``,
        ``subscriptions``, ``client_subscriptions <id>``, ``subscribe <id>`` and
        ``unsubscribe <id>`` with ``extra`` ``topic`` and ``qos``); at most ``[cluster]
        ctl_timeout`` seconds."""
        answer = await self._cluster().ask(op, arg, node, extra)
        return Gathered(list(answer["rows"]), list(answer["nodes"]), answer.get("note"))

    async def trace(self, client_id: str, payload_limit: int | None, json_mode: bool,
                    write: Callable[[str, str, dict[str, Any]], None],
                    ended: Callable[[str, str | None], None],
                    kind: str = "clientid") -> RemoteTraceView:
        """Trace ``client_id`` (``kind`` ``topic``: a topic filter's messages) on every other
        node up: ``write(node, line, event)`` per line, ``ended(node, reason)`` when a
        node's trace ends without being stopped."""
        return await self._cluster().trace(client_id, payload_limit, json_mode, write, ended,
                                           kind)

    def known(self, node: str) -> bool:
        """Whether ``node`` is this node or one seen in the cluster (up or down)."""
        return any(row["node"] == node for row in self._cluster().nodes())

    def _cluster(self) -> ClusterView:
        if self.cluster is None:
            raise Unavailable("this node is not in a cluster ([cluster] nats_url is not set)")
        return self.cluster

    def status(self) -> Row:
        """Connection state, server (never credentials), subscriptions and counters."""
        row = dict(self._cluster().status())
        row["joined_at"] = iso(row.get("joined_at"))
        return row

    def nodes(self) -> list[Row]:
        """This node and every node seen since it joined: up or down, routes, heartbeat."""
        return [dict(row, since=iso(row.get("since"))) for row in self._cluster().nodes()]
