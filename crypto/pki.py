"""Consortium PKI: a root CA, node certificates carrying a role, CSRs, verification, revocation.

A node's private key is generated on the node and never leaves it: the node sends a CSR, the
consortium admin signs it with a role, and sends the certificate back. Identity everywhere in
cipherfed is the certificate's common name, and authority is the role in the certificate's
cipherfed extension — never a field in a message.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crypto.errors import (
    ExpiredCertificateError,
    PKIError,
    RevokedCertificateError,
    UntrustedCertificateError,
    WrongRoleError,
)

ROLES = ("silo", "aggregator", "admin", "auditor")
# Private-arc OID of the cipherfed role extension; its value is the role name in UTF-8.
ROLE_OID = x509.ObjectIdentifier("1.3.6.1.4.1.59999.1.1")
CA_KEY = "ca.key"
CA_CERT = "ca.crt"
CRL_FILE = "crl.pem"
CA_META = "consortium.json"


@dataclass(frozen=True)
class Identity:
    """Who a verified certificate says its holder is."""

    name: str
    role: str
    serial: int
    fingerprint: str  # SHA-256 of the DER certificate, hex
    not_after: dt.datetime


def write_secret_file(path: Path, data: bytes) -> None:
    """Secret material on disk (private keys, HE secret exports): created 0600, never widened."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a PEM private key readable by its owner only."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_secret_file(path, pem)


def read_pki_file(path: Path | str, what: str) -> bytes:
    """A PKI file's bytes; a missing one is said plainly (which file, from where), never as a bare errno."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        where = "" if Path(path).is_absolute() else f" (looked in {Path.cwd()})"
        raise PKIError(
            f"{what} {path} does not exist{where}; run from the directory that holds it, or give its full path"
        ) from None
    except OSError as exc:
        raise PKIError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(read_pki_file(path, "private key"), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{path}: not an EC private key")
    return key


def load_certificate(path: Path | str) -> x509.Certificate:
    data = read_pki_file(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise PKIError(f"cannot read certificate {path}: {exc}") from None


def certificate_fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def certificate_role(cert: x509.Certificate) -> str:
    try:
        ext = cert.extensions.get_extension_for_oid(ROLE_OID)
    except x509.ExtensionNotFound:
        raise WrongRoleError("certificate carries no cipherfed role") from None
    value = ext.value
    assert isinstance(value, x509.UnrecognizedExtension)
    role = value.value.decode("utf-8", errors="replace")
    if role not in ROLES:
        raise WrongRoleError(f"certificate role {role!r} is not one of {ROLES}")
    return role


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise PKIError("certificate has no common name")
    return str(names[0].value)


def subject_alt_names(cert: x509.Certificate) -> list[str]:
    """The host names (DNS first, then IP addresses) a TLS client may verify this certificate against."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*sans.get_values_for_type(x509.DNSName), *(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def init_ca(directory: Path, consortium: str, days: int = 3650) -> Path:
    """Create the consortium root CA (ECDSA P-256) in ``directory``; refuses to overwrite one."""
    directory = Path(directory)
    if (directory / CA_KEY).exists():
        raise PKIError(f"{directory} already holds a CA; refusing to overwrite it")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, consortium),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{consortium} root CA"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    write_private_key(directory / CA_KEY, key)
    (directory / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / CA_META).write_text(json.dumps({"consortium": consortium, "revoked": []}, indent=2))
    _write_crl(directory, [])
    return directory / CA_CERT


def consortium_name(ca_dir: Path) -> str:
    return str(json.loads((Path(ca_dir) / CA_META).read_text())["consortium"])


def make_csr(name: str, directory: Path) -> tuple[Path, Path]:
    """Node side: create the node's private key (0600) and a CSR for the admin to sign."""
    directory = Path(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    key_path, csr_path = directory / f"{name}.key", directory / f"{name}.csr"
    write_private_key(key_path, key)
    csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return key_path, csr_path


def _sign_certificate(
    ca_dir: Path,
    name: str,
    public_key: ec.EllipticCurvePublicKey,
    role: str,
    dns: list[str],
    ips: list[str],
    days: int,
    not_before: dt.datetime | None = None,
) -> x509.Certificate:
    if role not in ROLES:
        raise WrongRoleError(f"role {role!r} is not one of {', '.join(ROLES)}")
    ca_dir = Path(ca_dir)
    ca_key = load_private_key(ca_dir / CA_KEY)
    ca_cert = load_certificate(ca_dir / CA_CERT)
    start = not_before or (_now() - dt.timedelta(minutes=5))
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if not sans:
        sans = [x509.DNSName(name)]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role == "aggregator":
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, consortium_name(ca_dir)),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.UnrecognizedExtension(ROLE_OID, role.encode()), critical=False)
    )
    return builder.sign(ca_key, hashes.SHA256())


def sign_csr(
    ca_dir: Path, csr_path: Path, role: str, days: int = 365, dns: list[str] | None = None, ips: list[str] | None = None
) -> Path:
    """Admin side: sign a node's CSR with a role; the certificate is written next to the CSR."""
    csr_path = Path(csr_path)
    data = read_pki_file(csr_path, "CSR")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise PKIError(f"cannot read CSR {csr_path}: {exc}") from None
    if not csr.is_signature_valid:
        raise PKIError(f"CSR {csr_path} has an invalid self-signature")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise PKIError("CSR key must be an EC P-256 key")
    name = str(csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    cert = _sign_certificate(ca_dir, name, public_key, role, dns or [], ips or [], days)
    cert_path = csr_path.with_suffix(".crt")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def issue(
    ca_dir: Path,
    name: str,
    role: str,
    out_dir: Path,
    dns: list[str] | None = None,
    ips: list[str] | None = None,
    days: int = 365,
    not_before: dt.datetime | None = None,
) -> tuple[Path, Path]:
    """Issue a key and certificate in one step (for the aggregator, admins, tests and the demo)."""
    out_dir = Path(out_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _sign_certificate(ca_dir, name, key.public_key(), role, dns or [], ips or [], days, not_before)
    key_path, cert_path = out_dir / f"{name}.key", out_dir / f"{name}.crt"
    write_private_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _next_crl_number(ca_dir: Path) -> int:
    """CRL numbers only grow, so a verifier can refuse a rolled-back (older) list."""
    meta_path = ca_dir / CA_META
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    number = int(meta.get("crl_number", 0)) + 1
    meta["crl_number"] = number
    meta_path.write_text(json.dumps(meta, indent=2))
    return number


def _write_crl(ca_dir: Path, serials: list[int], days: int = 30) -> None:
    ca_key = load_private_key(ca_dir / CA_KEY)
    ca_cert = load_certificate(ca_dir / CA_CERT)
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(_next_crl_number(ca_dir)), critical=False)
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    tmp = ca_dir / (CRL_FILE + ".tmp")
    tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    tmp.replace(ca_dir / CRL_FILE)


def revoke(ca_dir: Path, serial: int) -> Path:
    """Add a serial to the signed revocation list (atomically replaced; the aggregator reloads it)."""
    ca_dir = Path(ca_dir)
    meta = json.loads((ca_dir / CA_META).read_text())
    revoked = sorted(set(meta.get("revoked", [])) | {int(serial)})
    meta["revoked"] = revoked
    (ca_dir / CA_META).write_text(json.dumps(meta, indent=2))
    _write_crl(ca_dir, revoked)
    return ca_dir / CRL_FILE


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0  # lists written before CRL numbers: ordered by last_update alone


class RevocationList:
    """Revoked serials from a CRL signed by the CA, re-read when the file changes.

    Fails closed (UntrustedCertificateError, so nobody is trusted) when the list is past its
    next_update, and never goes back to an older list (lower CRL number or
    earlier last_update) than one it has loaded; with ``state_path`` that high-water mark survives
    restarts, so replacing the file with an old copy does not un-revoke anyone.
    """

    def __init__(self, crl_path: Path | None, ca_cert: x509.Certificate, state_path: Path | None = None) -> None:
        self._path = Path(crl_path) if crl_path else None
        self._ca_cert = ca_cert
        self._state_path = Path(state_path) if state_path else None
        self._mtime: float | None = None
        self._serials: frozenset[int] = frozenset()
        self._next_update: dt.datetime | None = None
        self._high: tuple[int, float] = self._read_state()

    def _read_state(self) -> tuple[int, float]:
        if self._state_path is None or not self._state_path.exists():
            return (0, 0.0)
        try:
            state = json.loads(self._state_path.read_text())
            return (int(state["crl_number"]), float(state["last_update"]))
        except (ValueError, KeyError, TypeError):
            raise UntrustedCertificateError(
                f"revocation state {self._state_path} is corrupted; restore it or remove it to accept the current CRL"
            ) from None

    def _write_state(self) -> None:
        if self._state_path is None:
            return
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"crl_number": self._high[0], "last_update": self._high[1]}))
        tmp.replace(self._state_path)

    def _load(self) -> None:
        assert self._path is not None
        try:
            crl = x509.load_pem_x509_crl(self._path.read_bytes())
        except ValueError as exc:
            raise UntrustedCertificateError(f"revocation list {self._path} cannot be read: {exc}") from None
        public_key = self._ca_cert.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        if not crl.is_signature_valid(public_key):
            raise UntrustedCertificateError(f"revocation list {self._path} is not signed by the consortium CA")
        order = (_crl_number(crl), crl.last_update_utc.timestamp())
        if order[0] < self._high[0] or order[1] < self._high[1]:
            raise UntrustedCertificateError(
                f"revocation list {self._path} (number {order[0]}, issued {crl.last_update_utc:%Y-%m-%d %H:%M}) is "
                f"older than one already loaded (number {self._high[0]}); refusing the rollback: install the "
                "current crl.pem from the consortium admin"
            )
        self._serials = frozenset(r.serial_number for r in crl)
        self._next_update = crl.next_update_utc
        if order != self._high:
            self._high = order
            self._write_state()

    def serials(self) -> frozenset[int]:
        if self._path is not None and self._path.exists():
            mtime = self._path.stat().st_mtime_ns
            if mtime != self._mtime:
                self._load()
                self._mtime = mtime
        if self._next_update is not None and _now() > self._next_update:
            raise UntrustedCertificateError(
                f"revocation list {self._path} expired at {self._next_update:%Y-%m-%d %H:%M} UTC (its next_update); "
                "refusing to trust certificates with a stale list: ask the consortium admin for a fresh crl.pem "
                "(any `cipherfed ca revoke` re-signs it)"
            )
        return self._serials

    def is_revoked(self, serial: int) -> bool:
        return serial in self.serials()


def verify_certificate(
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    *,
    roles: tuple[str, ...] | None = None,
    revocation: RevocationList | None = None,
    at: dt.datetime | None = None,
) -> Identity:
    """Chain (issued and signed by the CA), validity period, revocation and role, in that order."""
    if cert.issuer != ca_cert.subject:
        raise UntrustedCertificateError(f"certificate for {_cn_or_unknown(cert)} was not issued by the consortium CA")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, Exception) as exc:
        raise UntrustedCertificateError(
            f"certificate for {_cn_or_unknown(cert)} is not signed by the consortium CA: {exc}"
        ) from None
    now = at or _now()
    if now < cert.not_valid_before_utc or now > cert.not_valid_after_utc:
        raise ExpiredCertificateError(
            f"certificate for {_cn_or_unknown(cert)} is valid {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}; now is {now:%Y-%m-%d %H:%M} UTC"
        )
    if revocation is not None and revocation.is_revoked(cert.serial_number):
        raise RevokedCertificateError(f"certificate serial {cert.serial_number:x} ({_cn_or_unknown(cert)}) is revoked")
    role = certificate_role(cert)
    if roles is not None and role not in roles:
        raise WrongRoleError(f"{_cn_or_unknown(cert)} has role {role!r}; this needs {' or '.join(roles)}")
    return Identity(
        common_name(cert), role, cert.serial_number, certificate_fingerprint(cert), cert.not_valid_after_utc
    )


def _cn_or_unknown(cert: x509.Certificate) -> str:
    try:
        return common_name(cert)
    except PKIError:
        return "<no common name>"
