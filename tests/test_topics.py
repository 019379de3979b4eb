"""mqttd.mqtt.topics: filter validity, shared subscriptions, matching, refused characters.

Tables from MQTT-MALFORMED.md rows S3, S9, S10, S12, S13 and the examples of
MQTT 5.0 §4.7 / 3.1.1 §4.7 (topic wildcards, '$' topics).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, strategies as st

from mqttd.mqtt.topics import (
    _DISALLOWED,
    filter_error,
    has_disallowed_chars,
    is_wildcard,
    match,
    parse_shared,
    topic_name_error,
)

VALID_FILTERS = [
    "#", "+", "a", "a/b", "a/#", "a/+", "a/+/b", "+/+", "+/#", "/", "//", "/#", "/+", "+/",
    "a//b", "a//#", "sport/tennis/player1/#", "sport/tennis/+", "+/tennis/#", "$SYS/#",
    "$SYS/monitor/+", "ü/✓/\U0002A6D4", "a b/c",
    # S12: well-formed shared subscriptions.
    "$share/g/t", "$share/g/#", "$share/g/+/x", "$share/g//", "$share/grp/a/b/c",
    "$share/g/$SYS/#", "$queue/a", "$queue/a/+", "$queue/#",
    # '$share' without the trailing slash is an ordinary level.
    "$share", "$sharex/g/t",
]

INVALID_FILTERS = [
    "",
    # S9: '#' not last or not a whole level.
    "a/#/b", "a#", "#/a", "a/b#", "##", "#/", "#/#", "a/#/", "#a",
    # S10: '+' not a whole level.
    "a+", "+a/b", "a/b+", "++", "+a", "a/+b/c", "+#",
    # S12: malformed shared subscriptions.
    "$share/", "$share/g", "$share//t", "$share/g+/t", "$share/g#/t", "$share/ab", "$share/+/t",
    "$share/#/t", "$share/g/", "$share/g/a#", "$share/g/a/#/b", "$queue/", "$queue/a+",
]


@pytest.mark.parametrize("topic_filter", VALID_FILTERS)
def test_valid_filters(topic_filter: str) -> None:
    assert filter_error(topic_filter) is None


@pytest.mark.parametrize("topic_filter", INVALID_FILTERS)
def test_invalid_filters(topic_filter: str) -> None:
    error = filter_error(topic_filter)
    assert isinstance(error, str) and error


@pytest.mark.parametrize("topic_filter,expected", [
    ("$share/g/a/b", ("g", "a/b")),
    ("$share/g/#", ("g", "#")),
    ("$share/grp//", ("grp", "/")),
    ("$share/g", ("g", "")),
    ("$share/", ("", "")),
    ("$share//t", ("", "t")),
    ("$queue/a/b", (None, "a/b")),
    ("$queue/", (None, "")),
    ("a/b", None),
    ("$share", None),
    ("$SHARE/g/a", None),
    ("$sharex/g/a", None),
    ("share/g/a", None),
    ("$queue", None),
    ("/$share/g/a", None),
])
def test_parse_shared(topic_filter: str, expected: tuple[str | None, str] | None) -> None:
    assert parse_shared(topic_filter) == expected


MATCHES = [
    # 4.7.1.2 multi-level wildcard
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/#", "sport", True),
    ("#", "a", True),
    ("#", "/", True),
    ("#", "a/b/c", True),
    ("a/#", "ab", False),
    ("a/#", "b/a", False),
    # 4.7.1.3 single-level wildcard
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player2", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+", "a", True),
    ("+/+", "a", False),
    ("a/+/c", "a/b/c", True),
    ("a/+/c", "a//c", True),
    ("a/+/c", "a/b/d", False),
    ("+/#", "a", True),
    ("+/#", "a/b/c", True),
    # exact
    ("a/b", "a/b", True),
    ("a/b", "a/b/c", False),
    ("a/b/c", "a/b", False),
    ("a", "A", False),
    ("a/b", "a/b/", False),
    ("/a", "a", False),
    # S13 / [MQTT-4.7.2-1]: a leading wildcard never matches a topic starting with '$'
    ("#", "$SYS/broker/uptime", False),
    ("#", "$SYS", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("+/#", "$SYS/a", False),
    ("+", "$foo", False),
    ("#", "$share/g/t", False),
    ("$SYS/#", "$SYS/broker/uptime", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("$SYS/#", "$SYS", True),
    ("a/#", "a/$SYS", True),
    ("a/+", "a/$x", True),
]


@pytest.mark.parametrize("topic_filter,topic,expected", MATCHES)
def test_match(topic_filter: str, topic: str, expected: bool) -> None:
    assert match(topic_filter, topic) is expected


def _reference_match(topic_filter: str, topic: str) -> bool:
    """An independent matcher: the filter as a regular expression."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    parts: list[str] = []
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if level == "#":
            assert i == len(levels) - 1
            prefix = "/".join(parts)
            pattern = f"{prefix}(/.*)?" if parts else ".*"
            return re.fullmatch(pattern, topic, re.DOTALL) is not None
        parts.append("[^/]*" if level == "+" else re.escape(level))
    return re.fullmatch("/".join(parts), topic, re.DOTALL) is not None


_LEVEL = st.sampled_from(["a", "b", "", "$x", "ab"])
_TOPICS = st.lists(_LEVEL, min_size=1, max_size=4).map("/".join).filter(bool)
_FILTERS = st.lists(st.sampled_from(["a", "b", "", "+", "$x", "ab"]), min_size=1,
                    max_size=4).flatmap(
    lambda levels: st.sampled_from(["/".join(levels), "/".join([*levels, "#"]), "#"])).filter(bool)


@given(topic_filter=_FILTERS, topic=_TOPICS)
def test_match_against_a_regex_matcher(topic_filter: str, topic: str) -> None:
    assert filter_error(topic_filter) is None
    assert match(topic_filter, topic) is _reference_match(topic_filter, topic)


@given(topic=_TOPICS)
def test_a_topic_name_is_a_filter_matching_itself(topic: str) -> None:
    assert match(topic, topic)
    assert filter_error(topic) is None


# S3: code points refused in topics and filters, next to the nearest allowed ones.
DISALLOWED = ["\x00", "\x01", "\t", "\n", "\x1f", "\x7f", "\x80", "\x85", "\x9f", "\ufdd0",
              "\ufde5", "\ufdef", "\ufffe", "\uffff", "\U0001fffe", "\U0001ffff", "\U0002fffe",
              "\U0010fffe", "\U0010ffff"]
ALLOWED = ["", "a/b", " ", "~", "\xa0", "\xff", "\ufdcf", "\ufdf0", "\ufffd", "\ufeff",
           "\ue000", "\U00010000", "\U0001fffd", "\U00020000", "\U0002a6d4", "\U0010fffd",
           "+", "#", "$"]


@pytest.mark.parametrize("char", DISALLOWED, ids=[f"U+{ord(c):04X}" for c in DISALLOWED])
def test_disallowed_chars(char: str) -> None:
    assert has_disallowed_chars(char)
    assert has_disallowed_chars(f"a/b{char}c/d")


def test_disallowed_chars_ascii_shortcut_agrees_with_the_full_check() -> None:
    """ASCII strings skip the regex (isprintable): every ASCII character, alone and inside
    a string, in a string with a non-ASCII character too (which takes the regex), is judged
    as the full pattern judges it."""
    for code in range(128):
        c = chr(code)
        full = _DISALLOWED.search(c) is not None
        assert has_disallowed_chars(c) is full, hex(code)
        assert has_disallowed_chars(f"a/{c}b") is full, hex(code)
        assert has_disallowed_chars(f"\u00e9/{c}b") is full, hex(code)
    assert not has_disallowed_chars("")


@pytest.mark.parametrize("text", ALLOWED, ids=[repr(t) for t in ALLOWED])
def test_allowed_chars(text: str) -> None:
    assert not has_disallowed_chars(text)
    assert not has_disallowed_chars(f"a/{text}/b")


@pytest.mark.parametrize("topic,error", [
    ("a/b", False), ("", False), ("$SYS/x", False), ("/", False),
    ("a/+", True), ("+", True), ("#", True), ("a/#", True), ("a+b", True), ("a#", True),
])
def test_topic_name_error(topic: str, error: bool) -> None:
    result = topic_name_error(topic)
    assert (result is not None) is error
    assert result is None or (isinstance(result, str) and result)


@pytest.mark.parametrize("topic_filter,expected", [
    ("a/b", False), ("$share/g/a", False), ("a/+", True), ("#", True), ("$share/g/#", True),
])
def test_is_wildcard(topic_filter: str, expected: bool) -> None:
    assert is_wildcard(topic_filter) is expected
