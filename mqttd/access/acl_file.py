"""The ``acl_file`` authorization source: mosquitto's ACL file (``acl_file`` in mosquitto.conf).

The file, line by line (``#`` at the start of a line is a comment; blank lines are skipped)::

    topic [read|write|readwrite|deny] <topic>     a rule for the current block
    pattern [read|write|readwrite|deny] <topic>   a rule for every client, with placeholders
    user <name>                                   starts the block of that user name

The access word is optional (``readwrite`` then); the topic is the rest of the line and may
hold ``+``/``#`` wildcards (and spaces, as in mosquitto). Blocks follow mosquitto 2:

* ``topic`` lines before any ``user`` line apply to *anonymous* clients (no user name) only,
  not to every client; ``topic`` lines after ``user alice`` apply to clients logged in as
  ``alice`` (several ``user alice`` blocks add up);
* ``pattern`` lines apply to every client wherever they are written: ``%c`` is replaced by
  the client id, ``%u`` by the user name (a ``%u`` rule does not apply to a client without
  one). EMQX's ``${clientid}`` and ``${username}`` work in ``topic`` and ``pattern`` lines.
  A placeholder must be a whole topic level (mosquitto's rule; anything else is refused).

Actions map to accesses: publish needs ``write``; subscribe and the delivery of a message
need ``read``. For a concrete topic (publish, delivery) a rule applies when its filter
matches the topic (MQTT matching: ``a/#`` matches ``a`` and ``a/b/c``; a leading wildcard
never matches a ``$`` topic). For a subscription the filter is allowed only when a rule
*contains* it: every topic the subscription can match is matched by the rule, so ``a/#``
allows ``a/b/+`` but ``a/+`` does not allow ``a/#``. A shared subscription is checked on its
real filter (``$share/g/a/b`` as ``a/b``).

``deny`` rules come first: a matching deny refuses even when an allow elsewhere in the file
(user block or pattern) would grant the access, as mosquitto puts deny rules first. For a
subscription a deny refuses only when it contains the whole filter: subscribing ``#`` under
``topic deny secret/#`` is granted and the messages of ``secret/...`` are refused one by one
when they are delivered. No matching rule: the source has no opinion and the chain goes on
(``[authz] no_match`` ends it; mosquitto's "only the topics listed have access" is
``no_match = "deny"``, the default).

Client ids and user names holding ``+`` or ``#`` cannot widen a placeholder rule (CVE-2017-7650):
such an allow rule is skipped and such a deny rule refuses (see :meth:`Rule.levels_for`).

A check splits the topic once and looks only at the rules whose first level can match it
(rules are indexed by a literal first level; those starting with a wildcard or a placeholder
are always looked at): with a decision cache in front (``AuthzChain``), most deliveries never
get here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ..config import AccessSpec
from ..core.services import ClientInfo
from ..mqtt.topics import filter_error, has_disallowed_chars, parse_shared
from .authn import AccessError
from .authz import register_source
from .options import Options

log = logging.getLogger("mqttd.access")

__all__ = ["AclFile", "AclRules", "Rule", "contains", "parse_acl"]

READ, WRITE = 1, 2
_ACCESS = {"read": READ, "write": WRITE, "readwrite": READ | WRITE, "deny": 0}
#: The access each action needs.
_NEEDS = {"publish": WRITE, "subscribe": READ, "deliver": READ}
#: Placeholder spellings -> what they stand for; mosquitto's only in ``pattern`` lines.
_EMQX = {"${clientid}": "c", "${username}": "u"}
_MOSQUITTO = {"%c": "c", "%u": "u"}
#: At most this many problems are listed for one file (a binary file has thousands).
MAX_ERRORS = 20


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``topic`` or ``pattern`` line."""

    kind: str                  # "topic" | "pattern"
    access: int                # READ | WRITE bits; 0 is deny
    topic: str                 # the filter as written
    line: int
    #: The filter's levels; a placeholder level is "\0c" (client id) or "\0u" (user name).
    parts: tuple[str, ...] = ()
    #: Whether ``parts`` holds a placeholder (else it is used as it is).
    dynamic: bool = False

    @property
    def text(self) -> str:
        """The rule as a line of the file (normalised: the access word always shown)."""
        word = next(w for w, a in _ACCESS.items() if a == self.access)
        return f"{self.kind} {word} {self.topic}"

    def levels_for(self, client: ClientInfo) -> tuple[str, ...] | None | Literal[False]:
        """The filter's levels for ``client``, placeholders replaced; None when the rule
        does not apply to it; False when a deny rule must refuse outright.

        A value holding ``+`` or ``#`` (or ``$`` in the first level) would widen the filter:
        an allow rule is then skipped and a deny rule refuses (mosquitto refuses such
        clients whenever patterns exist, CVE-2017-7650). A ``/`` in a value makes the
        allow rule skip too (the client id ``a/b`` must not reach ``clients/a/...``, which
        is client ``a``'s); a deny rule takes it as written, levels and all. A user name
        placeholder does not apply to a client without one.
        """
        out: list[str] = []
        deny = not self.access
        for i, part in enumerate(self.parts):
            if part[:1] != "\0":
                out.append(part)
                continue
            value = client.client_id if part[1] == "c" else client.username
            if value is None:
                return None
            if "+" in value or "#" in value or (i == 0 and value[:1] == "$"):
                return False if deny else None
            if "/" in value:
                if not deny:
                    return None
                out += value.split("/")
            else:
                out.append(value)
        return tuple(out)


def _matches(rule: tuple[str, ...], topic: list[str]) -> bool:
    """Whether the filter ``rule`` (levels) matches the topic name ``topic`` (levels)."""
    n = len(topic)
    for i, part in enumerate(rule):
        if part == "#":
            return i > 0 or topic[0][:1] != "$"
        if i >= n:
            return False
        if part == "+":
            if not i and topic[0][:1] == "$":
                return False
        elif part != topic[i]:
            return False
    return len(rule) == n


def _covers(rule: tuple[str, ...], sub: list[str]) -> bool:
    """Whether the filter ``rule`` matches every topic the filter ``sub`` can match (both
    as levels); see :func:`contains`."""
    n = len(sub)
    dollar = sub[0][:1] == "$"
    for i, part in enumerate(rule):
        if part == "#":
            return not (i == 0 and dollar)
        if i >= n:
            return False  # the rule needs a level the subscription's shortest topic lacks
        level = sub[i]
        if level == "#":
            return False  # the rule is narrower than "anything below"
        if part == "+":
            if i == 0 and dollar:
                return False
        elif level == "+" or level != part:
            return False
    return len(rule) == n


def contains(rule: str, sub: str) -> bool:
    """Whether the filter ``rule`` matches every topic the filter ``sub`` can match.

    Level by level: ``#`` in the rule covers whatever follows (the parent level too, as
    ``a/#`` matches ``a``); ``+`` in the rule covers any one level, a ``+`` in the
    subscription included; a literal covers only the same literal. A ``#`` or ``+`` in the
    subscription needs the rule to have a wildcard at least as wide there. A leading
    wildcard in the rule does not cover a subscription to ``$`` topics ([MQTT-4.7.2-1]).
    """
    return _covers(tuple(rule.split("/")), sub.split("/"))


#: (rules in file order, rules by their literal first level, rules whose first level is a
#: wildcard or a placeholder): a check looks at the two last, an explanation at the first.
_Bucket = tuple[tuple[Rule, ...], dict[str, tuple[Rule, ...]], tuple[Rule, ...]]


def _bucket(rules: list[Rule]) -> _Bucket:
    index: dict[str, list[Rule]] = {}
    wild: list[Rule] = []
    for rule in rules:
        first = rule.parts[0]
        if first in ("+", "#") or first[:1] == "\0":
            wild.append(rule)
        else:
            index.setdefault(first, []).append(rule)
    return tuple(rules), {k: tuple(v) for k, v in index.items()}, tuple(wild)


@dataclass(slots=True)
class AclRules:
    """A parsed file: the anonymous block, the user blocks and the patterns. ``seal()``
    then prepares, per block, the rules a client of that block gets: deny rules (tried
    first) apart from allow rules, each indexed by their first level, so that a check
    looks only at the rules whose first level can match."""

    anonymous: list[Rule] = field(default_factory=list)
    users: dict[str, list[Rule]] = field(default_factory=dict)
    patterns: list[Rule] = field(default_factory=list)
    _anonymous: tuple[_Bucket, _Bucket] | None = None
    _users: dict[str, tuple[_Bucket, _Bucket]] = field(default_factory=dict)
    _others: tuple[_Bucket, _Bucket] | None = None

    @property
    def count(self) -> int:
        return (len(self.anonymous) + sum(map(len, self.users.values()))
                + len(self.patterns))

    def seal(self) -> AclRules:
        def prepare(block: list[Rule]) -> tuple[_Bucket, _Bucket]:
            rules = block + self.patterns
            return (_bucket([r for r in rules if not r.access]),
                    _bucket([r for r in rules if r.access]))

        self._anonymous = prepare(self.anonymous)
        self._users = {name: prepare(block) for name, block in self.users.items()}
        self._others = prepare([])
        return self

    def for_client(self, client: ClientInfo) -> tuple[_Bucket, _Bucket]:
        """The rules that apply to ``client``: (deny rules, allow rules)."""
        username = client.username
        found = self._anonymous if username is None else self._users.get(username,
                                                                           self._others)
        assert found is not None, "AclRules.seal() was not called"
        return found


def _find(rules: tuple[Rule, ...], client: ClientInfo, levels: list[str],
          test: Callable[[tuple[str, ...], list[str]], bool], need: int
          ) -> tuple[Rule, bool] | None:
    """The first of ``rules`` that applies to ``levels`` and grants ``need`` (0: any
    rule, for deny rules): (the rule, whether it refuses outright)."""
    for rule in rules:
        if need and not rule.access & need:
            continue
        parts: tuple[str, ...] | None | Literal[False] = rule.parts
        if rule.dynamic:
            parts = rule.levels_for(client)
            if parts is None:
                continue
            if parts is False:
                return rule, True
        if test(parts, levels):  # type: ignore[arg-type]  # a tuple by now
            return rule, False
    return None


def _levels(kind: str, topic: str) -> tuple[tuple[str, ...], bool, str | None]:
    """(levels with placeholders marked, whether there is one, an error or None)."""
    spellings = dict(_EMQX, **_MOSQUITTO) if kind == "pattern" else _EMQX
    levels = topic.split("/")
    marked = []
    found = False
    for level in levels:
        key = spellings.get(level)
        if key is not None:
            marked.append("\0" + key)
            found = True
            continue
        if "${" in level:
            name = level[level.index("${"):].split("}", 1)[0] + "}"
            if name in _EMQX:
                return (), False, f"placeholder {name} must be a whole topic level"
            return (), False, (f"unknown placeholder {name} (known: ${{clientid}}, "
                               "${username})")
        if kind == "pattern" and ("%c" in level or "%u" in level):
            name = "%c" if "%c" in level else "%u"
            return (), False, f"placeholder {name} must be a whole topic level"
        marked.append(level)
    return tuple(marked), found, None


def parse_acl(text: str, path: str) -> AclRules:
    """Parse an ACL file's text; AccessError lists every bad line as ``PATH:LINE: what``."""
    rules = AclRules()
    errors: list[str] = []
    user: str | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, *more = line.split(None, 1)
        rest = more[0] if more else ""
        if keyword == "user":
            if not rest:
                errors.append(f"{path}:{n}: user: missing user name")
                continue
            user = rest
            rules.users.setdefault(user, [])
            continue
        if keyword not in ("topic", "pattern"):
            errors.append(f"{path}:{n}: unknown keyword {keyword!r} (expected topic, pattern "
                          "or user; a comment starts the line with #)")
            continue
        if not rest:
            errors.append(f"{path}:{n}: {keyword}: missing topic")
            continue
        first, *more = rest.split(None, 1)
        topic = more[0].strip() if more else ""
        if first in _ACCESS:
            if not topic:
                errors.append(f"{path}:{n}: {keyword} {first}: missing topic (a topic named "
                              f"{first!r} needs the access word first: "
                              f"{keyword} readwrite {first})")
                continue
            access = _ACCESS[first]
        elif topic:
            errors.append(f"{path}:{n}: unknown access {first!r} (read, write, readwrite or "
                          "deny; a topic with spaces needs the access word first)")
            continue
        else:
            access, topic = READ | WRITE, first
        why = filter_error(topic)
        if why is None and parse_shared(topic) is not None:
            why = "a rule names topics, not a shared subscription ($share/, $queue/)"
        if why is None and has_disallowed_chars(topic):
            why = "control or non-character code point"
        if why is not None:
            errors.append(f"{path}:{n}: invalid topic filter {topic!r}: {why}")
            continue
        parts, dynamic, why = _levels(keyword, topic)
        if why is not None:
            errors.append(f"{path}:{n}: {why}")
            continue
        rule = Rule(keyword, access, topic, n, parts, dynamic)
        if keyword == "pattern":
            if not dynamic:
                log.warning("%s:%d: pattern %r has no placeholder: it applies to every "
                            "client as written", path, n, topic)
            rules.patterns.append(rule)
        elif user is None:
            rules.anonymous.append(rule)
        else:
            rules.users[user].append(rule)
    if errors:
        if len(errors) > MAX_ERRORS:
            errors[MAX_ERRORS:] = [f"{path}: ... and {len(errors) - MAX_ERRORS} more "
                                   "problems"]
        raise AccessError(errors)
    return rules.seal()


def read_acl(path: str, where: str) -> AclRules:
    """Read and parse the file; AccessError says why not (``where`` names the setting)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise AccessError([f"{where}: cannot read {path}: {err.strerror or err}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise AccessError([f"{path}:{line}: not UTF-8 text"]) from None
    return parse_acl(text, path)


class AclFile:
    """The source: the parsed file, replaced as a whole on a successful reload."""

    def __init__(self, path: str, where: str = "authz.acl_file") -> None:
        self.path = path
        self.where = where
        self.description = f"acl_file {path}"
        self.rules = read_acl(path, where)

    def check(self, client: ClientInfo, action: str, topic: str) -> bool | None:
        """Deny rules first, then allow rules granting the access ``action`` needs; only
        the rules whose first level can match are looked at."""
        need = _NEEDS.get(action)
        if need is None:
            return None
        test = _covers if action == "subscribe" else _matches
        levels = _real(topic, action).split("/")
        first = levels[0]
        (_, deny_index, deny_wild), (_, allow_index, allow_wild) = \
            self.rules.for_client(client)
        if (_find(deny_index.get(first, ()), client, levels, test, 0)
                or _find(deny_wild, client, levels, test, 0)):
            return False
        if (_find(allow_index.get(first, ()), client, levels, test, need)
                or _find(allow_wild, client, levels, test, need)):
            return True
        return None

    def explain(self, client: ClientInfo, action: str, topic: str) -> tuple[bool | None, str]:
        """:meth:`check`'s verdict and the line that gave it, the first in file order
        (``acl_file PATH:LINE: topic read a/#``)."""
        need = _NEEDS.get(action)
        found = None
        if need is not None:
            test = _covers if action == "subscribe" else _matches
            levels = _real(topic, action).split("/")
            (denies, _, _), (allows, _, _) = self.rules.for_client(client)
            found = _find(denies, client, levels, test, 0)
            verdict = False
            if found is None:
                found = _find(allows, client, levels, test, need)
                verdict = True
        if found is None:
            return None, f"{self.description}: no rule matched"
        rule, outright = found
        note = " (a wildcard or $ in the client id or user name)" if outright else ""
        return verdict, f"acl_file {self.path}:{rule.line}: {rule.text}{note}"

    def reload(self) -> None:
        """Re-read the file; a bad file raises AccessError and the old rules stay."""
        self.rules = read_acl(self.path, self.where)
        log.info("%s: reloaded, %d rules", self.description, self.rules.count)


def _real(topic: str, action: str) -> str:
    """The filter a shared subscription stands for (``$share/g/a/b`` is ``a/b``)."""
    if action == "subscribe" and topic[:1] == "$":
        share = parse_shared(topic)
        if share is not None:
            return share[1]
    return topic


def _build(spec: AccessSpec) -> AclFile:
    opts = Options(spec)
    path = opts.string("path")
    opts.done()
    assert path is not None  # done() raised otherwise
    # the shorthand ([authz] acl_file = PATH) is named as written; a table by its key
    where = spec.path if spec.path.endswith("acl_file") else f"{spec.path}.path"
    return AclFile(path, where)


register_source("acl_file", _build)
