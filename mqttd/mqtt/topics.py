"""Topic names and topic filters: validity, shared-subscription syntax, and matching.

Shared by both codec implementations (which check topic *names* while
parsing) and by the broker (which checks *filters* when a client subscribes,
so that one bad filter gets SUBACK 0x8F instead of costing the connection).
The matcher here is the brute-force reference the trie is tested against.
"""

from __future__ import annotations

import re

#: Code points mqttd refuses in topic names and filters (MQTT 5.0 §1.5.4 says a
#: receiver MAY): C0 controls, DEL, C1 controls and the Unicode non-characters.
#: U+0000 is always malformed, in every string.
_DISALLOWED = re.compile(
    "[\x00-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff"
    + "".join(f"\\U{plane:04X}FFFE\\U{plane:04X}FFFF" for plane in range(1, 17))
    + "]"
)

SHARE_PREFIX = "$share/"
QUEUE_PREFIX = "$queue/"


def has_disallowed_chars(s: str) -> bool:
    """True if ``s`` holds a control character or a Unicode non-character."""
    if s.isascii():  # (most strings: ASCII's only such characters are C0 and DEL, exactly
        return not s.isprintable()  # what isprintable() refuses there; ~8x the regex's speed)
    return _DISALLOWED.search(s) is not None


def topic_name_error(topic: str) -> str | None:
    """Why ``topic`` is not a valid topic name (wildcards), or None. Empty is checked by callers."""
    if "+" in topic or "#" in topic:
        return "topic name contains a wildcard"
    return None


def filter_error(topic_filter: str) -> str | None:
    """Why ``topic_filter`` is not a valid topic filter, or None if it is valid.

    Checks wildcard placement ([MQTT-4.7.1-2], [MQTT-4.7.1-3]) and the
    ``$share/<group>/<filter>`` and ``$queue/<filter>`` forms ([MQTT-4.8.2-1/2]).
    """
    if not topic_filter:
        return "empty topic filter"
    share = parse_shared(topic_filter)
    if share is not None:
        group, real = share
        if group is not None:
            if not group:
                return "empty share name"
            if "+" in group or "#" in group:
                return "share name contains a wildcard"
        if not real:
            return "shared subscription without a topic filter"
        topic_filter = real
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level:
            if level != "#" or i != last:
                return "'#' must be the last level on its own"
        elif "+" in level and level != "+":
            return "'+' must occupy a whole level"
    return None


def parse_shared(topic_filter: str) -> tuple[str | None, str] | None:
    """Split a shared subscription into ``(group, filter)``; None if it is not one.

    ``$share/g/a/b`` gives ``("g", "a/b")``; ``$queue/a/b`` gives ``(None, "a/b")``
    (EMQX's queue form: one anonymous group). A ``$share/`` without a second
    ``/`` gives ``("<rest>", "")`` so that :func:`filter_error` can reject it.
    """
    if topic_filter.startswith(SHARE_PREFIX):
        rest = topic_filter[len(SHARE_PREFIX):]
        group, sep, real = rest.partition("/")
        return (group, real) if sep else (group, "")
    if topic_filter.startswith(QUEUE_PREFIX):
        return (None, topic_filter[len(QUEUE_PREFIX):])
    return None


def is_wildcard(topic_filter: str) -> bool:
    """True if the filter holds ``+`` or ``#``."""
    return "+" in topic_filter or "#" in topic_filter


def match(topic_filter: str, topic: str) -> bool:
    """Reference matcher: does ``topic_filter`` (not shared) match the topic name ``topic``?

    A leading wildcard never matches a topic starting with ``$`` ([MQTT-4.7.2-1]).
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)
