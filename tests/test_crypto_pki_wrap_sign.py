import datetime as dt
import os
import stat

import pytest

from crypto import pki
from crypto.errors import (
    ExpiredCertificateError,
    RevokedCertificateError,
    SignatureError,
    UntrustedCertificateError,
    UnwrapError,
    WrongRoleError,
)
from crypto.signing import sign_digest, update_digest, verify_digest
from crypto.wrapping import unwrap_key, wrap_key


@pytest.fixture()
def ca(tmp_path):
    pki.init_ca(tmp_path / "ca", "Consortium")
    return tmp_path / "ca"


def test_ca_key_and_node_keys_are_0600(ca, tmp_path):
    assert stat.S_IMODE(os.stat(ca / "ca.key").st_mode) == 0o600
    key_path, csr_path = pki.make_csr("hospital-a", tmp_path)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    with pytest.raises(pki.PKIError, match="refusing to overwrite"):
        pki.init_ca(ca, "Other")


def test_csr_flow_role_is_carried_and_verified(ca, tmp_path):
    key_path, csr_path = pki.make_csr("hospital-a", tmp_path)
    cert_path = pki.sign_csr(ca, csr_path, "silo")
    assert cert_path == tmp_path / "hospital-a.crt"
    cert = pki.load_certificate(cert_path)
    ca_cert = pki.load_certificate(ca / "ca.crt")
    ident = pki.verify_certificate(cert, ca_cert, roles=("silo",))
    assert (ident.name, ident.role) == ("hospital-a", "silo")
    with pytest.raises(WrongRoleError, match="has role 'silo'"):
        pki.verify_certificate(cert, ca_cert, roles=("admin",))
    with pytest.raises(WrongRoleError):
        pki.sign_csr(ca, csr_path, "superuser")


def test_foreign_ca_expired_and_revoked_are_rejected(ca, tmp_path):
    pki.init_ca(tmp_path / "evil", "Evil")
    foreign, _ = pki.issue(tmp_path / "evil", "mallory", "silo", tmp_path / "m")
    ca_cert = pki.load_certificate(ca / "ca.crt")
    with pytest.raises(UntrustedCertificateError):
        pki.verify_certificate(pki.load_certificate(foreign), ca_cert)
    old, _ = pki.issue(
        ca, "old", "silo", tmp_path / "o", days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    )
    with pytest.raises(ExpiredCertificateError, match="valid"):
        pki.verify_certificate(pki.load_certificate(old), ca_cert)
    good, _ = pki.issue(ca, "good", "silo", tmp_path / "g")
    cert = pki.load_certificate(good)
    crl = pki.RevocationList(ca / "crl.pem", ca_cert)
    assert pki.verify_certificate(cert, ca_cert, revocation=crl).name == "good"
    pki.revoke(ca, cert.serial_number)
    with pytest.raises(RevokedCertificateError, match="revoked"):
        pki.verify_certificate(cert, ca_cert, revocation=crl)  # same object: reloads on change


def test_forged_crl_is_refused(ca, tmp_path):
    pki.init_ca(tmp_path / "evil", "Evil")
    ca_cert = pki.load_certificate(ca / "ca.crt")
    crl = pki.RevocationList(tmp_path / "evil" / "crl.pem", ca_cert)
    with pytest.raises(UntrustedCertificateError, match="not signed"):
        crl.serials()


def test_key_wrapping_round_trip_and_fail_closed(ca, tmp_path):
    a_cert, a_key = pki.issue(ca, "a", "silo", tmp_path / "a")
    b_cert, b_key = pki.issue(ca, "b", "silo", tmp_path / "b")
    ca_cert_a, ca_cert_b = pki.load_certificate(a_cert), pki.load_certificate(b_cert)
    secret = os.urandom(5000)
    blob = wrap_key(secret, ca_cert_a, consortium="C", job="j1", recipient="a")
    assert secret not in blob
    assert unwrap_key(blob, pki.load_private_key(a_key), ca_cert_a, consortium="C", job="j1", recipient="a") == secret
    with pytest.raises(UnwrapError):  # node B cannot open node A's blob
        unwrap_key(blob, pki.load_private_key(b_key), ca_cert_b, consortium="C", job="j1", recipient="b")
    with pytest.raises(UnwrapError):  # replayed into another job
        unwrap_key(blob, pki.load_private_key(a_key), ca_cert_a, consortium="C", job="j2", recipient="a")
    for pos in (3, 20, 100, len(blob) - 1):
        tampered = bytearray(blob)
        tampered[pos] ^= 0x01
        with pytest.raises(UnwrapError):
            unwrap_key(bytes(tampered), pki.load_private_key(a_key), ca_cert_a, consortium="C", job="j1", recipient="a")
    with pytest.raises(UnwrapError):
        unwrap_key(b"", pki.load_private_key(a_key), ca_cert_a, consortium="C", job="j1", recipient="a")


def test_update_signatures(ca, tmp_path):
    a_cert, a_key = pki.issue(ca, "a", "silo", tmp_path / "a")
    b_cert, _ = pki.issue(ca, "b", "silo", tmp_path / "b")
    digest = update_digest("job", 3, "fp", b"\x01" * 32, "head")
    sig = sign_digest(pki.load_private_key(a_key), digest)
    verify_digest(pki.load_certificate(a_cert), digest, sig)
    with pytest.raises(SignatureError):
        verify_digest(pki.load_certificate(b_cert), digest, sig)
    with pytest.raises(SignatureError):  # same upload replayed for another round
        verify_digest(pki.load_certificate(a_cert), update_digest("job", 4, "fp", b"\x01" * 32, "head"), sig)
