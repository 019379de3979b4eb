"""The subscription trie, pure and compiled, against the brute-force matcher (mqttd.mqtt.topics)."""

from __future__ import annotations

import gc
import importlib
from typing import Any

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mqttd import _accel
from mqttd.core import trie as trie_facade
from mqttd.core._trie_py import TriePy
from mqttd.mqtt import topics

_NO_C_REASON = "MQTTD_NO_EXTENSIONS is set: the compiled trie is not in use"


def _compiled_trie() -> type:
    # Imported directly, not through the facade, so a missing build fails loudly.
    return importlib.import_module("mqttd._speedups._trie").Trie  # type: ignore[no-any-return]


@pytest.fixture(scope="session", params=["py", "c"])
def trie_cls(request: pytest.FixtureRequest) -> type:
    """The trie implementation under test: ``TriePy`` or the compiled ``Trie``."""
    if request.param == "py":
        return TriePy
    if _accel.NO_EXTENSIONS:
        pytest.skip(_NO_C_REASON)
    return _compiled_trie()


def _brute(filters: Any, topic: str) -> set[str]:
    return {f for f in filters if topics.match(f, topic)}


def test_facade_uses_compiled_trie() -> None:
    best: type = trie_facade.Trie
    if _accel.NO_EXTENSIONS:
        assert _accel.LOADED["trie"] == "py"
        assert best is TriePy
    else:
        assert _accel.LOADED["trie"] == "c"
        assert best is _compiled_trie()
        assert trie_facade.TrieC is best


# (filter, topic, matches?) — MQTT 5.0 §4.7 examples and the corners around them.
CASES: list[tuple[str, str, bool]] = [
    # '#': this level and every level below, including the parent (§4.7.1.2)
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/tennis/player1/#", "sport/tennis/player2", False),
    ("sport/#", "sport", True),
    ("a/#", "a", True),
    ("a/#", "a/", True),
    ("a/#", "ab", False),
    ("a/#", "b/a", False),
    ("#", "a", True),
    ("#", "a/b/c", True),
    ("#", "/", True),
    ("#", "", True),
    # '+': exactly one level (§4.7.1.3)
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+", "a", True),
    ("+", "a/b", False),
    ("+", "", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+/#", "a", True),
    ("+/+/#", "a", False),
    ("+/+/#", "a/b", True),
    ("a/+/c", "a/b/c", True),
    ("a/+/c", "a/b/d", False),
    # '$' topics (§4.7.2): no leading wildcard, literal '$' levels match literally
    ("#", "$SYS/x", False),
    ("+/x", "$SYS/x", False),
    ("+", "$SYS", False),
    ("+/#", "$SYS/x", False),
    ("$SYS/#", "$SYS/x", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/+", "$SYS/x", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("$SYS/#", "SYS/x", False),
    ("a/+", "a/$x", True),
    ("a/#", "a/$x/y", True),
    ("$share/g/a", "$share/g/a", True),  # stored shared filters are opaque strings
    ("#", "$share/g/a", False),
    ("$share/g/+", "$share/g/a", True),
    # empty levels are real levels
    ("a//b", "a//b", True),
    ("a/+/b", "a//b", True),
    ("a//b", "a/b", False),
    ("/a", "/a", True),
    ("/a", "a", False),
    ("+/a", "/a", True),
    ("a/", "a/", True),
    ("a/", "a", False),
    ("a/+", "a/", True),
    ("//", "//", True),
    ("+/+/+", "//", True),
    ("", "", True),
    ("", "/", False),
    # exact filters
    ("a/b", "a/b", True),
    ("a/b", "a/b/c", False),
    ("a/b/c", "a/b", False),
    # unicode levels
    ("温度/+/℃", "温度/室内/℃", True),
    ("ü/#", "ü/ä/ö", True),
    ("ü/#", "u/ä", False),
    ("🚀/+", "🚀/🌍", True),
    ("e\u0301", "\u00e9", False),  # no normalisation: different code points differ
    # filters the broker would reject are still opaque and match like topics.match
    ("a+", "a+", True),
    ("a+", "ab", False),
    ("a#", "a#", True),
    ("a/#/b", "a/x", True),
    ("a/#/b", "a", True),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), CASES)
def test_spec_case(trie_cls: type, topic_filter: str, topic: str, expected: bool) -> None:
    assert topics.match(topic_filter, topic) is expected  # the table agrees with the reference
    t = trie_cls()
    assert t.insert(topic_filter) is True
    assert t.match(topic) == ([topic_filter] if expected else [])


def test_all_cases_together(trie_cls: type) -> None:
    t = trie_cls()
    filters = {f for f, _, _ in CASES}
    for f in filters:
        t.insert(f)
    assert len(t) == len(filters)
    for _, topic, _ in CASES:
        got = t.match(topic)
        assert len(got) == len(set(got)), f"duplicates for {topic!r}: {got}"
        assert set(got) == _brute(filters, topic), topic


def test_insert_delete_contains_len(trie_cls: type) -> None:
    t = trie_cls()
    assert len(t) == 0 and t._node_count() == 0
    assert t.insert("a/+") is True
    assert t.insert("a/+") is False
    assert t.insert("a/#") is True
    assert t.insert("a") is True
    assert len(t) == 3
    assert "a/+" in t and "a/#" in t and "a" in t
    assert "a/b" not in t and 42 not in t
    assert set(t.filters()) == {"a/+", "a/#", "a"}
    assert t.delete("a/b") is False
    assert t.delete("a/+") is True
    assert t.delete("a/+") is False
    assert set(t.match("a/b")) == {"a/#"}
    assert set(t.match("a")) == {"a/#", "a"}
    # deleting a filter that is a prefix of another keeps the longer one
    assert t.delete("a") is True
    assert t.match("a") == ["a/#"]
    assert t.delete("a/#") is True
    assert len(t) == 0 and t._node_count() == 0
    assert t.match("a") == []


def test_delete_prunes_only_what_it_emptied(trie_cls: type) -> None:
    t = trie_cls()
    t.insert("a/b/c/d")
    t.insert("a/b")
    assert t._node_count() == 4
    t.delete("a/b/c/d")
    assert t._node_count() == 2
    assert t.match("a/b") == ["a/b"]
    t.insert("+/+/#")
    t.insert("+/x")
    assert t._node_count() == 2 + 4
    t.delete("+/+/#")
    assert t._node_count() == 2 + 2
    t.delete("+/x")
    t.delete("a/b")
    assert t._node_count() == 0


@pytest.mark.parametrize("bad", [b"a/b", None, 1])
def test_rejects_non_str(trie_cls: type, bad: Any) -> None:
    t = trie_cls()
    with pytest.raises(TypeError):
        t.insert(bad)
    with pytest.raises(TypeError):
        t.delete(bad)
    with pytest.raises(TypeError):
        t.match(bad)


def test_lookup_gives_the_table_values_of_the_matches_then_the_exact_entry(
        trie_cls: type) -> None:
    t = trie_cls()
    for f in ("a/+", "a/#", "#", "+/c"):
        t.insert(f)
    table = {"a/+": 1, "a/#": 2, "#": 3, "+/c": 4, "a/b": 5, "x/y": None}
    got = t.lookup("a/b", table)
    assert got[-1] == 5 and sorted(got[:-1]) == [1, 2, 3]  # the exact entry last
    assert sorted(t.lookup("b/c", table)) == [3, 4]
    assert t.lookup("x/y", table) == [3]  # an exact entry of None counts as none
    assert t.lookup("$SYS/c", table) == []
    assert trie_cls().lookup("a/b", table) == [5]


def test_lookup_refuses_a_match_missing_from_the_table_and_a_non_dict(trie_cls: type) -> None:
    t = trie_cls()
    t.insert("a/+")
    with pytest.raises(KeyError):
        t.lookup("a/b", {"a/#": 1})

    class Table(dict[str, int]):
        def __missing__(self, key: str) -> int:
            return 0

    for bad in (Table(), [], None):
        with pytest.raises(TypeError):
            t.lookup("a/b", bad)
    with pytest.raises(TypeError):
        t.lookup(b"a/b", {})


def test_str_subclass_filter(trie_cls: type) -> None:
    class Filter(str):
        pass

    t = trie_cls()
    assert t.insert(Filter("a/+")) is True
    assert t.insert("a/+") is False
    assert "a/+" in t
    assert t.match("a/b") == ["a/+"]
    assert t.delete("a/+") is True
    assert t._node_count() == 0


def test_compiled_nodes_are_invisible_to_gc() -> None:
    # Millions of tracked nodes would make every full collection walk the whole trie.
    if _accel.NO_EXTENSIONS:
        pytest.skip(_NO_C_REASON)
    t = _compiled_trie()()
    filters = [f"a/{i}/+/x{i % 7}" for i in range(2000)]
    gc.collect()
    before = len(gc.get_objects())
    for f in filters:
        t.insert(f)
    assert len(gc.get_objects()) - before < 50
    assert t._node_count() > 4000


DEEP = 65_000


def test_deep_topic_and_filters(trie_cls: type) -> None:
    # Neither matching nor insert/delete/free may recurse per level.
    deep_topic = "/".join(["a"] * DEEP)
    deep_plus = "/".join(["+"] * DEEP)
    deep_exact = deep_topic
    deep_hash = "/".join(["a"] * (DEEP - 1)) + "/#"
    t = trie_cls()
    filters = ["#", "+/#", "a/#", "a/+/#", deep_plus, deep_exact, deep_hash, "a/+", "+/+/+"]
    for f in filters:
        assert t.insert(f)
    assert set(t.match(deep_topic)) == {
        "#",
        "+/#",
        "a/#",
        "a/+/#",
        deep_plus,
        deep_exact,
        deep_hash,
    }
    assert set(t.match(deep_topic + "/a")) == {"#", "+/#", "a/#", "a/+/#", deep_hash}
    assert set(t.match("a/a")) == {"#", "+/#", "a/#", "a/+/#", "a/+"}
    for f in filters:
        assert t.delete(f)
    assert t._node_count() == 0
    # Freeing a long chain of nodes (linked by '+', with no dict in between) must not crash.
    t.insert(deep_plus)
    del t


def _expected_nodes(filters: Any) -> int:
    # One node per distinct level prefix of a stored filter.
    prefixes: set[tuple[str, ...]] = set()
    for f in filters:
        levels = tuple(f.split("/"))
        prefixes.update(levels[:i] for i in range(1, len(levels) + 1))
    return len(prefixes)


# A small vocabulary so that filters share prefixes and inserts/deletes collide.
FILTER_LEVELS = st.sampled_from(["a", "b", "", "$SYS", "ü", "+", "+", "#", "#", "a+"])
TOPIC_LEVELS = st.sampled_from(["a", "b", "", "$SYS", "$x", "ü", "a+"])
FILTERS = st.lists(FILTER_LEVELS, min_size=1, max_size=4).map("/".join)
TOPICS = st.lists(TOPIC_LEVELS, min_size=1, max_size=5).map("/".join)
PROBES = ["a", "a/b", "a/", "/a", "", "/", "$SYS", "$SYS/a", "$x/a/b", "a/b/a/b", "ü/a+", "b//a"]


class TrieMachine(RuleBasedStateMachine):
    """Pure and compiled tries driven in lockstep against a set and the brute-force matcher."""

    def __init__(self) -> None:
        super().__init__()
        impls: list[type] = [TriePy]
        if not _accel.NO_EXTENSIONS:  # else only the pure trie runs; the fixture reports the skip
            impls.append(_compiled_trie())
        self.tries = [cls() for cls in impls]
        self.model: set[str] = set()

    @rule(topic_filter=FILTERS)
    def insert(self, topic_filter: str) -> None:
        expected = topic_filter not in self.model
        self.model.add(topic_filter)
        for t in self.tries:
            assert t.insert(topic_filter) is expected

    @rule(topic_filter=FILTERS)
    def delete(self, topic_filter: str) -> None:
        expected = topic_filter in self.model
        self.model.discard(topic_filter)
        for t in self.tries:
            assert t.delete(topic_filter) is expected

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete_stored(self, data: st.DataObject) -> None:
        topic_filter = data.draw(st.sampled_from(sorted(self.model)))
        self.model.discard(topic_filter)
        for t in self.tries:
            assert t.delete(topic_filter) is True

    @rule()
    def delete_everything(self) -> None:
        for topic_filter in sorted(self.model):
            for t in self.tries:
                assert t.delete(topic_filter) is True
        self.model.clear()
        for t in self.tries:
            assert len(t) == 0
            assert t._node_count() == 0

    @rule(topic=TOPICS)
    def match(self, topic: str) -> None:
        expected = _brute(self.model, topic)
        # A table as the router's: every stored filter, and some topics' exact entries.
        table = {f: ("value", f) for f in self.model}
        table.setdefault(topic, ("exact", topic))
        for t in self.tries:
            got = t.match(topic)
            assert len(got) == len(set(got)), got
            assert set(got) == expected
            looked = t.lookup(topic, table)
            assert looked == [table[f] for f in got] + [table[topic]]

    @invariant()
    def matches_agree_on_probes(self) -> None:
        for topic in PROBES:
            expected = _brute(self.model, topic)
            for t in self.tries:
                got = t.match(topic)
                assert len(got) == len(expected) and set(got) == expected, topic

    @invariant()
    def size_membership_and_nodes_agree(self) -> None:
        nodes = _expected_nodes(self.model)
        for t in self.tries:
            assert len(t) == len(self.model)
            assert set(t.filters()) == self.model
            for f in ("a", "a/+", "#", "+/#", "$SYS/#", "a+"):
                assert (f in t) is (f in self.model)
            assert t._node_count() == nodes  # no leaked (or missing) nodes

    def teardown(self) -> None:
        for topic_filter in list(self.model):
            for t in self.tries:
                assert t.delete(topic_filter) is True
        for t in self.tries:
            assert len(t) == 0 and t._node_count() == 0


TrieMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_trie_state_machine = TrieMachine.TestCase
