"""The cluster (``mqttd ctl cluster status|nodes``): this node's part in a cluster over
NATS as management sees it. The cluster link lives a layer above (mqttd/cluster); the
process layer hands it in, typed here by what management calls."""

from __future__ import annotations

from typing import Any, Protocol

from .errors import Unavailable
from .listing import Row, iso

__all__ = ["ClusterView", "ClusterArea"]


class ClusterView(Protocol):
    """What :class:`mqttd.cluster.routing.Cluster` offers management."""

    def status(self) -> dict[str, Any]: ...
    def nodes(self) -> list[dict[str, Any]]: ...


class ClusterArea:
    """The node's cluster link, if it is configured (``[cluster] nats_url``)."""

    def __init__(self, cluster: ClusterView | None) -> None:
        self.cluster = cluster

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
