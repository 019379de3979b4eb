"""The registry's stats (sessions.persistent, subscribers) are counts kept up to date as
sessions come, go and change, not a walk over every session each second: they must stay
equal to a full recount through connects, resumes, takeovers, clean starts, subscribes and
unsubscribes, disconnects, session expiry, kicks, hand-overs and restores. A real Registry
and Dispatcher on manual timers; a seeded random sequence of those steps, recounted after
each one."""

from __future__ import annotations

import random

from core_util import ManualTimers, Owner

from mqttd.config import Zone
from mqttd.core.dispatch import Dispatcher
from mqttd.core.registry import Registry
from mqttd.core.session import Session
from mqttd.hooks import Hooks
from mqttd.metrics import Metrics
from mqttd.mqtt.packets import SubOpts
from mqttd.stats import Stats

FILTERS = ("a/#", "a/b", "$share/g/x", "c/+")


class Env:
    def __init__(self) -> None:
        self.zone = Zone()
        self.timers = ManualTimers()
        self.dispatcher = Dispatcher(Metrics(), Hooks())
        self.registry = Registry(self.dispatcher, Metrics(), Hooks(), self.timers,
                                 lambda _m: None, [self.zone.await_rel_timeout],
                                 clock=self.timers.clock)
        self.stats = Stats()
        self.registry.register_stats(self.stats)
        self.owners: dict[str, Owner] = {}

    def counted(self) -> dict[str, int]:
        self.stats.refresh()
        return {k: self.stats.get(k + ".count") for k in
                ("connections", "sessions", "sessions.persistent", "subscribers")}

    def recount(self) -> dict[str, int]:
        sessions = list(self.registry.sessions.values())
        return {"connections": len(self.registry.channels), "sessions": len(sessions),
                "sessions.persistent": sum(1 for s in sessions if s.persistent),
                "subscribers": sum(1 for s in sessions if s.subscriptions)}

    def open(self, cid: str, clean: bool, expiry: int) -> Session:
        owner = self.owners[cid] = Owner(cid)
        session, _present = self.registry.open_session(owner, self.zone, clean, expiry,
                                                       max_inflight=10)
        return session


def step(env: Env, rnd: random.Random, cids: list[str]) -> str:
    reg, disp = env.registry, env.dispatcher
    cid = rnd.choice(cids)
    session = reg.sessions.get(cid)
    what = rnd.choice(("open", "open", "sub", "sub", "unsub", "unsub_all", "detach",
                       "expire", "kick", "clean_session", "hand_off", "restore"))
    if what == "open":  # a connect: new, resumed, taken over or clean start; any expiry
        env.open(cid, clean=rnd.random() < 0.4, expiry=rnd.choice((0, 0, 5, 30)))
    elif what == "sub" and session is not None:
        disp.subscribe(session, rnd.choice(FILTERS), SubOpts(rnd.choice((0, 1))), 0)
    elif what == "unsub" and session is not None:
        disp.unsubscribe(session, rnd.choice(FILTERS))
    elif what == "unsub_all" and session is not None:
        disp.unsubscribe_all(session)
    elif what == "detach" and cid in env.owners:  # a disconnect (transient: session ends)
        reg.detach(env.owners[cid])
    elif what == "expire":
        env.timers.advance(rnd.choice((1.0, 6.0, 31.0)))
    elif what == "kick":
        reg.kick(cid)
    elif what == "clean_session":
        reg.clean_session(cid)
    elif what == "hand_off":  # to another node: either it took it, or it comes back
        gone = reg.hand_off(cid)
        if gone is not None:
            if rnd.random() < 0.5:
                reg.handed_over(gone)
            else:
                if rnd.random() < 0.5:  # meanwhile a connect made a new session here
                    env.open(cid, clean=True, expiry=rnd.choice((0, 10)))
                reg.take_back(gone)
    elif what == "restore" and session is None:  # a session read back (or handed over)
        s = Session(cid, expiry_interval=20)
        s.own_maps()
        s.persistent = True
        subs = [(f, SubOpts(1), 0) for f in rnd.sample(FILTERS, rnd.randint(0, 2))]
        if rnd.random() < 0.5:
            reg.restore([(s, subs, None, 0, 0.0)])
            reg.resume_restored([(s, subs, None, 0, 0.0)])
        else:
            reg.install(s, subs)
    else:
        return "nothing"
    return what


def test_stats_counts_equal_a_full_recount_through_every_kind_of_change() -> None:
    rnd = random.Random(17)
    env = Env()
    cids = [f"c{i}" for i in range(12)]
    done: set[str] = set()
    for i in range(3000):
        what = step(env, rnd, cids)
        done.add(what)
        assert env.counted() == env.recount(), f"after step {i}: {what}"
    assert done >= {"open", "sub", "unsub", "unsub_all", "detach", "expire", "kick",
                    "clean_session", "hand_off", "restore"}
    # and the counts were not trivially zero throughout
    assert env.stats.get("sessions.persistent.max") > 0 and env.stats.get("subscribers.max") > 0


def test_counts_follow_a_session_through_its_life() -> None:
    env = Env()
    reg, disp = env.registry, env.dispatcher
    s = env.open("p", clean=False, expiry=30)
    assert (reg.persistent_count, reg.subscriber_count) == (1, 0)
    disp.subscribe(s, "a/b", SubOpts(1), 0)
    disp.subscribe(s, "c/+", SubOpts(0), 0)
    assert (reg.persistent_count, reg.subscriber_count) == (1, 1)
    env.open("p", clean=False, expiry=0)  # resumed without an expiry: no longer persistent
    assert (reg.persistent_count, reg.subscriber_count) == (0, 1)
    s = env.open("p", clean=False, expiry=30)  # took over a transient session: a new one
    assert (reg.persistent_count, reg.subscriber_count) == (1, 0)
    disp.subscribe(s, "a/b", SubOpts(1), 0)
    reg.detach(env.owners["p"])
    assert (reg.persistent_count, reg.subscriber_count) == (1, 1)  # offline, still counted
    env.timers.advance(30.0)  # expired
    assert reg.sessions == {} and (reg.persistent_count, reg.subscriber_count) == (0, 0)
