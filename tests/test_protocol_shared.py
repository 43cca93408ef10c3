"""The shared protocol pieces: the vocabulary, length-prefixed framing, and the one SignedUpload."""

import io
from collections import OrderedDict

import numpy as np
import pytest

from crypto import pki
from crypto.engine import SumEncryptor, encrypt_weighted_update
from crypto.errors import SignatureError
from crypto.keys import generate_key_set
from protocol import cipherfed_pb2 as pb
from protocol.framing import (
    FramingError,
    frame,
    open_framed_file,
    read_frame,
    read_frames,
    write_framed_file,
)
from protocol.upload import SignedUpload
from protocol.vocabulary import (
    ENCRYPTED_RELAY_KINDS,
    SUMMED_KIND,
    TERMINAL_JOB_STATUSES,
    JobStatus,
    RelayKind,
    RoundStatus,
)


def test_statuses_are_the_plain_strings_on_the_wire():
    task = pb.Task(job_status=JobStatus.RUNNING, round_status=RoundStatus.OPEN)
    assert task.job_status == "running" and task.round_status == "open"
    assert JobStatus(task.job_status) is JobStatus.RUNNING
    assert TERMINAL_JOB_STATUSES == {"completed", "failed", "aborted"}
    assert not JobStatus.RUNNING.terminal and JobStatus.ABORTED.terminal


def test_relay_kinds_are_short_distinct_tags_and_summed_kinds_map_to_their_sums():
    assert all(0 < len(k.value) <= 8 for k in RelayKind)
    assert len({k.value for k in RelayKind}) == len(RelayKind)
    assert SUMMED_KIND[RelayKind.PARTIAL_SCORES] == "U" and SUMMED_KIND[RelayKind.PREDICTION_SCORES] == "P"
    assert RelayKind.MASKED_SUMS not in ENCRYPTED_RELAY_KINDS


def test_frames_round_trip_and_a_clean_end_is_not_an_error():
    blobs = [b"", b"a", bytes(range(256)) * 10]
    stream = io.BytesIO(b"".join(frame(b) for b in blobs))
    assert list(read_frames(stream)) == blobs
    assert read_frame(io.BytesIO(b"")) is None


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x00\x00", "inside a frame's length"),
        (b"\x00\x00\x00\x05abc", "after 3 of a frame's 5 bytes"),
        (b"\x7f\xff\xff\xff", "exceeds"),
    ],
)
def test_a_cut_or_oversized_frame_is_refused_not_returned_short(data, message):
    with pytest.raises(FramingError, match=message):
        read_frame(io.BytesIO(data), max_frame=1 << 20)


def test_counted_frames_refuse_a_short_file(tmp_path):
    path = tmp_path / "f.bin"
    write_framed_file(path, [b"one"], magic=b"MAGIC\n")
    with open_framed_file(path, b"MAGIC\n") as source, pytest.raises(FramingError, match="1 of 2 frames"):
        list(read_frames(source, count=2))


def test_framed_file_is_atomic_and_checks_its_magic(tmp_path):
    path = tmp_path / "agg.bin"
    assert write_framed_file(path, [b"header", b"chunk"], magic=b"CFAGG1\n") == 11
    assert not (tmp_path / "agg.bin.tmp").exists()
    with open_framed_file(path, b"CFAGG1\n") as source:
        assert list(read_frames(source)) == [b"header", b"chunk"]
    with pytest.raises(FramingError, match="bad magic"):
        open_framed_file(path, b"OTHER!\n")


@pytest.fixture(scope="module")
def batch():
    encryptor = SumEncryptor(generate_key_set("sum"))
    return encrypt_weighted_update(encryptor, OrderedDict(w=np.linspace(-1, 1, 100)), 5.0)


@pytest.fixture(scope="module")
def silo_identity(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    pki.init_ca(root / "ca", "test-consortium")
    cert_path, key_path = pki.issue(root / "ca", "silo-a", "silo", root)
    other_path, _ = pki.issue(root / "ca", "silo-b", "silo", root)
    return pki.load_private_key(key_path), pki.load_certificate(cert_path), pki.load_certificate(other_path)


def test_signed_upload_round_trips_through_the_wire_and_verifies(batch, silo_identity):
    key, cert, _ = silo_identity
    upload = SignedUpload.sign(key, "job-1", 3, batch.manifest, "head")
    parsed = SignedUpload.from_proto(upload.to_proto())
    assert parsed == upload
    parsed.verify(cert)


@pytest.mark.parametrize("field, value", [("job_id", "job-2"), ("round", 4), ("audit_head", "other")])
def test_signed_upload_moved_to_another_job_round_or_head_fails(batch, silo_identity, field, value):
    key, cert, _ = silo_identity
    header = SignedUpload.sign(key, "job-1", 3, batch.manifest, "head").to_proto()
    setattr(header, field, value)
    with pytest.raises(SignatureError):
        SignedUpload.from_proto(header).verify(cert)


def test_signed_upload_does_not_verify_under_another_members_certificate(batch, silo_identity):
    key, _, other = silo_identity
    with pytest.raises(SignatureError):
        SignedUpload.sign(key, "job-1", 0, batch.manifest).verify(other)
