"""The other nodes as one node sees them (mqttd/cluster/membership.py): the route tables kept
by versioned deltas, resynchronisation, down and up, and the interest a publish asks about.
The class does no I/O: these tests feed it what NATS would bring, in the orders it may."""

from __future__ import annotations

from mqttd.cluster.membership import Membership, group_token

B, C = "b@127.0.0.1", "c@127.0.0.1"


def synced(m: Membership, name: str, node_id: str, filters: list[str], version: int = 1,
           now: float = 0.0) -> None:
    assert m.heartbeat(name, node_id, version, now, 0.0)  # unknown: its table is wanted
    m.table(name, node_id, version, filters, now, 0.0)
    assert not m.heartbeat(name, node_id, version, now, 0.0)


def test_an_unread_node_may_want_anything() -> None:
    m = Membership(1.0, 3)
    assert m.interest("a/b") == 0  # nobody known
    m.heartbeat(B, "1", 4, 0.0, 0.0)
    assert m.interest("a/b") == 1  # B's table not read yet: it may
    m.table(B, "1", 4, ["x/#"], 0.0, 0.0)
    assert m.interest("a/b") == 0
    assert m.interest("x/y") == 1


def test_matching_counts_nodes_not_filters() -> None:
    m = Membership(1.0, 3)
    synced(m, B, "1", ["a/+", "a/#", "a/b"])
    synced(m, C, "2", ["#"])
    assert m.interest("a/b") == 2
    assert m.interest("z") == 1
    assert m.interest("$SYS/x") == 0  # a leading wildcard does not reach $ topics
    assert m.interest("a") == 2  # a/# matches its parent


def test_deltas_in_order_apply_and_a_gap_asks_for_the_table() -> None:
    m = Membership(1.0, 3)
    synced(m, B, "1", ["a"], version=1)
    assert not m.delta(B, "1", 2, ["b"], ["a"], 0.0, 0.0)
    assert m.interest("a") == 0 and m.interest("b") == 1
    assert not m.delta(B, "1", 2, ["a"], [], 0.0, 0.0)  # a repeat: ignored
    assert m.interest("a") == 0
    assert m.delta(B, "1", 4, ["c"], [], 0.0, 0.0)  # 3 was missed: read it all again
    assert m.interest("c") == 0  # not applied out of order
    m.table(B, "1", 4, ["b", "c"], 0.0, 0.0)
    assert m.interest("c") == 1
    assert m.heartbeat(B, "1", 5, 0.0, 0.0)  # a heartbeat naming another version: again


def test_an_older_table_does_not_undo_newer_deltas() -> None:
    m = Membership(1.0, 3)
    synced(m, B, "1", ["a"], version=1)
    m.delta(B, "1", 2, ["b"], [], 0.0, 0.0)
    m.table(B, "1", 1, ["a"], 0.0, 0.0)  # answered before delta 2, arriving after it
    assert m.interest("b") == 1


def test_missed_heartbeats_make_a_node_down_and_drop_its_routes() -> None:
    m = Membership(1.0, 3)
    synced(m, B, "1", ["a/#"], now=0.0)
    synced(m, C, "2", ["a/#"], now=0.0)
    assert m.check(2.9) == []
    m.heartbeat(C, "2", 1, 2.5, 0.0)
    gone = m.check(3.1)
    assert [p.name for p in gone] == [B]
    assert gone[0].reason == "missed 3 heartbeats"
    assert m.interest("a/x") == 1  # only C's route is left
    assert m.check(3.2) == []  # counted once
    # Heard again: up, and its routes are read again before they count.
    assert m.heartbeat(B, "1", 1, 4.0, 0.0)
    assert m.peers[B].up and not m.peers[B].synced
    assert m.interest("a/x") == 2  # C, and B which may


def test_a_node_that_leaves_or_restarts_drops_its_routes() -> None:
    m = Membership(1.0, 3)
    synced(m, B, "1", ["a"])
    assert m.left(B, "1")
    assert not m.left(B, "1")  # once
    assert m.peers[B].reason == "left" and m.interest("a") == 0
    synced(m, C, "2", ["c"])
    m.heartbeat(C, "3", 0, 1.0, 0.0)  # the same name, a new start: a new table
    assert not m.peers[C].synced and m.interest("c") == 1  # unread, so it may
    m.table(C, "3", 0, [], 1.0, 0.0)
    assert m.interest("c") == 0


def test_a_node_cut_off_counts_the_others_as_just_heard_when_back() -> None:
    m = Membership(1.0, 3)
    synced(m, B, "1", ["a"], now=0.0)
    m.heard_all(10.0)
    assert m.check(11.0) == []


def test_shared_groups_are_waited_for_by_their_token_and_forgotten_topics_with_them() -> None:
    """A node's shared group matching a topic is something a forwarded message waits for
    (whichever node NATS picks confirms it for the group); the topics known to stay local
    (``quiet``, the PUBLISH fast path's) are forgotten at every change."""
    m = Membership(1.0, 3)
    m.heartbeat(B, "1", 1, 0.0, 0.0)
    m.table(B, "1", 1, ["a/+", "x"], 0.0, 0.0, plain=["x"], groups={"q1": "a/+"})
    assert m.confirming("a/b") == {group_token("q1")}
    assert m.confirming("x") == {B}
    m.quiet["z"] = True
    assert not m.delta(B, "1", 2, ["z/#"], [], 0.0, 0.0, groups_added=[("q2", "z/#")])
    assert not m.quiet
    assert m.confirming("z/1") == {group_token("q2")} and m.group_held("q2")
    assert not m.delta(B, "1", 3, [], ["z/#"], 0.0, 0.0, groups_removed=["q2"])
    assert m.confirming("z/1") == frozenset() and not m.group_held("q2")
    m.quiet["z"] = True
    assert m.check(10.0) == [m.peers[B]]  # down: nothing waited for, the topics forgotten
    assert m.confirming("a/b") == frozenset() and not m.quiet and not m.group_held("q1")
    assert m.peers[B].groups == {"q1": "a/+"}  # what NATS may have picked it for
