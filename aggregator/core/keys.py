"""Key material: who may store it under which scope, is it endorsed by the caller, and handing it out.

Silos never take the aggregator's word for a key (they verify the custodian's endorsement
themselves); these checks keep the relay from storing material nobody could use, and stop a
member from squatting a vertical job's scope before its active party publishes there.
"""

from __future__ import annotations

from cryptography import x509

from aggregator.core.errors import Forbidden, InvalidArgument, NotFound
from aggregator.core.store_contract import JobStore
from aggregator.core.views import KeyMaterialOffer, KeyMaterialView
from aggregator.keyring import PublicKeyring
from aggregator.limits import check_name
from audit.events import EventSink
from crypto import pki
from crypto.endorsement import (
    Endorsement,
    EndorsementError,
    TrustAnchors,
    load_custodian_cert,
    sha256_hex,
    validate_scope,
    verify_endorsement,
)
from crypto.errors import CryptoError
from crypto.keys import PublicContext, load_public_context
from protocol.jobspec import job_spec_from_json


def check_scope_owner(store: JobStore, scope: str, caller: str) -> None:
    """A job's scope belongs to the job (its active party, or one of its participants); any other
    scope to whoever first stored material there."""
    try:
        validate_scope(scope)
    except EndorsementError as exc:
        raise InvalidArgument(f"scope: {exc}") from None
    job = store.job(scope)
    if job is not None:
        spec = job_spec_from_json(job.spec_json)
        if spec.vertical is not None:
            if caller != spec.vertical.active:
                raise Forbidden(
                    f"scope {scope!r} is vertical job {scope}: only its active party {spec.vertical.active} "
                    "may publish its key",
                )
            return
        if caller not in spec.participants:
            raise Forbidden(f"scope {scope!r} is a job {caller} is not part of")
        return
    existing = store.key_material(scope)
    if existing is not None and existing[2] != caller:
        raise Forbidden(f"key scope {scope!r} belongs to custodian {existing[2]}")


def check_endorsed(
    *,
    endorsement_bytes: bytes,
    custodian_pem: bytes,
    caller: pki.Identity,
    anchors: TrustAnchors,
    consortium: str,
    scope: str,
    public: PublicContext,
    public_export: bytes,
    wrapped: dict[str, bytes],
) -> Endorsement:
    """The caller signed this exact material: fingerprint, public export and every blob."""
    try:
        endorsement = Endorsement.decode(endorsement_bytes)
        cert: x509.Certificate = load_custodian_cert(custodian_pem)
        verify_endorsement(endorsement, cert, anchors, consortium=consortium, scope=scope)
    except EndorsementError as exc:
        raise InvalidArgument(f"endorsement: {exc}") from None
    if endorsement.custodian_cert_fingerprint != caller.fingerprint:
        raise Forbidden("the endorsement is signed by another certificate than yours")
    if endorsement.fingerprint != public.fingerprint or endorsement.public_context_sha256 != sha256_hex(public_export):
        raise InvalidArgument("endorsement: it does not cover this public context")
    endorsed = {r.name: r.blob_sha256 for r in endorsement.recipients}
    if endorsed != {name: sha256_hex(blob) for name, blob in wrapped.items()}:
        raise InvalidArgument("endorsement: its recipients differ from the wrapped blobs")
    return endorsement


class KeyDirectory:
    """Stores endorsed key material per scope (a job, a key fingerprint, or the consortium) and hands
    each member its own wrapped key. Silos verify the endorsement themselves; this is a relay."""

    def __init__(self, store: JobStore, keyring: PublicKeyring, events: EventSink, consortium: str) -> None:
        self.store, self.keyring, self.events, self.consortium = store, keyring, events, consortium

    def put(self, caller: pki.Identity, offer: KeyMaterialOffer, anchors: TrustAnchors) -> str:
        """Check and store; returns what was stored, in words."""
        check_scope_owner(self.store, offer.scope, caller.name)
        for name in offer.wrapped:  # member names index stored blobs: safe identifiers only
            check_name(name, "wrapped")
        try:
            public = load_public_context(offer.public_context)  # refuses a secret export
        except CryptoError as exc:
            raise InvalidArgument(str(exc)) from None
        if public.fingerprint != offer.fingerprint:
            raise InvalidArgument("fingerprint does not match the public context")
        check_endorsed(
            endorsement_bytes=offer.endorsement,
            custodian_pem=offer.custodian_cert,
            caller=caller,
            anchors=anchors,
            consortium=self.consortium,
            scope=offer.scope,
            public=public,
            public_export=offer.public_context,
            wrapped=offer.wrapped,
        )
        self.keyring.put(public)
        self.store.put_key_material(
            offer.scope,
            public.fingerprint,
            offer.public_context,
            caller.name,
            offer.wrapped,
            offer.endorsement,
            offer.custodian_cert,
        )
        self.events.record(
            "key_material_stored",
            caller.name,
            scope=offer.scope,
            fingerprint=public.fingerprint,
            members=sorted(offer.wrapped),
        )
        return f"stored public context {public.fingerprint} and {len(offer.wrapped)} wrapped keys"

    def get(self, caller: str, requested: str) -> KeyMaterialView:
        """The material of a scope (or of the scope a key fingerprint names), with the caller's wrapped key."""
        scope = requested
        found = self.store.key_material(scope)
        if found is None:  # a key fingerprint names its scope too (per-job keys)
            scope = self.store.scope_of_fingerprint(requested) or scope
            found = self.store.key_material(scope)
        if found is None:
            raise NotFound(f"no key material for scope {requested!r}")
        fingerprint, public_context, custodian = found
        blob = self.store.wrapped_key(scope, caller) or b""
        endorsement, custodian_cert = self.store.key_endorsement(scope)
        self.events.record("key_material_fetched", caller, scope=scope, fingerprint=fingerprint)
        return KeyMaterialView(scope, fingerprint, public_context, blob, custodian, endorsement, custodian_cert)
