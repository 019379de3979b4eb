"""API keys for the HTTP management API (EMQX's API keys): add, delete, list, check.

Kept in ``<data_dir>/apikeys.json`` (0600), not in the store's user table: an API key must
work whatever ``[store] durability`` says (the user table exists only with a store), and
it is a credential of the management plane, not of MQTT clients. Only a SHA-256 digest of
each key is written: a key is 256 random bits, so a fast digest cannot be reversed or
guessed, and checking one costs microseconds on the event loop (a slow password hash such
as PBKDF2 protects low-entropy passwords, which a generated key is not).

The file is the truth: every :class:`ApiKeys` rereads it when its modification time or
size changes, so ``mqttd ctl apikey`` and the HTTP server agree without sharing an object.
A key itself is shown once, when it is made, and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from typing import Any

from .errors import Conflict, Failed, InvalidArgument, NotFound, Unavailable
from .listing import Listing, Row, iso, same

__all__ = ["FILE_NAME", "KEY_PREFIX", "ApiKeys"]

log = logging.getLogger("mqttd.mgmt")

FILE_NAME = "apikeys.json"
#: Every key starts so (a secret scanner, or a person, can tell what it is).
KEY_PREFIX = "mqttd_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class ApiKeys:
    """The API keys kept in ``data_dir`` (None: the node has no data directory)."""

    def __init__(self, data_dir: str | None) -> None:
        self.path = os.path.join(os.path.abspath(data_dir), FILE_NAME) if data_dir else None
        self._keys: dict[str, dict[str, Any]] = {}
        self._stamp: tuple[int, int] | None = None

    # --- reading ------------------------------------------------------------------------

    def _load(self) -> dict[str, dict[str, Any]]:
        """The keys as the file holds them now (reread only when it changed)."""
        if self.path is None:
            return {}
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._keys, self._stamp = {}, None
            return self._keys
        except OSError as err:
            raise Failed(f"cannot read {self.path}: {err.strerror or err}", "read_error") \
                from None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                with open(self.path, encoding="utf-8") as f:
                    data = json.load(f)
                if not isinstance(data, dict) or not all(
                        isinstance(v, dict) and isinstance(v.get("sha256"), str)
                        for v in data.values()):
                    raise ValueError("expected {name: {\"sha256\": ...}}")
            except (OSError, ValueError) as err:
                # Refuse every key rather than guess: the operator fixes or deletes the file.
                log.warning("API keys file %s cannot be read, no key is accepted: %s",
                            self.path, err)
                data = {}
            self._keys, self._stamp = data, stamp
        return self._keys

    def _save(self, keys: dict[str, dict[str, Any]]) -> None:
        assert self.path is not None
        tmp = self.path + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(keys, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)  # readers see the old file or the new one, whole
        except OSError as err:
            raise Failed(f"cannot write {self.path}: {err.strerror or err}",
                         "write_error") from None
        self._stamp = None  # reread (and so check) what was written

    def _writable(self) -> dict[str, dict[str, Any]]:
        if self.path is None:
            raise Unavailable("API keys are kept in the data directory, and this node has "
                              "none", "no_data_dir")
        return dict(self._load())

    # --- the operations -------------------------------------------------------------------

    def all(self) -> Listing[Row]:
        """Every key's name and when it was made (never the key or its digest)."""
        rows = [{"name": name, "created_at": entry.get("created_at"),
                 "created_by": entry.get("created_by")}
                for name, entry in sorted(self._load().items())]
        return Listing(rows, same)

    def add(self, name: str, *, by: str = "") -> Row:
        """A new key called ``name``: ``{"name", "key", "created_at"}``, the only time the
        key is shown. Conflict if the name is taken, InvalidArgument for a bad name."""
        if not _NAME.fullmatch(name):
            raise InvalidArgument(f"API key name {name!r}: use 1 to 64 letters, digits and "
                                  "_ . @ - (starting with a letter or digit)")
        keys = self._writable()
        if name in keys:
            raise Conflict(f"API key {name} exists (delete it first to replace it)",
                           "already_exists")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        created = iso(time.time())
        keys[name] = {"sha256": _digest(key), "created_at": created, "created_by": by or None}
        self._save(keys)
        log.info("API key %s added%s", name, f" by {by}" if by else "")
        return {"name": name, "key": key, "created_at": created}

    def delete(self, name: str, *, by: str = "") -> Row:
        """Remove a key (requests using it are refused from now on); NotFound("apikey")."""
        keys = self._writable()
        if keys.pop(name, None) is None:
            raise NotFound("API key", name)
        self._save(keys)
        log.info("API key %s deleted%s", name, f" by {by}" if by else "")
        return {"name": name, "deleted": True}

    def check(self, key: str) -> str | None:
        """The name of the key ``key`` is, or None."""
        digest = _digest(key)
        found = None
        for name, entry in self._load().items():
            # every entry compared, in constant time: no timing tells how close a guess is
            if hmac.compare_digest(digest, str(entry.get("sha256", ""))):
                found = name
        return found
