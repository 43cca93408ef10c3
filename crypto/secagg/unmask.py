"""Unmasking: which shares a surviving silo reveals, and the total mask the aggregator removes.

Steps, after the masked uploads of a round are in:
1. The aggregator proposes a ``ContributorStatement`` (the round's roster split into contributors
   and dropped silos). Each contributor checks it against its own view and signs it
   (``ShareResponder.sign_statement``), committing to that one statement for the round.
2. The aggregator sends an ``UnmaskRequest``: the statement, its own signature, and the
   contributors' signatures (Bonawitz et al.'s consistency check: t of them and a majority of the
   roster). A silo answers only if, for every silo it holds shares of, at least t share holders
   are listed as contributors. Either check alone stops the "personalised contributor set" attack
   (tell each silo R "only X and you contributed"; collect X's self seed and everyone else's mask
   key, one kind per silo from each R, and unmask X with no colluder at all); with both removed
   the attack in tests/test_adversarial_secagg.py recovers X's update exactly.
3. Each survivor answers with one share per neighbour: the self-seed share if it contributed, the
   mask-key share if it dropped, never both for one silo in one round (``ShareResponder``).
4. The aggregator reconstructs the secrets (``reveal``), each checked against its owner's public
   commitment, and hands them out with the still-encrypted masked sum. Each silo checks them again
   against the roster it verified itself and expands the correction (``mask_correction``: minus
   the total mask, mod 2^w), which it adds after decryption. The aggregator learns the secrets
   standard SecAgg already reveals to the server and no update; the sum itself stays encrypted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from crypto.pki import certificate_fingerprint
from crypto.secagg.encoding import (
    RoundContext,
    check_fingerprint,
    decode_fields,
    decode_identities,
    encode_fields,
    encode_identities,
)
from crypto.secagg.errors import (
    AdvertisementError,
    BothSharesRefused,
    EncodingError,
    NotEnoughSurvivors,
    ReconstructionError,
    SplitViewRefused,
    UnmaskRefused,
)
from crypto.secagg.graph import Graph
from crypto.secagg.keys import Advertisement, Roster, pairwise_seed, self_seed_commitment, sign_bytes, verify_bytes
from crypto.secagg.prg import add_stream, check_width
from crypto.secagg.shamir import Share, reconstruct_checked
from crypto.secagg.transport import ShareBundle

STATEMENT_TAG = b"cipherfed-secagg-statement-v1"
CONSISTENCY_TAG = b"cipherfed-secagg-consistency-v1"
REQUEST_TAG = b"cipherfed-secagg-unmask-request-v1"
RESPONSE_TAG = b"cipherfed-secagg-unmask-response-v1"

Kind = Literal["self", "mask"]


@dataclass(frozen=True)
class ContributorStatement:
    """The round's roster (silos that shared secrets) split into contributors and dropped silos."""

    context: RoundContext
    roster: tuple[str, ...]
    contributors: tuple[str, ...]
    dropped: tuple[str, ...]

    @classmethod
    def make(cls, context: RoundContext, roster: Iterable[str], contributors: Iterable[str]) -> ContributorStatement:
        members = tuple(sorted(set(roster)))
        alive = tuple(sorted(set(contributors)))
        return cls(context, members, alive, tuple(m for m in members if m not in set(alive)))

    def validate(self) -> None:
        """Sorted, unique, disjoint, and together exactly the roster; anything else is refused."""
        for name in ("roster", "contributors", "dropped"):
            ids = getattr(self, name)
            for i in ids:
                check_fingerprint(i, name)
            if list(ids) != sorted(set(ids)):
                raise UnmaskRefused(f"statement's {name} list is not sorted and unique")
        both = set(self.contributors) & set(self.dropped)
        if both:
            raise UnmaskRefused(
                f"statement lists {len(both)} silo(s) both as contributor and as dropped "
                f"(e.g. {sorted(both)[0][:16]}…): inconsistent, refused"
            )
        if set(self.contributors) | set(self.dropped) != set(self.roster):
            raise UnmaskRefused("statement's contributors and dropped silos are not exactly the round's roster")

    def encode(self) -> bytes:
        return encode_fields(
            STATEMENT_TAG,
            self.context.encode(),
            encode_identities(self.roster),
            encode_identities(self.contributors),
            encode_identities(self.dropped),
        )

    @classmethod
    def decode(cls, data: bytes) -> ContributorStatement:
        context, roster, contributors, dropped = decode_fields(data, STATEMENT_TAG, 4)
        return cls(
            RoundContext.decode(context),
            decode_identities(roster),
            decode_identities(contributors),
            decode_identities(dropped),
        )

    def digest(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()


def _consistency_bytes(statement: ContributorStatement) -> bytes:
    return encode_fields(CONSISTENCY_TAG, statement.encode())


def consistency_needed(statement: ContributorStatement, threshold: int) -> int:
    """Signatures an answer needs: t, and a majority of the roster.

    An honest silo signs one statement per round, so with a majority required two contradictory
    statements cannot both be signed unless colluding silos sign both; in a sparse graph, where t
    counts only a neighbourhood, this is what stops a split view across neighbourhoods.
    """
    return max(threshold, len(statement.roster) // 2 + 1)


@dataclass(frozen=True)
class StatementSignature:
    """A contributor's signature over a statement: "this is the contributor set I saw"."""

    signer: str
    signature: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    statement: ContributorStatement
    aggregator: str
    signature: bytes
    consistency: tuple[StatementSignature, ...]

    def signed_bytes(self) -> bytes:
        return encode_fields(REQUEST_TAG, self.statement.encode(), bytes.fromhex(self.aggregator))


def make_request(
    statement: ContributorStatement,
    aggregator_cert: x509.Certificate,
    aggregator_key: ec.EllipticCurvePrivateKey,
    consistency: Sequence[StatementSignature],
) -> UnmaskRequest:
    """The aggregator's signed request (it relays the contributors' consistency signatures)."""
    unsigned = UnmaskRequest(statement, certificate_fingerprint(aggregator_cert), b"", tuple(consistency))
    return UnmaskRequest(
        statement, unsigned.aggregator, sign_bytes(aggregator_key, unsigned.signed_bytes()), tuple(consistency)
    )


@dataclass(frozen=True)
class RevealedShare:
    silo: str
    kind: Kind
    share: Share


@dataclass(frozen=True)
class UnmaskResponse:
    context: RoundContext
    statement_digest: bytes
    responder: str
    shares: tuple[RevealedShare, ...]
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        entries = b"".join(
            bytes.fromhex(s.silo) + (b"S" if s.kind == "self" else b"M") + s.share.to_bytes() for s in self.shares
        )
        return encode_fields(
            RESPONSE_TAG, self.context.encode(), self.statement_digest, bytes.fromhex(self.responder), entries
        )


@dataclass(frozen=True)
class RoundMaterial:
    """What a silo keeps from one round to answer an unmasking request."""

    context: RoundContext
    threshold: int
    graph: Graph  # the round's public neighbour graph over the job's members
    mask_set: frozenset[str]  # the peers this silo masked with
    bundles: Mapping[str, ShareBundle]  # sender -> the shares this silo holds of it


@dataclass
class ShareResponder:
    """A surviving silo's unmasking answers, with a memory of what it revealed.

    ``revealed`` maps (round context bytes, silo) to the kind of share revealed; ``committed`` maps
    a round to the one statement this silo signed or answered for. Persist both (``export_state``)
    before sending any answer, so a restart cannot be used to make the silo answer twice.
    """

    me: str
    signing_key: ec.EllipticCurvePrivateKey
    revealed: dict[tuple[bytes, str], str] = field(default_factory=dict)
    committed: dict[bytes, bytes] = field(default_factory=dict)

    def _check_view(self, statement: ContributorStatement, material: RoundMaterial) -> None:
        if statement.context != material.context:
            raise UnmaskRefused(f"request is for {statement.context}, this silo's material is for {material.context}")
        statement.validate()
        if self.me not in statement.contributors:
            raise UnmaskRefused("statement says this silo dropped, but it contributed: the contributor set is wrong")
        neighbours = material.graph.get(self.me, frozenset())
        if set(statement.roster) & neighbours != set(material.mask_set):
            raise UnmaskRefused("statement's roster differs from the peers this silo masked with this round")

    def _commit(self, statement: ContributorStatement) -> None:
        key = statement.context.encode()
        previous = self.committed.get(key)
        if previous is not None and previous != statement.digest():
            raise SplitViewRefused(
                "this silo already signed or answered a different contributor set for this round; refused"
            )
        self.committed[key] = statement.digest()

    def sign_statement(self, statement: ContributorStatement, material: RoundMaterial) -> StatementSignature:
        """Consistency signature: check the statement against this silo's view, commit, sign."""
        self._check_view(statement, material)
        self._commit(statement)
        return StatementSignature(self.me, sign_bytes(self.signing_key, _consistency_bytes(statement)))

    def respond(
        self,
        request: UnmaskRequest,
        material: RoundMaterial,
        certificates: Mapping[str, x509.Certificate],
        aggregator_cert: x509.Certificate,
    ) -> UnmaskResponse:
        """Answer with one share per neighbour, or raise an UnmaskRefused subclass (audit it)."""
        statement = request.statement
        if request.aggregator != certificate_fingerprint(aggregator_cert):
            raise UnmaskRefused("request names another aggregator than the certificate it arrived under")
        try:
            verify_bytes(aggregator_cert, request.signed_bytes(), request.signature, "unmask request")
        except AdvertisementError as exc:
            raise UnmaskRefused(f"{exc}; refused") from None
        self._check_view(statement, material)
        plan = self._plan(statement, material)
        round_key = statement.context.encode()
        for silo, kind in plan:
            earlier = self.revealed.get((round_key, silo))
            if earlier is not None and earlier != kind:
                raise BothSharesRefused(
                    f"request asks for the {kind} share of silo {silo[:16]}…, whose {earlier} share this silo "
                    "already revealed this round: answering would unmask its update; refused"
                )
        if self.committed.get(round_key, statement.digest()) != statement.digest():
            raise SplitViewRefused("this silo already answered a different contributor set for this round; refused")
        self._check_survivors(statement, material)
        self._check_consistency(request, material, certificates)
        self._commit(statement)
        for silo, kind in plan:
            self.revealed[(round_key, silo)] = kind
        shares = tuple(
            RevealedShare(
                silo, kind, material.bundles[silo].self_share if kind == "self" else material.bundles[silo].mask_share
            )
            for silo, kind in plan
        )
        unsigned = UnmaskResponse(statement.context, statement.digest(), self.me, shares)
        return UnmaskResponse(
            unsigned.context,
            unsigned.statement_digest,
            self.me,
            shares,
            sign_bytes(self.signing_key, unsigned.signed_bytes()),
        )

    def _plan(self, statement: ContributorStatement, material: RoundMaterial) -> list[tuple[str, Kind]]:
        contributors = set(statement.contributors)
        plan: list[tuple[str, Kind]] = []
        for silo in sorted(set(statement.roster) & set(material.bundles) - {self.me}):
            plan.append((silo, "self" if silo in contributors else "mask"))
        return plan

    def _check_survivors(self, statement: ContributorStatement, material: RoundMaterial) -> None:
        contributors = set(statement.contributors)
        for silo in sorted(set(statement.roster) & set(material.bundles)):
            holders = len(material.graph.get(silo, frozenset()) & contributors)
            if holders < material.threshold:
                raise NotEnoughSurvivors(
                    f"only {holders} of silo {silo[:16]}…'s share holders survived, threshold {material.threshold}: "
                    "its secret could not be reconstructed; the round must fail, nothing is revealed"
                )

    def _check_consistency(
        self, request: UnmaskRequest, material: RoundMaterial, certificates: Mapping[str, x509.Certificate]
    ) -> None:
        message = _consistency_bytes(request.statement)
        contributors = set(request.statement.contributors)
        valid: set[str] = set()
        for entry in request.consistency[: 4 * len(contributors) + 4]:
            cert = certificates.get(entry.signer)
            if entry.signer not in contributors or cert is None or entry.signer in valid:
                continue
            try:
                if verify_bytes(cert, message, entry.signature, "consistency signature") == entry.signer:
                    valid.add(entry.signer)
            except AdvertisementError:
                continue
        needed = consistency_needed(request.statement, material.threshold)
        if len(valid) < needed:
            raise UnmaskRefused(
                f"only {len(valid)} contributors signed this contributor set, {needed} needed (the threshold and a "
                "majority of the roster): the aggregator may be showing different sets to different silos; refused"
            )

    def export_state(self) -> dict[str, object]:
        """JSON-ready memory of what was revealed and committed (persist before answering)."""
        return {
            "revealed": [[k.hex(), silo, kind] for (k, silo), kind in sorted(self.revealed.items())],
            "committed": [[k.hex(), d.hex()] for k, d in sorted(self.committed.items())],
        }

    def load_state(self, state: Mapping[str, object]) -> None:
        revealed = state.get("revealed", [])
        committed = state.get("committed", [])
        if not isinstance(revealed, list) or not isinstance(committed, list):
            raise EncodingError("responder state must hold 'revealed' and 'committed' lists")
        self.revealed = {(bytes.fromhex(k), s): kind for k, s, kind in revealed}
        self.committed = {bytes.fromhex(k): bytes.fromhex(d) for k, d in committed}


@dataclass
class UnmaskResult:
    """The correction to add to the masked sum, and who misbehaved (for the audit log)."""

    correction: np.ndarray
    rejected_responses: dict[str, str]
    wrong_shares: dict[str, list[str]]


def _verified_shares(
    statement: ContributorStatement,
    responses: Sequence[UnmaskResponse],
    roster: Roster,
    certificates: Mapping[str, x509.Certificate],
    rejected: dict[str, str],
) -> dict[tuple[str, Kind], dict[int, tuple[str, Share]]]:
    collected: dict[tuple[str, Kind], dict[int, tuple[str, Share]]] = {}
    digest = statement.digest()
    seen: set[str] = set()
    for response in responses:
        who = response.responder
        reason = None
        if who in seen or who not in statement.contributors:
            reason = "not a contributor, or answered twice"
        elif response.context != statement.context or response.statement_digest != digest:
            reason = "answer is for another round or contributor set"
        elif who not in certificates:
            reason = "no certificate for the responder"
        else:
            try:
                verify_bytes(certificates[who], response.signed_bytes(), response.signature, "unmask response")
            except AdvertisementError as exc:
                reason = str(exc)
        if reason is None and any(s.share.x != roster.x_of(who) for s in response.shares):
            reason = "a share carries another holder's x coordinate"
        if reason is not None:
            rejected[who] = reason
            continue
        seen.add(who)
        for s in response.shares:
            collected.setdefault((s.silo, s.kind), {})[s.share.x] = (who, s.share)
    return collected


def _recover(
    collected: dict[tuple[str, Kind], dict[int, tuple[str, Share]]],
    silo: str,
    kind: Kind,
    threshold: int,
    check: Callable[[bytes], bool],
    wrong: dict[str, list[str]],
) -> bytes:
    entries = collected.get((silo, kind), {})
    try:
        secret, bad_x = reconstruct_checked([s for _, s in entries.values()], threshold, check)
    except ReconstructionError as exc:
        raise NotEnoughSurvivors(f"cannot recover the {kind} secret of silo {silo[:16]}…: {exc}") from None
    if bad_x:
        wrong[silo] = sorted(entries[x][0] for x in bad_x)
    return secret


@dataclass(frozen=True)
class RevealedSecrets:
    """What the unmasking revealed: every contributor's self seed, every dropped silo's mask key.

    Standard SecAgg reveals exactly these to the server. The aggregator now only reconstructs them
    (:func:`reveal`) and hands them out with the masked sum; each silo expands the masks itself
    (:func:`mask_correction`), checking every secret against the signed advertisement first: a wrong
    secret is refused rather than turned into a shifted sum, and nobody CKKS-encodes a correction.
    """

    statement: ContributorStatement
    self_seeds: Mapping[str, bytes]  # contributor -> its self-mask seed
    mask_keys: Mapping[str, bytes]  # dropped silo -> its X25519 mask-agreement private key


@dataclass
class Revealed:
    """The secrets, and who misbehaved while they were reconstructed (for the audit log)."""

    secrets: RevealedSecrets
    rejected_responses: dict[str, str]
    wrong_shares: dict[str, list[str]]


def _seed_ok(context: RoundContext, silo: str, advert: Advertisement) -> Callable[[bytes], bool]:
    return lambda secret: self_seed_commitment(context, silo, secret) == advert.seed_commitment


def _key_ok(advert: Advertisement) -> Callable[[bytes], bool]:
    def check(secret: bytes) -> bool:
        if len(secret) != 32:
            return False
        public = X25519PrivateKey.from_private_bytes(secret).public_key()
        return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == advert.mask_public

    return check


def reveal(
    statement: ContributorStatement,
    responses: Sequence[UnmaskResponse],
    roster: Roster,
    threshold: int,
    certificates: Mapping[str, x509.Certificate],
) -> Revealed:
    """Reconstruct each contributor's self seed and each dropped silo's mask key from the answers.

    Every reconstructed secret is checked against its owner's signed advertisement (self-seed
    commitment, mask public key), so a wrong share cannot corrupt the result silently; its sender is
    named in ``wrong_shares``. Raises NotEnoughSurvivors when a secret cannot be recovered.
    """
    statement.validate()
    if len(statement.contributors) < threshold + 1:
        raise NotEnoughSurvivors(
            f"{len(statement.contributors)} contributors, at least threshold + 1 = {threshold + 1} needed"
        )
    rejected: dict[str, str] = {}
    wrong: dict[str, list[str]] = {}
    collected = _verified_shares(statement, responses, roster, certificates, rejected)
    context = statement.context
    seeds = {
        silo: _recover(collected, silo, "self", threshold, _seed_ok(context, silo, roster.advert(silo)), wrong)
        for silo in statement.contributors
    }
    keys = {
        silo: _recover(collected, silo, "mask", threshold, _key_ok(roster.advert(silo)), wrong)
        for silo in statement.dropped
    }
    return Revealed(RevealedSecrets(statement, seeds, keys), rejected, wrong)


def mask_correction(secrets: RevealedSecrets, roster: Roster, graph: Graph, w: int, length: int) -> np.ndarray:
    """The correction c = -(sum of contributors' self masks + their uncancelled masks with dropped silos) mod 2^w.

    Adding c to the sum of the contributors' masked vectors and reducing mod 2^w gives the exact sum
    of their values. ``roster`` and ``graph`` are the caller's own (a silo's verified at agreement),
    never the revealer's word: the statement must split exactly that roster, and every secret must
    match its owner's advertisement, or ``UnmaskRefused`` says which.
    """
    check_width(w)
    statement = secrets.statement
    statement.validate()
    if statement.context != roster.context or set(statement.roster) != set(roster.members):
        raise UnmaskRefused("the revealed secrets are for another session or roster than this one")
    if set(secrets.self_seeds) != set(statement.contributors) or set(secrets.mask_keys) != set(statement.dropped):
        raise UnmaskRefused(
            "the revealed secrets are not exactly one self seed per contributor and one key per dropped silo"
        )
    total = np.zeros(length, dtype=np.uint64)
    for silo in statement.contributors:
        if not _seed_ok(statement.context, silo, roster.advert(silo))(secrets.self_seeds[silo]):
            raise UnmaskRefused(f"the revealed self seed of silo {silo[:16]}… does not match its commitment")
        add_stream(total, secrets.self_seeds[silo])
    for silo in statement.dropped:
        advert = roster.advert(silo)
        if not _key_ok(advert)(secrets.mask_keys[silo]):
            raise UnmaskRefused(f"the revealed mask key of silo {silo[:16]}… does not match its advertisement")
        private = X25519PrivateKey.from_private_bytes(secrets.mask_keys[silo])
        for peer in sorted(graph.get(silo, frozenset()) & set(statement.contributors)):
            seed = pairwise_seed(statement.context, private, silo, advert.mask_public, roster.advert(peer))
            # the contributor ``peer`` added sign(peer, silo) * stream; the dropped silo's part never arrived
            add_stream(total, seed, subtract=peer > silo)
    np.subtract(np.uint64(0), total, out=total)  # the correction is minus the masks left in the sum
    total &= np.uint64((1 << w) - 1)
    return total


def unmask(
    statement: ContributorStatement,
    responses: Sequence[UnmaskResponse],
    roster: Roster,
    graph: Graph,
    threshold: int,
    w: int,
    length: int,
    certificates: Mapping[str, x509.Certificate],
) -> UnmaskResult:
    """:func:`reveal` then :func:`mask_correction` in one place (simulations and tests; no party runs both now)."""
    check_width(w)
    revealed = reveal(statement, responses, roster, threshold, certificates)
    correction = mask_correction(revealed.secrets, roster, graph, w, length)
    return UnmaskResult(correction, revealed.rejected_responses, revealed.wrong_shares)


def apply_correction(masked_sum: np.ndarray, correction: np.ndarray, w: int) -> np.ndarray:
    """Plaintext model of the removal: (sum of masked vectors + correction) mod 2^w."""
    check_width(w)
    out = np.asarray(masked_sum, dtype=np.uint64) + np.asarray(correction, dtype=np.uint64)
    return out & np.uint64((1 << w) - 1)
