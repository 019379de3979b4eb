"""Modules' own records in the durable store: key -> bytes, one *space* per owner.

A feature that must keep something of its own across a restart (the delayed module's
pending messages, a bridge's queue) asks the node for its space (``Node.kv_space(name)``,
also ``ModuleContext.kv(name)``: None when the store is off) and gets a :class:`KVSpace`:
``records`` holds what the store had at start, kept current by ``put`` and ``delete``.
Each change is an operation of the store's journal (KV_PUT / KV_DEL), committed with the
loop turn's group commit like every other: a change made while a client's PUBLISH is
handled holds its PUBACK until it is on disk (``Channel.hold``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .journal import Journal

__all__ = ["KVSpace", "KVStore"]


class KVSpace:
    """One owner's records. ``records`` (key -> value) is the store's content as the
    journal will have it once the pending changes are committed; read it, change it
    only through :meth:`put` and :meth:`delete`."""

    __slots__ = ("space", "records", "_journal")

    def __init__(self, journal: Journal, space: str, records: dict[str, bytes]) -> None:
        self.space = space
        self.records = records
        self._journal = journal

    def put(self, key: str, value: bytes) -> None:
        """Insert or replace the record ``key``."""
        records = self.records
        new = key not in records
        records[key] = value
        self._journal.kv_put(self.space, key, value, new)

    def put_new(self, key: str, value: bytes) -> None:
        """``put`` of a key the space does not hold (the caller makes its keys unique)."""
        self.records[key] = value
        self._journal.kv_put_new(self.space, key, value)

    def delete_many(self, keys: list[str]) -> None:
        """Delete the records ``keys`` (those there are) in one operation of the store."""
        records = self.records
        there = [key for key in keys if records.pop(key, None) is not None]
        if there:
            self._journal.kv_del_many(self.space, there)

    def delete(self, key: str) -> bool:
        """Delete the record ``key``; False if there is none."""
        if self.records.pop(key, None) is None:
            return False
        self._journal.kv_del(self.space, key)
        return True

    @property
    def committing(self) -> bool:
        """A commit is due at the end of this loop turn: a change made now joins it."""
        return self._journal._scheduled

    @property
    def full(self) -> bool:
        """The store refuses what needs storing (disk full or its size limit): QoS 1/2
        messages are refused meanwhile (0x97), and so should a new record be."""
        return self._journal.gate.full

    def commit_now(self) -> None:
        """Commit the changes issued so far now, not at the end of the loop turn (an
        operator's command is answered once its change is in the operation log)."""
        self._journal.commit_now()

    async def flush(self, timeout: float = 10.0) -> bool:
        """Commit what was issued so far and wait for it; False if not within ``timeout``."""
        return await self._journal.flush(timeout)


class KVStore:
    """Every space of one store: the restored records, handed out by name."""

    __slots__ = ("_journal", "_spaces")

    def __init__(self, journal: Journal, restored: dict[str, dict[str, bytes]]) -> None:
        self._journal = journal
        self._spaces = {name: KVSpace(journal, name, records)
                        for name, records in restored.items()}

    def space(self, name: str) -> KVSpace:
        """The space ``name`` (the same object every time: a module loaded again sees the
        records as its last instance left them)."""
        space = self._spaces.get(name)
        if space is None:
            if not name:
                raise ValueError("a KV space needs a name")
            space = self._spaces[name] = KVSpace(self._journal, name, {})
        return space

    def spaces(self) -> list[str]:
        """Names of the spaces that hold records or were asked for."""
        return list(self._spaces)
