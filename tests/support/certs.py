"""Real X.509 certificates for the TLS tests, made with ``cryptography`` in a directory.

:func:`make_pki` writes one small PKI as PEM files and returns a :class:`Pki` with their paths:

* ``ca_cert``/``ca_key``: the CA that signs the server and client certificates;
* ``server_cert``/``server_key``: the server's certificate for ``127.0.0.1`` (IP SAN) and
  ``localhost`` (DNS SAN), signed by the CA; ``server_chain`` is it followed by the CA;
* ``server_key_encrypted`` (PKCS#8, password ``server_key_password``): the same key, encrypted;
* ``other_ca_cert``/``other_ca_key``: an unrelated CA, for "wrong CA" cases; ``other_server_cert``
  /``other_server_key`` is a server certificate for the same names signed by it;
* ``expired_server_cert``/``expired_server_key``: signed by the CA, valid names, but expired;
* ``mismatched_key``: a key that belongs to no certificate here (pair it with ``server_cert``).

``pki.client(cn, san=None)`` makes a client certificate on demand and ``pki.renew_server()``
rewrites the server certificate (new key, new serial) at the same paths, for reload tests.

Keys are EC P-256: generating them takes milliseconds, so every test may have its own PKI.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Pki", "make_pki"]

_Key = ec.EllipticCurvePrivateKey

#: Validity of the certificates that are meant to be valid; starts a day back, so a clock a
#: little behind the one that signed is no problem.
_DAY = datetime.timedelta(days=1)
_VALID = datetime.timedelta(days=30)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> _Key:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mqttd tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: _Key, password: bytes | None = None) -> bytes:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password
        else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _write_key(path: Path, key: _Key, password: bytes | None = None) -> Path:
    path.write_bytes(_key_pem(key, password))
    path.chmod(0o600)
    return path


def _write_cert(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(_cert_pem(*certs))
    return path


def _ca(cn: str) -> tuple[x509.Certificate, _Key]:
    key = _new_key()
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY).not_valid_after(now + _VALID)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(ca: x509.Certificate, ca_key: _Key, cn: str, sans: list[x509.GeneralName],
          *, server: bool, key: _Key | None = None, expired: bool = False,
          ) -> tuple[x509.Certificate, _Key]:
    key = key or _new_key()
    now = _now()
    if expired:  # valid for a day that ended a day ago
        start, end = now - 2 * _DAY, now - _DAY
    else:
        start, end = now - _DAY, now + _VALID
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder()
               .subject_name(_name(cn)).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=True, content_commitment=False, key_encipherment=False,
                   data_encipherment=False, key_agreement=True, key_cert_sign=False,
                   crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _server_sans() -> list[x509.GeneralName]:
    return [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]


def _client_sans(san: str | list[str] | None) -> list[x509.GeneralName]:
    """``name@host`` is an e-mail SAN, an IP address an IP SAN, anything else a DNS SAN."""
    values = [san] if isinstance(san, str) else list(san or [])
    out: list[x509.GeneralName] = []
    for v in values:
        if "@" in v:
            out.append(x509.RFC822Name(v))
        else:
            try:
                out.append(x509.IPAddress(ipaddress.ip_address(v)))
            except ValueError:
                out.append(x509.DNSName(v))
    return out


def fingerprint(path: Path) -> str:
    """SHA-256 fingerprint (lowercase hex) of the first certificate in a PEM file."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex()


@dataclass
class Pki:
    """Paths of one PKI's PEM files (see the module's docstring) and makers of more."""

    dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    server_chain: Path
    server_key_encrypted: Path
    server_key_password: str
    other_ca_cert: Path
    other_ca_key: Path
    other_server_cert: Path
    other_server_key: Path
    expired_server_cert: Path
    expired_server_key: Path
    mismatched_key: Path
    #: Serial number of the server certificate now at ``server_cert``.
    server_serial: int = 0
    _keys: dict[str, _Key] = field(default_factory=dict, repr=False)
    _certs: dict[str, x509.Certificate] = field(default_factory=dict, repr=False)

    def client(self, cn: str, san: str | list[str] | None = None, *, other_ca: bool = False,
               expired: bool = False) -> tuple[Path, Path]:
        """A client certificate with common name ``cn`` (and SANs, see ``_client_sans``),
        signed by the CA (``other_ca``: by the unrelated one); returns ``(cert, key)`` paths.
        Several calls with the same ``cn`` write distinct files."""
        issuer = "other_ca" if other_ca else "ca"
        cert, key = _leaf(self._certs[issuer], self._keys[issuer], cn, _client_sans(san),
                          server=False, expired=expired)
        stem = f"client-{cert.serial_number:x}"
        return (_write_cert(self.dir / f"{stem}.pem", cert),
                _write_key(self.dir / f"{stem}.key", key))

    def renew_server(self) -> int:
        """Replace the server certificate and key (and chain and encrypted key) at the same
        paths with a new pair for the same names; returns the new certificate's serial."""
        # Written beside and renamed over, so a broker re-reading never sees half a file.
        cert, key = _leaf(self._certs["ca"], self._keys["ca"], "mqttd test server",
                          _server_sans(), server=True)
        password = self.server_key_password.encode()
        for path, data in (
            (self.server_key, _key_pem(key)),
            (self.server_key_encrypted, _key_pem(key, password)),
            (self.server_cert, _cert_pem(cert)),
            (self.server_chain, _cert_pem(cert, self._certs["ca"])),
        ):
            tmp = path.with_name(path.name + ".new")
            tmp.write_bytes(data)
            tmp.chmod(path.stat().st_mode & 0o777)
            tmp.replace(path)
        self.server_serial = cert.serial_number
        return cert.serial_number


def make_pki(directory: str | Path, *, password: str = "s3cret pass") -> Pki:
    """Write a fresh PKI into ``directory`` (created if missing) and return its paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("mqttd test CA")
    other, other_key = _ca("mqttd unrelated CA")
    srv, srv_key = _leaf(ca, ca_key, "mqttd test server", _server_sans(), server=True)
    osrv, osrv_key = _leaf(other, other_key, "mqttd test server", _server_sans(), server=True)
    exp, exp_key = _leaf(ca, ca_key, "mqttd test server", _server_sans(), server=True,
                         expired=True)
    return Pki(
        dir=d,
        ca_cert=_write_cert(d / "ca.pem", ca),
        ca_key=_write_key(d / "ca.key", ca_key),
        server_cert=_write_cert(d / "server.pem", srv),
        server_key=_write_key(d / "server.key", srv_key),
        server_chain=_write_cert(d / "server-chain.pem", srv, ca),
        server_key_encrypted=_write_key(d / "server-encrypted.key", srv_key, password.encode()),
        server_key_password=password,
        other_ca_cert=_write_cert(d / "other-ca.pem", other),
        other_ca_key=_write_key(d / "other-ca.key", other_key),
        other_server_cert=_write_cert(d / "other-server.pem", osrv),
        other_server_key=_write_key(d / "other-server.key", osrv_key),
        expired_server_cert=_write_cert(d / "expired-server.pem", exp),
        expired_server_key=_write_key(d / "expired-server.key", exp_key),
        mismatched_key=_write_key(d / "mismatched.key", _new_key()),
        server_serial=srv.serial_number,
        _keys={"ca": ca_key, "other_ca": other_key},
        _certs={"ca": ca, "other_ca": other},
    )
