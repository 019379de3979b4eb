"""The subscription trie, pure-Python reference (EMQX's ``emqx_trie``).

A trie of topic-filter levels answers "which stored filters match this topic
name?" without scanning every filter. ``mqttd/_speedups/_trie.pyx`` is the same
algorithm compiled; both must give the same answers as the brute-force
:func:`mqttd.topics.match` for any filter and any topic.

Layout: each node is one level. Literal levels live in ``children`` (a dict
keyed by the level string); the ``+`` child and the ``#`` child have their own
fields, so matching one topic level costs one dict lookup plus two attribute
reads. A node stores the filter that ends on it (or None) and ``count``, the
number of filters ending in its subtree, so a delete prunes the branch it
emptied and memory comes back. Filters are opaque strings: no validation here
(callers check :func:`mqttd.topics.filter_error`). As in
:func:`mqttd.topics.match`, a ``#`` level swallows the rest of the topic and
whatever follows it in the filter, so the odd filter ``a/#/b`` is kept under
the ``#`` child of ``a`` and matches wherever ``a/#`` would.

Matching is iterative (an explicit stack, each node knowing its depth), so a
65,000-level topic or filter cannot overflow the interpreter stack.

There is no separate set of the stored filters (the router's route table already holds
them; a set was ~40 B per wildcard filter): membership is a walk down the filter's levels,
the size is the root's ``count``, and ``filters()`` collects the filters from the nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

__all__ = ["TriePy"]

_V = TypeVar("_V")


class _Node:
    """One filter level: literal children, the ``+`` and ``#`` children, the filter ending here."""

    __slots__ = ("children", "count", "depth", "filter", "plus", "pound")

    def __init__(self, depth: int) -> None:
        self.children: dict[str, _Node] | None = None  # created on first literal child
        self.plus: _Node | None = None
        self.pound: _Node | None = None
        self.filter: str | None = None
        self.count = 0  # filters ending in this subtree, this node included
        self.depth = depth  # topic level this node consumes next; the root is 0


def _collect(node: _Node, out: list[str]) -> None:
    """Append every filter in ``node``'s subtree (the tail after a ``#``)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if n.filter is not None:
            out.append(n.filter)
        if n.children is not None:
            stack.extend(n.children.values())
        if n.plus is not None:
            stack.append(n.plus)
        if n.pound is not None:
            stack.append(n.pound)


class TriePy:
    """A set of topic filters that finds the ones matching a topic name.

    ``insert``/``delete`` add and remove filters; ``match(topic)`` returns every
    stored filter matching ``topic`` once each, in no particular order.
    """

    __slots__ = ("_root",)

    def __init__(self) -> None:
        self._root = _Node(0)

    def _find(self, topic_filter: str) -> _Node | None:
        """The node ``topic_filter`` ends on, if that path exists (it may hold no filter)."""
        node: _Node | None = self._root
        for level in topic_filter.split("/"):
            assert node is not None
            if level == "+":
                node = node.plus
            elif level == "#":
                node = node.pound
            else:
                children = node.children
                node = children.get(level) if children is not None else None
            if node is None:
                return None
        return node

    def _has(self, topic_filter: str) -> bool:
        node = self._find(topic_filter)
        return node is not None and node.filter is not None

    def insert(self, topic_filter: str) -> bool:
        """Add ``topic_filter``; True if it was not already stored."""
        if not isinstance(topic_filter, str):
            raise TypeError(f"topic filter must be str, not {type(topic_filter).__name__}")
        if self._has(topic_filter):
            return False
        node = self._root
        node.count += 1
        for level in topic_filter.split("/"):
            if level == "+":
                child = node.plus
                if child is None:
                    child = node.plus = _Node(node.depth + 1)
            elif level == "#":
                child = node.pound
                if child is None:
                    child = node.pound = _Node(node.depth + 1)
            else:
                children = node.children
                if children is None:
                    children = node.children = {}
                child = children.get(level)
                if child is None:
                    child = children[level] = _Node(node.depth + 1)
            child.count += 1
            node = child
        node.filter = topic_filter
        return True

    def delete(self, topic_filter: str) -> bool:
        """Remove ``topic_filter``; True if it was stored. Prunes the nodes it leaves empty."""
        if not isinstance(topic_filter, str):
            raise TypeError(f"topic filter must be str, not {type(topic_filter).__name__}")
        if not self._has(topic_filter):
            return False
        node = self._root
        node.count -= 1
        for level in topic_filter.split("/"):
            if level == "+":
                child = node.plus
                assert child is not None
                child.count -= 1
                if child.count == 0:
                    node.plus = None  # drops the whole emptied branch
                    return True
            elif level == "#":
                child = node.pound
                assert child is not None
                child.count -= 1
                if child.count == 0:
                    node.pound = None
                    return True
            else:
                children = node.children
                assert children is not None
                child = children[level]
                child.count -= 1
                if child.count == 0:
                    del children[level]
                    if not children:
                        node.children = None
                    return True
            node = child
        node.filter = None
        return True

    def match(self, topic: str) -> list[str]:
        """Every stored filter matching the topic name ``topic``, each once, in no set order."""
        if not isinstance(topic, str):
            raise TypeError(f"topic must be str, not {type(topic).__name__}")
        levels = topic.split("/")
        n = len(levels)
        out: list[str] = []
        root = self._root
        stack: list[_Node] = []
        # [MQTT-4.7.2-1]: a filter starting with a wildcard never matches a $-topic.
        if not topic.startswith("$"):
            if root.pound is not None:
                _collect(root.pound, out)
            if root.plus is not None:
                stack.append(root.plus)
        if root.children is not None:
            child = root.children.get(levels[0])
            if child is not None:
                stack.append(child)
        # Every node on the stack has consumed ``depth`` levels of the topic.
        while stack:
            node = stack.pop()
            pound = node.pound
            if pound is not None:  # "x/#" also matches "x" itself
                if pound.children is None and pound.plus is None and pound.pound is None:
                    out.append(pound.filter)  # type: ignore[arg-type]  # a leaf holds a filter
                else:
                    _collect(pound, out)
            d = node.depth
            if d == n:
                if node.filter is not None:
                    out.append(node.filter)
                continue
            if node.children is not None:
                child = node.children.get(levels[d])
                if child is not None:
                    stack.append(child)
            if node.plus is not None:
                stack.append(node.plus)
        return out

    def lookup(self, topic: str, table: dict[str, _V]) -> list[_V]:
        """``table``'s value for every stored filter matching ``topic`` (KeyError if one has
        none), then ``table``'s value for ``topic`` itself if it has one that is not None:
        the router's routes, its wildcard filters here and its exact ones in ``table``."""
        if type(table) is not dict:  # (a subclass's __missing__ would not be asked)
            raise TypeError(f"table must be dict, not {type(table).__name__}")
        out = [table[f] for f in self.match(topic)]
        exact = table.get(topic)
        if exact is not None:
            out.append(exact)
        return out

    def __len__(self) -> int:
        return self._root.count

    def __contains__(self, topic_filter: object) -> bool:
        return isinstance(topic_filter, str) and self._has(topic_filter)

    def filters(self) -> Iterator[str]:
        """The stored filters, in no set order (collected when called)."""
        out: list[str] = []
        _collect(self._root, out)
        return iter(out)

    def _node_count(self) -> int:
        """Nodes below the root; 0 when empty. For tests: deletes must not leak nodes."""
        count = -1
        stack = [self._root]
        while stack:
            node = stack.pop()
            count += 1
            if node.children is not None:
                stack.extend(node.children.values())
            if node.plus is not None:
                stack.append(node.plus)
            if node.pound is not None:
                stack.append(node.pound)
        return count
