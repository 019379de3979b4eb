# cython: language_level=3
"""The subscription trie, compiled: the same algorithm as ``mqttd/_trie_py.py``.

Read the reference for the layout and the semantics. What differs here:

- Nodes are a ``cdef class`` with typed fields, and literal children are found
  with ``PyDict_GetItem`` (a borrowed reference, no exception machinery).
- Nodes are invisible to the cyclic GC (``no_gc``): a node refers only to
  nodes, to the dict of its children and to a ``str``, so no cycle can pass
  through one. A million filters are millions of objects; tracked, every full
  collection walked them all (about a second at 1M filters) and collections
  triggered while inserting tripled the insert time. Untracked nodes also keep
  their children dicts untracked (a dict holding only untracked values is not
  tracked).
- ``match`` keeps its work stack in C memory of borrowed node pointers. That is
  safe because nothing in the loop can run Python code or allocate a GC
  object (which could start a collection and a ``__del__`` that edits the
  trie): dict lookups with ``str`` keys, ``PyList_Append`` and C arithmetic.
- There is no set of the stored filters (as in the reference): membership walks the
  filter's levels, the size is the root's count.
- Without a GC header a node cannot use the trashcan that stops a deep chain
  of objects from freeing recursively, so a dropped branch (a pruned
  65,000-level filter, or a whole trie) is taken apart iteratively by
  ``_free_branch``.
"""

cimport cython
from cpython.dict cimport PyDict_GetItem, PyDict_Next
from cpython.list cimport PyList_Append
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_FromObject
from libc.string cimport memcpy

__all__ = ["Trie"]


@cython.no_gc
@cython.final
cdef class _Node:
    cdef dict children  # None until the first literal child
    cdef _Node plus
    cdef _Node pound
    cdef object filter  # the filter (an exact str) ending here, or None
    cdef Py_ssize_t count  # filters ending in this subtree, this node included
    cdef Py_ssize_t depth  # topic level this node consumes next; the root is 0


cdef inline _Node _new_node(Py_ssize_t depth):
    # __new__ goes straight to tp_new (object fields start as None): no call with arguments.
    cdef _Node node = _Node.__new__(_Node)
    node.depth = depth
    return node


# A stack of borrowed node pointers: a small inline array, then the heap.
cdef enum:
    _INLINE = 32

cdef struct _Stack:
    PyObject** items
    Py_ssize_t size
    Py_ssize_t capacity
    PyObject* inline[_INLINE]


cdef inline void _stack_init(_Stack* s) noexcept:
    s.items = s.inline
    s.size = 0
    s.capacity = _INLINE


cdef inline void _stack_release(_Stack* s) noexcept:
    if s.items != s.inline:
        PyMem_Free(s.items)
    s.items = s.inline


cdef int _stack_grow(_Stack* s) except -1:
    cdef Py_ssize_t capacity = s.capacity * 2
    cdef PyObject** items
    if s.items == s.inline:
        items = <PyObject**>PyMem_Malloc(capacity * sizeof(PyObject*))
        if items is NULL:
            raise MemoryError()
        memcpy(items, s.items, s.size * sizeof(PyObject*))
    else:
        items = <PyObject**>PyMem_Realloc(s.items, capacity * sizeof(PyObject*))
        if items is NULL:
            raise MemoryError()
    s.items = items
    s.capacity = capacity
    return 0


cdef inline str _exact_str(object value, str what):
    """``value`` as an exact ``str`` (a subclass is copied); TypeError if it is no str."""
    if type(value) is str:
        return <str>value
    if isinstance(value, str):
        # A str subclass could carry a reference back to the trie: a cycle
        # through untracked nodes that the GC could never free.
        return PyUnicode_FromObject(value)
    raise TypeError(f"{what} must be str, not {type(value).__name__}")


cdef inline int _push(_Stack* s, PyObject* node) except -1:
    if s.size == s.capacity:
        _stack_grow(s)
    s.items[s.size] = node
    s.size += 1
    return 0


cdef int _collect(_Node start, list out) except -1:
    """Append every filter in ``start``'s subtree (the tail after a ``#``)."""
    cdef _Stack stack
    cdef _Node node
    cdef Py_ssize_t pos
    cdef PyObject* key
    cdef PyObject* value
    _stack_init(&stack)
    try:
        _push(&stack, <PyObject*>start)
        while stack.size:
            stack.size -= 1
            node = <_Node>stack.items[stack.size]
            if node.filter is not None:
                PyList_Append(out, node.filter)
            if node.children is not None:
                pos = 0
                while PyDict_Next(node.children, &pos, &key, &value):
                    _push(&stack, value)
            if node.plus is not None:
                _push(&stack, <PyObject*>node.plus)
            if node.pound is not None:
                _push(&stack, <PyObject*>node.pound)
    finally:
        _stack_release(&stack)
    return 0


cdef void _free_branch(_Node top):
    """Empty ``top``'s subtree one node at a time, so no deep chain frees recursively."""
    cdef list pending = [top]
    cdef _Node node
    while pending:
        node = <_Node>pending.pop()
        if node.children is not None:
            pending.extend(node.children.values())  # held here while the dict goes
            node.children = None
        if node.plus is not None:
            pending.append(node.plus)
            node.plus = None
        if node.pound is not None:
            pending.append(node.pound)
            node.pound = None
        # ``node`` now has no children: dropping it frees one object, not a chain.


@cython.final
cdef class Trie:
    """A set of topic filters that finds the ones matching a topic name.

    ``insert``/``delete`` add and remove filters; ``match(topic)`` returns every
    stored filter matching ``topic`` once each, in no particular order.
    """

    cdef _Node _root

    def __cinit__(self):
        self._root = _new_node(0)

    cdef bint _has(self, str filter_) except -1:
        """Whether ``filter_`` is stored: a walk down its levels (no set of filters: the
        router's route table holds them already)."""
        cdef _Node node = self._root
        cdef PyObject* found
        cdef str level
        for level in filter_.split("/"):
            if level == "+":
                node = node.plus
            elif level == "#":
                node = node.pound
            elif node.children is None:
                return False
            else:
                found = PyDict_GetItem(node.children, level)
                if found is NULL:
                    return False
                node = <_Node>found
            if node is None:
                return False
        return node.filter is not None

    def __dealloc__(self):
        if self._root is not None:
            _free_branch(self._root)

    def insert(self, topic_filter) -> bool:
        """Add ``topic_filter``; True if it was not already stored."""
        cdef str filter_ = _exact_str(topic_filter, "topic filter")
        cdef _Node node, child
        cdef dict children
        cdef PyObject* found
        cdef str level
        if self._has(filter_):
            return False
        node = self._root
        node.count += 1
        for level in filter_.split("/"):
            if level == "+":
                child = node.plus
                if child is None:
                    child = node.plus = _new_node(node.depth + 1)
            elif level == "#":
                child = node.pound
                if child is None:
                    child = node.pound = _new_node(node.depth + 1)
            else:
                children = node.children
                if children is None:
                    children = node.children = {}
                found = PyDict_GetItem(children, level)
                if found is NULL:
                    child = _new_node(node.depth + 1)
                    children[level] = child
                else:
                    child = <_Node>found
            child.count += 1
            node = child
        node.filter = filter_
        return True

    def delete(self, topic_filter) -> bool:
        """Remove ``topic_filter``; True if it was stored. Prunes the nodes it leaves empty."""
        cdef str filter_ = _exact_str(topic_filter, "topic filter")
        cdef _Node node, child
        cdef dict children
        cdef str level
        if not self._has(filter_):
            return False
        node = self._root
        node.count -= 1
        for level in filter_.split("/"):
            if level == "+":
                child = node.plus
                child.count -= 1
                if child.count == 0:
                    node.plus = None
                    _free_branch(child)
                    return True
            elif level == "#":
                child = node.pound
                child.count -= 1
                if child.count == 0:
                    node.pound = None
                    _free_branch(child)
                    return True
            else:
                children = node.children
                child = <_Node>children[level]
                child.count -= 1
                if child.count == 0:
                    del children[level]
                    if not children:
                        node.children = None
                    _free_branch(child)
                    return True
            node = child
        node.filter = None
        return True

    def match(self, topic) -> list:
        """Every stored filter matching the topic name ``topic``, each once, in no set order."""
        cdef list out = []
        self._match(_exact_str(topic, "topic"), out)
        return out

    def lookup(self, topic, table) -> list:
        """``table``'s value for every stored filter matching ``topic`` (KeyError if one has
        none), then ``table``'s value for ``topic`` itself if it has one that is not None:
        the router's routes, its wildcard filters here and its exact ones in ``table``."""
        cdef str name = _exact_str(topic, "topic")
        cdef list out = []
        cdef Py_ssize_t i
        cdef PyObject* value
        if type(table) is not dict:  # (a subclass's __missing__ would not be asked)
            raise TypeError(f"table must be dict, not {type(table).__name__}")
        self._match(name, out)
        # The filters become their values only after the walk: a lookup in a dict with
        # keys of other types could run Python code, which the walk must not.
        for i in range(len(out)):
            value = PyDict_GetItem(table, out[i])
            if value is NULL:
                raise KeyError(out[i])
            out[i] = <object>value
        value = PyDict_GetItem(table, name)
        if value is not NULL and <object>value is not None:
            PyList_Append(out, <object>value)
        return out

    cdef int _match(self, str name, list out) except -1:
        """Append every stored filter matching the topic name ``name`` to ``out``."""
        cdef list levels = name.split("/")
        cdef Py_ssize_t n = len(levels)
        cdef Py_ssize_t d
        cdef _Node root = self._root
        cdef _Node node
        cdef _Node pound
        cdef PyObject* found
        cdef _Stack stack
        _stack_init(&stack)
        try:
            # [MQTT-4.7.2-1]: a filter starting with a wildcard never matches a $-topic.
            if not name.startswith("$"):
                if root.pound is not None:
                    _collect(root.pound, out)
                if root.plus is not None:
                    _push(&stack, <PyObject*>root.plus)
            if root.children is not None:
                found = PyDict_GetItem(root.children, levels[0])
                if found is not NULL:
                    _push(&stack, found)
            # Every node on the stack has consumed ``depth`` levels of the name.
            while stack.size:
                stack.size -= 1
                node = <_Node>stack.items[stack.size]
                pound = node.pound
                if pound is not None:  # "x/#" also matches "x" itself
                    if pound.children is None and pound.plus is None and pound.pound is None:
                        PyList_Append(out, pound.filter)
                    else:
                        _collect(pound, out)
                d = node.depth
                if d == n:
                    if node.filter is not None:
                        PyList_Append(out, node.filter)
                    continue
                if node.children is not None:
                    found = PyDict_GetItem(node.children, levels[d])
                    if found is not NULL:
                        _push(&stack, found)
                if node.plus is not None:
                    _push(&stack, <PyObject*>node.plus)
        finally:
            _stack_release(&stack)
        return 0

    def __len__(self):
        return self._root.count

    def __contains__(self, topic_filter):
        if not isinstance(topic_filter, str):
            return False
        return self._has(_exact_str(topic_filter, "topic filter"))

    def filters(self):
        """The stored filters, in no set order (collected when called)."""
        cdef list out = []
        _collect(self._root, out)
        return iter(out)

    def _node_count(self):
        """Nodes below the root; 0 when empty. For tests: deletes must not leak nodes."""
        cdef Py_ssize_t count = -1
        cdef list stack = [self._root]
        cdef _Node node
        while stack:
            node = <_Node>stack.pop()
            count += 1
            if node.children is not None:
                stack.extend(node.children.values())
            if node.plus is not None:
                stack.append(node.plus)
            if node.pound is not None:
                stack.append(node.pound)
        return count
