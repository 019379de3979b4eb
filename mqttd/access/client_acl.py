"""Client ACLs that an authentication provider attaches: the rules a JWT carries in a claim,
or an HTTP authentication server returns (EMQX's ``emqx_authz_client_info``).

The authorization chain asks a client's ACL before any source (``authz.AuthzChain``): it
answers allow (True), deny (False) or no match (None, the sources then decide). Two forms
are accepted, as EMQX 5 accepts them:

* the rule list (EMQX 5's form), checked in order, first match decides, no match passes
  the decision on::

      [{"permission": "allow", "action": "publish", "topic": "dev/${clientid}/#"},
       {"permission": "deny", "action": "all", "topics": ["#"]}]

  ``action`` is ``publish``, ``subscribe`` or ``all`` (``pub``/``sub`` too); ``topic``
  one filter or ``topics`` a list; a filter starting ``eq `` matches only itself.
* the older map form, topics allowed per action, anything else denied::

      {"pub": ["dev/1/up"], "sub": ["dev/1/down"], "all": ["shared/#"]}

``${clientid}`` and ``${username}`` in a filter stand for the client's own. A value holding
``+`` or ``#`` is matched literally (a client named ``#`` gets no wildcard), and a rule
naming ``${username}`` never matches a client without one. Rules with ``qos`` or
``retain`` conditions are refused: the check here sees only the action and the topic, and
dropping a condition would widen the rule.

A delivery to the client (action ``deliver``) is checked as ``subscribe``; a shared
subscription (``$share/g/t``, ``$queue/t``) as its topic filter ``t``. Past the ACL's
expiry (the token's ``exp``), every check is denied.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from ..mqtt.topics import filter_error, match, parse_shared
from .acl_file import contains

__all__ = ["AclError", "ClientRules", "parse_acl"]


class AclError(ValueError):
    """The rules are malformed; the message says how (never the rules themselves)."""


_ACTIONS = {"publish": frozenset({"publish"}), "pub": frozenset({"publish"}),
            "subscribe": frozenset({"subscribe"}), "sub": frozenset({"subscribe"}),
            "all": frozenset({"publish", "subscribe"})}
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_RULE_KEYS = {"permission", "action", "topic", "topics"}


@dataclass(frozen=True, slots=True)
class _Rule:
    allow: bool
    actions: frozenset[str]
    #: (filter, exact): exact filters are compared as strings, wildcards ignored.
    filters: tuple[tuple[str, bool], ...]

    def matches(self, topic: str) -> bool:
        for topic_filter, exact in self.filters:
            if topic == topic_filter if exact else match(topic_filter, topic):
                return True
        return False

    def covers(self, sub: str) -> bool:
        """For a subscription with wildcards: whether a filter of this rule matches every
        topic it can match (``+`` and ``#`` in it are wildcards, not text to compare)."""
        for topic_filter, exact in self.filters:
            if topic_filter == sub if exact else contains(topic_filter, sub):
                return True
        return False


class ClientRules:
    """One client's ACL: a callable ``(action, topic) -> True | False | None``."""

    __slots__ = ("rules", "no_match", "expires")

    def __init__(self, rules: list[_Rule], no_match: bool | None,
                 expires: float | None) -> None:
        self.rules = rules
        #: None for the rule list (the sources decide), False for the map form.
        self.no_match = no_match
        #: Wall-clock time after which everything is denied (None: never).
        self.expires = expires

    def __call__(self, action: str, topic: str) -> bool | None:
        if self.expires is not None and time.time() >= self.expires:
            return False
        wildcard = False
        if action != "publish":
            action = "subscribe"  # "deliver" is reading, as subscribing is
            shared = parse_shared(topic)
            if shared is not None:
                topic = shared[1]
            wildcard = "+" in topic or "#" in topic  # only a subscription's filter has them
        for rule in self.rules:
            if action in rule.actions and (rule.covers(topic) if wildcard
                                           else rule.matches(topic)):
                return rule.allow
        return self.no_match

    def __repr__(self) -> str:  # for logs and ctl: the size, not the topics
        return f"<ClientRules {len(self.rules)} rules>"


def parse_acl(raw: object, client_id: str, username: str | None,
              expires: float | None = None) -> ClientRules:
    """The ACL a provider received for this client (placeholders filled in); AclError if
    it is malformed."""
    values = {"clientid": client_id, "username": username}
    if isinstance(raw, list):
        parsed = [_parse_rule(i, item, values) for i, item in enumerate(raw)]
        return ClientRules([r for r in parsed if r is not None], None, expires)
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - {"pub", "sub", "all"})
        if unknown:
            raise AclError(f"unknown key {unknown[0]!r} (the map form has pub, sub, all)")
        rules = []
        for key, filters in raw.items():
            where = f"{key!r}"
            if not isinstance(filters, list):
                raise AclError(f"{where}: expected a list of topic filters")
            compiled = _filters(filters, values, where)
            if compiled:
                rules.append(_Rule(True, _ACTIONS[key], compiled))
        return ClientRules(rules, False, expires)
    raise AclError("expected a list of rules or a map of pub/sub/all")


def _parse_rule(i: int, item: object, values: dict[str, str | None]) -> _Rule | None:
    where = f"rule {i + 1}"
    if not isinstance(item, dict):
        raise AclError(f"{where}: expected an object")
    if "qos" in item or "retain" in item:
        raise AclError(f"{where}: qos and retain conditions are not supported")
    unknown = sorted(set(item) - _RULE_KEYS)
    if unknown:
        raise AclError(f"{where}: unknown key {unknown[0]!r}")
    permission = item.get("permission")
    if permission not in ("allow", "deny"):
        raise AclError(f"{where}: permission must be allow or deny")
    action = item.get("action")
    if not isinstance(action, str) or action not in _ACTIONS:
        raise AclError(f"{where}: action must be publish, subscribe or all")
    if "topic" in item:
        filters = [item["topic"]]
    elif isinstance(item.get("topics"), list):
        filters = item["topics"]
    else:
        raise AclError(f"{where}: topic or topics (a list) is required")
    compiled = _filters(filters, values, where)
    if not compiled:
        return None  # every filter named ${username} and the client has none
    return _Rule(permission == "allow", _ACTIONS[action], compiled)


def _filters(raw: list[object], values: dict[str, str | None], where: str
             ) -> tuple[tuple[str, bool], ...]:
    out: list[tuple[str, bool]] = []
    for f in raw:
        if not isinstance(f, str) or not f:
            raise AclError(f"{where}: a topic filter must be a non-empty string")
        exact = f.startswith("eq ")
        if exact:
            f = f[3:]
        literal = False
        missing = False

        def fill(m: re.Match[str]) -> str:
            nonlocal literal, missing
            name = m.group(1)
            if name not in values:
                raise AclError(f"{where}: unknown placeholder ${{{name}}} "
                               "(known: ${clientid}, ${username})")
            value = values[name]
            if value is None:
                missing = True
                return ""
            if "+" in value or "#" in value:
                literal = True
            return value

        filled = _PLACEHOLDER.sub(fill, f)
        if missing:
            continue
        if not exact:
            err = filter_error(f)  # the filter as written; the filled one may be literal
            if err:
                raise AclError(f"{where}: invalid topic filter: {err}")
        out.append((filled, exact or literal))
    return tuple(out)
