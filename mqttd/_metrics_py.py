"""Metrics, the reference implementation: monotonic counters at fixed indices.

EMQX keeps its metrics in one ``counters`` array (``emqx_metrics``): every
metric has a reserved index, the hot path adds to the counter at that index,
and only the readers (``$SYS``, ``ctl broker metrics``) ever look at names.
This is the same in plain Python: a list of ints. ``_speedups/_metrics.pyx``
is the compiled twin (a C array of 64-bit counters) with the same API and the
same results.

Some metrics are sums of counters (``derived``, see ``_metric_names.DERIVED``):
they have no index and are computed when read (``val``, ``snapshot``).

Plugins may add counters of their own with :meth:`MetricsPy.new`, as EMQX's
``emqx_metrics:new/1`` does; the new counter gets the next free index.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ._metric_names import DERIVED, NAMES

__all__ = ["MetricsPy"]


class MetricsPy:
    """Named monotonic counters, incremented by index."""

    __slots__ = ("_c", "_derived", "_index", "_names")

    def __init__(self, names: Iterable[str] = NAMES,
                 derived: Mapping[str, Sequence[int]] = DERIVED) -> None:
        self._names: list[str] = []
        self._index: dict[str, int] = {}
        self._c: list[int] = []
        self._derived: dict[str, tuple[int, ...]] = {}
        for name in names:
            self.new(name)
        for name, parts in derived.items():
            if name in self._index:
                raise ValueError(f"{name} is both a counter and derived")
            parts = tuple(parts)
            if not all(type(i) is int and 0 <= i < len(self._c) for i in parts):
                raise ValueError(f"derived metric {name}: an index is out of range")
            self._derived[name] = parts

    def inc(self, idx: int, n: int = 1) -> None:
        """Add ``n`` (default 1) to the counter at ``idx``."""
        self._c[idx] += n

    def get(self, idx: int) -> int:
        """The value of the counter at ``idx``."""
        return self._c[idx]

    def val(self, name: str) -> int:
        """The value of the metric called ``name``, counter or derived (KeyError if none)."""
        idx = self._index.get(name)
        if idx is not None:
            return self._c[idx]
        c = self._c
        return sum(c[i] for i in self._derived[name])

    def index(self, name: str) -> int:
        """The index of the counter called ``name`` (KeyError if there is none)."""
        return self._index[name]

    def new(self, name: str) -> int:
        """Add a counter called ``name`` (or find it); returns its index."""
        if not isinstance(name, str):
            raise TypeError(f"a metric name is a str, not {type(name).__name__}")
        if name in self._derived:
            raise ValueError(f"{name} is a derived metric")
        idx = self._index.get(name)
        if idx is None:
            idx = self._index[name] = len(self._names)
            self._names.append(name)
            self._c.append(0)
        return idx

    @property
    def names(self) -> tuple[str, ...]:
        """Every counter's name, in index order."""
        return tuple(self._names)

    @property
    def derived(self) -> tuple[str, ...]:
        """The names of the derived metrics."""
        return tuple(self._derived)

    def snapshot(self) -> dict[str, int]:
        """Every metric by name: the counters in index order, then the derived ones."""
        c = self._c
        out = dict(zip(self._names, c, strict=True))
        for name, parts in self._derived.items():
            out[name] = sum(c[i] for i in parts)
        return out

    def reset(self) -> None:
        """Set every counter to 0."""
        self._c = [0] * len(self._c)

    def __len__(self) -> int:
        return len(self._c)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {len(self._c)} counters>"
