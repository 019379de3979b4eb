"""The routing table (EMQX's emqx_mgmt routes): which filters have subscribers, and the
routes a message to a topic takes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..mqtt.topics import is_wildcard
from .errors import NotFound
from .listing import Listing, Row

if TYPE_CHECKING:
    from ..core.router import Route, Router

__all__ = ["Routes", "route_row"]


def route_row(node_name: str) -> Callable[[Route], Row]:
    """The row function of routes on ``node_name``: filter, node, subscriber counts."""

    def row(route: Route) -> Row:
        return {"topic": route.topic_filter, "node": node_name, "subscribers": route.count_plain(),
                "shared": {(g if g is not None else "$queue"): len(group.members)
                           for g, group in route.groups.items()}}

    return row


class Routes:
    """The routes of one node (a single node: every route leads here)."""

    def __init__(self, router: Router, node_name: str) -> None:
        self.router = router
        self.node_name = node_name
        self._row = route_row(node_name)

    def all(self) -> Listing[Route]:
        """Every route (a snapshot)."""
        return Listing(list(self.router.routes.values()), self._row)

    def lookup(self, topic: str) -> Listing[Route]:
        """A filter's own route, or the routes a message to a topic name takes;
        NotFound("route") if there are none."""
        if is_wildcard(topic):
            route = self.router.routes.get(topic)
            routes = [route] if route is not None else []
        else:
            routes = list(self.router.match(topic))
        if not routes:
            raise NotFound("route", topic)
        return Listing(routes, self._row)
