"""MQTT topic names and filters as NATS subjects: a total, reversible encoding.

``{prefix}.{kind}.{level}...{end}``: one token per MQTT level, so NATS's ``*`` stands for
``+``; ``kind`` is ``d`` for a topic (or filter) whose first level starts with ``$`` and
``p`` otherwise, so ``+`` and ``#`` at the first level never reach ``$SYS`` and the like
(MQTT 4.7.2) while ``$SYS/#`` still does. A topic ends with the token ``~``: MQTT's ``a/#``
also matches ``a``, NATS's ``a.>`` needs one more token, and ``~`` is that token (so
``a/#`` becomes the single subject ``p.a.>``, never two subscriptions).

Inside a level, ``.``, ``*``, ``>``, ``~`` (the escape character), whitespace and control
characters become ``~XX`` (two hex digits) or ``~uXXXXXX`` (beyond Latin-1); an empty level
is the token ``~_``. Neither ``~`` alone nor ``~_`` can come out of a non-empty level, and
``*``/``>`` tokens come only from wildcards, so encoding never confuses a literal with a
wildcard, an empty level or the end.
"""

from __future__ import annotations

__all__ = ["encode_topic", "encode_filter", "decode_topic", "decode_filter", "SubjectError"]

_END = "~"
_EMPTY = "~_"
_KINDS = ("p", "d")


class SubjectError(ValueError):
    """A subject that no topic or filter encodes to."""


def _escape_char(ch: str) -> str:
    code = ord(ch)
    return f"~{code:02x}" if code < 0x100 else f"~u{code:06x}"


def _needs_escape(ch: str) -> bool:
    return ch in ".*>~" or ch.isspace() or ord(ch) < 0x21 or 0x7f <= ord(ch) <= 0xa0 \
        or not ch.isprintable()


def _encode_level(level: str) -> str:
    if not level:
        return _EMPTY
    if not any(_needs_escape(ch) for ch in level):
        return level  # the common case: the level is its own token
    return "".join(_escape_char(ch) if _needs_escape(ch) else ch for ch in level)


def _decode_level(token: str) -> str:
    if token == _EMPTY:
        return ""
    if "~" not in token:
        return token
    out: list[str] = []
    i, n = 0, len(token)
    while i < n:
        ch = token[i]
        if ch != "~":
            out.append(ch)
            i += 1
            continue
        width = 2
        if token.startswith("~u", i):
            i += 1
            width = 6
        digits = token[i + 1:i + 1 + width]
        if len(digits) != width or any(c not in "0123456789abcdef" for c in digits):
            raise SubjectError(f"bad escape in subject token {token!r}")
        out.append(chr(int(digits, 16)))
        i += 1 + width
    return "".join(out)


def _kind(first_level: str) -> str:
    return "d" if first_level.startswith("$") else "p"


def encode_topic(topic: str, prefix: str = "mqttd") -> str:
    """The subject a message published to ``topic`` (a valid topic name) is sent on."""
    levels = topic.split("/")
    return ".".join((prefix, _kind(levels[0]), *map(_encode_level, levels), _END))


def encode_filter(topic_filter: str, prefix: str = "mqttd") -> str:
    """The subject a node subscribes to for ``topic_filter`` (a valid filter, without any
    ``$share/`` prefix): ``+`` becomes ``*``, a final ``#`` becomes ``>``."""
    levels = topic_filter.split("/")
    tokens = [prefix, _kind(levels[0])]
    for level in levels:
        if level == "+":
            tokens.append("*")
        elif level == "#":
            tokens.append(">")
            return ".".join(tokens)
        else:
            tokens.append(_encode_level(level))
    tokens.append(_END)
    return ".".join(tokens)


def _split(subject: str, prefix: str) -> list[str]:
    head = prefix + "."
    if not subject.startswith(head):
        raise SubjectError(f"subject {subject!r} is not under {prefix!r}")
    tokens = subject[len(head):].split(".")
    if len(tokens) < 2 or tokens[0] not in _KINDS:
        raise SubjectError(f"subject {subject!r} has no kind and levels")
    return tokens


def decode_topic(subject: str, prefix: str = "mqttd") -> str:
    """The topic name ``encode_topic`` turned into ``subject``; SubjectError if none did."""
    tokens = _split(subject, prefix)
    if tokens[-1] != _END or len(tokens) < 3 or "*" in tokens or ">" in tokens:
        raise SubjectError(f"subject {subject!r} is not an encoded topic name")
    topic = "/".join(_decode_level(t) for t in tokens[1:-1])
    if _kind(topic) != tokens[0]:
        raise SubjectError(f"subject {subject!r} has the wrong kind")
    return topic


def decode_filter(subject: str, prefix: str = "mqttd") -> str:
    """The topic filter ``encode_filter`` turned into ``subject``."""
    tokens = _split(subject, prefix)
    body = tokens[1:]
    if body[-1] == _END:
        body = body[:-1]
    elif body[-1] != ">":
        raise SubjectError(f"subject {subject!r} is not an encoded topic filter")
    if not body or ">" in body[:-1]:
        raise SubjectError(f"subject {subject!r} is not an encoded topic filter")
    levels = ["+" if t == "*" else "#" if t == ">" else _decode_level(t) for t in body]
    topic_filter = "/".join(levels)
    if _kind(levels[0] if levels[0] not in ("+", "#") else "") != tokens[0]:
        raise SubjectError(f"subject {subject!r} has the wrong kind")
    return topic_filter
