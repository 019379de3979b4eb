"""core.router without a loop: exact and wildcard matching, the match cache (kept until a
filter appears or disappears, never for $SYS), the subscription counters, and how a shared
group picks its member under each strategy."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import pytest
from core_util import Recorder, forbid_event_loop

from mqttd.core import router as router_mod
from mqttd.core.router import Router, SharedGroup
from mqttd.core.session import Session
from mqttd.mqtt.packets import SubOpts


@pytest.fixture(autouse=True)
def _no_event_loop() -> Iterator[None]:
    with forbid_event_loop():
        yield


E = (SubOpts(1), 0)


def filters(routes: list) -> list[str]:
    return sorted(r.topic_filter for r in routes)


def online(client_id: str) -> Session:
    s = Session(client_id)
    s.channel = Recorder()
    return s


# --- matching --------------------------------------------------------------------------

def test_exact_filter_matches_only_its_own_topic():
    r = Router()
    r.add("a/b", None, False, Session("s"), E)
    assert filters(r.match("a/b")) == ["a/b"]
    assert r.match("a/b/c") == [] and r.match("a") == []


def test_wildcard_filters_match_through_the_trie():
    r = Router()
    for f in ("a/+", "a/#", "+/b", "#"):
        r.add(f, None, False, Session(f), E)
    assert filters(r.match("a/b")) == ["#", "+/b", "a/#", "a/+"]
    assert filters(r.match("a/x/y")) == ["#", "a/#"]
    assert filters(r.match("z")) == ["#"]


def test_exact_and_wildcard_filters_both_match():
    r = Router()
    r.add("a/b", None, False, Session("s1"), E)
    r.add("a/+", None, False, Session("s2"), E)
    assert filters(r.match("a/b")) == ["a/+", "a/b"]


def test_wildcards_do_not_match_dollar_topics():
    r = Router()
    r.add("#", None, False, Session("s1"), E)
    r.add("+/x", None, False, Session("s2"), E)
    assert r.match("$SYS/x") == []


# --- the match cache --------------------------------------------------------------------

def test_match_result_is_cached():
    r = Router()
    r.add("a/+", None, False, Session("s"), E)
    assert r.match("a/b") is r.match("a/b")


def test_cache_kept_when_an_existing_filter_gains_a_subscriber():
    r = Router()
    r.add("a/+", None, False, Session("s1"), E)
    first = r.match("a/b")
    s2 = Session("s2")
    r.add("a/+", None, False, s2, E)
    assert r.match("a/b") is first  # the cached Route objects see the new subscriber
    assert s2 in first[0].plain()


def test_cache_invalidated_when_a_filter_appears():
    r = Router()
    assert r.match("a/b") == []
    r.add("a/#", None, False, Session("s"), E)
    assert filters(r.match("a/b")) == ["a/#"]


def test_cache_kept_while_a_filter_keeps_a_subscriber():
    r = Router()
    s1, s2 = Session("s1"), Session("s2")
    r.add("a/+", None, False, s1, E)
    r.add("a/+", None, False, s2, E)
    first = r.match("a/b")
    assert r.remove("a/+", None, False, s1)
    assert r.match("a/b") is first
    assert list(first[0].plain()) == [s2]


def test_cache_invalidated_when_a_filter_disappears():
    r = Router()
    s = Session("s")
    r.add("a/+", None, False, s, E)
    assert r.match("a/b")
    r.remove("a/+", None, False, s)
    assert r.match("a/b") == []
    assert r.count_routes() == 0


def test_shared_group_keeps_its_filter_routed_until_the_last_member_leaves():
    r = Router()
    s1, s2 = Session("s1"), Session("s2")
    r.add("a/+", "g", True, s1, E)
    r.add("a/+", "g", True, s2, E)
    assert r.remove("a/+", "g", True, s1)
    assert filters(r.match("a/b")) == ["a/+"]
    assert r.remove("a/+", "g", True, s2)
    assert r.match("a/b") == [] and r.count_routes() == 0


def test_a_walked_route_is_copied_on_write_never_changed_in_place():
    # A delivery walks Route.subs / Route.groups in place (Route.walking): what it walks
    # stays as it was, whatever a callback subscribes or unsubscribes meanwhile.
    r = Router()
    a, b, c, d = (Session(n) for n in "abcd")
    r.add("t", None, False, a, E)
    r.add("t", None, False, b, E)
    r.add("t", None, False, c, E)
    r.add("t", "g", True, a, E)
    r.add("t", "h", True, b, E)
    route = r.routes["t"]
    subs, groups = route.subs, route.groups
    route.walking = True
    r.add("t", None, False, d, E)          # a new subscriber
    r.remove("t", None, False, a)          # one leaves
    r.add("t", "k", True, c, E)            # a new group
    r.remove("t", "h", True, b)            # a group ends
    assert list(subs) == [a, b, c] and list(groups) == ["g", "h"]  # the walk's, unchanged
    assert list(route.subs) == [b, c, d] and list(route.groups) == ["g", "k"]
    assert r.count_subscriptions() == (5, 2)
    r.remove("t", None, False, b)
    r.remove("t", None, False, c)          # back to one: the fields, no dict
    assert route.one is d and not route.subs
    route.walking = False
    r.add("t", None, False, a, E)          # two again: a dict of their own
    subs = route.subs
    r.add("t", None, False, b, E)          # not walked: changed in place
    assert route.subs is subs and list(subs) == [d, a, b]


def test_a_full_cache_admits_nothing_until_enough_misses_then_starts_over(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Clearing a full cache at once meant more distinct topics than it holds, published in
    # turn, never hit and refilled it for nothing.
    monkeypatch.setattr(router_mod, "_CACHE_LIMIT", 4)
    monkeypatch.setattr(router_mod, "_CACHE_REFRESH", 5)
    r = Router()
    r.add("t/+", None, False, Session("s"), E)
    kept = [r.match(f"t/{i}") for i in range(4)]
    assert all(r.match(f"t/{i}") is kept[i] for i in range(4))  # the cache is full
    # Three misses while full: nothing admitted, nothing evicted.
    assert r.match("t/x") is not r.match("t/x")
    assert filters(r.match("t/x")) == ["t/+"]
    assert all(r.match(f"t/{i}") is kept[i] for i in range(4))
    r.match("t/y")
    assert r.match("t/0") is kept[0]
    r.match("t/z")  # the fifth miss: the cache starts over
    assert r.match("t/0") is not kept[0]
    assert r.match("t/x") is r.match("t/x")


def test_the_misses_count_again_from_zero_after_an_invalidation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(router_mod, "_CACHE_LIMIT", 2)
    monkeypatch.setattr(router_mod, "_CACHE_REFRESH", 2)
    r = Router()
    r.add("t/+", None, False, Session("s"), E)
    r.match("t/0"), r.match("t/1"), r.match("t/x")  # full, one miss counted
    r.add("u", None, False, Session("s2"), E)  # a new filter: the cache starts over
    first = [r.match("t/0"), r.match("t/1")]
    r.match("t/x")  # one miss since the invalidation, not two: no refresh yet
    assert r.match("t/0") is first[0] and r.match("t/1") is first[1]


def test_match_uncached_gives_what_match_gives_and_admits_it():
    r = Router()
    r.add("a/+", None, False, Session("s1"), E)
    r.add("a/b", None, False, Session("s2"), E)
    found = r.match_uncached("a/b")
    assert filters(found) == ["a/+", "a/b"]
    assert r.match("a/b") is found


def test_sys_topics_are_not_cached():
    r = Router()
    r.add("$SYS/#", None, False, Session("s"), E)
    first = r.match("$SYS/brokers/n/clients/c/connected")
    assert filters(first) == ["$SYS/#"]
    assert r.match("$SYS/brokers/n/clients/c/connected") is not first
    assert r.match("a/b") is r.match("a/b")  # other topics are


# --- counters ------------------------------------------------------------------------------

def test_subscription_counters_count_each_session_once_per_filter():
    r = Router()
    s1, s2 = Session("s1"), Session("s2")
    r.add("a", None, False, s1, E)
    r.add("a", None, False, s1, (SubOpts(2), 5))  # an update, not a second subscription
    r.add("b/+", None, False, s1, E)
    r.add("b/+", "g", True, s1, E)
    r.add("b/+", "g", True, s2, E)
    r.add("b/+", "g", True, s2, E)
    assert r.count_subscriptions() == (4, 2)  # s1 on a, b/+; s1 and s2 in g
    assert r.count_routes() == 2
    assert r.routes["a"].plain()[s1] == (SubOpts(2), 5)


def test_remove_unknown_subscription_is_false_and_counts_nothing():
    r = Router()
    s = Session("s")
    r.add("a", None, False, s, E)
    assert not r.remove("a", None, False, Session("other"))
    assert not r.remove("a", "g", True, s)
    assert not r.remove("nope", None, False, s)
    assert r.count_subscriptions() == (1, 0)
    assert r.remove("a", None, False, s)
    assert r.count_subscriptions() == (0, 0)


# --- shared group strategies ---------------------------------------------------------------

def group(*members: Session) -> SharedGroup:
    g = SharedGroup("g", "t")
    for m in members:
        g.members[m] = E
    return g


def test_round_robin_cycles_through_every_member():
    a, b, c = online("a"), online("b"), online("c")
    g = group(a, b, c)
    picks = [g.pick("round_robin", "p") for _ in range(6)]
    assert set(picks[:3]) == {a, b, c}
    assert picks[3:] == picks[:3]


def test_sticky_keeps_its_member_until_it_leaves():
    a, b, c = online("a"), online("b"), online("c")
    g = group(a, b, c)
    first = g.pick("sticky", "p")
    assert all(g.pick("sticky", s) is first for s in ("p", "q", "r"))
    del g.members[first]
    second = g.pick("sticky", "p")
    assert second is not first and second in g.members
    assert g.pick("sticky", "p") is second


def test_sticky_moves_when_its_member_goes_offline():
    a, b = online("a"), online("b")
    g = group(a, b)
    first = g.pick("sticky", "p")
    first.channel = None
    other = b if first is a else a
    assert g.pick("sticky", "p") is other


def test_hash_is_deterministic_per_sender():
    members = [online(str(i)) for i in range(4)]
    g = group(*members)
    for sender in ("alice", "bob", "carol", ""):
        expected = members[zlib.crc32(sender.encode()) % 4]
        assert {g.pick("hash", sender) for _ in range(5)} == {expected}
    assert g.pick("hash", None) is members[zlib.crc32(b"") % 4]
    assert len({g.pick("hash", f"client{i}") for i in range(40)}) > 1


@pytest.mark.parametrize("strategy", ["round_robin", "sticky", "hash", "random"])
def test_online_members_are_preferred(strategy):
    off1, on, off2 = Session("off1"), online("on"), Session("off2")
    g = group(off1, on, off2)
    assert {g.pick(strategy, f"s{i}") for i in range(10)} == {on}


@pytest.mark.parametrize("strategy", ["round_robin", "sticky", "hash", "random"])
def test_offline_members_are_used_when_none_is_online(strategy):
    a, b = Session("a"), Session("b")
    g = group(a, b)
    assert g.pick(strategy, "p") in (a, b)


@pytest.mark.parametrize("strategy", ["round_robin", "sticky", "hash", "random"])
def test_exclude_is_never_picked(strategy):
    a, b = online("a"), online("b")
    g = group(a, b)
    assert {g.pick(strategy, f"s{i}", exclude=a) for i in range(10)} == {b}
    assert group(a).pick(strategy, "p", exclude=a) is None
    assert group().pick(strategy, "p") is None


def test_random_strategy_reaches_every_member():
    members = [online(str(i)) for i in range(3)]
    g = group(*members)
    # 3 * (2/3) ** 100: a missed member is practically impossible
    assert {g.pick("random", "p") for _ in range(100)} == set(members)
