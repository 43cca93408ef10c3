"""The gRPC servicer: authenticated caller in, domain call, reply out; refusals become statuses.

The caller's identity is always taken from the verified certificate (``Authenticator``); no request
field can name another party. Messages convert in ``edge.serde``, domain errors map to status codes
in ``edge.status``; everything else happens in the core (``aggregator.core``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from aggregator.auth import Authenticator
from aggregator.core.errors import InvalidArgument
from aggregator.core.jobs import Jobs
from aggregator.edge import serde
from aggregator.edge.status import status_of
from aggregator.limits import check_audit_head, check_job_id
from audit.events import EventSink
from crypto.endorsement import TrustAnchors
from protocol import cipherfed_pb2 as pb
from protocol import cipherfed_pb2_grpc as pbg
from protocol.messages import MAX_CHUNK_BYTES
from protocol.version import __version__

T = TypeVar("T")
MAX_POLL_WAIT_S = 10.0


class ConsortiumService(pbg.ConsortiumServicer):
    def __init__(
        self,
        engine: Jobs,
        auth: Authenticator,
        events: EventSink,
        consortium: str,
        max_send_bytes: int = 64 << 20,
        max_send_messages: int = 4096,
    ) -> None:
        self.engine = engine
        self.max_send_bytes = max_send_bytes
        self.max_send_messages = max_send_messages
        self.auth = auth
        self.events = events
        self.consortium = consortium

    def _guard(self, context: grpc.ServicerContext, method: str, fn: Callable[[], T]) -> T:
        """Run fn; a refusal becomes its status with the reason, and is recorded."""
        try:
            return fn()
        except Exception as exc:
            refused = status_of(exc)
            if refused is None:
                raise
            self._refused(context, method, *refused)
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
        tasks = [serde.task(t) for t in self.engine.tasks_for(ident.name)]
        return pb.PollReply(tasks=tasks, server_time_unix_ms=int(time.time() * 1000), version=version)

    def Upload(self, request_iterator: Iterator[pb.UploadMessage], context: grpc.ServicerContext) -> pb.UploadReceipt:
        ident = self.auth.identity(context)
        cert = self.auth.certificate(context)

        def run() -> pb.UploadReceipt:
            first = next(request_iterator, None)
            if first is None or not first.HasField("header"):
                raise InvalidArgument("an upload must start with its header")
            check_job_id(first.header.job_id, "header.job_id")
            check_audit_head(first.header.audit_head, "header.audit_head")
            offer = serde.upload_offer(first.header)
            chunks = serde.upload_chunks(request_iterator)
            return serde.receipt(self.engine.upload(ident, cert, offer, chunks, context.is_active))

        return self._guard(context, "Upload", run)

    def DownloadAggregate(
        self, request: pb.AggregateRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.AggregateMessage]:
        ident = self.auth.identity(context)
        released = self._guard(
            context,
            "DownloadAggregate",
            lambda: self.engine.aggregate(request.job_id, int(request.round), ident.name),
        )
        yield from serde.aggregate_messages(request.job_id, request.round, released)
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
        anchors = TrustAnchors(self.auth.ca_cert, self.auth.revocation)
        stored = self._guard(
            context, "PutKeyMaterial", lambda: self.engine.keys.put(ident, serde.key_offer(request), anchors)
        )
        return pb.Ack(message=stored)

    def GetKeyMaterial(self, request: pb.KeyMaterialRequest, context: grpc.ServicerContext) -> pb.KeyMaterialReply:
        ident = self.auth.identity(context)
        found = self._guard(context, "GetKeyMaterial", lambda: self.engine.keys.get(ident.name, request.scope))
        return serde.key_reply(found)

    def Send(self, request_iterator: Iterator[pb.RelayMessage], context: grpc.ServicerContext) -> pb.Ack:
        ident = self.auth.identity(context)
        cert = self.auth.certificate(context)
        sent = self._guard(
            context,
            "Send",
            lambda: self.engine.relay_send(
                ident,
                cert,
                serde.relay_offers(request_iterator),
                self.max_send_messages,
                self.max_send_bytes,
                MAX_CHUNK_BYTES,
            ),
        )
        return pb.Ack(message=f"relayed {sent} messages")

    def Receive(self, request: pb.ReceiveRequest, context: grpc.ServicerContext) -> Iterator[pb.RelayMessage]:
        ident = self.auth.identity(context)
        wait_s = min(request.wait_ms / 1000.0, MAX_POLL_WAIT_S)
        delivery = self._guard(
            context,
            "Receive",
            lambda: self.engine.relay_receive(
                ident.name, request.job_id, request.kind, int(request.seq), request.sender, wait_s, context.is_active
            ),
        )
        yield from serde.relay_messages(request, ident.name, delivery)

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
        return serde.job_status(self._guard(context, "GetJobStatus", lambda: self.engine.status(request.job_id)))

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.JobList:
        return serde.job_list(self.engine.list_jobs())

    def ListMembers(self, request: pb.ListMembersRequest, context: grpc.ServicerContext) -> pb.MemberList:
        return serde.member_list(self.auth.presence, self.auth.revocation, self.engine.policies.current())

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
