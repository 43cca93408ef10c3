"""A name belongs to one certificate at a time: the rule applied to every RPC.

The CA can issue several certificates with the same common name (a renewal, a mistake, an insider
at the CA). A name in a certificate is therefore not enough to be a member; the member *is* its
certificate (SHA-256 fingerprint).

* With a consortium policy, the policy lists every member with its role and certificate
  fingerprint: a caller must be listed, with that role and that certificate.
* Without a policy, the aggregator pins a name to the first certificate it sees for it (trust on
  first use), in its SQLite state, and refuses any other certificate for that name until the pinned
  one is revoked or expired; then the next certificate presented takes the name over (audited as
  ``identity_repinned``). Renewing a certificate therefore means revoking the old one
  (``cipherfed ca revoke SERIAL``) or letting it expire.

The aggregator's own certificate is always accepted (its health probe uses it).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

from aggregator.store import StateStore
from crypto import pki
from policies.schema import ConsortiumPolicy, PolicyFile

RecordHook = Callable[[str, pki.Identity, dict[str, object]], None]  # (event, identity, details)


class PinRefused(Exception):
    """The certificate may not speak for the name it carries."""


class IdentityPins:
    def __init__(
        self,
        store: StateStore,
        policy: ConsortiumPolicy | PolicyFile | None,
        own_fingerprint: str,
        revocation: pki.RevocationList,
        record: RecordHook,
    ) -> None:
        self._store = store
        self._policy = policy
        self._own = own_fingerprint
        self._revocation = revocation
        self._record = record
        self._lock = threading.Lock()
        self._pins: dict[str, tuple[str, int, float]] = store.identity_pins()  # name -> fingerprint, serial, until

    def check(self, ident: pki.Identity) -> None:
        """Raise PinRefused unless this certificate may act under its name and role."""
        if ident.fingerprint == self._own:
            return
        # A PolicyFile is re-read when its file changes: pinning follows the policy in force now.
        policy = self._policy.current() if isinstance(self._policy, PolicyFile) else self._policy
        if policy is not None:
            self._check_policy(policy, ident)
        else:
            self._check_pin(ident)

    def _check_policy(self, policy: ConsortiumPolicy, ident: pki.Identity) -> None:
        member = policy.member(ident.name)
        if member is None:
            raise PinRefused(f"{ident.name} is not a member of the consortium policy")
        if member.role != ident.role:
            raise PinRefused(f"{ident.name} is a {member.role} in the consortium policy, not a {ident.role}")
        if member.cert_fingerprint != ident.fingerprint:
            raise PinRefused(
                f"certificate {ident.fingerprint[:16]}... (serial {ident.serial:x}) is not the certificate the "
                f"consortium policy registers for {ident.name} ({member.cert_fingerprint[:16]}...)"
            )

    def _check_pin(self, ident: pki.Identity) -> None:
        with self._lock:
            pinned = self._pins.get(ident.name)
            if pinned is not None and pinned[0] == ident.fingerprint:
                return
            if pinned is not None and not self._released(pinned):
                fingerprint, serial, until = pinned
                raise PinRefused(
                    f"certificate {ident.fingerprint[:16]}... (serial {ident.serial:x}) carries the name "
                    f"{ident.name}, which is pinned to certificate {fingerprint[:16]}... (serial {serial:x}, "
                    f"valid until {dt.datetime.fromtimestamp(until, dt.UTC):%Y-%m-%d}); to replace it, revoke "
                    f"the old certificate (`cipherfed ca revoke {serial:x}`)"
                )
            until = ident.not_after.timestamp()
            self._store.pin_identity(ident.name, ident.fingerprint, ident.serial, until)
            self._pins[ident.name] = (ident.fingerprint, ident.serial, until)
        details: dict[str, object] = {"role": ident.role}
        if pinned is not None:
            details["replaces_fingerprint"], details["replaces_serial"] = pinned[0], f"{pinned[1]:x}"
        self._record("identity_repinned" if pinned is not None else "identity_pinned", ident, details)

    def _released(self, pinned: tuple[str, int, float]) -> bool:
        """A pin holds while its certificate is neither revoked nor expired."""
        _, serial, until = pinned
        return self._revocation.is_revoked(serial) or until < dt.datetime.now(dt.UTC).timestamp()
