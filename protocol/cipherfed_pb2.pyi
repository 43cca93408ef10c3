from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Ack(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("profile", "fingerprint", "layout_json", "value_count", "values_per_chunk", "scale_bits", "chunk_digests", "quantization")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_JSON_FIELD_NUMBER: _ClassVar[int]
    VALUE_COUNT_FIELD_NUMBER: _ClassVar[int]
    VALUES_PER_CHUNK_FIELD_NUMBER: _ClassVar[int]
    SCALE_BITS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    profile: str
    fingerprint: str
    layout_json: str
    value_count: int
    values_per_chunk: int
    scale_bits: int
    chunk_digests: _containers.RepeatedScalarFieldContainer[bytes]
    quantization: str
    def __init__(self, profile: _Optional[str] = ..., fingerprint: _Optional[str] = ..., layout_json: _Optional[str] = ..., value_count: _Optional[int] = ..., values_per_chunk: _Optional[int] = ..., scale_bits: _Optional[int] = ..., chunk_digests: _Optional[_Iterable[bytes]] = ..., quantization: _Optional[str] = ...) -> None: ...

class PollRequest(_message.Message):
    __slots__ = ("wait_ms", "known_version")
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    wait_ms: int
    known_version: int
    def __init__(self, wait_ms: _Optional[int] = ..., known_version: _Optional[int] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("job_id", "spec_json", "job_status", "round", "round_status", "completed_rounds", "uploaded", "deadline_unix_ms", "reason", "declined", "attempt")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    JOB_STATUS_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ROUND_STATUS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    UPLOADED_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DECLINED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    spec_json: str
    job_status: str
    round: int
    round_status: str
    completed_rounds: int
    uploaded: bool
    deadline_unix_ms: int
    reason: str
    declined: bool
    attempt: int
    def __init__(self, job_id: _Optional[str] = ..., spec_json: _Optional[str] = ..., job_status: _Optional[str] = ..., round: _Optional[int] = ..., round_status: _Optional[str] = ..., completed_rounds: _Optional[int] = ..., uploaded: _Optional[bool] = ..., deadline_unix_ms: _Optional[int] = ..., reason: _Optional[str] = ..., declined: _Optional[bool] = ..., attempt: _Optional[int] = ...) -> None: ...

class PollReply(_message.Message):
    __slots__ = ("tasks", "server_time_unix_ms", "version")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    server_time_unix_ms: int
    version: int
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ..., server_time_unix_ms: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("job_id", "round", "manifest", "audit_head", "signature")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    AUDIT_HEAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    manifest: Manifest
    audit_head: str
    signature: bytes
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., manifest: _Optional[_Union[Manifest, _Mapping]] = ..., audit_head: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class UploadMessage(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadReceipt(_message.Message):
    __slots__ = ("job_id", "round", "chunks", "bytes", "already_received", "digest", "aggregator_audit_head")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    ALREADY_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    AGGREGATOR_AUDIT_HEAD_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    chunks: int
    bytes: int
    already_received: bool
    digest: str
    aggregator_audit_head: str
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., chunks: _Optional[int] = ..., bytes: _Optional[int] = ..., already_received: _Optional[bool] = ..., digest: _Optional[str] = ..., aggregator_audit_head: _Optional[str] = ...) -> None: ...

class AggregateRequest(_message.Message):
    __slots__ = ("job_id", "round")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class AggregateHeader(_message.Message):
    __slots__ = ("job_id", "round", "manifest", "contributors", "unmasking")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    UNMASKING_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    manifest: Manifest
    contributors: int
    unmasking: bytes
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., manifest: _Optional[_Union[Manifest, _Mapping]] = ..., contributors: _Optional[int] = ..., unmasking: _Optional[bytes] = ...) -> None: ...

class AggregateMessage(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: AggregateHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[AggregateHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class MetricsReport(_message.Message):
    __slots__ = ("job_id", "round", "metrics", "audit_head")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_HEAD_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    metrics: _containers.ScalarMap[str, float]
    audit_head: str
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., audit_head: _Optional[str] = ...) -> None: ...

class DeclineRequest(_message.Message):
    __slots__ = ("job_id", "round", "reasons")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., reasons: _Optional[_Iterable[str]] = ...) -> None: ...

class KeyMaterial(_message.Message):
    __slots__ = ("scope", "fingerprint", "public_context", "wrapped", "endorsement", "custodian_cert")
    class WrappedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_FIELD_NUMBER: _ClassVar[int]
    ENDORSEMENT_FIELD_NUMBER: _ClassVar[int]
    CUSTODIAN_CERT_FIELD_NUMBER: _ClassVar[int]
    scope: str
    fingerprint: str
    public_context: bytes
    wrapped: _containers.ScalarMap[str, bytes]
    endorsement: bytes
    custodian_cert: bytes
    def __init__(self, scope: _Optional[str] = ..., fingerprint: _Optional[str] = ..., public_context: _Optional[bytes] = ..., wrapped: _Optional[_Mapping[str, bytes]] = ..., endorsement: _Optional[bytes] = ..., custodian_cert: _Optional[bytes] = ...) -> None: ...

class KeyMaterialRequest(_message.Message):
    __slots__ = ("scope",)
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    scope: str
    def __init__(self, scope: _Optional[str] = ...) -> None: ...

class KeyMaterialReply(_message.Message):
    __slots__ = ("scope", "fingerprint", "public_context", "wrapped_for_me", "custodian", "endorsement", "custodian_cert")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_FOR_ME_FIELD_NUMBER: _ClassVar[int]
    CUSTODIAN_FIELD_NUMBER: _ClassVar[int]
    ENDORSEMENT_FIELD_NUMBER: _ClassVar[int]
    CUSTODIAN_CERT_FIELD_NUMBER: _ClassVar[int]
    scope: str
    fingerprint: str
    public_context: bytes
    wrapped_for_me: bytes
    custodian: str
    endorsement: bytes
    custodian_cert: bytes
    def __init__(self, scope: _Optional[str] = ..., fingerprint: _Optional[str] = ..., public_context: _Optional[bytes] = ..., wrapped_for_me: _Optional[bytes] = ..., custodian: _Optional[str] = ..., endorsement: _Optional[bytes] = ..., custodian_cert: _Optional[bytes] = ...) -> None: ...

class RelayMessage(_message.Message):
    __slots__ = ("job_id", "to", "sender", "kind", "seq", "payload", "last")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    to: str
    sender: str
    kind: str
    seq: int
    payload: bytes
    last: bool
    def __init__(self, job_id: _Optional[str] = ..., to: _Optional[str] = ..., sender: _Optional[str] = ..., kind: _Optional[str] = ..., seq: _Optional[int] = ..., payload: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class ReceiveRequest(_message.Message):
    __slots__ = ("job_id", "kind", "seq", "sender", "wait_ms")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: str
    seq: int
    sender: str
    wait_ms: int
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[str] = ..., seq: _Optional[int] = ..., sender: _Optional[str] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class FinishJobRequest(_message.Message):
    __slots__ = ("job_id", "ok", "reason", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    ok: bool
    reason: str
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, job_id: _Optional[str] = ..., ok: _Optional[bool] = ..., reason: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec_toml",)
    SPEC_TOML_FIELD_NUMBER: _ClassVar[int]
    spec_toml: str
    def __init__(self, spec_toml: _Optional[str] = ...) -> None: ...

class AbortJobRequest(_message.Message):
    __slots__ = ("job_id", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class SiloMetrics(_message.Message):
    __slots__ = ("silo", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SILO_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    silo: str
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, silo: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class RoundStatus(_message.Message):
    __slots__ = ("round", "status", "attempt", "contributors", "bytes_in", "wall_s", "metrics", "reason")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    WALL_S_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    round: int
    status: str
    attempt: int
    contributors: _containers.RepeatedScalarFieldContainer[str]
    bytes_in: int
    wall_s: float
    metrics: _containers.RepeatedCompositeFieldContainer[SiloMetrics]
    reason: str
    def __init__(self, round: _Optional[int] = ..., status: _Optional[str] = ..., attempt: _Optional[int] = ..., contributors: _Optional[_Iterable[str]] = ..., bytes_in: _Optional[int] = ..., wall_s: _Optional[float] = ..., metrics: _Optional[_Iterable[_Union[SiloMetrics, _Mapping]]] = ..., reason: _Optional[str] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "name", "status", "reason", "rounds_total", "current_round", "rounds", "spec_json", "participants", "submitted_by", "declined", "relay_bytes", "declines")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_BY_FIELD_NUMBER: _ClassVar[int]
    DECLINED_FIELD_NUMBER: _ClassVar[int]
    RELAY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DECLINES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    status: str
    reason: str
    rounds_total: int
    current_round: int
    rounds: _containers.RepeatedCompositeFieldContainer[RoundStatus]
    spec_json: str
    participants: _containers.RepeatedScalarFieldContainer[str]
    submitted_by: str
    declined: _containers.RepeatedScalarFieldContainer[str]
    relay_bytes: int
    declines: _containers.RepeatedCompositeFieldContainer[DeclineInfo]
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., rounds_total: _Optional[int] = ..., current_round: _Optional[int] = ..., rounds: _Optional[_Iterable[_Union[RoundStatus, _Mapping]]] = ..., spec_json: _Optional[str] = ..., participants: _Optional[_Iterable[str]] = ..., submitted_by: _Optional[str] = ..., declined: _Optional[_Iterable[str]] = ..., relay_bytes: _Optional[int] = ..., declines: _Optional[_Iterable[_Union[DeclineInfo, _Mapping]]] = ...) -> None: ...

class DeclineInfo(_message.Message):
    __slots__ = ("silo", "round", "reasons")
    SILO_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    silo: str
    round: int
    reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, silo: _Optional[str] = ..., round: _Optional[int] = ..., reasons: _Optional[_Iterable[str]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JobSummary(_message.Message):
    __slots__ = ("job_id", "name", "status", "current_round", "rounds_total", "created")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    status: str
    current_round: int
    rounds_total: int
    created: str
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., status: _Optional[str] = ..., current_round: _Optional[int] = ..., rounds_total: _Optional[int] = ..., created: _Optional[str] = ...) -> None: ...

class JobList(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobSummary]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobSummary, _Mapping]]] = ...) -> None: ...

class ServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfoReply(_message.Message):
    __slots__ = ("server_time_unix_ms", "consortium", "version", "caller", "caller_role", "key_fingerprints")
    SERVER_TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CONSORTIUM_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    CALLER_ROLE_FIELD_NUMBER: _ClassVar[int]
    KEY_FINGERPRINTS_FIELD_NUMBER: _ClassVar[int]
    server_time_unix_ms: int
    consortium: str
    version: str
    caller: str
    caller_role: str
    key_fingerprints: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, server_time_unix_ms: _Optional[int] = ..., consortium: _Optional[str] = ..., version: _Optional[str] = ..., caller: _Optional[str] = ..., caller_role: _Optional[str] = ..., key_fingerprints: _Optional[_Iterable[str]] = ...) -> None: ...

class ListMembersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MemberInfo(_message.Message):
    __slots__ = ("name", "role", "fingerprint", "serial", "not_after_unix", "revoked", "last_seen_unix_ms", "last_method", "last_poll_unix_ms", "in_policy", "policy_fingerprint", "policy_role")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_UNIX_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_METHOD_FIELD_NUMBER: _ClassVar[int]
    LAST_POLL_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    IN_POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    POLICY_ROLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    fingerprint: str
    serial: str
    not_after_unix: int
    revoked: bool
    last_seen_unix_ms: int
    last_method: str
    last_poll_unix_ms: int
    in_policy: bool
    policy_fingerprint: str
    policy_role: str
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., fingerprint: _Optional[str] = ..., serial: _Optional[str] = ..., not_after_unix: _Optional[int] = ..., revoked: _Optional[bool] = ..., last_seen_unix_ms: _Optional[int] = ..., last_method: _Optional[str] = ..., last_poll_unix_ms: _Optional[int] = ..., in_policy: _Optional[bool] = ..., policy_fingerprint: _Optional[str] = ..., policy_role: _Optional[str] = ...) -> None: ...

class MemberList(_message.Message):
    __slots__ = ("members", "policy_loaded")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    POLICY_LOADED_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[MemberInfo]
    policy_loaded: bool
    def __init__(self, members: _Optional[_Iterable[_Union[MemberInfo, _Mapping]]] = ..., policy_loaded: _Optional[bool] = ...) -> None: ...
