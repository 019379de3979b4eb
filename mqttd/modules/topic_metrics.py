"""Topic metrics (EMQX's emqx_topic_metrics): message counts and rates of registered topics.

An operator registers exact topic names (``mqttd ctl topic-metrics add <topic>``, or
``topics`` in ``[modules.topic_metrics]``), at most ``max_topics``. For each, messages are
counted in (published to it: what reaches the dispatcher, after ``message.publish``), out
(the sessions it reached, delivered or queued) and dropped (it reached no session), each in
total and by the QoS the message was published with, with a rate over the last minute.

No hook callback does it: while a topic is registered the dispatcher watches the registered
names (``Dispatcher.watched``) and calls the module after each publish to one, with the
number of sessions reached; every other message costs one dict lookup. With none registered,
the dispatcher's test is one ``is None``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..config import TopicMetricsSettings, topic_name_error
from ..core.message import Message
from ..core.services import TimerHandle
from .base import Module, ModuleContext, ModuleError

__all__ = ["KINDS", "TopicMetrics", "TopicStats"]

#: The three counts, in EMQX's names.
KINDS = ("in", "out", "dropped")
#: Rates are sampled this often (seconds); the rate is over the last minute of samples.
SAMPLE_EVERY = 5.0
RATE_WINDOW = 60.0


class TopicStats:
    """One registered topic's counts: ``counts[kind][qos]``."""

    __slots__ = ("topic", "created_at", "counts", "samples")

    def __init__(self, topic: str, now: float) -> None:
        self.topic = topic
        self.created_at = time.time()
        self.counts = {kind: [0, 0, 0] for kind in KINDS}
        #: (monotonic time, in, out, dropped totals), a minute of them and one more.
        self.samples: deque[tuple[float, int, int, int]] = deque(
            maxlen=int(RATE_WINDOW / SAMPLE_EVERY) + 1)
        self.samples.append((now, 0, 0, 0))

    def totals(self) -> tuple[int, int, int]:
        c = self.counts
        return sum(c["in"]), sum(c["out"]), sum(c["dropped"])

    def sample(self, now: float) -> None:
        self.samples.append((now, *self.totals()))

    def row(self, now: float) -> dict[str, Any]:
        """EMQX's shape: topic, create_time and ``metrics`` (``messages.in.count``,
        ``messages.in.rate``, ``messages.qos1.out.count``, ...)."""
        totals = self.totals()
        # The oldest sample within the window (the deque holds about a minute of them).
        t0, *old = self.samples[0]
        elapsed = now - t0
        metrics: dict[str, float] = {}
        for i, kind in enumerate(KINDS):
            metrics[f"messages.{kind}.count"] = totals[i]
            rate = (totals[i] - old[i]) / elapsed if elapsed >= 1.0 else 0.0
            metrics[f"messages.{kind}.rate"] = round(rate, 2)
            for qos in range(3):
                metrics[f"messages.qos{qos}.{kind}.count"] = self.counts[kind][qos]
        return {"topic": self.topic,
                "create_time": time.strftime("%Y-%m-%dT%H:%M:%S",
                                             time.localtime(self.created_at)),
                "metrics": metrics}


class TopicMetrics(Module):
    """Counts in/out/dropped by QoS, and rates, for registered topics."""

    name = "topic_metrics"
    description = "Topic metrics: messages in/out/dropped by QoS and rates, per topic"

    def __init__(self, ctx: ModuleContext) -> None:
        super().__init__(ctx)
        settings: TopicMetricsSettings = ctx.settings.modules.topic_metrics
        self.max_topics = settings.max_topics
        self._initial = list(settings.topics)
        self.topics: dict[str, TopicStats] = {}
        #: What the dispatcher watches while a topic is registered: topic -> self._count.
        self._watched: dict[str, Callable[[Message, int], None]] = {}
        self._hooked = False
        self._timer: TimerHandle | None = None

    def load(self) -> None:
        for topic in self._initial:
            if topic not in self.topics:
                self.add(topic)

    def unload(self) -> None:
        super().unload()
        self._hooks_off()
        self.topics.clear()
        self._watched = {}

    def info(self) -> dict[str, Any]:
        # "hooked": whether the dispatcher calls it (only while a topic is registered).
        return {"topics": len(self.topics), "max_topics": self.max_topics,
                "hooked": self._hooked}

    # --- registration ------------------------------------------------------------------

    def add(self, topic: str) -> TopicStats:
        """Register ``topic`` (a topic name). Raises ValueError (not a topic name),
        KeyError (already registered) or ModuleError (``max_topics`` reached)."""
        err = topic_name_error(topic)
        if err:
            raise ValueError(f"cannot register {topic!r}: {err}")
        if topic in self.topics:
            raise KeyError(topic)
        if len(self.topics) >= self.max_topics:
            raise ModuleError(f"{self.max_topics} topics are registered already "
                              "(max_topics)")
        stats = TopicStats(topic, time.monotonic())
        self.topics[topic] = stats
        self._watch({**self._watched, topic: self._count})
        if len(self.topics) == 1:
            self._hooks_on()
        return stats

    def delete(self, topic: str) -> bool:
        """Unregister ``topic``; False if it was not registered."""
        if self.topics.pop(topic, None) is None:
            return False
        self._watch({t: cb for t, cb in self._watched.items() if t != topic})
        if not self.topics:
            self._hooks_off()
        return True

    def list(self) -> list[dict[str, Any]]:
        """Every registered topic, in the order they were added."""
        now = time.monotonic()
        return [stats.row(now) for stats in self.topics.values()]

    def _watch(self, watched: dict[str, Callable[[Message, int], None]]) -> None:
        """Replace the watched names (a new dict, never one changed in place: the compiled
        PUBLISH path remembers that a topic passed the dict it was tested against)."""
        if self._hooked:  # (also while Dispatcher._publish_watched holds it aside)
            self.ctx.broker.dispatcher.watched = watched
        self._watched = watched

    def _hooks_on(self) -> None:
        self._hooked = True
        self.ctx.broker.dispatcher.watched = self._watched
        self._timer = self.ctx.timers.call_later(SAMPLE_EVERY, self._tick)

    def _hooks_off(self) -> None:
        self._hooked = False
        dispatcher = self.ctx.broker.dispatcher
        if dispatcher.watched is self._watched:
            dispatcher.watched = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        now = time.monotonic()
        for stats in self.topics.values():
            stats.sample(now)
        self._timer = self.ctx.timers.call_later(SAMPLE_EVERY, self._tick)

    # --- hooks (on the chains only while a topic is registered) ------------------------

    def _count(self, msg: Message, n: int) -> None:
        stats = self.topics.get(msg.topic)
        if stats is not None:
            counts = stats.counts
            qos = msg.qos
            counts["in"][qos] += 1
            if n > 0:
                counts["out"][qos] += n
            else:
                counts["dropped"][qos] += 1
