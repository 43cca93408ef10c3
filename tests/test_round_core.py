"""The round core on its own: quorum, deadlines, retries, declines, restart, re-sends, layout, rollback.

No processes and no gRPC: a temporary SQLite store, aggregate files in a temporary directory, a fake
clock, and real uploads (signed headers, CKKS ciphertexts of a 10-value update, or the plaintext
engine where the profile does not matter). Each test runs well under a second.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aggregator.aggregate_files import AggregateFiles
from aggregator.core.errors import Aborted, AlreadyExists, Cancelled, Forbidden, InvalidArgument, PreconditionFailed
from aggregator.core.jobs import Jobs
from aggregator.core.views import UploadOffer
from aggregator.keyring import PublicKeyring
from aggregator.store import StateStore
from cipherfed.localconsortium import job_toml
from crypto.compact import CompactEncryptor
from crypto.engine import (
    SumEncryptor,
    UnencryptedSumForComparisonOnly,
    UpdateEncryptor,
    decrypt_weighted_mean,
    encrypt_weighted_update,
)
from crypto.keys import SecretKeySet, generate_key_set
from crypto.pki import Identity
from protocol.framing import FramingError, frame
from protocol.jobspec import compact_params, parse_job_spec
from protocol.upload import SignedUpload
from protocol.vocabulary import JobStatus, RoundStatus

ROOT = Path(__file__).resolve().parents[1]
SILOS = ["a", "b", "c"]
ADMIN = Identity("coordinator", "admin", 1, "f" * 64, dt.datetime(2100, 1, 1, tzinfo=dt.UTC))


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t


class Events:
    """Records what the core audits, so tests can check events and their fields."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    @property
    def head(self) -> str:
        return f"{len(self.records):064x}"

    def record(self, event: str, actor: str, *, job: str | None = None, round: int | None = None, **d: Any) -> None:
        self.records.append((event, actor, {"job": job, "round": round, **d}))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [d for e, _, d in self.records if e == event]


class Silo:
    """A participant with its own EC key and (self-signed) certificate, as the edge would hand over."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        self.ident = Identity(name, "silo", 2, name * 64, now + dt.timedelta(days=1))


@pytest.fixture(scope="module")
def keys() -> SecretKeySet:
    return generate_key_set("sum")


@pytest.fixture(scope="module")
def keyring(keys: SecretKeySet) -> PublicKeyring:
    ring = PublicKeyring()
    ring.add(keys.export_public())
    return ring


@pytest.fixture(scope="module")
def silos() -> dict[str, Silo]:
    return {name: Silo(name) for name in [*SILOS, "outsider"]}


class World:
    def __init__(self, tmp: Path, keys: SecretKeySet, keyring: PublicKeyring, silos: dict[str, Silo]) -> None:
        self.tmp, self.keys, self.keyring, self.silos = tmp, keys, keyring, silos
        self.clock = FakeClock()
        self.events = Events()
        self.engine = self.start()

    def start(self) -> Jobs:
        """(Re)start the core on the same SQLite file, as after a crash."""
        store = StateStore(self.tmp / "state.sqlite")
        archive = AggregateFiles(self.tmp / "aggregates")
        return Jobs(
            store,
            archive,
            self.keyring,
            self.tmp,
            self.events,
            allow_plaintext=True,
            clock=self.clock,
            min_per_aggregate=2,
        )

    def submit(self, profile: str = "sum", **kw: Any) -> str:
        spec = job_toml("j", SILOS, self.keys.fingerprint, ["x"], he_profile=profile, scaling="none", **kw)
        return self.engine.submit(spec, ADMIN)

    def batch(self, profile: str, values: int = 10, seed: int = 0) -> Any:
        encryptor: UpdateEncryptor = SumEncryptor(self.keys) if profile == "sum" else UnencryptedSumForComparisonOnly()
        update = {"w": np.random.default_rng(seed).normal(size=values)}
        return encrypt_weighted_update(encryptor, update, 1.0)

    def upload(
        self, silo: str, job: str, round_index: int, profile: str = "sum", batch: Any = None, chunks: Any = None
    ) -> Any:
        batch = batch or self.batch(profile)
        who = self.silos[silo]
        signed = SignedUpload.sign(who.key, job, round_index, batch.manifest)
        offer = UploadOffer(job, round_index, batch.manifest.value_count, lambda: signed)
        data = batch.chunks if chunks is None else chunks
        return self.engine.upload(who.ident, who.cert, offer, iter(data), lambda: True)

    def round_status(self, job: str, round_index: int) -> str:
        row = self.engine.store.round(job, round_index)
        assert row is not None
        return row.status


@pytest.fixture
def world(tmp_path: Path, keys: SecretKeySet, keyring: PublicKeyring, silos: dict[str, Silo]) -> Iterator[World]:
    w = World(tmp_path, keys, keyring, silos)
    yield w
    w.engine.store.close()


def test_round_closes_when_every_participant_uploaded_and_releases_a_decryptable_sum(world: World) -> None:
    job = world.submit(rounds=2)
    batches = [world.batch("sum", seed=i) for i in range(3)]
    for silo, batch in zip(SILOS, batches, strict=True):
        receipt = world.upload(silo, job, 0, batch=batch)
        assert receipt.digest == batch.manifest.digest().hex() and not receipt.already_received
    assert world.round_status(job, 0) == RoundStatus.CLOSED
    released = world.engine.aggregate(job, 0, "a")
    manifest, chunks, contributors = released.manifest, released.chunks, released.contributors
    assert contributors == 3 and manifest.value_count == batches[0].manifest.value_count
    mean = decrypt_weighted_mean(SumEncryptor(world.keys), manifest, list(chunks))
    expected = sum(np.random.default_rng(i).normal(size=10) for i in range(3)) / 3
    assert np.allclose(np.asarray(mean.tensors["w"]).ravel(), expected, atol=1e-3)
    assert world.engine.rounds.open_round(job).round == 1  # type: ignore[union-attr]


def test_deadline_with_quorum_releases_with_those_that_reported(world: World) -> None:
    job = world.submit(profile="none", rounds=1, round_timeout_s=30)
    world.upload("a", job, 0, "none")
    world.upload("b", job, 0, "none")
    world.clock.t += 29
    world.engine.tick()
    assert world.round_status(job, 0) == RoundStatus.OPEN  # not yet
    world.clock.t += 1
    world.engine.tick()
    assert world.round_status(job, 0) == RoundStatus.CLOSED
    assert world.engine.store.job(job).status == JobStatus.COMPLETED  # type: ignore[union-attr]
    released = world.events.named("aggregate_released")[0]
    assert released["contributors"] == ["a", "b"] and released["why"] == "deadline reached"


def test_deadline_without_quorum_retries_then_fails_the_job(world: World) -> None:
    job = world.submit(profile="none", rounds=1, round_timeout_s=10, max_round_retries=1)
    world.upload("a", job, 0, "none")
    world.clock.t += 10
    world.engine.tick()
    row = world.engine.store.round(job, 0)
    assert row is not None and row.status == RoundStatus.OPEN and row.attempt == 2  # reopened, sum emptied
    assert world.engine.store.contributions(job, 0) == {}
    failed = world.events.named("round_failed")[0]
    assert failed["reason"] == (
        "round 0: release threshold: only 1 contributors; no aggregate is released with fewer than 2 (deadline reached)"
    )
    world.clock.t += 10
    world.engine.tick()
    job_row = world.engine.store.job(job)
    assert job_row is not None and job_row.status == JobStatus.FAILED
    assert job_row.reason.endswith("; gave up after 2 attempts")


def test_declines_shrink_the_round_and_can_fail_the_job(world: World) -> None:
    job = world.submit(profile="none", rounds=1)
    world.upload("a", job, 0, "none")
    world.upload("b", job, 0, "none")
    world.engine.decline(job, -1, "c", ["site policy"])  # the two others reported: the round closes now
    assert world.round_status(job, 0) == RoundStatus.CLOSED
    assert world.events.named("aggregate_released")[0]["why"] == "all remaining participants reported"

    other = world.submit(profile="none", rounds=1)
    world.engine.decline(other, -1, "a", ["no"])
    world.engine.decline(other, -1, "b", ["no"])
    row = world.engine.store.job(other)
    assert row is not None and row.status == JobStatus.FAILED
    assert row.reason == "too few participants left after b declined: no"
    with pytest.raises(Forbidden, match="outsider is not a participant"):
        world.engine.decline(other, -1, "outsider", ["x"])


def test_restart_reopens_the_round_and_contributors_re_upload(world: World) -> None:
    job = world.submit(profile="none", rounds=1)
    world.upload("a", job, 0, "none")
    world.engine.store.close()
    world.engine = world.start()  # the in-memory sum is gone with the process
    assert world.engine.rounds.open_job_ids() == {job}
    assert world.engine.store.contributions(job, 0) == {}
    assert world.events.named("round_reopened")[0]["reason"] == "aggregator restarted; contributors must re-upload"
    for silo in SILOS:
        world.upload(silo, job, 0, "none")
    assert world.round_status(job, 0) == RoundStatus.CLOSED


def test_resending_the_same_upload_is_acknowledged_and_a_different_one_refused(world: World) -> None:
    job = world.submit(profile="none", rounds=1)
    batch = world.batch("none")
    first = world.upload("a", job, 0, "none", batch=batch)
    again = world.upload("a", job, 0, "none", batch=batch)
    assert again.already_received and again.digest == first.digest and again.bytes == first.bytes
    with pytest.raises(AlreadyExists, match="duplicate upload: a already contributed to round 0"):
        world.upload("a", job, 0, "none", batch=world.batch("none", seed=9))
    assert len(world.events.named("upload_accepted")) == 1


def test_the_layout_most_contributors_committed_is_released_not_the_first(world: World) -> None:
    """Was test_first_committed_upload_fixes_the_layout: under the old rule b's 12-value upload was
    refused; now it is taken, sums apart, and is outvoted (and audited) at close."""
    job = world.submit(profile="none", rounds=1)
    world.upload("a", job, 0, "none", batch=world.batch("none", values=10))
    world.upload("b", job, 0, "none", batch=world.batch("none", values=12))  # no longer refused
    world.upload("c", job, 0, "none")  # a's layout is still welcome
    released = world.events.named("aggregate_released")[0]
    assert released["contributors"] == ["a", "c"] and released["why"] == "all participants reported"
    outvoted = world.events.named("layout_outvoted")
    assert len(outvoted) == 1 and outvoted[0]["contributors"] == ["b"]
    assert outvoted[0]["layout"].endswith("(13 values)") and outvoted[0]["released_contributors"] == ["a", "c"]


def test_a_tiny_upload_committed_first_cannot_fail_the_round_for_everyone(world: World) -> None:
    """Issue 11 item 9: an attacker commits a valid, signed 2-value ciphertext under the shared key
    before anyone has trained; the honest silos' real layout is released, the attacker left out."""
    job = world.submit(rounds=1)
    world.upload("c", job, 0, batch=world.batch("sum", values=2, seed=7))  # wins the race, trains nothing
    for i, silo in enumerate(["a", "b"]):
        receipt = world.upload(silo, job, 0, batch=world.batch("sum", seed=i))
        assert not receipt.already_received
    assert world.round_status(job, 0) == RoundStatus.CLOSED
    assert world.engine.store.job(job).status == JobStatus.COMPLETED  # type: ignore[union-attr]
    released = world.engine.aggregate(job, 0, "a")
    manifest, chunks, contributors = released.manifest, released.chunks, released.contributors
    assert contributors == 2 and manifest.value_count == world.batch("sum").manifest.value_count
    mean = decrypt_weighted_mean(SumEncryptor(world.keys), manifest, list(chunks))
    expected = sum(np.random.default_rng(i).normal(size=10) for i in range(2)) / 2  # the attacker adds nothing
    assert np.allclose(np.asarray(mean.tensors["w"]).ravel(), expected, atol=1e-3)
    assert world.events.named("aggregate_released")[0]["contributors"] == ["a", "b"]
    outvoted = world.events.named("layout_outvoted")
    assert [o["contributors"] for o in outvoted] == [["c"]] and outvoted[0]["layout"].endswith("(3 values)")


def test_a_tie_between_layouts_fails_the_round_naming_both(world: World) -> None:
    job = world.submit(profile="none", rounds=1, round_timeout_s=10, max_round_retries=0)
    world.upload("a", job, 0, "none", batch=world.batch("none", values=10))
    world.upload("b", job, 0, "none", batch=world.batch("none", values=2))
    world.clock.t += 10
    world.engine.tick()
    assert not world.events.named("aggregate_released")
    failed = world.events.named("round_failed")[0]
    assert failed["contributors"] == ["a", "b"]
    assert "no layout leads, 1 contributors each; competing layouts: layout " in failed["reason"]
    assert "(11 values) from a" in failed["reason"] and "(3 values) from b" in failed["reason"]
    assert world.engine.store.job(job).status == JobStatus.FAILED  # type: ignore[union-attr]


def test_a_broken_upload_is_rolled_back_and_leaves_the_sum_exact(world: World) -> None:
    job = world.submit(rounds=1)
    batch = world.batch("sum", seed=1)
    with pytest.raises(InvalidArgument):  # the manifest lists chunks that never arrive
        world.upload("a", job, 0, batch=batch, chunks=[])
    with pytest.raises(InvalidArgument, match="chunk 0 rejected"):
        world.upload("a", job, 0, batch=batch, chunks=[batch.chunks[0][:-1]])
    rolled = world.events.named("upload_rolled_back")
    assert [r["chunks_added"] for r in rolled] == [0, 0]
    open_round = world.engine.rounds.open_round(job)
    assert open_round is not None and not open_round.uploads and not open_round.staging
    for i, silo in enumerate(SILOS):
        world.upload(silo, job, 0, batch=world.batch("sum", seed=i))
    released = world.engine.aggregate(job, 0, "b")
    manifest, chunks = released.manifest, released.chunks
    mean = decrypt_weighted_mean(SumEncryptor(world.keys), manifest, list(chunks))
    expected = sum(np.random.default_rng(i).normal(size=10) for i in range(3)) / 3
    assert np.allclose(np.asarray(mean.tensors["w"]).ravel(), expected, atol=1e-3)


def test_an_upload_cut_off_mid_stream_is_subtracted_again(world: World) -> None:
    job = world.submit(rounds=1)
    values = SumEncryptor(world.keys).values_per_chunk + 1  # two chunks per upload
    batches = [world.batch("sum", values=values, seed=i) for i in range(4)]
    assert len(batches[0].chunks) == 2
    world.upload("a", job, 0, batch=batches[0])  # fixes the layout: later uploads add into the round's sum
    who = world.silos["b"]
    signed = SignedUpload.sign(who.key, job, 0, batches[3].manifest)
    offer = UploadOffer(job, 0, batches[3].manifest.value_count, lambda: signed)
    with pytest.raises(Cancelled, match="went away"):  # one chunk added to the sum, then the silo is gone
        world.engine.upload(who.ident, who.cert, offer, iter(batches[3].chunks[:1]), lambda: False)
    assert world.events.named("upload_rolled_back")[0]["chunks_added"] == 1
    world.upload("b", job, 0, batch=batches[1])
    world.upload("c", job, 0, batch=batches[2])
    released = world.engine.aggregate(job, 0, "a")
    manifest, chunks, contributors = released.manifest, released.chunks, released.contributors
    mean = decrypt_weighted_mean(SumEncryptor(world.keys), manifest, list(chunks))
    expected = sum(np.random.default_rng(i).normal(size=values) for i in range(3)) / 3
    assert contributors == 3 and np.allclose(np.asarray(mean.tensors["w"]).ravel(), expected, atol=1e-3)


def test_a_round_closing_mid_upload_cancels_it_exactly(world: World) -> None:
    job = world.submit(profile="none", rounds=1, round_timeout_s=5)
    world.upload("a", job, 0, "none")
    world.upload("b", job, 0, "none")
    batch = world.batch("none")

    def chunks_then_deadline() -> Iterator[bytes]:
        world.clock.t += 5
        world.engine.tick()  # the deadline passes while c is streaming: the round closes without it
        yield from batch.chunks

    who = world.silos["c"]
    signed = SignedUpload.sign(who.key, job, 0, batch.manifest)
    offer = UploadOffer(job, 0, batch.manifest.value_count, lambda: signed)
    with pytest.raises(Aborted, match="closed \\(deadline reached\\) before this upload completed"):
        world.engine.upload(who.ident, who.cert, offer, chunks_then_deadline(), lambda: True)
    assert world.events.named("aggregate_released")[0]["contributors"] == ["a", "b"]


def test_uploads_are_refused_in_order_before_any_work(world: World) -> None:
    job = world.submit(profile="none", rounds=1)
    with pytest.raises(Forbidden, match="outsider is not a participant"):
        world.upload("outsider", job, 0, "none")
    with pytest.raises(PreconditionFailed, match="round 1 of job .* is not open; the open round is 0"):
        world.upload("a", job, 1, "none")
    batch = world.batch("none")
    forged = SignedUpload.sign(world.silos["b"].key, job, 0, batch.manifest)  # signed by someone else
    offer = UploadOffer(job, 0, 10, lambda: forged)
    with pytest.raises(Forbidden, match="upload signature rejected"):
        world.engine.upload(world.silos["a"].ident, world.silos["a"].cert, offer, iter(batch.chunks), lambda: True)
    with pytest.raises(PreconditionFailed, match="upload is under key"):
        world.upload("a", job, 0, "sum")


def test_the_core_imports_no_grpc_and_no_generated_stubs() -> None:
    """Done-when of issue 12: the domain core is free of the transport, by its imports."""
    banned = ("grpc", "grpc_health", "protocol.cipherfed_pb2", "protocol.cipherfed_pb2_grpc")
    offenders = []
    for path in sorted((ROOT / "aggregator" / "core").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(banned)]
    assert offenders == []
    code = "import sys, aggregator.core.jobs; print('grpc' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == "False"  # nor does anything the core imports pull grpc in


def test_the_last_advert_publishes_the_roster_and_wakes_the_polls(tmp_path: Path, silos: dict[str, Silo]) -> None:
    """A silo holds its poll loop at most a moment waiting for a roster (silo_node/secagg_round.py
    ``MAX_BLOCKING_WAIT_S``), then polls. When the last advert makes the core publish the roster, the
    polls wake at once: otherwise that silo would upload a whole poll timeout later. Adverts before it
    change no task and wake no poll."""
    from aggregator.core.secagg_session import AggregatorCredentials
    from aggregator.core.views import RelayOffer
    from crypto.pki import certificate_fingerprint
    from crypto.secagg.keys import RoundKeys, advertise
    from protocol.secagg import round_context
    from protocol.vocabulary import AGGREGATOR_RECIPIENT, SecAggKind

    compact = generate_key_set("compact")
    ring = PublicKeyring()
    ring.add(compact.export_public())
    agg = Silo("aggregator")
    engine = Jobs(
        StateStore(tmp_path / "state.sqlite"), AggregateFiles(tmp_path / "aggregates"), ring, tmp_path, Events(),
        clock=FakeClock(), consortium="c", credentials=AggregatorCredentials(agg.cert, agg.key),
    )  # fmt: skip
    spec = job_toml(
        "j", SILOS, compact.fingerprint, ["x"], he_profile="compact", scaling="none",
        compact="weight_cap = 100", secagg="",
    )  # fmt: skip
    job = engine.submit(spec, ADMIN)
    context = round_context("c", job, 0, 1)
    versions = [engine.feed.version]
    for name in SILOS:
        who = silos[name]
        ident = Identity(name, "silo", 2, certificate_fingerprint(who.cert), who.ident.not_after)
        advert = advertise(RoundKeys.generate(), context, who.cert, who.key).to_bytes()
        offer = RelayOffer(job, AGGREGATOR_RECIPIENT, SecAggKind.ADVERT, context.round, advert)
        if name != SILOS[-1]:
            assert engine.relay_send(ident, who.cert, iter([offer]), 4, 1 << 16, 1 << 16) == 1
        else:  # the last advert, then a message the relay refuses: what the advert did still wakes the polls
            bogus = RelayOffer(job, AGGREGATOR_RECIPIENT, "bogus", context.round, b"x")
            with pytest.raises(InvalidArgument):
                engine.relay_send(ident, who.cert, iter([offer, bogus]), 4, 1 << 16, 1 << 16)
        versions.append(engine.feed.version)
    assert versions[1] == versions[0] and versions[2] == versions[1], "an advert alone woke the polls"
    assert versions[3] > versions[2], "the roster went out without waking the polls"
    assert engine.rounds.secagg.sessions[job].roster is not None
    # a silo of the release that removed the masks at the aggregator quantizes without "unmasking": refused at
    # upload (PreconditionFailed names both), never summed into a round whose masks it would not remove
    params = compact_params(parse_job_spec(spec))
    manifest = CompactEncryptor(compact, params).encrypt_update({"v": np.zeros(50)}, 5, mask=lambda v: v).manifest
    engine.rounds.secagg.check_upload(job, ident, manifest)
    earlier = json.loads(params.describe())
    del earlier["unmasking"]
    older = dataclasses.replace(manifest, quantization=json.dumps(earlier, sort_keys=True, separators=(",", ":")))
    with pytest.raises(PreconditionFailed, match='upload is quantized as .*this job masks .*"unmasking":"silos"'):
        engine.rounds.secagg.check_upload(job, ident, older)
    engine.store.close()


def test_a_masked_sum_is_stored_and_served_with_its_unmasking_record(tmp_path: Path, world: World) -> None:
    """A secure-aggregation round releases its sum still masked, with the record the silos remove the masks
    with: both travel in one file (its own magic), and a file that claims to be masked but lost its record
    is refused rather than served as an ordinary sum."""
    batch = world.batch("sum", seed=1)
    archive = AggregateFiles(tmp_path)
    plain_where, _ = archive.write("job-a", 0, batch.manifest, batch.chunks)
    masked_where, _ = archive.write("job-a", 1, batch.manifest, batch.chunks, b"record")
    manifest, unmasking, chunks = archive.read(plain_where)
    assert unmasking == b"" and list(chunks) == batch.chunks and manifest == batch.manifest
    assert Path(plain_where).read_bytes().startswith(b"CFAGG1\n")  # an unmasked sum's file is unchanged
    manifest, unmasking, chunks = archive.read(masked_where)
    assert unmasking == b"record" and list(chunks) == batch.chunks and manifest == batch.manifest
    data = Path(masked_where).read_bytes()
    header_end = 7 + 4 + int.from_bytes(data[7:11], "big")
    Path(masked_where).write_bytes(data[:header_end] + frame(b""))  # the record emptied, the chunks gone
    with pytest.raises(FramingError, match="without its unmasking record"):
        archive.read(masked_where)
    Path(masked_where).write_bytes(b"CFAGX1\n" + data[7:])
    with pytest.raises(FramingError, match="not an aggregate file"):
        archive.read(masked_where)
