"""The subscription trie facade: picks the compiled trie when available.

``TriePy`` always exists; ``TrieC`` only when the Cython build loaded; ``Trie``
is the best available. No logic lives here: see ``mqttd/_trie_py.py``.
"""

from __future__ import annotations

from .._accel import use_c
from ._trie_py import TriePy

__all__ = ["Trie", "TriePy"]

if use_c("trie"):
    from .._speedups._trie import Trie as TrieC

    Trie = TrieC
    __all__ += ["TrieC"]
else:
    Trie = TriePy  # type: ignore[assignment,misc]
