"""The operation log: what the journal commits, appended to a file before any
acknowledgement, and applied to the SQLite store later in bulk.

Why a log in front of SQLite: an acknowledged message must be on disk before its PUBACK,
but most stored deliveries are acknowledged by their subscriber soon after (a queue
row's life is often milliseconds). Writing each into SQLite's B-trees costs ~2 µs per
row change (insert and delete: ~4 µs a message, measured with the store's own ops);
appending the batch to a log costs ~0.3 µs a message (encoding, ``crc32``, one
``write``), and the rows that are inserted and deleted between two applications never
reach SQLite at all. So: commit = append to the log (``process``: the write is in the
operating system's hands, which survives kill -9; ``power``: ``fdatasync`` too); apply =
a background thread writes the surviving operations of many commits into SQLite in one
transaction, with the sequence number they reach; then the log segments they came from
are deleted. At start, the log is replayed into SQLite first.

A segment is a file ``<store>.oplog.<n>`` of records: a 16-byte header (payload length,
CRC-32 of the payload, sequence number of the batch's last operation) and the payload,
the batch's list of operation tuples in format 2 (``store/records.py``: the queue rows of
durable QoS 1 field by field, everything else ``marshal``; format 1, all ``marshal``,
written before, is still read, so a log left by an older mqttd replays as it is). A
record cut short or failing its CRC at the end of the last segment is a write the crash
interrupted, never acknowledged: it and what follows are ignored. Anywhere else it is
corruption, and the start refuses.
"""

from __future__ import annotations

import errno
import glob
import os
import struct
import zlib
from collections.abc import Iterator

from .base import Op, StoreError, StoreFull
from .records import decode, encode

__all__ = ["OpLog"]

_HEADER = struct.Struct("<IIQ")
#: A payload larger than this in a header is taken for corruption, not allocated.
_MAX_RECORD = 1 << 31


class OpLog:
    """The append-only segments of one store file."""

    def __init__(self, store_path: str, sync: bool = False) -> None:
        self.prefix = store_path + ".oplog."
        #: ``power``: every append is followed by ``fdatasync`` (by the caller's thread).
        self.sync = sync
        self._fd = -1
        self.segment = 0
        #: Bytes in the segments not yet applied (the current one included).
        self.size = 0
        self._sizes: dict[int, int] = {}

    # --- start ----------------------------------------------------------------------------

    def segments(self) -> list[int]:
        numbers = []
        for path in glob.glob(glob.escape(self.prefix) + "*"):
            tail = path[len(self.prefix):]
            if tail.isdigit():
                numbers.append(int(tail))
        return sorted(numbers)

    def path(self, segment: int) -> str:
        return f"{self.prefix}{segment:06d}"

    def replay(self, after: int = 0) -> Iterator[tuple[int, int, list[Op]]]:
        """Every record of the segments numbered above ``after`` (those before are in the
        store already), in order: (segment, sequence number, operations). Raises
        StoreError for corruption before the end of the last segment."""
        segments = self.segments()
        for i, segment in enumerate(segments):
            if segment <= after:
                continue
            path = self.path(segment)
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as err:
                raise StoreError(f"{path}: cannot read: {err.strerror or err}") from None
            last = i == len(segments) - 1
            off = 0
            while off < len(data):
                bad = None
                if len(data) - off < _HEADER.size:
                    bad = "a record cut short"
                else:
                    length, crc, seq = _HEADER.unpack_from(data, off)
                    end = off + _HEADER.size + length
                    if length > _MAX_RECORD or end > len(data):
                        bad = "a record cut short"
                    else:
                        payload = data[off + _HEADER.size:end]
                        if zlib.crc32(payload) != crc:
                            bad = "a record whose checksum does not match"
                if bad is not None:
                    if last:  # the write a crash interrupted: never acknowledged
                        break
                    raise StoreError(f"{path}: corrupt operation log ({bad} at byte {off})")
                try:
                    ops = decode(payload)
                except (ValueError, EOFError, TypeError) as err:
                    raise StoreError(f"{path}: corrupt operation log (byte {off}: {err})"
                                     ) from None
                yield segment, seq, ops
                off = end

    def remove_all(self) -> None:
        """Delete every segment (all applied)."""
        for segment in self.segments():
            _unlink(self.path(segment))

    # --- append ---------------------------------------------------------------------------

    def open(self, first: int = 1) -> None:
        """Start a new segment, numbered after the existing ones and at least ``first``
        (numbers only grow: the store remembers which it has)."""
        existing = self.segments()
        self.segment = max(first, (existing[-1] + 1) if existing else 1)
        self._open_segment()

    def _open_segment(self) -> None:
        self._fd = self._create(self.segment)
        self._sizes[self.segment] = 0

    def _create(self, segment: int) -> int:
        path = self.path(segment)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise StoreError(f"{path}: cannot create: {err.strerror or err}") from None
        if self.sync:  # power: the new file's name must survive a power loss too
            try:
                dirfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
                try:
                    os.fsync(dirfd)
                finally:
                    os.close(dirfd)
            except OSError as err:
                os.close(fd)
                raise StoreError(f"{path}: cannot sync its directory: "
                                 f"{err.strerror or err}") from None
        return fd

    def append(self, ops: list[Op], seq: int) -> int:
        """Write one record; returns its size. Raises StoreFull when the disk is full (the
        segment is cut back to where it was: no partial record stays) or StoreError."""
        payload = encode(ops)
        header = _HEADER.pack(len(payload), zlib.crc32(payload), seq)
        size = len(header) + len(payload)
        fd = self._fd
        before = self._sizes[self.segment]
        try:
            # Header and payload in one call without joining them (a copy of every
            # message's payload less).
            written = os.writev(fd, (header, payload))
            if written < size:  # a short write: the disk is filling up
                rest = (header + payload)[written:]
                while rest:
                    n = os.write(fd, rest)
                    if n <= 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    rest = rest[n:]
        except OSError as err:
            try:
                os.ftruncate(fd, before)
            except OSError:
                pass
            path = self.path(self.segment)
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFull(f"{path}: full: {err.strerror}") from None
            raise StoreError(f"{path}: cannot write: {err.strerror or err}") from None
        self._sizes[self.segment] = before + size
        self.size += size
        return size

    @property
    def current_size(self) -> int:
        """Bytes in the segment being appended to."""
        return self._sizes.get(self.segment, 0)

    def fdatasync(self) -> None:
        """Make what was appended survive a power loss (``power``; any thread)."""
        fd = self._fd
        if fd >= 0:
            os.fdatasync(fd)

    def rotate(self) -> int:
        """Close the current segment and start the next; returns the closed one's number
        (everything in it and before it goes into the next application)."""
        closed = self.segment
        fd = self._create(closed + 1)  # first: if it fails, the current segment stays
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self.segment = closed + 1
        self._sizes[self.segment] = 0
        return closed

    def applied(self, upto: int) -> None:
        """Segments up to ``upto`` are in the store: delete them."""
        for segment in [s for s in self._sizes if s <= upto]:
            self.size -= self._sizes.pop(segment)
            _unlink(self.path(segment))

    def close(self) -> None:
        """Close the current segment (deleted if empty: nothing to replay)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            if self._sizes.get(self.segment) == 0:
                del self._sizes[self.segment]
                _unlink(self.path(self.segment))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
