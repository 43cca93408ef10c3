"""``cipherfed ca``: the consortium admin's certificate authority."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from crypto import pki
from crypto.errors import CryptoError


def register(sub: Any) -> None:
    ca = sub.add_parser("ca", help="consortium certificate authority (admin)")
    cmds = ca.add_subparsers(dest="ca_command", metavar="ACTION", required=True)

    init = cmds.add_parser("init", help="create the consortium root CA")
    init.add_argument("dir", type=Path)
    init.add_argument("--consortium", required=True, help="consortium name, written into every certificate")
    init.add_argument("--days", type=int, default=3650)
    init.set_defaults(handler=_init)

    issue = cmds.add_parser("issue", help="issue a key and certificate in one step (aggregator, admins)")
    issue.add_argument("dir", type=Path, help="CA directory")
    issue.add_argument("name")
    issue.add_argument("--role", required=True, choices=pki.ROLES)
    issue.add_argument("--dns", action="append", default=[])
    issue.add_argument("--ip", action="append", default=[])
    issue.add_argument("--days", type=int, default=365)
    issue.add_argument("--out", type=Path, help="output directory (default: DIR/issued)")
    issue.set_defaults(handler=_issue)

    sign = cmds.add_parser("sign", help="sign a node's CSR; the certificate is written next to the CSR")
    sign.add_argument("dir", type=Path, help="CA directory")
    sign.add_argument("csr", type=Path)
    sign.add_argument("--role", required=True, choices=pki.ROLES)
    sign.add_argument("--days", type=int, default=365)
    sign.add_argument("--dns", action="append", default=[])
    sign.add_argument("--ip", action="append", default=[])
    sign.set_defaults(handler=_sign)

    fingerprint = cmds.add_parser(
        "fingerprint", help="print a certificate's SHA-256 fingerprint (what policies pin), with its name and role"
    )
    fingerprint.add_argument("cert", type=Path, nargs="+", help="certificate file(s), e.g. admin/coordinator.crt")
    fingerprint.add_argument("--toml", action="store_true", help="print [[members]] entries for consortium-policy.toml")
    fingerprint.set_defaults(handler=_fingerprint)

    revoke = cmds.add_parser(
        "revoke", help="revoke a certificate by serial (hex); copy crl.pem to the aggregator's [tls].crl path"
    )
    revoke.add_argument("dir", type=Path, help="CA directory")
    revoke.add_argument("serial", help="serial number in hex, as printed by `ca issue`/`ca sign`")
    revoke.set_defaults(handler=_revoke)


def _init(args: argparse.Namespace) -> int:
    cert = pki.init_ca(args.dir, args.consortium, args.days)
    print(f"created consortium CA {args.consortium!r}: {cert} (key {args.dir / pki.CA_KEY}, mode 0600)")
    return 0


def _issue(args: argparse.Namespace) -> int:
    out = args.out or args.dir / "issued"
    cert_path, key_path = pki.issue(args.dir, args.name, args.role, out, args.dns, args.ip, args.days)
    serial = pki.load_certificate(cert_path).serial_number
    print(f"issued {args.role} certificate {cert_path} (serial {serial:x}); key {key_path} (0600)")
    return 0


def _sign(args: argparse.Namespace) -> int:
    cert_path = pki.sign_csr(args.dir, args.csr, args.role, args.days, args.dns, args.ip)
    serial = pki.load_certificate(cert_path).serial_number
    print(cert_path)
    print(f"signed {args.role} certificate (serial {serial:x}); send it back to the node")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    try:
        serial = int(args.serial, 16)
    except ValueError:
        raise ValueError(f"serial {args.serial!r} is not a hexadecimal number (see `ca issue` output)") from None
    crl = pki.revoke(args.dir, serial)
    print(f"revoked serial {args.serial}; revocation list {crl} updated")
    print(
        "copy it to the path in the aggregator's aggregator.toml [tls].crl (on the aggregator's machine); "
        "the aggregator reloads that file when it changes, no restart needed"
    )
    return 0


def _fingerprint(args: argparse.Namespace) -> int:
    for path in args.cert:
        cert = pki.load_certificate(path)
        name, fp = pki.common_name(cert), pki.certificate_fingerprint(cert)
        try:
            role = pki.certificate_role(cert)
        except CryptoError:
            role = "(none)"
        if args.toml:
            print(f'[[members]]\nname = "{name}"\nrole = "{role}"\ncert_fingerprint = "{fp}"\n')
        else:
            print(f"{fp}  {name}  role={role}  {path}")
    return 0
