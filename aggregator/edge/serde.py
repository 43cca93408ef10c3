"""Messages to domain types and back: the only aggregator module that fills in or reads a reply.

Manifests convert through ``protocol.messages`` and upload headers through ``protocol.upload``;
streams are turned into plain iterators of bytes or offers, bounded as they are read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import partial

from aggregator.core.errors import InvalidArgument
from aggregator.core.views import (
    JobStatusView,
    JobSummary,
    KeyMaterialOffer,
    KeyMaterialView,
    RelayDelivery,
    RelayOffer,
    ReleasedAggregate,
    TaskView,
    UploadOffer,
    UploadReceipt,
)
from aggregator.members import Presence
from crypto.pki import RevocationList
from policies.schema import ConsortiumPolicy
from protocol import cipherfed_pb2 as pb
from protocol.messages import MAX_CHUNK_BYTES, manifest_to_proto
from protocol.upload import SignedUpload


def task(view: TaskView) -> pb.Task:
    return pb.Task(
        job_id=view.job_id,
        spec_json=view.spec_json,
        job_status=view.job_status,
        round=view.round,
        round_status=view.round_status,
        completed_rounds=view.completed_rounds,
        uploaded=view.uploaded,
        deadline_unix_ms=view.deadline_unix_ms,
        reason=view.reason,
        declined=view.declined,
        attempt=view.attempt,
    )


def upload_offer(header: pb.UploadHeader) -> UploadOffer:
    """The header's routing fields now; the signed manifest only when the core asks for it."""
    parse = partial(SignedUpload.from_proto, header)
    return UploadOffer(str(header.job_id), int(header.round), int(header.manifest.value_count), parse)


def upload_chunks(messages: Iterable[pb.UploadMessage]) -> Iterator[bytes]:
    """The chunks after an upload's header, each bounded before the core sees it."""
    for message in messages:
        if not message.HasField("chunk"):
            raise InvalidArgument("after the header an upload holds only chunks")
        data = bytes(message.chunk)
        if len(data) > MAX_CHUNK_BYTES:
            raise InvalidArgument(f"chunk of {len(data)} bytes exceeds the {MAX_CHUNK_BYTES}-byte limit")
        yield data


def receipt(view: UploadReceipt) -> pb.UploadReceipt:
    return pb.UploadReceipt(
        job_id=view.job_id,
        round=view.round,
        chunks=view.chunks,
        bytes=view.bytes,
        digest=view.digest,
        aggregator_audit_head=view.aggregator_audit_head,
        already_received=view.already_received,
    )


def aggregate_messages(job_id: str, round_index: int, released: ReleasedAggregate) -> Iterator[pb.AggregateMessage]:
    header = pb.AggregateHeader(
        job_id=job_id,
        round=round_index,
        manifest=manifest_to_proto(released.manifest),
        contributors=released.contributors,
        unmasking=released.unmasking,
    )
    yield pb.AggregateMessage(header=header)
    for chunk in released.chunks:
        assert len(chunk) <= MAX_CHUNK_BYTES
        yield pb.AggregateMessage(chunk=chunk)


def job_status(view: JobStatusView) -> pb.JobStatus:
    rounds = [
        pb.RoundStatus(
            round=r.round,
            status=r.status,
            attempt=r.attempt,
            contributors=r.contributors,
            bytes_in=r.bytes_in,
            wall_s=r.wall_s,
            reason=r.reason,
            metrics=[pb.SiloMetrics(silo=s, metrics=m) for s, m in r.metrics],
        )
        for r in view.rounds
    ]
    return pb.JobStatus(
        job_id=view.job_id,
        name=view.name,
        status=view.status,
        reason=view.reason,
        rounds_total=view.rounds_total,
        current_round=view.current_round,
        rounds=rounds,
        spec_json=view.spec_json,
        participants=view.participants,
        submitted_by=view.submitted_by,
        declined=view.declined,
        relay_bytes=view.relay_bytes,
        declines=[pb.DeclineInfo(silo=d.silo, round=d.round, reasons=d.reasons) for d in view.declines],
    )


def job_list(summaries: Iterable[JobSummary]) -> pb.JobList:
    return pb.JobList(
        jobs=[
            pb.JobSummary(
                job_id=s.job_id,
                name=s.name,
                status=s.status,
                current_round=s.current_round,
                rounds_total=s.rounds_total,
                created=s.created,
            )
            for s in summaries
        ]
    )


def key_offer(request: pb.KeyMaterial) -> KeyMaterialOffer:
    return KeyMaterialOffer(
        scope=request.scope,
        fingerprint=request.fingerprint,
        public_context=bytes(request.public_context),
        wrapped={k: bytes(v) for k, v in request.wrapped.items()},
        endorsement=bytes(request.endorsement),
        custodian_cert=bytes(request.custodian_cert),
    )


def key_reply(view: KeyMaterialView) -> pb.KeyMaterialReply:
    return pb.KeyMaterialReply(
        scope=view.scope,
        fingerprint=view.fingerprint,
        public_context=view.public_context,
        wrapped_for_me=view.wrapped_for_me,
        custodian=view.custodian,
        endorsement=view.endorsement,
        custodian_cert=view.custodian_cert,
    )


def relay_offers(messages: Iterable[pb.RelayMessage]) -> Iterator[RelayOffer]:
    for m in messages:
        yield RelayOffer(m.job_id, m.to, m.kind, int(m.seq), bytes(m.payload))


def relay_messages(request: pb.ReceiveRequest, recipient: str, delivery: RelayDelivery) -> Iterator[pb.RelayMessage]:
    for i, payload in enumerate(delivery.payloads):
        yield pb.RelayMessage(
            job_id=request.job_id,
            to=recipient,
            sender=request.sender,
            kind=request.kind,
            seq=delivery.seq,
            payload=payload,
            last=i == len(delivery.payloads) - 1,
        )


def member_list(presence: Presence, revocation: RevocationList, policy: ConsortiumPolicy | None) -> pb.MemberList:
    """One row per certificate seen, plus one per policy member never seen; sorted by name."""
    pinned = {m.name: m for m in policy.members} if policy else {}
    revoked = revocation.serials()
    rows: list[pb.MemberInfo] = []
    seen_names: set[str] = set()
    for s in presence.snapshot():
        ident = s.identity
        seen_names.add(ident.name)
        member = pinned.get(ident.name)
        rows.append(
            pb.MemberInfo(
                name=ident.name,
                role=ident.role,
                fingerprint=ident.fingerprint,
                serial=f"{ident.serial:x}",
                not_after_unix=int(ident.not_after.timestamp()),
                revoked=ident.serial in revoked,
                last_seen_unix_ms=int(s.last_seen * 1000),
                last_method=s.last_method,
                last_poll_unix_ms=int(s.last_poll * 1000),
                in_policy=member is not None,
                policy_fingerprint=member.cert_fingerprint if member else "",
                policy_role=member.role if member else "",
            )
        )
    rows.extend(
        pb.MemberInfo(name=name, in_policy=True, policy_fingerprint=member.cert_fingerprint, policy_role=member.role)
        for name, member in pinned.items()
        if name not in seen_names
    )
    rows.sort(key=lambda r: (r.name, -r.last_seen_unix_ms))
    return pb.MemberList(members=rows, policy_loaded=policy is not None)
