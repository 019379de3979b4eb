"""JWT authentication (EMQX's ``emqx_authn_jwt``): the client presents a signed token as its
password (or user name); a valid signature and valid claims let it in, with what the token
grants (superuser, a client ACL).

Verification is PyJWT's (with ``cryptography`` for the public-key algorithms): one HMAC or
one RSA/ECDSA/EdDSA signature check, tens of microseconds, so the provider runs on the
event loop (``kind = "sync"``). The key is parsed once, when the provider is built. With
``jwks_url`` the keys come from a JSON Web Key Set served over HTTP(S) and are chosen by
the token's ``kid`` (:mod:`mqttd.access.jwks`); a key may have to be fetched first, so
the check is then a coroutine (``kind = "async"``).

What it answers:

* no token where it looks (``from``), or something that is not a JWT at all (not three
  base64url parts with a JSON header): **ignore**, as EMQX does, so a password file or
  another provider after it can still accept a plain password;
* a JWT signed with another key or an algorithm not allowed, expired (``exp``), not yet
  valid (``nbf``), missing or failing a ``verify_claims`` claim, or carrying a malformed
  ACL: **deny** with 0x86 (bad user name or password). EMQX ignores a token whose
  signature does not verify; mqttd refuses it, so a forged token is reported as such
  rather than falling through to ``allow_anonymous``. The refusal is logged at info with
  the reason, never the token;
* otherwise **allow**, superuser if ``superuser_claim`` names a claim that is true, with
  the rules of ``acl_claim`` (see :mod:`mqttd.access.client_acl`) as the client's ACL.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import ssl
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import jwt
import yarl
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from ..config import AccessSpec
from ..core.services import AuthResult, ClientInfo
from ..mqtt.reasons import ReasonCode as RC
from .authn import AccessError, register_provider
from .client_acl import AclError, parse_acl
from .jwks import JwksKeys
from .options import Options

log = logging.getLogger("mqttd.access")

__all__ = ["JwtProvider"]

_HMAC = {"HS256": 32, "HS384": 48, "HS512": 64}  # RFC 7518 3.2: key at least the hash size
_RSA = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_CURVES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
#: What a key from a JWKS may verify: public-key algorithms only.
_JWKS_ALGORITHMS = (*_RSA, "ES256", "ES384", "ES512", "EdDSA")
_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_VARS = ("clientid", "username")

#: exp and nbf are checked (when present), as EMQX checks them; iat is not (a clock a
#: second behind the issuer's would refuse fresh tokens), nor aud (verify_claims does it).
_DECODE_OPTIONS: Any = {"verify_iat": False, "verify_aud": False}

#: PyJWT's refusals, in words for the log (its messages are not shown: they are not ours
#: to vouch for never quoting the token).
_REASONS: list[tuple[type[Exception], str]] = [
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid (nbf)"),
    (jwt.InvalidSignatureError, "signature does not verify"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.DecodeError, "malformed token"),
]


class JwtProvider:
    """``type = "jwt"``: see the module's docstring and docs/ACCESS.md."""

    kind = "sync"
    #: The authorization chain must exist for the ACLs this provider attaches.
    attaches_acl: bool

    def __init__(self, spec: AccessSpec) -> None:
        opts = Options(spec)
        self.path = spec.path
        self.source = opts.string("from", "password", choices=("password", "username"))
        secret = opts.string("secret", None)
        base64_secret = opts.boolean("secret_base64_encoded", False)
        public_key = opts.string("public_key", None)
        self.key_file = opts.string("public_key_file", None)
        jwks_url = opts.string("jwks_url", None)
        given = [k for k, v in (("secret", secret), ("public_key", public_key),
                                ("public_key_file", self.key_file), ("jwks_url", jwks_url))
                 if v is not None]
        self.key: Any = None
        self.jwks: JwksKeys | None = None
        family: tuple[str, ...] = ()
        if len(given) != 1:
            opts.error("secret", "set exactly one of secret, public_key, public_key_file, "
                       "jwks_url" + (f" (got {', '.join(given)})" if given else ""))
        elif jwks_url is not None:
            self.jwks = _jwks(opts, jwks_url)
            family = _JWKS_ALGORITHMS
        elif secret is not None:
            self.key = _secret(opts, secret, base64_secret)
            family = tuple(_HMAC)
        else:
            pem, where = (public_key, "public_key") if public_key is not None else \
                _read(opts, self.key_file)
            if pem is not None:
                self.key, family = _public_key(opts, where, pem)
        # The default: HS256 for a secret (longer hashes want longer secrets), every
        # algorithm of the key's family for a public key.
        algorithms = opts.strings("algorithms", ["HS256"] if secret is not None
                                  else list(family) or ["RS256"])
        wrong = [a for a in algorithms if a not in family]
        if family and wrong:
            opts.error("algorithms", f"{wrong[0]} does not fit the key (possible: "
                       f"{', '.join(family)})")
        if isinstance(self.key, bytes):
            short = [a for a in algorithms if a in _HMAC and len(self.key) < _HMAC[a]]
            if short:
                opts.error("secret", f"{len(self.key)} bytes is too short for {short[-1]} "
                           f"(at least {_HMAC[short[-1]]}: RFC 7518 3.2)")
        self.algorithms = algorithms
        self.claims: list[tuple[str, str]] = []
        for name, expected in opts.table("verify_claims", {}).items():
            if not isinstance(expected, str):
                opts.error(f"verify_claims.{name}", "expected a string (placeholders: "
                           "${clientid}, ${username})")
                continue
            unknown = [v for v in _PLACEHOLDER.findall(expected) if v not in _VARS]
            if unknown:
                opts.error(f"verify_claims.{name}", f"unknown placeholder ${{{unknown[0]}}} "
                           "(known: ${clientid}, ${username})")
                continue
            self.claims.append((name, expected))
        self.acl_claim = opts.string("acl_claim", "acl", empty=True)
        self.superuser_claim = opts.string("superuser_claim", None)
        # EMQX's default: a client whose token expires is disconnected then.
        self.disconnect_after_expire = opts.boolean("disconnect_after_expire", True)
        for key in ("jwks_refresh", "jwks_min_interval", "jwks_timeout", "jwks_cafile"):
            if opts.has(key) and jwks_url is None:
                opts.error(key, "only with jwks_url")
        opts.done()
        self.attaches_acl = bool(self.acl_claim)
        # With a key set a key may have to be fetched first: the check is a coroutine.
        self.kind = "async" if self.jwks is not None else "sync"
        shown = self.key_file or (jwks_url if self.jwks is not None else None)
        self.description = f"jwt ({shown or ', '.join(self.algorithms)})"

    # --- the check ----------------------------------------------------------------------

    def check(self, client: ClientInfo, password: bytes | None
              ) -> AuthResult | None | Awaitable[AuthResult | None]:
        if self.jwks is not None:
            return self._check_jwks(self.jwks, client, password)
        token = self._token(client, password)
        if token is None:
            return None
        try:
            jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None  # not a JWT: another provider may know this password
        return self._verify(token, self.key, self.algorithms, client)

    async def _check_jwks(self, jwks: JwksKeys, client: ClientInfo, password: bytes | None
                          ) -> AuthResult | None:
        token = self._token(client, password)
        if token is None:
            return None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None  # not a JWT: another provider may know this password
        kid = header.get("kid")
        kid = kid if isinstance(kid, str) else None
        entry = jwks.pick(kid)
        if entry is None:
            # A key the set did not hold when last fetched: perhaps a new one (rotation).
            await jwks.fetch()
            entry = jwks.pick(kid)
            if entry is None:
                if not jwks.loaded:
                    return AuthResult(RC.SERVER_UNAVAILABLE,
                                      reason="jwt: no key set fetched from jwks_url yet")
                return _deny("no key with this kid in the key set" if kid is not None
                             else "the token names no kid (the key set holds several)")
        else:
            jwks.maybe_refresh()
        key, family = entry
        algorithms = [a for a in self.algorithms if a in family]
        if not algorithms:
            return _deny("algorithm not allowed")
        return self._verify(token, key, algorithms, client)

    def _verify(self, token: str, key: Any, algorithms: list[str], client: ClientInfo
                ) -> AuthResult:
        try:
            claims = jwt.decode(token, key, algorithms=algorithms,
                                options=_DECODE_OPTIONS)
        except jwt.PyJWTError as err:
            reason = next((r for cls, r in _REASONS if isinstance(err, cls)),
                          type(err).__name__)
            return _deny(reason)
        for name, template in self.claims:
            expected = _render(template, client)
            if name not in claims:
                return _deny(f"claim {name!r} missing")
            value = claims[name]
            if expected is None or not (value == expected or (
                    name == "aud" and isinstance(value, list) and expected in value)):
                return _deny(f"claim {name!r} does not match")
        superuser = False
        if self.superuser_claim is not None:
            flag = claims.get(self.superuser_claim)
            superuser = flag is True or flag == "true" or (type(flag) is int and flag == 1)
        acl = None
        exp = claims.get("exp")
        expires_at = float(exp) if self.disconnect_after_expire and isinstance(
            exp, (int, float)) and not isinstance(exp, bool) else None
        if self.acl_claim and self.acl_claim in claims:
            try:
                acl = parse_acl(claims[self.acl_claim], client.client_id, client.username,
                                float(exp) if isinstance(exp, (int, float)) else None)
            except AclError as err:
                return _deny(f"claim {self.acl_claim!r}: {err}")
        return AuthResult(0, superuser=superuser, acl=acl, expires_at=expires_at)

    def _token(self, client: ClientInfo, password: bytes | None) -> str | None:
        if self.source == "username":
            return client.username or None
        if not password:
            return None
        try:
            return password.decode("ascii")
        except UnicodeDecodeError:
            return None  # a JWT is ASCII: this is some other kind of password

    # --- lifecycle ----------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read ``public_key_file`` (a rotated key); the old key stays if the new one
        cannot be used. A key set is fetched again at the next check."""
        if self.jwks is not None:
            self.jwks.forget()
        if self.key_file is None:
            return
        opts = Options(AccessSpec("jwt", {}, self.path))
        pem, where = _read(opts, self.key_file)
        key, family = _public_key(opts, where, pem) if pem is not None else (None, ())
        wrong = [a for a in self.algorithms if a not in family]
        if key is not None and wrong:
            opts.error("public_key_file", f"the new key does not fit {wrong[0]}")
        if opts.errors:
            raise AccessError(opts.errors)
        self.key = key

    def close(self) -> Awaitable[None] | None:
        return self.jwks.close() if self.jwks is not None else None


def _jwks(opts: Options, url: str) -> JwksKeys | None:
    """The key set's options checked; None (with the errors in ``opts``) if bad."""
    ok = len(opts.errors)
    try:
        parsed = yarl.URL(url)
    except ValueError as err:
        opts.error("jwks_url", f"not a URL: {err}")
    else:
        if parsed.scheme not in ("http", "https") or not parsed.host:
            opts.error("jwks_url", "expected https://HOST[:PORT]/PATH or http://...")
        elif parsed.scheme == "http" and parsed.host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("jwt: jwks_url %s is plain http: anyone in the path can hand mqttd "
                        "keys (use https)", url)
    refresh = opts.seconds("jwks_refresh", 300.0, low=1.0, high=86400.0)
    min_interval = opts.seconds("jwks_min_interval", 10.0, low=0.1, high=3600.0)
    timeout = opts.seconds("jwks_timeout", 5.0, low=0.001, high=300.0)
    cafile = opts.string("jwks_cafile", None)
    if min_interval > refresh:
        opts.error("jwks_min_interval", f"{min_interval:g}s is longer than jwks_refresh "
                   f"({refresh:g}s)")
    context = None
    if cafile is not None:
        if not url.startswith("https://"):
            opts.error("jwks_cafile", "only for an https:// jwks_url")
        else:
            try:
                context = ssl.create_default_context(cafile=cafile)
            except (OSError, ssl.SSLError) as err:
                opts.error("jwks_cafile", f"cannot load {cafile}: "
                           f"{getattr(err, 'strerror', None) or err}")
    if len(opts.errors) > ok:
        return None
    return JwksKeys(url, refresh, min_interval, timeout, context)


def _deny(reason: str) -> AuthResult:
    return AuthResult(RC.BAD_USER_NAME_OR_PASSWORD, reason=f"jwt: {reason}")


def _render(template: str, client: ClientInfo) -> str | None:
    """A verify_claims value for this client; None if it names a user name and the client
    sent none."""
    missing = False

    def fill(m: re.Match[str]) -> str:
        nonlocal missing
        if m.group(1) == "clientid":
            return client.client_id
        if client.username is None:
            missing = True
            return ""
        return client.username

    out = _PLACEHOLDER.sub(fill, template)
    return None if missing else out


def _secret(opts: Options, secret: str, base64_encoded: bool) -> bytes | None:
    if not base64_encoded:
        return secret.encode()
    try:
        return base64.b64decode(secret, validate=True)
    except binascii.Error:
        opts.error("secret", "not valid base64 (secret_base64_encoded = true)")
        return None


def _read(opts: Options, path: str | None) -> tuple[str | None, str]:
    try:
        return Path(path or "").read_text(), "public_key_file"
    except (OSError, UnicodeDecodeError) as err:
        opts.error("public_key_file", f"{path}: {getattr(err, 'strerror', None) or err}")
        return None, "public_key_file"


def _public_key(opts: Options, where: str, pem: str) -> tuple[Any, tuple[str, ...]]:
    """The key object and the algorithms it can verify (a certificate gives its key)."""
    data = pem.encode()
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError:
        opts.error(where, "not a PEM public key or certificate")
        return None, ()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            opts.error(where, f"a {key.key_size}-bit RSA key is too weak (at least 2048)")
        return key, _RSA
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_CURVES.get(key.curve.name)
        if alg is None:
            opts.error(where, f"EC curve {key.curve.name} is not supported (P-256, P-384, "
                       "P-521)")
            return None, ()
        return key, (alg,)
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return key, ("EdDSA",)
    opts.error(where, f"unsupported key type {type(key).__name__}")
    return None, ()


register_provider("jwt", JwtProvider)
