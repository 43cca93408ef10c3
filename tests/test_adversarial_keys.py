"""Adversarial tests, key authenticity (issue 11 items 1, 2 and the key/PKI parts of 8).

The aggregator may mint an HE key of its own and wrap it to a member; a member may squat a
vertical job's key scope; revoked members' keys, and stale or rolled-back CRLs, must not be used.
Unit tests drive the real NodeKeys / PassiveParty / RevocationList code with real certificates and
real CKKS keys; the end-to-end tests run a real aggregator and a real silo node process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from crypto import pki
from crypto.custody import create_and_wrap
from crypto.endorsement import (
    Endorsement,
    EndorsementError,
    Recipient,
    TrustAnchors,
    encode_bundle,
    endorse,
)
from crypto.errors import KeyMaterialError, PKIError, UntrustedCertificateError
from crypto.keys import compute_commitment, compute_fingerprint, generate_key_set, load_secret_key_set
from crypto.wrapping import wrap_key
from protocol import cipherfed_pb2 as pb
from silo_node.config import HEKeys, NodeConfig
from silo_node.keys import FetchedKey, NodeKeys, sidecar

CONSORTIUM = "Key Test Consortium"
VECTORS = Path(__file__).parent / "vectors" / "key_fingerprint_endorsement_v2.json"


# ---------------------------------------------------------------------------------------------- fixtures
class World:
    """A consortium CA with a custodian (h1), members (h2, h3), a rogue silo and the aggregator."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca_dir = root / "ca"
        pki.init_ca(self.ca_dir, CONSORTIUM)
        self.ca = pki.load_certificate(self.ca_dir / "ca.crt")
        self.certs: dict[str, x509.Certificate] = {}
        self.keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        for name, role in (
            ("h1", "silo"),
            ("h2", "silo"),
            ("h3", "silo"),
            ("rogue", "silo"),
            ("aggregator", "aggregator"),
        ):
            self.issue(name, role)

    def issue(self, name: str, role: str = "silo", **kwargs: object) -> x509.Certificate:
        cert_path, key_path = pki.issue(self.ca_dir, name, role, self.root / "certs" / name, **kwargs)  # type: ignore[arg-type]
        self.certs[name] = pki.load_certificate(cert_path)
        self.keys[name] = pki.load_private_key(key_path)
        return self.certs[name]

    def cert_path(self, name: str) -> Path:
        return self.root / "certs" / name / f"{name}.crt"

    def revocation(self, state: Path | None = None) -> pki.RevocationList:
        return pki.RevocationList(self.ca_dir / "crl.pem", self.ca, state)

    def trust(self, pins: list[str] | None = None) -> TrustAnchors:
        return TrustAnchors(self.ca, self.revocation(), frozenset(pins) if pins is not None else None)

    def genuine(self, members: tuple[str, ...] = ("h2", "h3"), scope: str = "consortium", custodian: str = "h1"):
        return create_and_wrap(
            [self.certs[m] for m in members],
            consortium=CONSORTIUM,
            custodian_key=self.keys[custodian],
            custodian_cert=self.certs[custodian],
            scope=scope,
        )

    def node_keys(self, name: str, fetched: FetchedKey | None, pins: list[str] | None = None) -> NodeKeys:
        cache = self.root / "nodes" / name / f"cache-{time.monotonic_ns()}"
        return NodeKeys(
            HEKeys(),
            name,
            CONSORTIUM,
            self.keys[name],
            self.certs[name],
            cache,
            (lambda fp: fetched) if fetched is not None else None,  # type: ignore[arg-type,return-value]
            trust=self.trust(pins),
        )

    def pem(self, name: str) -> bytes:
        return self.certs[name].public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def minted_for(world: World, member: str, scope: str = "consortium"):
    """What a malicious aggregator can make from public material: its own key set, same parameters,
    wrapped to a member's certificate (the certificate is public)."""
    keys = generate_key_set("sum")
    blob = wrap_key(keys.export_secret(), world.certs[member], consortium=CONSORTIUM, job=scope, recipient=member)
    return keys, blob


# ---------------------------------------------------------------------------------------------- vectors
def test_fingerprint_and_endorsement_encodings_match_the_frozen_vectors() -> None:
    v = json.loads(VECTORS.read_text())
    c = v["commitment"]
    commitment = compute_commitment(bytes.fromhex(c["key_id_hex"]), bytes.fromhex(c["secret_bytes_hex"]))
    assert commitment.hex() == c["expected_hex"]
    f = v["fingerprint"]
    assert (
        compute_fingerprint(
            f["profile"], bytes.fromhex(f["public_parameters_hex"]), bytes.fromhex(f["key_id_hex"]), commitment
        )
        == f["expected"]
    )
    e = v["endorsement"]
    endorsement = Endorsement(
        consortium=e["consortium"],
        scope=e["scope"],
        fingerprint=e["fingerprint"],
        profile=e["profile"],
        public_context_sha256=e["public_context_sha256"],
        recipients=tuple(
            Recipient(r["name"], r["cert_fingerprint"], int(r["cert_serial_hex"], 16), r["blob_sha256"])
            for r in e["recipients"]
        ),
        custodian_cert_fingerprint=e["custodian_cert_fingerprint"],
        signature=bytes.fromhex(e["signature_der_hex"]),
    )
    statement = endorsement.statement()
    assert statement.hex() == e["statement_hex"]
    assert hashlib.sha256(statement).hexdigest() == e["statement_sha256"]
    signer = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), bytes.fromhex(e["signer_public_key_x962_hex"])
    )
    signer.verify(endorsement.signature, statement, ec.ECDSA(hashes.SHA256()))
    decoded = Endorsement.decode(endorsement.encode())  # the transport form round-trips
    assert decoded.statement() == statement and decoded.signature == endorsement.signature


# ---------------------------------------------------------------------------------------------- item 1, unit
def test_a_secret_that_does_not_match_its_fingerprint_commitment_is_refused() -> None:
    genuine = generate_key_set("sum")
    forged = generate_key_set("sum")
    # the aggregator copies the genuine public header (key id + commitment) onto its own secret
    forged.public.key_id, forged.public.commitment = genuine.public.key_id, genuine.public.commitment
    with pytest.raises(KeyMaterialError, match="does not match the commitment"):
        load_secret_key_set(forged.export_secret())
    # and the honest export still loads, with a fingerprint that depends on the secret
    assert load_secret_key_set(genuine.export_secret()).fingerprint == genuine.fingerprint
    old = genuine.export_secret()
    with pytest.raises(KeyMaterialError, match="predates key commitments"):
        load_secret_key_set(old[:5] + b"\x01" + old[6:])


def test_a_genuine_endorsed_key_is_accepted(world: World) -> None:
    bundle = world.genuine()
    fetched = FetchedKey("consortium", bundle.wrapped["h3"], bundle.endorsement.encode(), world.pem("h1"))
    keys = world.node_keys("h3", fetched)
    assert keys.encryptor("sum", bundle.fingerprint).fingerprint == bundle.fingerprint
    # cached next to its endorsement and re-verified from disk by a restarted node
    cached = next((keys._cache_dir).glob("*.wrapped"))
    assert sidecar(cached).exists()
    again = NodeKeys(
        HEKeys(), "h3", CONSORTIUM, world.keys["h3"], world.certs["h3"], keys._cache_dir, None, trust=world.trust()
    )
    assert again.encryptor("sum", bundle.fingerprint).fingerprint == bundle.fingerprint


def _refused(keys: NodeKeys, fingerprint: str, match: str) -> None:
    with pytest.raises(KeyMaterialError, match=match):
        keys.encryptor("sum", fingerprint)


def test_an_aggregator_minted_key_is_refused_in_every_disguise(world: World) -> None:
    keys, blob = minted_for(world, "h3")
    fp = keys.fingerprint
    # 1. no endorsement at all
    _refused(world.node_keys("h3", FetchedKey("consortium", blob, b"", b"")), fp, "no custodian endorsement")
    # 2. endorsed by the aggregator's own certificate (correct in every other respect)
    by_aggregator = endorse(
        world.keys["aggregator"],
        world.certs["aggregator"],
        consortium=CONSORTIUM,
        scope="consortium",
        fingerprint=fp,
        profile="sum",
        public_export=keys.export_public(),
        wrapped={"h3": (world.certs["h3"], blob)},
    )
    fetched = FetchedKey("consortium", blob, by_aggregator.encode(), world.pem("aggregator"))
    _refused(world.node_keys("h3", fetched), fp, "has role 'aggregator'")
    # 3. the custodian's genuine endorsement replayed for the minted key
    genuine = world.genuine()
    fetched = FetchedKey("consortium", blob, genuine.endorsement.encode(), world.pem("h1"))
    _refused(world.node_keys("h3", fetched), fp, "endorsement is for key")
    # 4. the genuine endorsement and fingerprint, the minted blob swapped in
    fetched = FetchedKey("consortium", blob, genuine.endorsement.encode(), world.pem("h1"))
    _refused(world.node_keys("h3", fetched), genuine.fingerprint, "not the blob the custodian wrapped")
    # 5. the aggregator signs with the genuine custodian's name but its own key: signature fails
    forged = Endorsement(**{**genuine.endorsement.__dict__, "signature": by_aggregator.signature})
    fetched = FetchedKey("consortium", genuine.wrapped["h3"], forged.encode(), world.pem("h1"))
    _refused(world.node_keys("h3", fetched), genuine.fingerprint, "signature over this key does not verify")


def test_a_custodian_outside_the_site_policy_pins_is_refused(world: World) -> None:
    rogue = world.genuine(custodian="rogue")
    fetched = FetchedKey("consortium", rogue.wrapped["h3"], rogue.endorsement.encode(), world.pem("rogue"))
    pins = [pki.certificate_fingerprint(world.certs["h1"])]
    _refused(world.node_keys("h3", fetched, pins), rogue.fingerprint, "not in the site policy's key_custodians")
    # absent pins: any current silo of the consortium may be the custodian
    assert world.node_keys("h3", fetched).encryptor("sum", rogue.fingerprint).fingerprint == rogue.fingerprint


def test_a_key_endorsed_for_another_certificate_with_this_nodes_name_is_refused(world: World) -> None:
    bundle = world.genuine()
    old_cert, old_key = world.certs["h3"], world.keys["h3"]
    world.issue("h3")  # the node re-enrolled: same name, new certificate
    fetched = FetchedKey("consortium", bundle.wrapped["h3"], bundle.endorsement.encode(), world.pem("h1"))
    _refused(world.node_keys("h3", fetched), bundle.fingerprint, "not endorse key .* for this node's certificate")
    assert old_cert != world.certs["h3"] and old_key is not world.keys["h3"]


def test_a_wrapped_file_without_its_endorsement_sidecar_is_refused(world: World, tmp_path: Path) -> None:
    bundle = world.genuine()
    blob_path = tmp_path / "he_key.wrapped"
    blob_path.write_bytes(bundle.wrapped["h3"])
    settings = HEKeys(wrapped_key=blob_path)
    keys = NodeKeys(
        settings, "h3", CONSORTIUM, world.keys["h3"], world.certs["h3"], tmp_path / "c", None, trust=world.trust()
    )
    _refused(keys, bundle.fingerprint, "has no custodian endorsement")
    sidecar(blob_path).write_bytes(encode_bundle(bundle.endorsement, world.certs["h1"]))
    keys = NodeKeys(
        settings, "h3", CONSORTIUM, world.keys["h3"], world.certs["h3"], tmp_path / "c", None, trust=world.trust()
    )
    assert keys.encryptor("sum", bundle.fingerprint).fingerprint == bundle.fingerprint


# ---------------------------------------------------------------------------------------------- item 8: rotation
@pytest.mark.parametrize("revoked", ["h2", "h1"])
def test_a_key_shared_with_a_revoked_member_or_by_a_revoked_custodian_is_never_used_for_a_new_job(
    world: World, revoked: str
) -> None:
    bundle = world.genuine()
    fetched = FetchedKey("consortium", bundle.wrapped["h3"], bundle.endorsement.encode(), world.pem("h1"))
    keys = world.node_keys("h3", fetched)
    assert keys.encryptor("sum", bundle.fingerprint).fingerprint == bundle.fingerprint  # first job: fine
    pki.revoke(world.ca_dir, world.certs[revoked].serial_number)
    time.sleep(0.01)
    os.utime(world.ca_dir / "crl.pem")
    match = "whose certificate is revoked" if revoked == "h2" else "key custodian not trusted.*revoked"
    _refused(keys, bundle.fingerprint, match)  # the next job: refused, with what the custodian must do
    # a new key without the revoked member (and by a current custodian) is accepted again
    custodian = "h1" if revoked == "h2" else "h2"
    members = ("h3",) if revoked == "h2" else ("h3",)
    fresh = world.genuine(members=members, custodian=custodian)
    fetched2 = FetchedKey("consortium", fresh.wrapped["h3"], fresh.endorsement.encode(), world.pem(custodian))
    assert world.node_keys("h3", fetched2).encryptor("sum", fresh.fingerprint).fingerprint == fresh.fingerprint


def test_the_custodians_own_key_is_not_used_after_a_recipient_is_revoked(world: World, tmp_path: Path) -> None:
    bundle = world.genuine()
    secret = tmp_path / "he_secret.key"
    pki.write_secret_file(secret, bundle.keys.export_secret())
    sidecar(secret).write_bytes(encode_bundle(bundle.endorsement, world.certs["h1"]))
    keys = NodeKeys(
        HEKeys(secret_key=secret), "h1", CONSORTIUM, world.keys["h1"], world.certs["h1"], tmp_path / "c",
        trust=world.trust(),
    )  # fmt: skip
    assert keys.encryptor("sum", bundle.fingerprint)
    pki.revoke(world.ca_dir, world.certs["h3"].serial_number)
    _refused(keys, bundle.fingerprint, "h3, whose certificate is revoked")


# ---------------------------------------------------------------------------------------------- item 8: keys create
def _custodian_config(world: World, tmp_path: Path) -> NodeConfig:
    from protocol.clientconfig import ClientTls
    from silo_node.config import DataSource

    certs = world.root / "certs" / "h1"
    return NodeConfig(
        name="h1",
        consortium=CONSORTIUM,
        aggregator="127.0.0.1:1",
        tls=ClientTls(
            ca=world.ca_dir / "ca.crt", cert=certs / "h1.crt", key=certs / "h1.key", crl=world.ca_dir / "crl.pem"
        ),
        data=DataSource(path=tmp_path / "data.csv"),
        state_dir=tmp_path / "state",
    )


class _NoAggregator:
    """keys create must refuse before it contacts anyone; reaching the aggregator fails the test."""

    @property
    def stub(self):
        raise AssertionError("keys create contacted the aggregator with a bad member certificate")


def test_keys_create_refuses_revoked_and_expired_member_certificates(world: World, tmp_path: Path) -> None:
    from audit.events import LogSink
    from silo_node.custody import create_key

    config = _custodian_config(world, tmp_path)
    pki.revoke(world.ca_dir, world.certs["h2"].serial_number)
    with pytest.raises(PKIError, match=r"--member-cert .*h2.crt: .*revoked"):
        create_key(config, [world.cert_path("h2"), world.cert_path("h3")], "consortium", LogSink("t"), _NoAggregator())  # type: ignore[arg-type]
    expired = world.issue("old", not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=40), days=30)
    assert expired.not_valid_after_utc < dt.datetime.now(dt.UTC)
    with pytest.raises(PKIError, match=r"--member-cert .*old.crt: .*valid"):
        create_key(config, [world.cert_path("old")], "consortium", LogSink("t"), _NoAggregator())  # type: ignore[arg-type]
    assert not (tmp_path / "state" / "keys").exists()  # nothing generated, nothing wrapped


# ---------------------------------------------------------------------------------------------- item 8: CRL
def _crl(world: World, last: dt.datetime, nxt: dt.datetime, number: int) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(world.ca.subject)
        .last_update(last)
        .next_update(nxt)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    key = pki.load_private_key(world.ca_dir / "ca.key")
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_a_crl_past_its_next_update_is_refused(world: World) -> None:
    now = dt.datetime.now(dt.UTC)
    (world.ca_dir / "crl.pem").write_bytes(_crl(world, now - dt.timedelta(days=40), now - dt.timedelta(days=10), 99))
    with pytest.raises(UntrustedCertificateError, match="expired .* next_update"):
        world.revocation().is_revoked(1)


def test_a_rolled_back_crl_is_refused_even_after_a_restart(world: World, tmp_path: Path) -> None:
    crl = world.ca_dir / "crl.pem"
    old = crl.read_bytes()
    pki.revoke(world.ca_dir, world.certs["h2"].serial_number)
    state = tmp_path / "crl_state.json"
    revocation = world.revocation(state)
    assert revocation.is_revoked(world.certs["h2"].serial_number)
    crl.write_bytes(old)  # someone puts the older list (which does not revoke h2) back
    os.utime(crl, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    with pytest.raises(UntrustedCertificateError, match="older than one already loaded"):
        revocation.is_revoked(world.certs["h2"].serial_number)
    with pytest.raises(UntrustedCertificateError, match="older than one already loaded"):
        world.revocation(state).is_revoked(world.certs["h2"].serial_number)  # a restarted node remembers
    # the CA's next list is newer again and is accepted
    pki.revoke(world.ca_dir, world.certs["rogue"].serial_number)
    assert world.revocation(state).is_revoked(world.certs["h2"].serial_number)


def test_a_node_refuses_keys_while_its_crl_is_stale(world: World) -> None:
    bundle = world.genuine()
    now = dt.datetime.now(dt.UTC)
    (world.ca_dir / "crl.pem").write_bytes(_crl(world, now - dt.timedelta(days=40), now - dt.timedelta(days=10), 99))
    fetched = FetchedKey("consortium", bundle.wrapped["h3"], bundle.endorsement.encode(), world.pem("h1"))
    _refused(world.node_keys("h3", fetched), bundle.fingerprint, "next_update")


# ---------------------------------------------------------------------------------------------- item 2: passive
def _passive(world: World, tmp_path: Path, job_id: str = "vjob-abc123"):
    from audit.events import LogSink
    from protocol.jobspec import parse_job_spec
    from silo_node.vertical import PartyCredentials, PassiveParty

    spec = parse_job_spec(VERTICAL_JOB)
    creds = PartyCredentials(CONSORTIUM, world.keys["h2"], world.certs["h2"], world.trust())
    return PassiveParty(job_id, spec, "h2", None, None, None, LogSink("t"), tmp_path, creds)  # type: ignore[arg-type]


VERTICAL_JOB = """name = "vjob"
partition = "vertical"
rounds = 1
batch_size = 16
lr = 0.1
he_profile = "vertical"
participants = ["h1", "h2"]
[model]
type = "logreg"
[dataset]
features = ["a", "b"]
label = "label"
id = "pid"
[vertical]
active = "h1"
passive = ["h2"]
features = { h1 = ["a"], h2 = ["b"] }
min_entities = 10
"""


def _vertical_reply(world: World, signer: str, job_id: str, export: bytes | None = None, endorsed_export=None):
    keys = generate_key_set("vertical")
    public = export if export is not None else keys.export_public()
    signed_export = endorsed_export if endorsed_export is not None else public
    from crypto.keys import load_public_context

    fp = load_public_context(signed_export).fingerprint
    endorsement = endorse(
        world.keys[signer],
        world.certs[signer],
        consortium=CONSORTIUM,
        scope=job_id,
        fingerprint=fp,
        profile="vertical",
        public_export=signed_export,
        wrapped={},
    )
    return pb.KeyMaterialReply(
        scope=job_id,
        fingerprint=fp,
        public_context=public,
        endorsement=endorsement.encode(),
        custodian_cert=world.pem(signer),
    )


def test_a_passive_party_uses_only_a_public_key_endorsed_by_the_jobs_active_party(world: World, tmp_path: Path) -> None:
    from silo_node.vertical import VerticalError

    passive = _passive(world, tmp_path)
    job = "vjob-abc123"
    genuine = _vertical_reply(world, "h1", job)
    assert passive._endorsed_public(genuine).fingerprint == genuine.fingerprint
    # a squatter's key, signed by the squatter (a current silo, but not the job's active party)
    with pytest.raises(VerticalError, match="endorsed by 'rogue', not by 'h1'"):
        passive._endorsed_public(_vertical_reply(world, "rogue", job))
    # the active party's genuine signature with a forged public context swapped in
    forged = generate_key_set("vertical").export_public()
    swapped = pb.KeyMaterialReply()
    swapped.CopyFrom(genuine)
    swapped.public_context = forged
    with pytest.raises(VerticalError, match="not the one the active party signed"):
        passive._endorsed_public(swapped)
    # no endorsement, or one made for another job
    with pytest.raises(VerticalError, match="no custodian endorsement"):
        passive._endorsed_public(pb.KeyMaterialReply(scope=job, public_context=forged))
    with pytest.raises(VerticalError, match="endorsed for scope 'other-job'"):
        passive._endorsed_public(_vertical_reply(world, "h1", "other-job"))


def test_endorsement_decoding_is_bounded_and_strict() -> None:
    with pytest.raises(EndorsementError, match="limit"):
        Endorsement.decode(b"{" * (600 * 1024))
    with pytest.raises(EndorsementError, match="malformed"):
        Endorsement.decode(json.dumps({"version": 1, "scope": "../../x"}).encode())
    with pytest.raises(EndorsementError, match="safe identifier"):
        Endorsement.decode(
            json.dumps(
                {
                    "version": 1,
                    "consortium": "c",
                    "scope": "../x",
                    "fingerprint": "0" * 32,
                    "profile": "sum",
                    "public_context_sha256": "0" * 64,
                    "custodian_cert_fingerprint": "0" * 64,
                    "recipients": [],
                    "signature": "",
                }
            ).encode()
        )


# ---------------------------------------------------------------------------------------------- end to end
def _audit(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _mint_into_aggregator_db(c, victim: str) -> dict[str, tuple[str, str]]:
    """Play the malicious aggregator operator: write minted key material straight into the SQLite
    state (no RPC, so none of the aggregator's own checks apply). Returns scope -> (fingerprint, attack)."""
    from aggregator.store import StateStore
    from crypto.keys import load_public_context

    victim_cert = pki.load_certificate(c.nodes[victim].cert)
    custodian = c.silos[0]
    custodian_key = pki.load_private_key(c.nodes[custodian].key)
    custodian_cert = pki.load_certificate(c.nodes[custodian].cert)
    custodian_pem = custodian_cert.public_bytes(serialization.Encoding.PEM)
    agg_cert = pki.load_certificate(c.agg_dir / "aggregator.crt")
    agg_key = pki.load_private_key(c.agg_dir / "aggregator.key")
    store = StateStore(c.agg_dir / "state" / "aggregator.sqlite")
    attacks: dict[str, tuple[str, str]] = {}

    def mint(scope: str):
        keys = generate_key_set("sum")
        blob = wrap_key(keys.export_secret(), victim_cert, consortium=c.consortium, job=scope, recipient=victim)
        return keys, blob

    keys, blob = mint("evil-none")  # 1. no endorsement at all
    store.put_key_material("evil-none", keys.fingerprint, keys.export_public(), custodian, {victim: blob})
    attacks["evil-none"] = (keys.fingerprint, "no custodian endorsement")

    keys, blob = mint("evil-aggsig")  # 2. endorsed by the aggregator's own certificate
    signed = endorse(
        agg_key, agg_cert, consortium=c.consortium, scope="evil-aggsig", fingerprint=keys.fingerprint,
        profile="sum", public_export=keys.export_public(), wrapped={victim: (victim_cert, blob)},
    )  # fmt: skip
    store.put_key_material(
        "evil-aggsig", keys.fingerprint, keys.export_public(), "aggregator", {victim: blob},
        signed.encode(), agg_cert.public_bytes(serialization.Encoding.PEM),
    )  # fmt: skip
    attacks["evil-aggsig"] = (keys.fingerprint, "has role 'aggregator'")

    # 3. the custodian's valid endorsement (of a genuine key) replayed for the minted key
    genuine = create_and_wrap(
        [victim_cert], consortium=c.consortium, custodian_key=custodian_key, custodian_cert=custodian_cert,
        scope="evil-replay",
    )  # fmt: skip
    keys, blob = mint("evil-replay")
    store.put_key_material(
        "evil-replay", keys.fingerprint, keys.export_public(), custodian, {victim: blob},
        genuine.endorsement.encode(), custodian_pem,
    )  # fmt: skip
    attacks["evil-replay"] = (keys.fingerprint, "endorsement is for key")

    # 4. the genuine fingerprint, public context and endorsement, with the minted blob swapped in
    genuine = create_and_wrap(
        [victim_cert], consortium=c.consortium, custodian_key=custodian_key, custodian_cert=custodian_cert,
        scope="evil-swap",
    )  # fmt: skip
    _, blob = mint("evil-swap")
    store.put_key_material(
        "evil-swap", genuine.fingerprint, genuine.public_export, custodian, {victim: blob},
        genuine.endorsement.encode(), custodian_pem,
    )  # fmt: skip
    attacks["evil-swap"] = (genuine.fingerprint, "not the blob the custodian wrapped")

    # control: the genuine custodian's key, relayed honestly, is accepted by the same node
    honest = create_and_wrap(
        [victim_cert], consortium=c.consortium, custodian_key=custodian_key, custodian_cert=custodian_cert,
        scope="honest",
    )  # fmt: skip
    store.put_key_material(
        "honest", honest.fingerprint, honest.public_export, custodian, honest.wrapped,
        honest.endorsement.encode(), custodian_pem,
    )  # fmt: skip
    attacks["honest"] = (honest.fingerprint, "")
    for scope, (fp, _) in attacks.items():
        assert load_public_context(store.key_material(scope)[1]).fingerprint == fp  # type: ignore[index]
    store.close()
    return attacks


@pytest.fixture(scope="module")
def minted(tmp_path_factory):
    from cipherfed.localconsortium import LocalConsortium

    c = LocalConsortium(tmp_path_factory.mktemp("keys-e2e"), ["h1", "h2", "h3"])
    c.provision()
    attacks = _mint_into_aggregator_db(c, "h3")
    c.write_aggregator_config()
    c.start_aggregator()
    c.write_admin_config()
    yield c, attacks
    c.stop_all()


@pytest.mark.slow
def test_a_silo_refuses_an_aggregator_minted_key_end_to_end(minted) -> None:
    from cipherfed.localconsortium import job_toml

    c, attacks = minted
    c.write_data("h3", *_tiny_data())
    c.write_node_config("h3", keys='scope = "consortium"')  # no local key: everything comes via the aggregator
    coordinator = c.stub("coordinator")
    jobs = {}
    for scope, (fp, _) in attacks.items():
        spec = job_toml(scope, ["h3", "h2"], fp, ["f0", "f1"], rounds=1, round_timeout_s=120)
        jobs[scope] = coordinator.SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=30).job_id
    c.start_node("h3")
    audit = c.nodes["h3"].dir / "state" / "audit.jsonl"
    deadline = time.time() + 90
    decided: dict[str, dict] = {}
    while time.time() < deadline and len(decided) < len(jobs):
        for record in _audit(audit):
            if record["event"] in ("job_declined", "job_accepted") and record["job"] in jobs.values():
                decided.setdefault(record["job"], record)
        time.sleep(0.3)
    assert len(decided) == len(jobs), f"node decided only {len(decided)} of {len(jobs)} jobs; see {c.logs}"
    for scope, (fp, reason) in attacks.items():
        record = decided[jobs[scope]]
        if scope == "honest":
            assert record["event"] == "job_accepted" and record["details"]["key_fingerprint"] == fp, record
            continue
        assert record["event"] == "job_declined", (scope, record)
        text = " ".join(record["details"]["reasons"])
        assert reason in text and "cipherfed keys create" in text, (scope, text)
        status = coordinator.GetJobStatus(pb.JobRef(job_id=jobs[scope]), timeout=10)
        assert "h3" in status.declined, (scope, status)  # the coordinator sees the decline and why
        assert not (c.nodes["h3"].dir / "state" / "keys" / f"{fp}.wrapped").exists()  # never cached
    events = [r for r in _audit(audit) if r["event"] == "key_refused"]
    assert len(events) >= 4  # each refusal is in the signed audit log
    # nothing was ever uploaded under a minted key: the aggregator recorded no contribution for them
    import sqlite3

    db = sqlite3.connect(c.agg_dir / "state" / "aggregator.sqlite")
    bad = [jobs[s] for s in attacks if s != "honest"]
    rows = db.execute(
        f"SELECT job_id FROM contributions WHERE job_id IN ({','.join('?' * len(bad))})",
        bad,  # noqa: S608
    ).fetchall()
    assert rows == []
    uploads = [r for r in _audit(audit) if r["event"] == "update_sent" and r["job"] in bad]
    assert uploads == []


def _tiny_data():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2))
    return x, (x[:, 0] > 0).astype(int), ["f0", "f1"]


@pytest.mark.slow
def test_a_squatter_cannot_publish_a_key_under_a_vertical_jobs_scope(minted) -> None:
    from tests.helpers import rpc_code

    c, _ = minted
    spec = VERTICAL_JOB.replace('"vjob"', '"vsquat"').replace("min_entities = 10", "min_entities = 10")
    job_id = c.stub("coordinator").SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=30).job_id
    keys = generate_key_set("vertical")
    export = keys.export_public()

    def put(who: str, scope: str, endorsed_by: str | None = None) -> tuple[grpc.StatusCode, str]:
        signer = endorsed_by or who
        endorsement = endorse(
            pki.load_private_key(c.nodes[signer].key), pki.load_certificate(c.nodes[signer].cert),
            consortium=c.consortium, scope=scope, fingerprint=keys.fingerprint, profile="vertical",
            public_export=export, wrapped={},
        )  # fmt: skip
        request = pb.KeyMaterial(
            scope=scope, fingerprint=keys.fingerprint, public_context=export, endorsement=endorsement.encode(),
            custodian_cert=c.nodes[signer].cert.read_bytes(),
        )  # fmt: skip
        return rpc_code(lambda: c.stub(who).PutKeyMaterial(request, timeout=30))

    # h3 is no party of the job; h2 is its passive party: neither may publish the job's key
    code, msg = put("h3", job_id)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "only its active party h1" in msg, msg
    code, msg = put("h2", job_id)
    assert code == grpc.StatusCode.PERMISSION_DENIED, msg
    # the active party cannot publish someone else's endorsement either, nor material without one
    code, msg = put("h1", job_id, endorsed_by="h3")
    assert code == grpc.StatusCode.PERMISSION_DENIED and "another certificate" in msg, msg
    bare = pb.KeyMaterial(scope=job_id, fingerprint=keys.fingerprint, public_context=export)
    code, msg = rpc_code(lambda: c.stub("h1").PutKeyMaterial(bare, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no custodian endorsement" in msg, msg
    # scopes name rows and files: only safe identifiers
    unsafe = pb.KeyMaterial(scope="../../x", fingerprint=keys.fingerprint, public_context=export)
    code, msg = rpc_code(lambda: c.stub("h3").PutKeyMaterial(unsafe, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "safe identifier" in msg, msg
    # the job's active party, with its own endorsement, is accepted
    assert c.stub("h1").PutKeyMaterial(
        pb.KeyMaterial(
            scope=job_id, fingerprint=keys.fingerprint, public_context=export,
            endorsement=endorse(
                pki.load_private_key(c.nodes["h1"].key), pki.load_certificate(c.nodes["h1"].cert),
                consortium=c.consortium, scope=job_id, fingerprint=keys.fingerprint, profile="vertical",
                public_export=export, wrapped={},
            ).encode(),
            custodian_cert=c.nodes["h1"].cert.read_bytes(),
        ),
        timeout=30,
    ).message.startswith("stored")  # fmt: skip
    c.stub("coordinator").AbortJob(pb.AbortJobRequest(job_id=job_id, reason="test done"), timeout=10)


@pytest.mark.slow
def test_a_cached_identity_is_refused_once_its_certificate_expires(minted, tmp_path: Path) -> None:
    from protocol.channel import TlsFiles, consortium_stub, secure_channel
    from tests.helpers import rpc_code

    c, _ = minted
    now = dt.datetime.now(dt.UTC)
    cert, key = pki.issue(c.ca_dir, "h9", "silo", tmp_path, not_before=now - dt.timedelta(days=1, seconds=-4), days=1)
    stub = consortium_stub(secure_channel(f"127.0.0.1:{c.port}", TlsFiles(c.ca_dir / "ca.crt", cert, key), "localhost"))
    assert stub.ServerInfo(pb.ServerInfoRequest(), timeout=10).caller == "h9"  # handshake done, identity cached
    time.sleep(max(0.0, (pki.load_certificate(cert).not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds()) + 1)
    code, msg = rpc_code(lambda: stub.ServerInfo(pb.ServerInfoRequest(), timeout=10))  # same connection
    assert code == grpc.StatusCode.UNAUTHENTICATED and "expired" in msg, msg


def test_an_aggregator_with_pre_commitment_contexts_still_starts_and_says_why_they_are_unused() -> None:
    from aggregator.keyring import PublicKeyring

    current = generate_key_set("sum").export_public()
    old = current[:5] + b"\x01" + current[6:]  # format 1: no key commitment
    keyring = PublicKeyring(None, [old, current])
    assert len(keyring.fingerprints()) == 1
    assert "predates key commitments" in keyring.unloadable[0] and "keys create" in keyring.unloadable[0]
