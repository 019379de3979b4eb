"""Who may use the HTTP API: an API key (``Authorization: Bearer KEY``) or HTTP basic with a
superuser of the built-in user table; nobody else unless ``[http] allow_anonymous``.

A missing or wrong credential is 401 (with ``WWW-Authenticate``), a right one that may
not manage the node (a user of the table who is not a superuser: an MQTT device's
credentials must not kick clients) is 403. Basic passwords are PBKDF2 hashes, 0.2 s to
check: the check runs in a thread and a success is remembered for ``BASIC_CACHE_TTL``
seconds (keyed by a digest of the password, and forgotten when the user's hash changes),
so a dashboard polling every second costs no hashing. No credential is ever logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import time
from typing import TYPE_CHECKING

from ..access.users import UserTable
from ..mgmt.apikeys import ApiKeys
from .respond import ApiError

if TYPE_CHECKING:
    from ..config import HttpSettings
    from ..mgmt.api import Management

__all__ = ["BASIC_CACHE_TTL", "Authenticator"]

log = logging.getLogger("mqttd.http")

BASIC_CACHE_TTL = 60.0
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mqttd", Basic realm="mqttd", charset="UTF-8"'}


def _unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, _CHALLENGE)


class Authenticator:
    """Decides who a request comes from (``"apikey NAME"``, ``"user NAME"``,
    ``"anonymous"``) or refuses it."""

    def __init__(self, mgmt: Management, settings: HttpSettings, keys: ApiKeys) -> None:
        self.mgmt = mgmt
        self.settings = settings
        self.keys = keys
        #: (user, password digest) -> (the hash object it was checked against, until).
        self._basic: dict[tuple[str, bytes], tuple[object, float]] = {}

    async def identify(self, authorization: str | None, *, metrics: bool = False) -> str:
        settings = self.settings
        if not authorization:
            if settings.allow_anonymous or (metrics and settings.metrics_allow_anonymous):
                return "anonymous"
            raise _unauthorized("unauthorized", "credentials are needed: send "
                                "'Authorization: Bearer <API key>' (mqttd ctl apikey add "
                                "NAME) or HTTP basic with a superuser of the built-in "
                                "user table")
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        scheme = scheme.lower()
        if scheme == "bearer" and credentials:
            name = self.keys.check(credentials)
            if name is None:
                raise _unauthorized("bad_credentials", "unknown API key")
            return f"apikey {name}"
        if scheme == "basic" and credentials and settings.basic_auth:
            return await self._check_basic(credentials)
        raise _unauthorized("unauthorized", "unsupported Authorization header: use Bearer "
                            "<API key>" + (" or Basic" if settings.basic_auth else ""))

    async def _check_basic(self, credentials: str) -> str:
        try:
            text = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise _unauthorized("unauthorized", "Basic credentials are not base64 of "
                                "user:password") from None
        username, sep, password = text.partition(":")
        if not sep:
            raise _unauthorized("unauthorized", "Basic credentials are not user:password")
        access = self.mgmt.access()
        table = access.users if access is not None else None
        entry = table.get(username) if table is not None else None
        if entry is None:
            # As long as a real check, so a refusal does not tell which user names exist.
            await asyncio.to_thread(UserTable.hash, password.encode("utf-8"))
            raise _unauthorized("bad_credentials", "wrong user name or password")
        password_hash, superuser = entry
        secret = password.encode("utf-8")
        ck = (username, hashlib.sha256(secret).digest())
        now = time.monotonic()
        cached = self._basic.get(ck)
        if cached is None or cached[0] is not password_hash or cached[1] < now:
            ok = await asyncio.to_thread(password_hash.verify, secret)
            if not ok:
                self._basic.pop(ck, None)
                raise _unauthorized("bad_credentials", "wrong user name or password")
            if len(self._basic) > 1024:
                self._basic.clear()
            self._basic[ck] = (password_hash, now + BASIC_CACHE_TTL)
        if not superuser:
            raise ApiError(403, "forbidden", f"user {username} is not a superuser: only "
                                             "superusers may use the management API")
        return f"user {username}"

