"""Topic rewrite (EMQX's emqx_rewrite): ordered rules that change the topic a client
publishes to or subscribes to, before authorization.

A rule has an action (``publish``, ``subscribe`` or ``all``), a source topic filter, a
regular expression and a destination. For each topic the first rule of the action whose
filter matches it decides: when its expression is found in the topic the topic becomes
the destination, with ``$1``..``$9`` the expression's groups and ``${clientid}`` and
``${username}`` the client's; when it is not found the topic stays as it was (EMQX's
rule). Rules are checked when the configuration is read (``mqttd/config.py``).

Subscribe rules apply to SUBSCRIBE and UNSUBSCRIBE filters (inside ``$share/<group>/``
and ``$queue/``), publish rules to PUBLISH topics, both on what the client sent (before its
zone's mountpoint is added). A placeholder whose value is missing or holds ``+``, ``#`` or
``/`` leaves the topic unchanged: a client must not choose how far a rewrite reaches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..config import RewriteRule
from ..core.services import ClientInfo
from ..mqtt.packets import Properties, SubOpts
from ..mqtt.topics import match, parse_shared
from .base import Module, ModuleContext

__all__ = ["CompiledRule", "Rewrite", "compile_rules", "rewrite", "source_prefix"]

#: $1..$9, ${clientid}, ${username}
_REFS = re.compile(r"\$(\d)|\$\{(clientid|username)\}")
_UNSAFE = ("+", "#", "/")


@dataclass(frozen=True, slots=True)
class CompiledRule:
    source: str
    regex: re.Pattern[str]
    dest: str


def compile_rules(rules: list[RewriteRule], action: str) -> tuple[CompiledRule, ...]:
    """The rules that apply to ``action`` ("publish" or "subscribe"), in order."""
    return tuple(CompiledRule(r.source_topic, re.compile(r.re), r.dest_topic)
                 for r in rules if r.action in (action, "all"))


def source_prefix(topic_filter: str) -> str:
    """A prefix every topic ``topic_filter`` matches starts with: its levels before the
    first wildcard ("a/b/#" -> "a/b", which "a/b" itself also starts with; "+/x" -> "")."""
    levels: list[str] = []
    for level in topic_filter.split("/"):
        if level in ("+", "#"):
            return "/".join(levels)
        levels.append(level)
    return topic_filter


def rewrite(topic: str, rules: tuple[CompiledRule, ...], client: ClientInfo) -> str:
    """``topic`` after the first rule whose source filter matches it."""
    for rule in rules:
        if not match(rule.source, topic):
            continue
        found = rule.regex.search(topic)
        if found is None:
            return topic
        return _substitute(rule.dest, found, client) or topic
    return topic


def _substitute(dest: str, found: re.Match[str], client: ClientInfo) -> str | None:
    """``dest`` with its references filled in; None if a placeholder's value is missing
    or unsafe (or the result is empty)."""
    parts: list[str] = []
    last = 0
    for ref in _REFS.finditer(dest):
        parts.append(dest[last:ref.start()])
        last = ref.end()
        if ref.group(1) is not None:
            n = int(ref.group(1))
            parts.append((found.group(n) or "") if n <= found.re.groups else ref.group(0))
            continue
        value = client.client_id if ref.group(2) == "clientid" else client.username
        if not value or any(c in value for c in _UNSAFE):
            return None
        parts.append(value)
    parts.append(dest[last:])
    return "".join(parts) or None


class Rewrite(Module):
    """Topic rewrite rules for PUBLISH, SUBSCRIBE and UNSUBSCRIBE."""

    name = "rewrite"
    description = "Topic rewrite: ordered rules applied before authorization"
    #: Before every other client.publish callback (delayed publish sees the rewritten topic).
    PRIORITY = 1000

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        rules = ctx.settings.modules.rewrite.rules
        self.rules = rules
        self.publish_rules = compile_rules(rules, "publish")
        self.subscribe_rules = compile_rules(rules, "subscribe")
        self._rewritten = ctx.metrics.new("rewrite.rewritten")

    def load(self) -> None:
        if self.publish_rules:
            # Only topics a rule's filter can match run the chain (see source_prefix).
            self.hook("client.publish", self._publish, self.PRIORITY,
                      prefixes=tuple({source_prefix(r.source) for r in self.publish_rules}))
        if self.subscribe_rules:
            self.hook("client.subscribe", self._subscribe, self.PRIORITY)
            self.hook("client.unsubscribe", self._unsubscribe, self.PRIORITY)

    def info(self) -> dict[str, Any]:
        return {"rules": len(self.rules),
                "rewritten": self.ctx.metrics.get(self._rewritten)}

    def _publish(self, client: ClientInfo, props: Properties, topic: str) -> str | None:
        new = rewrite(topic, self.publish_rules, client)
        if new == topic:
            return None
        self.ctx.metrics.inc(self._rewritten)
        return new

    def _filter(self, client: ClientInfo, topic_filter: str) -> str:
        share = parse_shared(topic_filter)
        if share is None:
            new = rewrite(topic_filter, self.subscribe_rules, client)
        else:
            group, real = share
            inner = rewrite(real, self.subscribe_rules, client)
            if inner == real:
                return topic_filter
            new = (f"$share/{group}/" if group is not None else "$queue/") + inner
        if new != topic_filter:
            self.ctx.metrics.inc(self._rewritten)
        return new

    def _subscribe(self, client: ClientInfo, props: Properties,
                   topics: list[tuple[str, SubOpts | int]]) -> list[tuple[str, SubOpts | int]]:
        return [(self._filter(client, f), opts) for f, opts in topics]

    def _unsubscribe(self, client: ClientInfo, props: Properties, topics: list[str]
                     ) -> list[str]:
        return [self._filter(client, f) for f in topics]
