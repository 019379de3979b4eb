"""The built-in user table (EMQX's ``emqx_ctl users``): list, add, change a password,
delete. Each change is answered once it is committed to the store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..access.authn import AccessError
from ..access.users import check_username
from .access import disconnect_revoked
from .errors import Conflict, Failed, InvalidArgument, NotFound, Unavailable
from .listing import Listing, Row

if TYPE_CHECKING:
    from ..access.build import Access
    from ..access.users import UserTable
    from ..core.registry import Registry
    from ..store.journal import Journal

log = logging.getLogger("mqttd.mgmt")

__all__ = ["Users"]

_NO_TABLE = ("there is no user table: it is kept in the store, and [store] durability is "
             "off (or the node has no data directory)")


class Users:
    def __init__(self, access: Callable[[], Access | None],
                 journal: Callable[[], Journal | None], registry: Registry) -> None:
        self._access = access
        self._journal = journal
        self.registry = registry

    def _table(self) -> UserTable:
        access = self._access()
        if access is None:
            raise Unavailable("the node has not started", "not_started")
        if access.users is None:
            raise Unavailable(_NO_TABLE, "durability_off")
        return access.users

    def all(self) -> Listing[str]:
        """Every user: name and superuser flag (never the hash)."""
        table = self._table()

        def row(name: str) -> Row:
            entry = table.get(name)
            return {"username": name, "is_superuser": bool(entry and entry[1])}

        return Listing(table.names(), row)

    async def add(self, username: str, password: str, *, superuser: bool = False,
                  by: str = "") -> Row:
        """A new user (Conflict if it exists)."""
        table = self._table()
        _check(username, password)
        if table.get(username) is not None:
            raise Conflict(f"user {username} exists (change its password with `users passwd`)",
                           "already_exists")
        await self._put(table, username, password, superuser, existed=False)
        log.info("user %s added%s%s", username, " (superuser)" if superuser else "",
                 f" by {by}" if by else "")
        return {"username": username, "is_superuser": superuser}

    async def passwd(self, username: str, password: str, *, by: str = "") -> Row:
        """A new password for a user (NotFound if there is none); its flag stays."""
        table = self._table()
        _check(username, password)
        entry = table.get(username)
        if entry is None:
            raise NotFound("user", username)
        await self._put(table, username, password, entry[1], existed=True)
        log.info("password of user %s changed%s", username, f" by {by}" if by else "")
        # As mosquitto on reload: connections made with the old password end.
        disconnect_revoked(self.registry, "its password was changed", username)
        return {"username": username, "is_superuser": entry[1]}

    async def delete(self, username: str, *, by: str = "") -> Row:
        table = self._table()
        if not table.delete(username):
            raise NotFound("user", username)
        await self._committed()
        log.info("user %s deleted%s", username, f" by {by}" if by else "")
        disconnect_revoked(self.registry, "its user was deleted", username)
        return {"username": username}

    async def _put(self, table: UserTable, username: str, password: str,
                   superuser: bool, *, existed: bool) -> None:
        # PBKDF2 with 210,000 iterations: ~0.2 s, off the event loop.
        password_hash = await asyncio.to_thread(table.hash, password.encode("utf-8"))
        self._unchanged(table, username, existed)
        table.put(username, password_hash, superuser)
        await self._committed()

    def _unchanged(self, table: UserTable, username: str, existed: bool) -> None:
        """After the hash (another command may have run meanwhile): the user still exists,
        or still does not, as when this command checked."""
        if (table.get(username) is not None) != existed:
            raise Conflict(f"user {username} was {'deleted' if existed else 'added'} by "
                           "another command meanwhile: nothing changed", "conflict")

    async def _committed(self) -> None:
        journal = self._journal()
        if journal is not None and not await journal.flush():
            raise Failed("the change is made but not yet on disk: the store does not "
                         f"answer ({journal.last_error or 'busy'})", "store_error")


def _check(username: str, password: str) -> None:
    try:
        check_username(username)
    except AccessError as err:
        raise InvalidArgument("; ".join(err.errors)) from None
    if not password:
        raise InvalidArgument("the password must not be empty")
