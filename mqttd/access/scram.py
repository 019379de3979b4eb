"""SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) as MQTT 5 enhanced authentication
(``type = "scram"``).

The client names the mechanism as the CONNECT's Authentication Method and sends its
client-first message as the Authentication Data; the server answers AUTH 0x18 with its
server-first message (salt, iteration count, nonce), the client AUTH 0x18 with its proof
(client-final), and the server CONNACK 0x00 with its own signature (server-final), which
proves to the client that the server knows the user's keys too. A connected client may
start again at any time with AUTH 0x19 (re-authentication). The channel drives the packets
(``core/channel.py``); this module holds the mechanism, through the ``scramp`` library.

The server keeps no password, only what RFC 5802 calls the stored key and the server key
(PBKDF2 of the password at the user's salt and iteration count, then HMAC/hash), so its side
of an exchange is a few HMACs: it runs on the event loop. The PBKDF2 is the client's work
(and ``mqttd scram-passwd``'s, once per user).

The credentials file has one line per user and mechanism::

    user:SCRAM-SHA-256:<iterations>:<base64 salt>:<base64 stored key>:<base64 server key>

Lines starting with ``#`` and blank lines are skipped; anything else that is not such a line
stops the start with ``FILE:LINE: what``. A plain CONNECT (no Authentication Method) is not
this provider's business: it ignores it, so password providers or ``allow_anonymous``
decide. A user the file does not list gets a server-first message with a decoy salt and
fails at the proof, exactly as a wrong password does (0x86), so the exchange does not say
which user names exist (RFC 5802 §5.1).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import stat
from dataclasses import dataclass
from typing import Final

from scramp import ScramException, ScramMechanism
from scramp.core import ScramServer
from scramp.utils import ServerError, saslprep

from ..config import AccessSpec
from ..core.services import AuthResult, AuthStep, ClientInfo, EnhancedAuth
from ..mqtt.reasons import ReasonCode as RC
from .authn import AccessError, register_provider
from .lines import read_lines

log = logging.getLogger("mqttd.access")

__all__ = ["DEFAULT_ITERATIONS", "MECHANISMS", "ScramCredentials", "ScramFile", "make_credentials",
           "parse_line", "read_scram_file"]

#: Mechanism -> digest size in bytes (the stored and server keys' length).
MECHANISMS: Final = {"SCRAM-SHA-256": 32, "SCRAM-SHA-512": 64}
#: Iterations ``mqttd scram-passwd`` uses unless told (OWASP's figure for PBKDF2-HMAC-SHA256
#: is higher; SCRAM clients do this work at every connection, so it is a compromise).
DEFAULT_ITERATIONS = 10_000
#: What ``scramp`` accepts (RFC 7677 recommends at least 4096; its cap guards against DoS).
MIN_ITERATIONS, MAX_ITERATIONS = 4096, 10_000_000
#: Salt sizes: ``scramp`` refuses salts under 12 bytes; ``mqttd scram-passwd`` makes 16.
MIN_SALT_BYTES, SALT_BYTES = 12, 16


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    """What the server keeps of one user's password for one mechanism."""

    mechanism: str
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def encode(self, user: str) -> str:
        """The file line for ``user`` (no newline)."""
        b64 = base64.b64encode
        return (f"{user}:{self.mechanism}:{self.iterations}:{b64(self.salt).decode()}:"
                f"{b64(self.stored_key).decode()}:{b64(self.server_key).decode()}")


def make_credentials(password: str, mechanism: str = "SCRAM-SHA-256",
                     iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
                     ) -> ScramCredentials:
    """Stored and server keys for ``password`` (PBKDF2: slow by design; not for the loop).
    ValueError when the mechanism, the iteration count or the password is refused."""
    if mechanism not in MECHANISMS:
        raise ValueError(f"unknown mechanism {mechanism!r} (known: {', '.join(MECHANISMS)})")
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"the iteration count must be {MIN_ITERATIONS} … {MAX_ITERATIONS}")
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    try:
        salt, stored, server, count = ScramMechanism(mechanism).make_auth_info(
            password, iteration_count=iterations, salt=salt)
    except ScramException as err:  # SASLprep refuses the password (control characters...)
        raise ValueError(f"the password cannot be used: {err.args[0]}") from None
    return ScramCredentials(mechanism, int(count), bytes(salt), bytes(stored), bytes(server))


def normalize_user(user: str) -> str:
    """The user name as SCRAM compares it (SASLprep, RFC 4013; ASCII names are unchanged);
    ValueError if SASLprep refuses it."""
    try:
        prepared = str(saslprep(user))
    except ScramException as err:
        raise ValueError(f"the user name cannot be used with SCRAM: {err.args[0]}") from None
    if not prepared:
        raise ValueError("empty user name")
    return prepared


def parse_line(line: str) -> tuple[str, ScramCredentials] | None:
    """``(user, credentials)`` of one line, None for a comment or blank line; ValueError
    saying what is wrong (never quoting the keys)."""
    text = line.rstrip("\r\n")
    if not text.strip() or text.startswith("#"):
        return None
    fields = text.rsplit(":", 5)  # base64 has no ':', so the user name may hold one
    if len(fields) != 6:
        raise ValueError("expected user:MECHANISM:ITERATIONS:SALT:STORED_KEY:SERVER_KEY")
    user, mechanism, iterations_text, salt_text, stored_text, server_text = fields
    user = normalize_user(user.strip(" \t"))
    size = MECHANISMS.get(mechanism)
    if size is None:
        raise ValueError(f"unknown mechanism {mechanism!r} (known: {', '.join(MECHANISMS)})")
    if not iterations_text.isascii() or not iterations_text.isdigit():
        raise ValueError("the iteration count is not a number")
    iterations = int(iterations_text)
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"the iteration count must be {MIN_ITERATIONS} … {MAX_ITERATIONS}")
    salt = _b64(salt_text, "salt")
    if len(salt) < MIN_SALT_BYTES:
        raise ValueError(f"the salt is {len(salt)} bytes, at least {MIN_SALT_BYTES} needed")
    stored, server = _b64(stored_text, "stored key"), _b64(server_text, "server key")
    for what, key in (("stored key", stored), ("server key", server)):
        if len(key) != size:
            raise ValueError(f"the {what} is {len(key)} bytes, not {size} ({mechanism})")
    return user, ScramCredentials(mechanism, iterations, salt, stored, server)


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"the {what} is not base64") from None


#: (user, mechanism) -> credentials.
Table = dict[tuple[str, str], ScramCredentials]


def read_scram_file(path: str) -> Table:
    """Every entry of the file; AccessError with one ``PATH:LINE: what`` per bad line (or
    ``PATH: cannot read ...``)."""
    table: Table = {}
    where: dict[tuple[str, str], int] = {}

    def take(number: int, line: str) -> None:
        entry = parse_line(line)
        if entry is None:
            return
        user, creds = entry
        key = (user, creds.mechanism)
        if key in table:
            raise ValueError(f"user {user!r} has {creds.mechanism} already on line "
                             f"{where[key]}")
        table[key] = creds
        where[key] = number

    read_lines(path, "SCRAM credentials file", take)
    return table


class ScramFile:
    """The provider: the credentials table (swapped whole on reload) and the exchanges."""

    kind = "sync"  # a plain CONNECT is ignored at once; exchanges are HMACs only
    methods: tuple[str, ...] = tuple(MECHANISMS)

    def __init__(self, path: str) -> None:
        self.path = path
        self.description = f"scram {path}"
        self._mechanisms = {name: ScramMechanism(name) for name in MECHANISMS}
        self._table = read_scram_file(path)
        self._decoy_iterations = _usual_iterations(self._table)
        self._decoy_key = os.urandom(32)
        self._warn_permissions()

    def check(self, client: ClientInfo, password: bytes | None) -> AuthResult | None:
        """A CONNECT without an Authentication Method: not ours to decide."""
        return None

    def exchange(self, method: str) -> EnhancedAuth:
        return ScramExchange(self, self._mechanisms[method])

    def lookup(self, user: str, mechanism: str
               ) -> tuple[bytes, bytes, bytes, int, bool]:
        """(salt, stored key, server key, iterations, known) of ``user``; for a user the
        file does not list, decoy keys no proof matches, with a salt that stays the same
        for the same name (as a real one would) and a usual iteration count."""
        creds = self._table.get((user, mechanism))
        if creds is not None:
            return creds.salt, creds.stored_key, creds.server_key, creds.iterations, True
        digest = hmac.new(self._decoy_key, f"{mechanism}\0{user}".encode(),
                          hashlib.sha256).digest()
        size = MECHANISMS[mechanism]
        iterations = self._decoy_iterations.get(mechanism, DEFAULT_ITERATIONS)
        return digest[:SALT_BYTES], os.urandom(size), os.urandom(size), iterations, False

    def reload(self) -> None:
        table = read_scram_file(self.path)  # AccessError: the old table stays
        self._table, self._decoy_iterations = table, _usual_iterations(table)
        log.info("%s: reloaded, %d SCRAM credentials", self.path, len(table))

    def close(self) -> None:
        pass

    def _warn_permissions(self) -> None:
        try:
            mode = os.stat(self.path).st_mode
        except OSError:
            return
        if mode & stat.S_IROTH:
            # The stored and server keys let anyone impersonate the server to clients (and
            # brute-force the passwords offline).
            log.warning("%s: the SCRAM credentials file is readable by every user of this "
                        "machine (chmod 600 it)", self.path)


class ScramExchange:
    """The server side of one SCRAM exchange: ``start`` takes the client-first message and
    answers the server-first; ``next`` takes the client-final and gives the verdict with the
    server-final. Any other order, or a malformed message, refuses the client."""

    __slots__ = ("_provider", "_mechanism", "_server", "_user", "_known", "_step")

    def __init__(self, provider: ScramFile, mechanism: ScramMechanism) -> None:
        self._provider = provider
        self._mechanism = mechanism
        self._server: ScramServer | None = None
        self._user: str | None = None
        self._known = False
        self._step = 0

    def start(self, client: ClientInfo, data: bytes | None) -> AuthStep:
        if self._step != 0:
            return _fail(RC.NOT_AUTHORIZED, "SCRAM: exchange already started")
        self._step = 1
        text = _text(data)
        if text is None:
            return _fail(RC.NOT_AUTHORIZED, "SCRAM: no client-first message (or not UTF-8)")
        name = self._mechanism.name

        def auth_fn(user: str) -> tuple[bytes, bytes, bytes, int]:
            self._user = user
            salt, stored, server, iterations, self._known = self._provider.lookup(user, name)
            return salt, stored, server, iterations

        server = self._mechanism.make_server(auth_fn)
        try:
            server.set_client_first(text)
            server_first = str(server.get_server_first())
        except ScramException as err:
            return _fail(RC.NOT_AUTHORIZED, f"SCRAM: bad client-first message: {err}")
        user = self._user
        if client.username is not None and client.username != user:
            # The CONNECT's User Name (or, re-authenticating, the identity the connection
            # has) must be the user SCRAM proves: authorization and hooks see that name.
            return _fail(RC.NOT_AUTHORIZED, f"SCRAM: user {user!r} is not the connection's "
                                            f"user name {client.username!r}")
        self._server = server
        return AuthStep(server_first.encode(), username=user)

    def next(self, data: bytes | None) -> AuthStep:
        server = self._server
        if self._step != 1 or server is None:
            return _fail(RC.NOT_AUTHORIZED, "SCRAM: message out of sequence")
        self._step = 2
        self._server = None
        text = _text(data)
        if text is None:
            return _fail(RC.NOT_AUTHORIZED, "SCRAM: no client-final message (or not UTF-8)")
        try:
            server.set_client_final(text)
            server_final = str(server.get_server_final())
        except ScramException as err:
            if err.server_error is ServerError.INVALID_PROOF:
                # A decoy's proof fails the same way: the client cannot tell the two apart.
                why = "wrong password for" if self._known else "unknown user"
                return _fail(RC.BAD_USER_NAME_OR_PASSWORD, f"SCRAM: {why} {self._user!r}")
            return _fail(RC.NOT_AUTHORIZED, f"SCRAM: bad client-final message: {err}")
        return AuthStep(server_final.encode(), AuthResult(), self._user)


def _usual_iterations(table: Table) -> dict[str, int]:
    """Per mechanism, the iteration count most entries use (what a decoy announces)."""
    counts: dict[str, dict[int, int]] = {}
    for (_, mechanism), creds in table.items():
        per = counts.setdefault(mechanism, {})
        per[creds.iterations] = per.get(creds.iterations, 0) + 1
    return {m: max(per, key=lambda i: per[i]) for m, per in counts.items()}


def _text(data: bytes | None) -> str | None:
    if not data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _fail(code: int, reason: str) -> AuthStep:
    return AuthStep(result=AuthResult(code, reason=reason))


def _build(spec: AccessSpec) -> ScramFile:
    options = dict(spec.options)
    path = options.pop("path", None)
    errors = [f"{spec.path}.{key}: unknown option (scram takes: path)" for key in options]
    if not isinstance(path, str) or not path:
        errors.append(f"{spec.path}.path: missing (the SCRAM credentials file to read)")
    if errors:
        raise AccessError(errors)
    assert isinstance(path, str)
    return ScramFile(path)


register_provider("scram", _build)
