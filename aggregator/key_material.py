"""Who may store key material under which scope, and is it endorsed by the caller.

Silos never take the aggregator's word for a key (they verify the custodian's endorsement
themselves); these checks keep the relay from storing material nobody could use, and stop a
member from squatting a vertical job's scope before its active party publishes there.
"""

from __future__ import annotations

import grpc
from cryptography import x509

from aggregator.errors import Refusal
from aggregator.store import StateStore
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
from crypto.keys import PublicContext
from protocol.jobspec import job_spec_from_json


def check_scope_owner(store: StateStore, scope: str, caller: str) -> None:
    """A job's scope belongs to the job (its active party, or one of its participants); any other
    scope to whoever first stored material there."""
    try:
        validate_scope(scope)
    except EndorsementError as exc:
        raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"scope: {exc}") from None
    job = store.job(scope)
    if job is not None:
        spec = job_spec_from_json(job.spec_json)
        if spec.vertical is not None:
            if caller != spec.vertical.active:
                raise Refusal(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"scope {scope!r} is vertical job {scope}: only its active party {spec.vertical.active} "
                    "may publish its key",
                )
            return
        if caller not in spec.participants:
            raise Refusal(grpc.StatusCode.PERMISSION_DENIED, f"scope {scope!r} is a job {caller} is not part of")
        return
    existing = store.key_material(scope)
    if existing is not None and existing[2] != caller:
        raise Refusal(grpc.StatusCode.PERMISSION_DENIED, f"key scope {scope!r} belongs to custodian {existing[2]}")


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
        raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"endorsement: {exc}") from None
    if endorsement.custodian_cert_fingerprint != caller.fingerprint:
        raise Refusal(grpc.StatusCode.PERMISSION_DENIED, "the endorsement is signed by another certificate than yours")
    if endorsement.fingerprint != public.fingerprint or endorsement.public_context_sha256 != sha256_hex(public_export):
        raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "endorsement: it does not cover this public context")
    endorsed = {r.name: r.blob_sha256 for r in endorsement.recipients}
    if endorsed != {name: sha256_hex(blob) for name, blob in wrapped.items()}:
        raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "endorsement: its recipients differ from the wrapped blobs")
    return endorsement
