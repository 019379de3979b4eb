"""What keeps an idle connection small and stays exact (issue 17): the loop clock's floats
shared by the connections read within one millisecond (``Flusher.now``), a plain TCP client's
address asked of its connection instead of kept as a string."""

from __future__ import annotations

import asyncio

import uvloop

from mqttd.transport.connection import Flusher


def test_flusher_now_is_the_loop_clock_one_float_while_it_reads_the_same() -> None:
    async def main() -> tuple[int, list[tuple[float, float, float]]]:
        loop = asyncio.get_running_loop()
        flusher = Flusher(loop)
        shared = 0
        moved = []
        prev = flusher.now()
        for _ in range(2000):  # ~0.2 ms: uvloop's clock (whole ms) reads the same most times
            before = loop.time()
            now = flusher.now()
            after = loop.time()
            assert before <= now <= after
            if now == prev:
                assert now is prev  # the same object, not an equal one
                shared += 1
            else:
                moved.append((prev, now, after))
            prev = now
        return shared, moved

    shared, moved = uvloop.run(main())
    assert shared > 0
    assert all(a < b for a, b, _ in moved)  # a new float only when the clock moved on
