"""The topic -> subject encoding (mqttd/cluster/subjects.py): reversible, and NATS's own
token matching of an encoded filter against an encoded topic agrees with MQTT matching."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from mqttd.cluster.subjects import (
    SubjectError,
    decode_filter,
    decode_topic,
    encode_filter,
    encode_topic,
)
from mqttd.mqtt.topics import filter_error, match

# Characters that stress the encoding: NATS's separators and wildcards, the escape
# character, whitespace of several kinds, '$', '/', and any other printable text.
_SPECIAL = st.sampled_from(list(".*>~ \t\u00a0\u2003$/_uA0") + ["~u", "~_", "é", "日"])
_CHARS = st.one_of(_SPECIAL, st.characters(blacklist_categories=("Cs",),
                                           blacklist_characters="\x00+#"))
_LEVEL = st.lists(_CHARS, max_size=6).map("".join)
# Levels of topic names never hold '/', '+' or '#' ('/' splits them).
_NAME_LEVEL = _LEVEL.map(lambda s: s.replace("/", ""))
_TOPIC = st.lists(_NAME_LEVEL, min_size=1, max_size=5).map("/".join).filter(bool)
_FILTER_LEVEL = st.one_of(_NAME_LEVEL, st.just("+"), st.just("+"))


@st.composite
def _filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(_FILTER_LEVEL, min_size=1, max_size=5))
    if draw(st.booleans()):
        levels.append("#")
    f = "/".join(levels)
    return f if f and filter_error(f) is None else "#"


def nats_match(subject_filter: str, subject: str) -> bool:
    """NATS's subject matching, as its documentation states it: tokens split on '.',
    '*' matches exactly one token, '>' (last) matches one or more."""
    f = subject_filter.split(".")
    s = subject.split(".")
    for i, tok in enumerate(f):
        if tok == ">":
            return i == len(f) - 1 and len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(f) == len(s)


def _valid_subject(subject: str) -> bool:
    return all(t and not any(c.isspace() for c in t) for t in subject.split("."))


@settings(max_examples=400, deadline=None)
@given(_TOPIC)
def test_topic_round_trip(topic: str) -> None:
    subject = encode_topic(topic)
    assert _valid_subject(subject)
    assert "*" not in subject.split(".") and ">" not in subject.split(".")
    assert decode_topic(subject) == topic


@settings(max_examples=400, deadline=None)
@given(_filters())
def test_filter_round_trip(topic_filter: str) -> None:
    subject = encode_filter(topic_filter)
    assert _valid_subject(subject)
    assert decode_filter(subject) == topic_filter


@settings(max_examples=1500, deadline=None)
@given(_filters(), _TOPIC)
def test_nats_matching_is_mqtt_matching(topic_filter: str, topic: str) -> None:
    assert nats_match(encode_filter(topic_filter), encode_topic(topic)) \
        == match(topic_filter, topic)


@settings(max_examples=500, deadline=None)
@given(_TOPIC)
def test_matching_derived_filters(topic: str) -> None:
    # Random pairs rarely match; filters made from the topic itself mostly do.
    levels = topic.split("/")
    for i in range(len(levels) + 1):
        for f in ("/".join(levels[:i] + ["#"]), "/".join(levels[:i] + ["+"] + levels[i + 1:])):
            if filter_error(f) is None and (i < len(levels) or f.endswith("#")):
                assert nats_match(encode_filter(f), encode_topic(topic)) == match(f, topic), f


@pytest.mark.parametrize("topic_filter,topic,expected", [
    ("a/#", "a", True),
    ("#", "$SYS/x", False),
    ("+/x", "$SYS/x", False),
    ("$SYS/#", "$SYS/x", True),
    ("a/+", "a/", True),
    ("a/+", "a", False),
    ("a.b/c", "a.b/c", True),
    ("a/b", "a.b", False),
    ("*", "x", False),
    ("+", "*", True),
    (">", ">", True),
    ("/", "/", True),
    ("~_", "", False),
])
def test_known_cases(topic_filter: str, topic: str, expected: bool) -> None:
    if not topic:
        with pytest.raises(SubjectError):
            decode_topic("mqttd.p.~")
        return
    assert nats_match(encode_filter(topic_filter), encode_topic(topic)) is expected
    assert match(topic_filter, topic) is expected


def test_prefix_and_examples() -> None:
    assert encode_topic("a/b", "c1") == "c1.p.a.b.~"
    assert encode_filter("a/#", "c1") == "c1.p.a.>"
    assert encode_filter("+/b", "c1") == "c1.p.*.b.~"
    assert encode_topic("$SYS/x") == "mqttd.d.$SYS.x.~"
    assert encode_topic("a b/.~/") == "mqttd.p.a~20b.~2e~7e.~_.~"
    assert encode_topic("a/\u2003") == "mqttd.p.a.~u002003.~"


@pytest.mark.parametrize("subject", ["other.p.a.~", "mqttd.x.a.~", "mqttd.p.a", "mqttd.p.~zz.~",
                                     "mqttd.p.a.*.~", "mqttd.d.a.~", "mqttd.p.$a.~"])
def test_foreign_subjects_refused(subject: str) -> None:
    with pytest.raises(SubjectError):
        decode_topic(subject)
