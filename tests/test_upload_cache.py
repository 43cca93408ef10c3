"""The silo's upload cache: one signed upload, framed by protocol/framing.py, in the pre-framing byte format.

A silo caches each round's upload before sending it, so that after a restart it re-sends the same bytes
and the aggregator receipts the re-send as idempotent. A node upgraded with a cached upload on disk must
still re-send it: the format (4-byte big-endian length + serialized header, then length + chunk per
chunk) is frozen here against the writer as it was before the framing module.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
import tracemalloc
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from crypto.engine import SumEncryptor, encrypt_weighted_update
from crypto.keys import generate_key_set
from protocol import cipherfed_pb2 as pb
from protocol.framing import FramingError, write_framed_file
from protocol.upload import SignedUpload
from silo_node.jobfiles import (
    KEPT_DELTA_MAGIC,
    kept_delta_file,
    load_kept_delta,
    read_upload,
    read_upload_header,
    save_kept_delta,
    write_upload,
)


def _legacy_write(path: Path, header: pb.UploadHeader, chunks: list[bytes]) -> None:
    """The cache writer as it was before protocol/framing.py (silo_node/horizontal.py at 5ab2577)."""
    with open(path, "wb") as f:
        raw = header.SerializeToString()
        f.write(struct.pack(">I", len(raw)) + raw)
        for chunk in chunks:
            f.write(struct.pack(">I", len(chunk)) + chunk)


@pytest.fixture(scope="module")
def upload() -> tuple[pb.UploadHeader, list[bytes], ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    encryptor = SumEncryptor(generate_key_set("sum"))
    batch = encrypt_weighted_update(encryptor, OrderedDict(w=np.linspace(-1, 1, 9000)), 3.0)
    signed = SignedUpload.sign(key, "job-1", 2, batch.manifest, "a" * 64)
    return signed.to_proto(), batch.chunks, key


def test_a_cached_upload_from_before_the_framing_module_reads_back_and_re_sends_the_same_bytes(tmp_path, upload):
    header, chunks, key = upload
    assert len(chunks) >= 2  # a real multi-chunk upload, not a degenerate one
    old = tmp_path / "upload-00002.bin"
    _legacy_write(old, header, chunks)

    cached_header, cached_chunks = read_upload(old)
    assert cached_header.SerializeToString() == header.SerializeToString()
    assert cached_chunks == chunks
    # what is re-sent still verifies against the silo's certificate, as the aggregator checks it
    SignedUpload.from_proto(cached_header).verify(_certificate(key))

    # the layout check reads the header alone, and gets the same one
    assert read_upload_header(old).SerializeToString() == header.SerializeToString()
    new = tmp_path / "upload-00002.new"
    write_upload(new, cached_header, cached_chunks)
    assert new.read_bytes() == old.read_bytes()  # byte-identical: the format did not change


def test_a_damaged_cache_is_refused_not_sent_short(tmp_path, upload):
    """A cut file used to yield a short last chunk that was sent as if whole; now it is an error."""
    header, chunks, _ = upload
    path = tmp_path / "upload-00002.bin"
    _legacy_write(path, header, chunks)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(FramingError, match="ends after"):
        read_upload(path)
    assert read_upload_header(path).SerializeToString() == header.SerializeToString()  # only its layout is read
    path.write_bytes(path.read_bytes()[:9])
    with pytest.raises(FramingError):
        read_upload_header(path)
    path.write_bytes(struct.pack(">I", 0xFFFFFFF0) + b"x" * 16)  # a length far beyond any frame
    with pytest.raises(FramingError, match="exceeds"):
        read_upload(path)


def _certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "silo-a")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def _model() -> OrderedDict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return OrderedDict([("w", rng.normal(size=(40, 7))), ("b", rng.normal(size=7)), ("s", np.asarray(0.25))])


def test_the_kept_update_of_a_masked_round_reads_back_bit_for_bit(tmp_path):
    """A secure-aggregation retry re-masks the update kept on disk: it must be exactly the trained one."""
    delta = _model()
    path = tmp_path / "delta-00003.bin"
    save_kept_delta(path, delta)
    back = load_kept_delta(path, _model())
    assert list(back) == ["w", "b", "s"]
    for name, array in delta.items():
        assert back[name].dtype == array.dtype and back[name].tobytes() == array.tobytes()
    assert not path.with_name(path.name + ".tmp").exists()  # written aside, then renamed


def test_the_kept_update_holds_empty_and_non_contiguous_tensors(tmp_path):
    """Each tensor is written from its own memory: an empty matrix, a transposed view and a 0-d value too."""
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    delta = {"empty": np.zeros((0, 3)), "t": base.T, "s": np.float64(2.5) * np.ones(())}
    path = tmp_path / "delta-00001.bin"
    save_kept_delta(path, delta)
    back = load_kept_delta(path, {name: np.zeros_like(a) for name, a in delta.items()})
    for name, array in delta.items():
        assert back[name].shape == array.shape and back[name].tobytes() == array.tobytes()


@pytest.mark.parametrize(
    "damage",
    ["cut", "cut at a tensor", "empty", "trailing", "other shape", "swapped names", "huge header", "huge frame"],
)
def test_a_damaged_or_foreign_kept_update_is_refused(tmp_path, damage):
    """Refused with ValueError before anything is used, and before a header can make the silo allocate."""
    path = tmp_path / "delta-00003.bin"
    save_kept_delta(path, _model())
    like = _model()
    data = path.read_bytes()
    if damage == "cut":
        path.write_bytes(data[:-9])
    elif damage == "cut at a tensor":  # the last frame (a 0-d float64: length prefix and 8 bytes) is gone
        path.write_bytes(data[: -(4 + 8)])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "trailing":
        path.write_bytes(data + b"\x00")
    elif damage == "other shape":
        like["w"] = np.zeros((7, 40))
    elif damage == "swapped names":  # two tensors of one shape: only their names tell them apart
        twins = OrderedDict([("u", np.ones(5)), ("v", np.zeros(5))])
        save_kept_delta(path, twins)
        like = OrderedDict([("v", np.zeros(5)), ("u", np.ones(5))])
    elif damage == "huge header":  # a valid header claiming 2^40 values: judged against the model first
        claim = [["w", "<f8", [1 << 40]], ["b", "<f8", [7]], ["s", "<f8", []]]
        write_framed_file(path, [json.dumps(claim).encode()], KEPT_DELTA_MAGIC)
    else:  # a frame length of 4 GB: refused by the frame bound, not read into memory
        path.write_bytes(KEPT_DELTA_MAGIC + struct.pack(">I", 0xFFFFFFF0) + b"x" * 16)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError):
            load_kept_delta(path, like)
        assert tracemalloc.get_traced_memory()[1] < 16 << 20, "allocated what a header claimed"
    finally:
        tracemalloc.stop()


def test_an_update_kept_by_the_previous_release_still_reads_back(tmp_path):
    """A node upgraded between training and uploading a masked round re-masks the .npz it kept."""
    delta = _model()
    np.savez(tmp_path / "delta-00003.npz", **delta)
    found = kept_delta_file(tmp_path / "delta-00003.bin")
    assert found == tmp_path / "delta-00003.npz"
    back = load_kept_delta(found, _model())
    assert all(back[k].tobytes() == delta[k].tobytes() for k in delta)
    assert kept_delta_file(tmp_path / "delta-00004.bin") is None


@pytest.mark.parametrize("damage", ["empty", "cut", "other tensors", "huge member header"])
def test_a_damaged_update_kept_by_the_previous_release_is_refused(tmp_path, damage):
    path = tmp_path / "delta-00003.npz"
    np.savez(path, **_model())
    like = _model()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "cut":
        path.write_bytes(path.read_bytes()[:-40])
    elif damage == "other tensors":
        like = OrderedDict([("w", like["w"]), ("b", like["b"])])
    else:
        with zipfile.ZipFile(path, "w") as archive:
            for name, array in like.items():
                with archive.open(f"{name}.npy", "w") as member:
                    shape = (1 << 36,) if name == "w" else array.shape
                    np.lib.format.write_array_header_1_0(
                        member, {"descr": "<f8", "fortran_order": False, "shape": shape}
                    )
                    if name != "w":
                        member.write(array.tobytes())
    with pytest.raises(ValueError):
        load_kept_delta(path, like)
