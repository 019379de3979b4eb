"""The built-in user table (EMQX's built-in database authentication): users kept in the
durable store, managed with ``mqttd ctl users``, checked by the ``builtin`` provider.

Passwords are kept as mosquitto's ``$7$`` PBKDF2-SHA512 hashes (``password_file.py``), so a
user can be moved between the table and a password file as one line. The table lives in
memory (the provider reads it from the hashing threads; a change swaps one dict entry,
atomic under the GIL) and every change goes to the store through ``persist`` before the
operator is told it is done.

Verdicts as the password file's: a listed user with the right password is allowed (with
``is_superuser`` if set), with a wrong or no password denied (0x86); a client with no user
name or one the table does not list is ignored, so the next provider decides.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from ..config import AccessSpec
from ..core.services import AuthResult, ClientInfo
from ..mqtt.reasons import ReasonCode as RC
from .authn import AccessError, register_provider
from .password_file import (
    _PBKDF2,
    DEFAULT_ITERATIONS,
    HASH_BYTES,
    SALT_BYTES,
    PasswordHash,
    hash_password,
    parse_hash,
    verify_many,
)

log = logging.getLogger("mqttd.access")

__all__ = ["BuiltinUsers", "UserTable"]

#: What a user name may be: what MQTT carries (a UTF-8 string), but no control characters
#: and not empty, so that tables and logs show it as it is.
MAX_USERNAME = 65535


class UserTable:
    """username -> (password hash, superuser), kept in the store by ``persist``."""

    def __init__(self, users: dict[str, tuple[str, bool]] | None = None,
                 persist: Callable[[str, PasswordHash | None, bool], None] | None = None
                 ) -> None:
        self._users: dict[str, tuple[PasswordHash, bool]] = {}
        for name, (text, superuser) in (users or {}).items():
            try:
                self._users[name] = (parse_hash(text), superuser)
            except ValueError as err:  # a row this code cannot read: said, skipped
                log.warning("built-in user %r skipped: %s", name, err)
        #: Called with (username, hash, superuser) after a change, hash None: deleted.
        self.persist = persist
        #: Called with the user name after a change (the chain forgets cached verdicts).
        self.on_change: Callable[[str], None] | None = None

    def __len__(self) -> int:
        return len(self._users)

    def get(self, username: str) -> tuple[PasswordHash, bool] | None:
        return self._users.get(username)

    def names(self) -> list[str]:
        return sorted(self._users)

    def put(self, username: str, password_hash: PasswordHash, superuser: bool) -> None:
        check_username(username)
        self._users[username] = (password_hash, superuser)
        if self.on_change is not None:
            self.on_change(username)
        if self.persist is not None:
            self.persist(username, password_hash, superuser)

    def delete(self, username: str) -> bool:
        if self._users.pop(username, None) is None:
            return False
        if self.on_change is not None:
            self.on_change(username)
        if self.persist is not None:
            self.persist(username, None, False)
        return True

    @staticmethod
    def hash(password: bytes, iterations: int = DEFAULT_ITERATIONS) -> PasswordHash:
        """A new ``$7$`` hash (slow on purpose: call it off the event loop)."""
        return hash_password(password, iterations)


def check_username(username: str) -> None:
    """AccessError if ``username`` cannot be a user of the table."""
    if not username or len(username.encode("utf-8")) > MAX_USERNAME:
        raise AccessError([f"user name {username!r}: must be 1 to {MAX_USERNAME} bytes"])
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in username):
        raise AccessError([f"user name {username!r}: control characters are not allowed"])


class BuiltinUsers:
    """The ``builtin`` provider: checks clients against the node's :class:`UserTable`
    (attached when the chains are built; the table needs the store)."""

    kind = "blocking"  # PBKDF2 runs in the chain's hashing threads

    def __init__(self) -> None:
        self.description = "builtin (the store's user table)"
        self.table: UserTable | None = None
        self._decoy = PasswordHash(_PBKDF2, DEFAULT_ITERATIONS, os.urandom(SALT_BYTES),
                                   os.urandom(HASH_BYTES))

    def check(self, client: ClientInfo, password: bytes | None) -> AuthResult | None:
        return self.check_many([client], [password])[0]

    def check_many(self, clients: list[ClientInfo], passwords: list[bytes | None]
                   ) -> list[AuthResult | None]:
        """``check`` of each client, their hashes side by side (the hashing threads hand
        over the checks queued together)."""
        table = self.table
        results: list[AuthResult | None] = []
        hashed: list[tuple[int, PasswordHash, bytes, tuple[PasswordHash, bool] | None]] = []
        for k, (client, password) in enumerate(zip(clients, passwords, strict=True)):
            username = client.username
            entry = None if username is None or table is None else table.get(username)
            results.append(None)
            if username is None or table is None:
                continue
            if entry is None:
                if password is not None:  # a refusal costs what a check costs
                    hashed.append((k, self._decoy, password, None))
            elif password is None:
                results[k] = AuthResult(RC.BAD_USER_NAME_OR_PASSWORD, reason="no password")
            else:
                hashed.append((k, entry[0], password, entry))
        oks = verify_many([job[1] for job in hashed], [job[2] for job in hashed])
        for (k, _, _, entry), ok in zip(hashed, oks, strict=True):
            if entry is None:
                continue  # the decoy's: ignored
            results[k] = AuthResult(superuser=entry[1], credential=(self, entry)) if ok \
                else AuthResult(RC.BAD_USER_NAME_OR_PASSWORD, reason="wrong password")
        return results

    def entry(self, username: str) -> object:
        """The user's entry now (hash and superuser flag): a client that proved itself
        against another one is disconnected after ``users passwd`` / ``users del``."""
        return self.table.get(username) if self.table is not None else None

    def reload(self) -> None:
        pass  # the table changes live (mqttd ctl users)

    def close(self) -> None:
        pass


def _build(spec: AccessSpec) -> BuiltinUsers:
    if spec.options:
        raise AccessError([f"{spec.path}.{key}: unknown option (builtin takes none: its "
                           "users are managed with `mqttd ctl users`)"
                           for key in spec.options])
    return BuiltinUsers()


register_provider("builtin", _build)
