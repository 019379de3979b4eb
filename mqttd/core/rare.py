"""Rarely set per-client fields, kept off the per-client objects until one is set.

Every idle client holds a Channel, a Connection and a Session; a slot costs 8 B on each
of them whether or not its field is ever used. Fields most clients never change (the
authentication details, a will's delay, a certificate's names, why a connection closed,
backpressure state) are declared as :class:`Rare` descriptors instead: they read as
their default until written, and the first write of a value other than the default
gives the object its own small dict (its ``_rare`` slot) for them. Reading one costs a
Python call, so a field read on every packet must stay a slot.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar, overload

__all__ = ["HasRare", "Rare"]

T = TypeVar("T")


class HasRare(Protocol):
    """An object with a ``_rare`` slot (None until a rare field is set)."""

    _rare: dict[str, object] | None


class Rare(Generic[T]):
    """A field stored in its owner's ``_rare`` dict, reading as ``default`` until set."""

    __slots__ = ("name", "default")

    def __init__(self, default: T) -> None:
        self.default = default
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Rare[T]: ...

    @overload
    def __get__(self, obj: HasRare, owner: type | None = None) -> T: ...

    def __get__(self, obj: HasRare | None, owner: type | None = None) -> T | Rare[T]:
        if obj is None:
            return self
        rare = obj._rare
        if rare is None:
            return self.default
        return rare.get(self.name, self.default)  # type: ignore[return-value]  # set as T

    def __set__(self, obj: HasRare, value: T) -> None:
        rare = obj._rare
        if rare is None:
            default = self.default
            # (Setting the default, as a CONNECT does for most of them, allocates nothing.)
            if value is default or (type(value) is type(default) and value == default):
                return
            obj._rare = {self.name: value}
        else:
            rare[self.name] = value
