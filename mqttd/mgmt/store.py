"""The durable store as the operator sees it: its figures (``store status``) and giving its
free space back (``store compact``).

Both ask the store's journal (:class:`~mqttd.store.journal.Journal`), which runs them on
its writer thread after the writes handed over before them. While a write keeps failing
(a full disk, the store's size limit) that thread is busy retrying it, so ``status``
then answers from what the journal knows on the loop (file size, commit figures, the
error) without the row counts, and ``compact`` refuses at once instead of waiting for
the disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..store.base import StoreError
from .errors import Failed
from .listing import Row, iso

if TYPE_CHECKING:
    from ..store.journal import Journal

__all__ = ["WRITER_WAIT", "Store"]

log = logging.getLogger("mqttd.mgmt")

#: Seconds ``status`` waits for the writer thread (busy with a long compaction, say)
#: before answering without the row counts.
WRITER_WAIT = 2.0

_OFF_NOTE = ("sessions, queued and retained messages are kept in memory only and lost "
             "when mqttd stops")


def _file_size(path: str) -> int:
    """The store's bytes on disk, its WAL and shared-memory index included."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.path.getsize(path + suffix)
        except OSError:
            pass
    return total


class Store:
    """The node's store, through ``journal()``: the Journal once the node has started
    with durability on, None when durability is off."""

    def __init__(self, journal: Callable[[], Journal | None]) -> None:
        self._journal = journal

    async def status(self) -> Row:
        """The file, its size, rows per table, durability, schema and pages, and the
        journal's figures: commits, operations written/cancelled/pending, commit latency
        p50/p99 (ms, over the last commits), whether writes are failing (``full``,
        ``last_error``) and the last compaction (None: never).

        Durability off: ``{"durability": "off", "path": None, "note": ...}``. While writes
        fail, or the writer does not answer within :data:`WRITER_WAIT`, ``rows``,
        ``schema``, ``page_size`` and ``free_pages`` are None and ``note`` says why.
        Failed if the store cannot be read."""
        journal = self._journal()
        if journal is None:
            return {"durability": "off", "path": None, "note": _OFF_NOTE}
        if journal.gate.full:
            return self._loop_only(journal, "writes are failing and being retried: rows "
                                            "are counted once they succeed")
        try:
            data = await asyncio.wait_for(journal.status(), WRITER_WAIT)
        except TimeoutError:
            return self._loop_only(journal, f"the store's writer did not answer within "
                                            f"{WRITER_WAIT:g} s (compacting?): rows not "
                                            "counted")
        except StoreError as err:
            raise Failed(f"cannot read the store: {err}", "store_error") from None
        return self._finish(data)

    def _loop_only(self, journal: Journal, note: str) -> Row:
        """What the loop knows without the writer thread (Journal.status's shape)."""
        lat = sorted(journal.latencies)
        p50 = statistics.median(lat) if lat else 0.0
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0
        path = journal.backend.path
        return self._finish({
            "path": path, "size": _file_size(path) if path else 0, "rows": None,
            "durability": journal.durability, "schema": None, "page_size": None,
            "free_pages": None, "commits": journal.commits, "ops_written": journal.ops_written,
            "ops_cancelled": journal.ops_cancelled, "log_bytes": journal.oplog.size,
            "applications": journal.applications, "ops_applied": journal.ops_applied,
            # issued, not yet committed: the batch being retried included
            "pending": journal.gate.issued - journal.gate.committed,
            "commit_p50_ms": round(p50 * 1000, 3), "commit_p99_ms": round(p99 * 1000, 3),
            "full": journal.gate.full, "last_error": journal.last_error,
            "last_compaction": journal.last_compaction, "note": note})

    @staticmethod
    def _finish(data: dict[str, object]) -> Row:
        """The last compaction's time as RFC 3339, as every time in management rows, and
        its seconds rounded to the millisecond."""
        last = data.get("last_compaction")
        if isinstance(last, dict):
            at = last.get("at")
            seconds = last.get("seconds")
            data["last_compaction"] = dict(
                last, at=iso(at) if isinstance(at, float) else at,
                seconds=round(seconds, 3) if isinstance(seconds, float) else seconds)
        return data

    async def compact(self, *, by: str = "") -> Row:
        """Checkpoint the WAL and VACUUM the file: ``{"path", "before", "after" (bytes),
        "seconds"}``. Writes wait meanwhile (they are batched behind it, not refused).
        Failed when durability is off, while writes are failing, or if the compaction
        itself fails (the store is left as it was)."""
        journal = self._journal()
        if journal is None:
            raise Failed("durability is off: there is no store to compact", "durability_off")
        if journal.gate.full:
            raise Failed(f"cannot compact while writes to the store fail ({journal.last_error}); "
                         "they are retried: make room first", "store_full")
        try:
            result = await journal.compact()
        except StoreError as err:
            raise Failed(f"cannot compact the store: {err}", "store_error") from None
        before, after = result.get("before"), result.get("after")
        seconds = result.get("seconds")
        seconds = round(seconds, 3) if isinstance(seconds, float) else seconds
        log.info("store %s compacted by %s: %s -> %s bytes in %s s", journal.backend.path,
                 by or "management", before, after, seconds)
        return {"path": journal.backend.path, "before": before, "after": after,
                "seconds": seconds}
