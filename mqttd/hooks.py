"""Hook points (EMQX's emqx_hooks): where plugins plug into the broker.

A hook point is a name (``"client.connected"``, ``"message.publish"``, ...) with
a chain of callbacks, kept sorted by priority, highest first; equal priorities
keep the order they were added in (EMQX's rule). Two ways to run a chain:

``run(point, *args)``, a notification
    Each callback is called as ``callback(*args)``. Returning :data:`STOP`
    (or a :class:`Stop`) ends the chain; any other return value, ``None``
    included, lets it go on. ``run`` returns ``None``.

``run_fold(point, args, acc)``, a fold over an accumulator
    Each callback is called as ``callback(*args, acc)`` and answers with

    * ``None`` (no ``return``): no opinion, the chain goes on with ``acc``
      unchanged (EMQX's ``ok``);
    * any other value: the chain goes on with that value as the new ``acc``
      (EMQX's ``{ok, NewAcc}``);
    * ``Stop(value)``: the chain ends and the fold returns ``value``
      (``{stop, NewAcc}``); ``Stop(None)`` is the only way to make a fold
      return None;
    * :data:`STOP`: the chain ends and the fold returns ``acc`` unchanged
      (``stop``).

A callback that raises is logged (with its traceback) the first time it fails,
counted every time (``hooks.failed``), and treated as ``None``: the chain goes on
(EMQX's ``safe_execute``). One broken plugin does not take a client down.

Zero cost when nothing is registered: for every known hook point, ``Hooks``
has an attribute named after it with ``.`` replaced by ``_``
(``hooks.message_publish``) holding the chain as a tuple, empty when no
callback is registered. The hot path tests that attribute before it builds any
argument::

    if hooks.message_publish:
        msg = hooks.run_fold("message.publish", (), msg)

A chain is an immutable tuple replaced on every ``add``/``delete``, so a chain
being run is never changed under it (a callback may add or delete callbacks).

The hook points, their arguments (then ``acc`` for folds) and what they do are
listed in :data:`HOOK_POINTS` and in docs/OPERATIONS.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["HOOK_POINTS", "STOP", "Callback", "Hooks", "Stop"]

log = logging.getLogger("mqttd.hooks")

#: Every hook point the broker runs: name -> (kind, arguments, what a fold's acc is).
HOOK_POINTS: dict[str, tuple[str, str, str]] = {
    "client.connect": ("fold", "clientinfo, connect_packet", "CONNECT properties (dict)"),
    "client.connack": ("fold", "clientinfo, reason_code", "CONNACK properties (dict)"),
    "client.authenticate": ("fold", "client_id, username, password, peer",
                            "0 to accept, else a CONNACK reason code"),
    "client.check_acl": ("fold", "clientinfo, action ('publish'|'subscribe'), topic",
                         "0 to allow, else a reason code"),
    "client.connected": ("run", "clientinfo", ""),
    "client.disconnected": ("run", "clientinfo, CloseReason", ""),
    "client.subscribe": ("fold", "clientinfo, properties",
                         "[(topic_filter, SubOpts | reason code)]"),
    "client.unsubscribe": ("fold", "clientinfo, properties", "[topic_filter]"),
    "client.publish": ("fold", "clientinfo, properties",
                       "topic name (before authorization; an int >= 0x80 refuses it)"),
    "client.publish.dollar": ("fold", "clientinfo (None: a will or management's publish)",
                              "Message of a client's authorized PUBLISH to a $-topic (None: "
                              "taken, not published; an int >= 0x80 refuses it)"),
    "session.created": ("run", "session", ""),
    "session.subscribed": ("run", "session, topic_filter, SubOpts, is_new", ""),
    "session.unsubscribed": ("run", "session, topic_filter", ""),
    "session.resumed": ("run", "session", ""),
    "session.discarded": ("run", "session", ""),
    "session.takeovered": ("run", "session", ""),
    "session.terminated": ("run", "session, reason", ""),
    "message.publish": ("fold", "", "Message (None: not published)"),
    "message.retain": ("fold", "", "Message to keep as retained (None: not kept)"),
    "message.delivered": ("fold", "clientinfo", "Message"),
    "message.acked": ("run", "clientinfo, message", ""),
    "message.dropped": ("run", "message, reason", ""),
    "delivery.dropped": ("run", "session, message, reason", ""),
    "delivery.slow": ("run", "clientinfo, message, latency (s)", ""),
}


class Stop:
    """Returned by a callback: end the chain; a fold returns ``value``."""

    __slots__ = ("value",)

    def __init__(self, value: Any = None) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Stop({self.value!r})"


class _StopType:
    __slots__ = ()

    def __repr__(self) -> str:
        return "STOP"


#: Returned by a callback: end the chain (a fold keeps its current accumulator).
STOP: Any = _StopType()


class Callback(NamedTuple):
    """One registered callback, as :meth:`Hooks.callbacks` lists it."""

    action: Callable[..., Any]
    priority: int
    seq: int
    #: ``client.publish`` only: the topic prefixes it can act on (None: any topic). The
    #: channel skips the chain for a topic none of its callbacks' prefixes starts.
    prefixes: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        """A readable name for the callable (module.qualname)."""
        fn = self.action
        inner = getattr(fn, "func", None)  # functools.partial
        if inner is not None:
            fn = inner
        module = getattr(fn, "__module__", None) or ""
        qualname = getattr(fn, "__qualname__", None) or repr(fn)
        return f"{module}.{qualname}" if module else qualname


def _attr(point: str) -> str:
    return point.replace(".", "_")


_ATTRS = tuple(_attr(p) for p in HOOK_POINTS)
_EMPTY: tuple[Callback, ...] = ()


class Hooks:
    """The hook chains of one node."""

    # One attribute per known point: its chain, () when empty (the hot path's flag).
    client_connect: tuple[Callback, ...]
    client_connack: tuple[Callback, ...]
    client_authenticate: tuple[Callback, ...]
    client_check_acl: tuple[Callback, ...]
    client_connected: tuple[Callback, ...]
    client_disconnected: tuple[Callback, ...]
    client_subscribe: tuple[Callback, ...]
    client_unsubscribe: tuple[Callback, ...]
    client_publish: tuple[Callback, ...]
    client_publish_dollar: tuple[Callback, ...]
    session_created: tuple[Callback, ...]
    session_subscribed: tuple[Callback, ...]
    session_unsubscribed: tuple[Callback, ...]
    session_resumed: tuple[Callback, ...]
    session_discarded: tuple[Callback, ...]
    session_takeovered: tuple[Callback, ...]
    session_terminated: tuple[Callback, ...]
    message_publish: tuple[Callback, ...]
    message_retain: tuple[Callback, ...]
    message_delivered: tuple[Callback, ...]
    message_acked: tuple[Callback, ...]
    message_dropped: tuple[Callback, ...]
    delivery_dropped: tuple[Callback, ...]
    delivery_slow: tuple[Callback, ...]

    __slots__ = ("_chains", "_seq", "_failed", "failures", "on_failure", "slow_threshold",
                 "client_publish_prefixes", *_ATTRS)

    def __init__(self) -> None:
        self._chains: dict[str, tuple[Callback, ...]] = {}
        self._seq = 0
        #: Registrations (Callback.seq) already logged as failing: each is logged once.
        self._failed: set[int] = set()
        #: Calls that raised, over all callbacks.
        self.failures = 0
        #: Called with no argument on every failure (the node counts ``hooks.failed``).
        self.on_failure: Callable[[], None] | None = None
        #: ``delivery.slow`` runs for QoS 1/2 deliveries acknowledged this many seconds or
        #: more after their PUBLISH was sent (set by whoever hooks it: slow_subs).
        self.slow_threshold = 0.0
        #: The prefixes of every ``client.publish`` callback, or None when one acts on any
        #: topic: the channel runs that chain only for topics starting with one of them.
        self.client_publish_prefixes: tuple[str, ...] | None = None
        for attr in _ATTRS:
            setattr(self, attr, _EMPTY)

    # --- registration ---------------------------------------------------------------

    def add(self, point: str, callback: Callable[..., Any], priority: int = 0, *,
            prefixes: tuple[str, ...] | None = None) -> None:
        """Add ``callback`` to ``point``'s chain (highest priority runs first).

        ``prefixes`` (``client.publish`` only): the callback acts only on topics starting
        with one of them, so the chain is not run for other topics while every callback on
        it says so (``client_publish_prefixes``).

        A callback may be added to a point once: adding it again raises
        ValueError (EMQX's ``{error, already_exists}``). Points not in
        HOOK_POINTS are allowed (plugins may run hooks of their own).
        """
        if not isinstance(point, str) or not point:
            raise ValueError("a hook point is a non-empty str")
        if not callable(callback):
            raise TypeError(f"hook callback for {point} is not callable: {callback!r}")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError("hook priority must be an int")
        chain = self._chains.get(point, _EMPTY)
        if any(c.action == callback for c in chain):
            raise ValueError(f"callback {callback!r} is already on {point}")
        self._seq += 1
        entry = Callback(callback, priority, self._seq,
                         None if prefixes is None or "" in prefixes else tuple(prefixes))
        # Highest priority first; equal priorities in insertion order (seq ascending).
        self._set(point, tuple(sorted((*chain, entry), key=lambda c: (-c.priority, c.seq))))

    def reserve(self, callback: Callable[..., Any], priority: int = 0) -> Callback:
        """A registration for ``callback`` on no chain yet, its place in the run order
        taken now: :meth:`attach` puts it on a chain (and :meth:`delete` takes it off) as
        often as its owner likes, and it runs where an :meth:`add` now would have put it."""
        if not callable(callback):
            raise TypeError(f"hook callback is not callable: {callback!r}")
        self._seq += 1
        return Callback(callback, priority, self._seq)

    def attach(self, point: str, entry: Callback) -> None:
        """Put a registration from :meth:`reserve` on ``point``'s chain, in its order;
        ValueError if its callback is already there."""
        chain = self._chains.get(point, _EMPTY)
        if any(c.action == entry.action for c in chain):
            raise ValueError(f"callback {entry.action!r} is already on {point}")
        self._set(point, tuple(sorted((*chain, entry), key=lambda c: (-c.priority, c.seq))))

    def put(self, point: str, callback: Callable[..., Any], priority: int = 0) -> None:
        """Like :meth:`add`, but adding a callback already there is not an error."""
        try:
            self.add(point, callback, priority)
        except ValueError:
            if not any(c.action == callback for c in self._chains.get(point, _EMPTY)):
                raise

    def delete(self, point: str, callback: Callable[..., Any]) -> bool:
        """Remove ``callback`` from ``point``; True if it was there."""
        chain = self._chains.get(point, _EMPTY)
        kept = tuple(c for c in chain if c.action != callback)
        if len(kept) == len(chain):
            return False
        self._set(point, kept)
        return True

    def _set(self, point: str, chain: tuple[Callback, ...]) -> None:
        if chain:
            self._chains[point] = chain
        else:
            self._chains.pop(point, None)
        if point in HOOK_POINTS:
            setattr(self, _attr(point), chain)
        if point == "client.publish":
            guarded = all(c.prefixes is not None for c in chain)
            self.client_publish_prefixes = tuple(
                p for c in chain for p in c.prefixes or ()) if guarded else None

    def callbacks(self, point: str) -> list[Callback]:
        """``point``'s chain in run order."""
        return list(self._chains.get(point, _EMPTY))

    def points(self) -> dict[str, list[Callback]]:
        """Every point that has callbacks, with its chain."""
        return {point: list(chain) for point, chain in self._chains.items()}

    def active(self, point: str) -> bool:
        """True if ``point`` has at least one callback."""
        return point in self._chains

    def clear(self) -> None:
        """Remove every callback from every point."""
        for point in list(self._chains):
            self._set(point, _EMPTY)

    # --- running --------------------------------------------------------------------

    def run(self, point: str, *args: Any) -> None:
        """Call each callback of ``point`` with ``args`` until one returns STOP."""
        chain = self._chains.get(point)
        if not chain:
            return
        for cb in chain:
            try:
                result = cb.action(*args)
            except Exception:
                self._failure(point, cb)
                continue
            if result is STOP or type(result) is Stop:
                return

    def run_fold(self, point: str, args: tuple[Any, ...], acc: Any) -> Any:
        """Fold ``acc`` through ``point``'s callbacks (see the module docstring)."""
        chain = self._chains.get(point)
        if not chain:
            return acc
        for cb in chain:
            try:
                result = cb.action(*args, acc)
            except Exception:
                self._failure(point, cb)
                continue
            if result is None:
                continue
            if result is STOP:
                return acc
            if type(result) is Stop:
                return result.value
            acc = result
        return acc

    def _failure(self, point: str, cb: Callback) -> None:
        self.failures += 1
        if cb.seq not in self._failed:
            self._failed.add(cb.seq)
            log.exception("hook callback %s on %s failed (logged once; the chain goes on)",
                          cb.name, point)
        if self.on_failure is not None:
            self.on_failure()
