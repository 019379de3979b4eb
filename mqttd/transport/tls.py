"""TLS for ``ssl`` and ``wss`` listeners: the server context, its checks, client identities.

The context is built from the listener's files at start, by ``mqttd config check``, and on
every reload (SIGHUP, ``mqttd ctl listeners reload``); a reload that fails keeps the old
context, so live and new clients never see a half-loaded chain. Every problem is reported
as ``listeners.NAME.key: what`` before anything listens.

The handshake itself is the standard library's ``ssl`` on the event loop's transport
(uvloop's), never Python-level record processing.
"""

from __future__ import annotations

import datetime
import ssl
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..config import Listener

__all__ = ["TlsError", "build_context", "cert_identity", "check_listener", "expiry"]

_VERSIONS = {"tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.3": ssl.TLSVersion.TLSv1_3}


class TlsError(Exception):
    """The listener's TLS files or options cannot make a context; ``errors`` lists each
    problem as ``listeners.NAME.key: what``."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _validity(pem: bytes, what: str, now: datetime.datetime) -> str | None:
    """Why the first certificate in ``pem`` cannot serve now (expired, not yet valid), or
    None. OpenSSL loads such a chain without a word; every client would then fail."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return f"not a PEM {what}"
    if cert.not_valid_after_utc < now:
        return f"the {what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if cert.not_valid_before_utc > now:
        return f"the {what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    return None


def _key_problem(pem: bytes, password: str) -> tuple[str, str] | None:
    """(key, what) when the key file cannot be used with this password, else None (OpenSSL
    says only "PEM lib" for most of these)."""
    try:
        serialization.load_pem_private_key(pem, password.encode() if password else None)
    except TypeError:
        if password:
            return "keyfile_password", "the key is not encrypted: remove keyfile_password"
        return "keyfile_password", "the key is encrypted: its password is needed"
    except ValueError:
        if password:
            return "keyfile", "wrong keyfile_password (or not a PEM private key)"
        return "keyfile", "not a PEM private key"
    except Exception as err:  # noqa: BLE001  (an unsupported key type, say)
        return "keyfile", f"unusable private key: {err}"
    return None


def build_context(lst: Listener) -> ssl.SSLContext:
    """The server context of a TLS listener; TlsError naming each problem."""
    path = f"listeners.{lst.name}."
    errors: list[str] = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    versions = sorted(_VERSIONS[v] for v in lst.tls_versions if v in _VERSIONS)
    if versions:
        ctx.minimum_version = versions[0]
        ctx.maximum_version = versions[-1]
    if lst.ciphers:
        try:
            ctx.set_ciphers(lst.ciphers)
        except ssl.SSLError:
            errors.append(f"{path}ciphers: OpenSSL knows none of {lst.ciphers!r}")
    now = datetime.datetime.now(datetime.UTC)
    try:
        pem = _read(lst.certfile)
    except OSError as err:
        errors.append(f"{path}certfile: cannot read {lst.certfile}: {err.strerror or err}")
    else:
        problem = _validity(pem, "certificate", now)
        if problem:
            errors.append(f"{path}certfile: {lst.certfile}: {problem}")
    try:
        key_pem = _read(lst.keyfile)
    except OSError as err:
        errors.append(f"{path}keyfile: cannot read {lst.keyfile}: {err.strerror or err}")
    else:
        key_problem = _key_problem(key_pem, lst.keyfile_password)
        if key_problem:
            errors.append(f"{path}{key_problem[0]}: {lst.keyfile}: {key_problem[1]}")
    if not errors:
        try:
            ctx.load_cert_chain(lst.certfile, lst.keyfile,
                                password=lst.keyfile_password or _no_password)
        except _PasswordNeeded:
            errors.append(f"{path}keyfile_password: {lst.keyfile} is encrypted: its password "
                          "is needed")
        except ssl.SSLError as err:
            errors.append(f"{path}keyfile: {_ssl_reason(err, lst)}")
    if lst.verify != "none":
        try:
            ctx.load_verify_locations(cafile=lst.cafile)
        except OSError as err:  # ssl.SSLError is an OSError too
            if isinstance(err, ssl.SSLError):
                errors.append(f"{path}cafile: {lst.cafile}: no PEM certificate in it "
                              f"({err.reason or err})")
            else:
                errors.append(f"{path}cafile: cannot read {lst.cafile}: "
                              f"{err.strerror or err}")
        ctx.verify_mode = ssl.CERT_REQUIRED if lst.verify == "required" else ssl.CERT_OPTIONAL
    if errors:
        raise TlsError(errors)
    # MQTT over TLS announces itself as "mqtt" (IANA); a WebSocket client speaks HTTP/1.1.
    # A client offering neither still connects (no ALPN agreed).
    ctx.set_alpn_protocols(["http/1.1"] if lst.type == "wss" else ["mqtt"])
    return ctx


class _PasswordNeeded(Exception):
    pass


def _no_password() -> str:
    """Asked only for an encrypted key with no password configured (never a prompt)."""
    raise _PasswordNeeded


def _ssl_reason(err: ssl.SSLError, lst: Listener) -> str:
    reason = (err.reason or "").upper()
    if "KEY_VALUES_MISMATCH" in reason:
        return f"{lst.keyfile} is not the key of the certificate in {lst.certfile}"
    if "BAD_DECRYPT" in reason or "DECRYPT" in reason:
        return f"{lst.keyfile}: wrong keyfile_password"
    if "NO_START_LINE" in reason or "PEM" in reason:
        return f"{lst.keyfile} or {lst.certfile}: not PEM (or not a key and a certificate)"
    return f"{lst.keyfile}: {err.reason or err}"


def expiry(certfile: str) -> datetime.datetime | None:
    """When the (first) certificate in ``certfile`` expires; None if it cannot be read."""
    try:
        return x509.load_pem_x509_certificate(_read(certfile)).not_valid_after_utc
    except (OSError, ValueError):
        return None


def check_listener(lst: Listener) -> list[str]:
    """Every problem of a listener's TLS files (empty for a good one or a non-TLS one)."""
    if lst.type not in ("ssl", "wss"):
        return []
    try:
        build_context(lst)
    except TlsError as err:
        return err.errors
    return []


def cert_identity(peercert: dict[str, Any] | None, how: str) -> str | None:
    """The name ``how`` ("cn", "dn", "san") takes from a verified client certificate (the
    dict ``SSLObject.getpeercert()`` gives), or None without one."""
    if not peercert:
        return None
    if how == "san":
        for kind, value in peercert.get("subjectAltName", ()):
            if kind in ("DNS", "email", "URI"):
                return str(value)
        return None
    rdns = peercert.get("subject", ())
    if how == "cn":
        for rdn in rdns:
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
        return None
    # "dn": RFC 4514 order (most specific first), as EMQX and mosquitto print it
    parts = []
    for rdn in reversed(rdns):
        parts.append("+".join(f"{_SHORT.get(k, k)}={_escape(v)}" for k, v in rdn))
    return ",".join(parts) or None


_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
          "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L",
          "emailAddress": "emailAddress", "domainComponent": "DC", "serialNumber": "serialNumber"}


def _escape(value: str) -> str:
    out = []
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;' or (ch == "#" and i == 0) or (ch == " " and i in (0, len(value) - 1)):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)
