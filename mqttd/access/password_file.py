"""mosquitto's password file as an authentication provider (``type = "password_file"``).

One ``user:hash`` line per user, the format ``mosquitto_passwd`` writes, so one file serves
both brokers and operators keep their tools:

* ``$7$<iterations>$<salt>$<hash>``: PBKDF2-HMAC-SHA512 (mosquitto 2, and ``mqttd passwd``);
* ``$6$<salt>$<hash>``: one salted SHA-512 of password + salt (mosquitto 1.x).

Salt (12 bytes) and hash (64 bytes) are standard base64, as mosquitto requires. Lines
starting with ``#`` and blank lines are skipped; anything else that is not such a line stops
the start with ``FILE:LINE: what`` (mosquitto only warns and drops the line, which turns a
typo into a user who can no longer log in, or a plain-text password into a silent hole).

The verdicts, for the chain (``authn.py``): a user in the file with the right password is
allowed, with a wrong or no password denied (0x86); a client with no user name or one the
file does not list is ignored, so the next provider or ``allow_anonymous`` decides.
PBKDF2 is deliberately slow, so the provider is ``"blocking"``: the chain runs it in its
hashing threads (``kdf.pbkdf2_sha512`` releases the GIL while it hashes), not on the event
loop; unless the file's slowest hash is cheap (``inline_cost``: mosquitto_passwd 2.0's 101
rounds, ~34 µs compiled, ~57 µs through hashlib),
which the chain runs on the loop within a per-turn budget (two thread hand-offs cost more),
a turn's checks together (``check_many``: their hashes side by side, ~11 µs each).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import stat
import time
from dataclasses import dataclass
from typing import cast

from ..config import AccessSpec
from ..core.services import AuthResult, ClientInfo
from ..mqtt.reasons import ReasonCode as RC
from .authn import AccessError, register_provider
from .kdf import pbkdf2_sha512, pbkdf2_sha512_many
from .lines import read_lines

log = logging.getLogger("mqttd.access")

__all__ = ["DEFAULT_ITERATIONS", "PasswordFile", "PasswordHash", "hash_password",
           "parse_hash", "read_password_file", "verify_many"]

#: PBKDF2 iterations ``mqttd passwd`` uses unless told (mosquitto 2.1's default; OWASP's
#: figure for PBKDF2-HMAC-SHA512).
DEFAULT_ITERATIONS = 210_000
#: Sizes mosquitto insists on (it drops an entry whose salt or hash has another length).
SALT_BYTES = 12
HASH_BYTES = 64
#: Success answers kept for reuse at most (``PasswordFile._granted``).
GRANTED_MAX = 10_000
#: mosquitto reads the iteration count into a C int.
MAX_ITERATIONS = 2**31 - 1

_PBKDF2, _SHA512 = "7", "6"
#: Other crypt(3) scheme ids (MD5, bcrypt, SHA-256, yescrypt, argon2...), named in errors.
_CRYPT_IDS = frozenset({"1", "2", "2a", "2b", "2x", "2y", "5", "y", "gy", "argon2i",
                        "argon2d", "argon2id", "pbkdf2", "pbkdf2-sha256", "pbkdf2-sha512"})


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """One stored password: ``scheme`` "7" (PBKDF2-SHA512) or "6" (salted SHA-512)."""

    scheme: str
    iterations: int  # 0 for "6"
    salt: bytes
    digest: bytes

    def verify(self, password: bytes) -> bool:
        """Whether ``password`` is the one stored (compared in constant time)."""
        if self.scheme == _PBKDF2:
            digest = pbkdf2_sha512(password, self.salt, self.iterations)
        else:
            digest = hashlib.sha512(password + self.salt).digest()
        return hmac.compare_digest(digest, self.digest)

    def encode(self) -> str:
        """The text after ``user:`` in the file."""
        salt = base64.b64encode(self.salt).decode()
        digest = base64.b64encode(self.digest).decode()
        if self.scheme == _PBKDF2:
            return f"${_PBKDF2}${self.iterations}${salt}${digest}"
        return f"${_SHA512}${salt}${digest}"


class _Decoy(PasswordHash):
    """The hash an unknown user's password is checked against (``PasswordFile._lookup``),
    told apart by its class: a reload may replace the provider's decoy while a hashing
    thread checks against the old one."""

    __slots__ = ()


def verify_many(hashes: list[PasswordHash], passwords: list[bytes]) -> list[bool]:
    """``[h.verify(p) for h, p in zip(hashes, passwords)]``, the PBKDF2 ones of each
    iteration count computed side by side (``kdf.pbkdf2_sha512_many``)."""
    oks = [False] * len(hashes)
    rounds: dict[int, list[int]] = {}  # iteration count -> the hashes with it
    for k, h in enumerate(hashes):
        if h.scheme == _PBKDF2:
            rounds.setdefault(h.iterations, []).append(k)
        else:  # one salted SHA-512: nothing to gain from company
            oks[k] = h.verify(passwords[k])
    for iterations, ks in rounds.items():
        digests = pbkdf2_sha512_many([passwords[k] for k in ks], [hashes[k].salt for k in ks],
                                     iterations)
        for k, digest in zip(ks, digests, strict=True):
            oks[k] = hmac.compare_digest(digest, hashes[k].digest)
    return oks


#: Seconds one PBKDF2-SHA512 iteration takes here (measured once, on first use).
_per_iteration = 0.0


def _hash_cost(h: PasswordHash) -> float:
    """Estimated seconds to verify a password against ``h``: its iterations times one
    iteration's cost, measured on 200 iterations (a hash of the file itself could take
    100 ms); a salted SHA-512 (``$6$``) is one digest."""
    global _per_iteration
    if h.iterations == 0:
        return 2e-6
    if not _per_iteration:
        salt = os.urandom(SALT_BYTES)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            pbkdf2_sha512(b"cost", salt, 200)
            best = min(best, time.perf_counter() - t0)
        _per_iteration = best / 200
    return h.iterations * _per_iteration


def hash_password(password: bytes, iterations: int = DEFAULT_ITERATIONS,
                  salt: bytes | None = None) -> PasswordHash:
    """A new ``$7$`` entry for ``password`` with a fresh random salt."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    return PasswordHash(_PBKDF2, iterations, salt,
                        pbkdf2_sha512(password, salt, iterations))


def parse_hash(text: str) -> PasswordHash:
    """The hash field of one line; ValueError saying what is wrong with it.

    The messages never quote the field: a plain-text password written by mistake must not
    end up in a log.
    """
    if not text.startswith("$"):
        raise ValueError("not a password hash (plain text? `mqttd passwd -U FILE` hashes a "
                         "plain user:password file)")
    parts = text.split("$")
    scheme = parts[1]
    if scheme == _PBKDF2:
        if len(parts) != 5:
            raise ValueError("a $7$ hash is $7$ITERATIONS$SALT$HASH")
        iterations_text = parts[2]
        if not iterations_text.isascii() or not iterations_text.isdigit():
            raise ValueError("the iteration count of a $7$ hash is not a number")
        iterations = int(iterations_text)
        if not 1 <= iterations <= MAX_ITERATIONS:
            raise ValueError(f"the iteration count of a $7$ hash must be 1 … {MAX_ITERATIONS}")
        salt_text, digest_text = parts[3], parts[4]
    elif scheme == _SHA512:
        if len(parts) != 4:
            raise ValueError("a $6$ hash is $6$SALT$HASH")
        iterations = 0
        salt_text, digest_text = parts[2], parts[3]
    else:
        # Named only when it is a known crypt id: the field may be a plain password.
        named = f" ${scheme}$" if scheme in _CRYPT_IDS else ""
        raise ValueError(f"unknown hash format{named} (mqttd reads mosquitto's $7$ "
                         "PBKDF2-SHA512 and $6$ SHA-512)")
    salt = _b64(salt_text, "salt", SALT_BYTES)
    digest = _b64(digest_text, "hash", HASH_BYTES)
    return PasswordHash(scheme, iterations, salt, digest)


def _b64(text: str, what: str, size: int) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"the {what} is not base64") from None
    if len(raw) != size:
        raise ValueError(f"the {what} is {len(raw)} bytes, not {size}")
    return raw


def split_line(line: str) -> tuple[str, str] | None:
    """``(user, hash field)`` of one line (blanks around each trimmed, as mosquitto does),
    None for a comment or blank line; ValueError when it is neither."""
    text = line.rstrip("\r\n")
    if not text.strip() or text.startswith("#"):
        return None
    user, sep, rest = text.partition(":")
    if not sep:
        raise ValueError("expected user:hash (no ':' on the line)")
    user = user.strip(" \t")
    if not user:
        raise ValueError("empty user name")
    return user, rest.strip(" \t")


def read_password_file(path: str) -> dict[str, PasswordHash]:
    """Every user of the file; AccessError with one ``PATH:LINE: what`` per bad line (or
    ``PATH: cannot read: why``)."""
    users: dict[str, PasswordHash] = {}
    where: dict[str, int] = {}

    def take(number: int, line: str) -> None:
        entry = split_line(line)
        if entry is None:
            return
        user, field = entry
        if user in users:
            raise ValueError(f"user {user!r} is already on line {where[user]}")
        users[user] = parse_hash(field)
        where[user] = number

    read_lines(path, "password file", take)
    return users


class PasswordFile:
    """The provider: the file's table, swapped whole on reload (the hashing threads read
    it without a lock)."""

    kind = "blocking"

    def __init__(self, path: str) -> None:
        self.path = path
        self.description = f"password_file {path}"
        self._users = read_password_file(path)
        self._decoy = self._make_decoy(self._users)
        #: What one check costs at most (the file's slowest hash), estimated: the chain
        #: runs cheap checks on the loop (authn.INLINE_MAX), the rest in its threads.
        self.inline_cost = _hash_cost(self._decoy)
        #: The success answer per user, made once (AuthResult is frozen, so shared): a
        #: frozen dataclass's __init__ costs ~1 µs a CONNECT. Keyed by user name, used only
        #: if it names the user's entry now (a changed line gets a new answer).
        self._granted: dict[str, AuthResult] = {}
        self._warn_permissions()

    def check(self, client: ClientInfo, password: bytes | None) -> AuthResult | None:
        entry = self._lookup(client, password)
        if not isinstance(entry, PasswordHash):
            return entry
        assert password is not None  # (_lookup answered a check without one)
        return self._verdict(client, entry, entry.verify(password))

    def check_many(self, clients: list[ClientInfo], passwords: list[bytes | None]
                   ) -> list[AuthResult | None]:
        """``check`` of each client, the PBKDF2 hashes of those that need one computed side
        by side (``verify_many``): what the chain asks for the checks of one loop turn."""
        looked = [self._lookup(c, p) for c, p in zip(clients, passwords, strict=True)]
        hashed = [k for k, entry in enumerate(looked) if isinstance(entry, PasswordHash)]
        oks = verify_many([looked[k] for k in hashed],  # type: ignore[misc]  # PasswordHash
                          [passwords[k] for k in hashed])  # type: ignore[misc]  # not None
        results = cast("list[AuthResult | None]", looked)
        for k, ok in zip(hashed, oks, strict=True):
            results[k] = self._verdict(clients[k], looked[k], ok)  # type: ignore[arg-type]
        return results

    def _lookup(self, client: ClientInfo, password: bytes | None
                ) -> PasswordHash | AuthResult | None:
        """The hash ``password`` is to be checked against (the decoy's for a user the file
        does not list: its answer is ignored), or the answer when no hash is needed."""
        username = client.username
        if username is None:
            return None
        entry = self._users.get(username)
        if entry is None:
            # Cost what a listed user costs, so the time of a refusal does not say which
            # user names exist.
            return None if password is None else self._decoy
        if password is None:
            return AuthResult(RC.BAD_USER_NAME_OR_PASSWORD, reason="no password")
        return entry

    def _verdict(self, client: ClientInfo, entry: PasswordHash, ok: bool
                 ) -> AuthResult | None:
        if isinstance(entry, _Decoy):  # an unknown user: hashed only for the time it takes
            return None
        username = client.username
        assert username is not None  # (_lookup)
        # The one outward sign of a hash computed (the chain's cache skips this).
        log.debug("%s: hashed the password of %r ($%s$): %s", self.path, username,
                  entry.scheme, "match" if ok else "no match")
        if ok:
            granted = self._granted.get(username)
            if granted is None or granted.credential is None \
                    or granted.credential[1] is not entry:
                if len(self._granted) >= GRANTED_MAX:  # bounded whatever the file's size
                    self._granted.clear()
                granted = self._granted[username] = AuthResult(credential=(self, entry))
            return granted
        return AuthResult(RC.BAD_USER_NAME_OR_PASSWORD, reason="wrong password")

    def entry(self, username: str) -> object:
        """The user's line now (compared with the one a client proved itself against)."""
        return self._users.get(username)

    def reload(self) -> None:
        users = read_password_file(self.path)  # AccessError: the old table stays
        self._users, self._decoy = users, self._make_decoy(users)
        self._granted = {}
        self.inline_cost = _hash_cost(self._decoy)
        log.info("%s: reloaded, %d users", self.path, len(users))

    def close(self) -> None:
        pass

    @staticmethod
    def _make_decoy(users: dict[str, PasswordHash]) -> PasswordHash:
        """A hash no password matches, as slow as the file's slowest entry."""
        iterations = max((h.iterations for h in users.values()), default=0)
        if iterations == 0:  # no $7$ entries: only $6$ (or none), fast anyway
            return _Decoy(_SHA512, 0, os.urandom(SALT_BYTES), os.urandom(HASH_BYTES))
        return _Decoy(_PBKDF2, iterations, os.urandom(SALT_BYTES), os.urandom(HASH_BYTES))

    def _warn_permissions(self) -> None:
        try:
            mode = os.stat(self.path).st_mode
        except OSError:
            return
        if mode & stat.S_IROTH:
            log.warning("%s: the password file is readable by every user of this machine "
                        "(chmod 600 it)", self.path)


def _build(spec: AccessSpec) -> PasswordFile:
    options = dict(spec.options)
    path = options.pop("path", None)
    errors = [f"{spec.path}.{key}: unknown option (password_file takes: path)"
              for key in options]
    if not isinstance(path, str) or not path:
        errors.append(f"{spec.path}.path: missing (the password file to read)")
    if errors:
        raise AccessError(errors)
    assert isinstance(path, str)
    return PasswordFile(path)


register_provider("password_file", _build)
