"""The gRPC servicer: translates RPCs into JobEngine calls and Refusals into gRPC statuses.

The caller's identity is always taken from the verified certificate (``Authenticator``); no
request field can name another party.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from aggregator.aggregate_files import read_aggregate
from aggregator.auth import Authenticator
from aggregator.errors import Refusal
from aggregator.key_material import check_endorsed, check_scope_owner
from aggregator.limits import check_audit_head, check_job_id, check_name
from aggregator.members import member_list
from aggregator.rounds import JobEngine, UploadSession
from aggregator.vertical_relay import AGGREGATOR, SUMMED, VerticalRelay
from audit.events import EventSink
from cipherfed import __version__
from crypto.endorsement import TrustAnchors
from crypto.errors import CryptoError
from crypto.keys import load_public_context
from protocol import cipherfed_pb2 as pb
from protocol import cipherfed_pb2_grpc as pbg
from protocol.messages import MAX_CHUNK_BYTES, manifest_to_proto

T = TypeVar("T")
MAX_POLL_WAIT_S = 10.0


class ConsortiumService(pbg.ConsortiumServicer):
    def __init__(
        self,
        engine: JobEngine,
        auth: Authenticator,
        events: EventSink,
        consortium: str,
        max_send_bytes: int = 64 << 20,
        max_send_messages: int = 4096,
    ) -> None:
        self.engine = engine
        self.max_send_bytes = max_send_bytes
        self.max_send_messages = max_send_messages
        self.relay = VerticalRelay(engine.store, engine.keyring)
        self.auth = auth
        self.events = events
        self.consortium = consortium

    def _guard(self, context: grpc.ServicerContext, method: str, fn: Callable[[], T]) -> T:
        """Run fn; a Refusal or bad input becomes a status with a reason, and is recorded."""
        try:
            return fn()
        except Refusal as exc:
            self._refused(context, method, exc.code, exc.message)
        except CryptoError as exc:
            self._refused(context, method, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        raise AssertionError("unreachable")

    def _refused(self, context: grpc.ServicerContext, method: str, code: grpc.StatusCode, message: str) -> None:
        try:
            caller = self.auth.identity(context).name
        except Exception:
            caller = ""
        self.events.record("rpc_refused", caller or "unknown", method=method, code=code.name, reason=message)
        context.abort(code, message)

    # ------------------------------------------------------------------ silos
    def Poll(self, request: pb.PollRequest, context: grpc.ServicerContext) -> pb.PollReply:
        ident = self.auth.identity(context)
        wait_s = min(max(request.wait_ms, 0) / 1000.0, MAX_POLL_WAIT_S)
        version = self.engine.wait_for_change(request.known_version, wait_s) if wait_s else self.engine.version
        return pb.PollReply(
            tasks=self.engine.tasks_for(ident.name), server_time_unix_ms=int(time.time() * 1000), version=version
        )

    def Upload(self, request_iterator: Iterator[pb.UploadMessage], context: grpc.ServicerContext) -> pb.UploadReceipt:
        ident = self.auth.identity(context)
        cert = self.auth.certificate(context)
        session: UploadSession | None = None

        def run() -> pb.UploadReceipt:
            nonlocal session
            first = next(request_iterator, None)
            if first is None or not first.HasField("header"):
                raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "an upload must start with its header")
            check_job_id(first.header.job_id, "header.job_id")
            check_audit_head(first.header.audit_head, "header.audit_head")
            started = self.engine.begin_upload(ident, cert, first.header)
            if isinstance(started, pb.UploadReceipt):
                return started
            session = started
            for message in request_iterator:
                if not message.HasField("chunk"):
                    raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "after the header an upload holds only chunks")
                session.add_chunk(bytes(message.chunk))
            if not context.is_active():
                raise Refusal(grpc.StatusCode.CANCELLED, "the silo went away before finishing its upload")
            return session.commit()

        try:
            return self._guard(context, "Upload", run)
        finally:
            if session is not None and not session.done:
                session.rollback()
                self.events.record(
                    "upload_rolled_back",
                    ident.name,
                    job=session.round.job_id,
                    round=session.round.round,
                    chunks_added=session.added,
                )

    def DownloadAggregate(
        self, request: pb.AggregateRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.AggregateMessage]:
        ident = self.auth.identity(context)
        path, contributors = self._guard(
            context,
            "DownloadAggregate",
            lambda: self.engine.aggregate_path(request.job_id, int(request.round), ident.name),
        )
        manifest, chunks = read_aggregate(path)
        yield pb.AggregateMessage(
            header=pb.AggregateHeader(
                job_id=request.job_id,
                round=request.round,
                manifest=manifest_to_proto(manifest),
                contributors=contributors,
            )
        )
        for chunk in chunks:
            assert len(chunk) <= MAX_CHUNK_BYTES
            yield pb.AggregateMessage(chunk=chunk)
        self.events.record("aggregate_downloaded", ident.name, job=request.job_id, round=int(request.round))

    def ReportMetrics(self, request: pb.MetricsReport, context: grpc.ServicerContext) -> pb.Ack:
        ident = self.auth.identity(context)
        metrics = {k: float(v) for k, v in request.metrics.items()}
        self._guard(
            context,
            "ReportMetrics",
            lambda: self.engine.report_metrics(
                request.job_id, int(request.round), ident.name, metrics, request.audit_head
            ),
        )
        return pb.Ack(message="recorded")

    def Decline(self, request: pb.DeclineRequest, context: grpc.ServicerContext) -> pb.Ack:
        ident = self.auth.identity(context)
        self._guard(
            context,
            "Decline",
            lambda: self.engine.decline(request.job_id, int(request.round), ident.name, list(request.reasons)),
        )
        return pb.Ack(message="declined")

    def PutKeyMaterial(self, request: pb.KeyMaterial, context: grpc.ServicerContext) -> pb.Ack:
        ident = self.auth.identity(context)

        def run() -> pb.Ack:
            check_scope_owner(self.engine.store, request.scope, ident.name)
            public = load_public_context(bytes(request.public_context))  # refuses a secret export
            if public.fingerprint != request.fingerprint:
                raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "fingerprint does not match the public context")
            wrapped = {k: bytes(v) for k, v in request.wrapped.items()}
            check_endorsed(
                endorsement_bytes=bytes(request.endorsement),
                custodian_pem=bytes(request.custodian_cert),
                caller=ident,
                anchors=TrustAnchors(self.auth.ca_cert, self.auth.revocation),
                consortium=self.consortium,
                scope=request.scope,
                public=public,
                public_export=bytes(request.public_context),
                wrapped=wrapped,
            )
            self.engine.keyring.put(public)
            self.engine.store.put_key_material(
                request.scope,
                public.fingerprint,
                bytes(request.public_context),
                ident.name,
                wrapped,
                bytes(request.endorsement),
                bytes(request.custodian_cert),
            )
            self.events.record(
                "key_material_stored",
                ident.name,
                scope=request.scope,
                fingerprint=public.fingerprint,
                members=sorted(wrapped),
            )
            return pb.Ack(message=f"stored public context {public.fingerprint} and {len(wrapped)} wrapped keys")

        return self._guard(context, "PutKeyMaterial", run)

    def GetKeyMaterial(self, request: pb.KeyMaterialRequest, context: grpc.ServicerContext) -> pb.KeyMaterialReply:
        ident = self.auth.identity(context)

        def run() -> pb.KeyMaterialReply:
            scope = request.scope
            found = self.engine.store.key_material(scope)
            if found is None:  # a key fingerprint names its scope too (per-job keys)
                scope = self.engine.store.scope_of_fingerprint(request.scope) or scope
                found = self.engine.store.key_material(scope)
            if found is None:
                raise Refusal(grpc.StatusCode.NOT_FOUND, f"no key material for scope {request.scope!r}")
            fingerprint, public_context, custodian = found
            blob = self.engine.store.wrapped_key(scope, ident.name) or b""
            endorsement, custodian_cert = self.engine.store.key_endorsement(scope)
            self.events.record("key_material_fetched", ident.name, scope=scope, fingerprint=fingerprint)
            return pb.KeyMaterialReply(
                scope=scope,
                fingerprint=fingerprint,
                public_context=public_context,
                wrapped_for_me=blob,
                custodian=custodian,
                endorsement=endorsement,
                custodian_cert=custodian_cert,
            )

        return self._guard(context, "GetKeyMaterial", run)

    def Send(self, request_iterator: Iterator[pb.RelayMessage], context: grpc.ServicerContext) -> pb.Ack:
        ident = self.auth.identity(context)

        def run() -> pb.Ack:
            # Each message is authorized as it arrives, before the next one is read, and the whole
            # Send is bounded; the messages are then stored together, so a receiver never sees half
            # a payload.
            messages: list[pb.RelayMessage] = []
            summed: set[tuple[str, str, int]] = set()
            total = 0
            for m in request_iterator:
                if len(messages) >= self.max_send_messages or total + len(m.payload) > self.max_send_bytes:
                    raise Refusal(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"one Send carries at most {self.max_send_messages} messages and {self.max_send_bytes} "
                        "payload bytes; split the payload over several Sends",
                    )
                if self._authorize_relay(ident.name, m):
                    summed.add((m.job_id, m.kind, int(m.seq)))
                total += len(m.payload)
                messages.append(m)
            with self.engine.store.transaction():
                for m in messages:
                    self.engine.store.relay_put(m.job_id, ident.name, m.to, m.kind, int(m.seq), bytes(m.payload))
                    self.engine.store.add_relay_bytes(m.job_id, len(m.payload))
            for job_id, kind, seq in summed:
                self.relay.maybe_sum(job_id, self.engine.spec(job_id), kind, seq)
            with self.engine.lock:
                self.engine._bump()
            return pb.Ack(message=f"relayed {len(messages)} messages")

        return self._guard(context, "Send", run)

    def _authorize_relay(self, sender: str, m: pb.RelayMessage) -> bool:
        """Refuse a relay message its sender may not send; True if it goes to the aggregator to be summed."""
        check_job_id(m.job_id)
        check_name(m.to, "to")
        check_name(m.kind, "kind")
        if len(m.payload) > MAX_CHUNK_BYTES:
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"payload: {len(m.payload)} bytes in one relay message; at most {MAX_CHUNK_BYTES}",
            )
        spec = self.engine.spec(m.job_id)
        if spec.partition != "vertical" or sender not in spec.participants:
            raise Refusal(grpc.StatusCode.PERMISSION_DENIED, "relay is for the participants of a vertical job")
        if m.to == AGGREGATOR:
            if m.kind not in SUMMED or spec.vertical is None or sender not in spec.vertical.passive:
                raise Refusal(
                    grpc.StatusCode.PERMISSION_DENIED, "only passive parties send partial scores to the aggregator"
                )
            return True
        if m.to not in spec.participants:
            raise Refusal(grpc.StatusCode.PERMISSION_DENIED, f"{m.to!r} is not a party of this job")
        return False

    def Receive(self, request: pb.ReceiveRequest, context: grpc.ServicerContext) -> Iterator[pb.RelayMessage]:
        ident = self.auth.identity(context)
        spec = self._guard(context, "Receive", lambda: self.engine.spec(request.job_id))
        if ident.name not in spec.participants:
            self._refused(context, "Receive", grpc.StatusCode.PERMISSION_DENIED, "not a party of this job")
        deadline = time.time() + min(request.wait_ms / 1000.0, MAX_POLL_WAIT_S)
        while True:
            version = self.engine.version
            seq, payloads = self.engine.store.relay_take(
                request.job_id, ident.name, request.kind, int(request.seq), request.sender
            )
            if payloads or time.time() >= deadline or not context.is_active():
                break
            self.engine.wait_for_change(version, max(0.0, deadline - time.time()))
        for i, payload in enumerate(payloads):
            yield pb.RelayMessage(
                job_id=request.job_id,
                to=ident.name,
                sender=request.sender,
                kind=request.kind,
                seq=seq,
                payload=payload,
                last=i == len(payloads) - 1,
            )

    def FinishJob(self, request: pb.FinishJobRequest, context: grpc.ServicerContext) -> pb.Ack:
        ident = self.auth.identity(context)
        metrics = {k: float(v) for k, v in request.metrics.items()}
        self._guard(
            context,
            "FinishJob",
            lambda: self.engine.finish_vertical(request.job_id, ident.name, request.ok, request.reason, metrics),
        )
        return pb.Ack(message="recorded")

    # ------------------------------------------------------------------ admins and auditors
    def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.ServicerContext) -> pb.JobRef:
        ident = self.auth.identity(context)
        job_id = self._guard(context, "SubmitJob", lambda: self.engine.submit(request.spec_toml, ident))
        return pb.JobRef(job_id=job_id)

    def AbortJob(self, request: pb.AbortJobRequest, context: grpc.ServicerContext) -> pb.Ack:
        ident = self.auth.identity(context)
        self._guard(context, "AbortJob", lambda: self.engine.abort(request.job_id, request.reason, ident.name))
        return pb.Ack(message=f"job {request.job_id} aborted")

    def GetJobStatus(self, request: pb.JobRef, context: grpc.ServicerContext) -> pb.JobStatus:
        status = self._guard(context, "GetJobStatus", lambda: self.engine.status(request.job_id))
        status.declines.extend(
            pb.DeclineInfo(silo=silo, round=round_index, reasons=reasons)
            for silo, round_index, reasons in self.engine.store.all_declines(request.job_id)
        )
        return status

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.JobList:
        return pb.JobList(jobs=self.engine.list_jobs())

    def ListMembers(self, request: pb.ListMembersRequest, context: grpc.ServicerContext) -> pb.MemberList:
        return member_list(self.auth.presence, self.auth.revocation, self.engine.policy)

    def ServerInfo(self, request: pb.ServerInfoRequest, context: grpc.ServicerContext) -> pb.ServerInfoReply:
        ident = self.auth.identity(context)
        return pb.ServerInfoReply(
            server_time_unix_ms=int(time.time() * 1000),
            consortium=self.consortium,
            version=__version__,
            caller=ident.name,
            caller_role=ident.role,
            key_fingerprints=self.engine.keyring.fingerprints(),
        )
