"""Per-round key pairs, signed key advertisements, and the pairwise mask seeds they agree on.

Keys are fresh every round, not per job. A dropped silo's mask private key is reconstructed by the
aggregator in the round it dropped; with per-job keys that would expose its pairwise masks in every
later round, so the moment it came back and its self mask was revealed (it contributed), its
update would be in the clear. Per-round keys also make the "never both shares of one silo" rule,
which is per round, sufficient. Generating them costs microseconds.

Each advertisement is signed with the sender's certificate key (ECDSA P-256) over a canonical
encoding bound to consortium, job, round and the sender's certificate fingerprint, so the
aggregator relays advertisements but cannot substitute a key, replay one into another round, or
pass one silo's key off as another's.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.pki import certificate_fingerprint
from crypto.secagg.encoding import RoundContext, check_fingerprint, decode_fields, encode_fields
from crypto.secagg.errors import AdvertisementError, EncodingError

ADVERT_TAG = b"cipherfed-secagg-advert-v1"
PAIR_TAG = b"cipherfed-secagg-pair-v1"
SELF_COMMIT_TAG = b"cipherfed-secagg-self-seed-v1"
MAX_SIGNATURE_BYTES = 80


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign_bytes(signing_key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    return signing_key.sign(message, ec.ECDSA(hashes.SHA256()))


def verify_bytes(cert: x509.Certificate, message: bytes, signature: bytes, what: str) -> str:
    """Verify ``signature`` by ``cert`` over ``message``; returns the signer's fingerprint."""
    public_key = cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise AdvertisementError(f"{what}: the signer's certificate does not hold an EC key")
    if not signature or len(signature) > MAX_SIGNATURE_BYTES:
        raise AdvertisementError(f"{what}: missing or oversized signature; the sender must sign it")
    try:
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise AdvertisementError(f"{what}: signature does not verify against the sender's certificate") from None
    return certificate_fingerprint(cert)


def self_seed_commitment(context: RoundContext, sender: str, seed: bytes) -> bytes:
    """Hiding commitment (the seed is 32 random bytes) that lets anyone check a reconstructed self seed."""
    return hashlib.sha256(encode_fields(SELF_COMMIT_TAG, context.encode(), bytes.fromhex(sender), seed)).digest()


@dataclass
class RoundKeys:
    """One silo's secrets for one round: mask-agreement key, share-encryption key, self-mask seed."""

    mask_private: X25519PrivateKey
    share_private: X25519PrivateKey
    self_seed: bytes

    @classmethod
    def generate(cls) -> RoundKeys:
        return cls(X25519PrivateKey.generate(), X25519PrivateKey.generate(), secrets.token_bytes(32))

    def mask_private_bytes(self) -> bytes:
        return self.mask_private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def mask_public(self) -> bytes:
        return _raw(self.mask_private.public_key())

    def share_public(self) -> bytes:
        return _raw(self.share_private.public_key())


@dataclass(frozen=True)
class Advertisement:
    """A silo's signed public keys for one round."""

    context: RoundContext
    sender: str
    mask_public: bytes
    share_public: bytes
    seed_commitment: bytes
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        return encode_fields(
            ADVERT_TAG,
            self.context.encode(),
            bytes.fromhex(check_fingerprint(self.sender, "sender")),
            self.mask_public,
            self.share_public,
            self.seed_commitment,
        )

    def to_bytes(self) -> bytes:
        return encode_fields(ADVERT_TAG + b"/signed", self.signed_bytes(), self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> Advertisement:
        body, signature = decode_fields(data, ADVERT_TAG + b"/signed", 2)
        context, sender, mask_public, share_public, commitment = decode_fields(body, ADVERT_TAG, 5)
        if len(sender) != 32 or len(mask_public) != 32 or len(share_public) != 32 or len(commitment) != 32:
            raise EncodingError("advertisement fields must be 32 bytes each")
        return cls(RoundContext.decode(context), sender.hex(), mask_public, share_public, commitment, signature)


def advertise(
    keys: RoundKeys, context: RoundContext, cert: x509.Certificate, signing_key: ec.EllipticCurvePrivateKey
) -> Advertisement:
    """Sign this round's public keys with the silo's certificate key."""
    sender = certificate_fingerprint(cert)
    unsigned = Advertisement(
        context, sender, keys.mask_public(), keys.share_public(), self_seed_commitment(context, sender, keys.self_seed)
    )
    return Advertisement(
        context,
        sender,
        unsigned.mask_public,
        unsigned.share_public,
        unsigned.seed_commitment,
        sign_bytes(signing_key, unsigned.signed_bytes()),
    )


def verify_advertisement(advert: Advertisement, context: RoundContext, cert: x509.Certificate) -> Advertisement:
    """Accept ``advert`` only if it is for this round and signed by the holder of ``cert``.

    ``cert`` must already be verified as a current consortium member (crypto.pki.verify_certificate).
    """
    if advert.context != context:
        raise AdvertisementError(
            f"advertisement is for {advert.context}, this is {context}: replayed from another round or job; refused"
        )
    fingerprint = certificate_fingerprint(cert)
    if advert.sender != fingerprint:
        raise AdvertisementError("advertisement names another sender than the certificate it is checked against")
    verify_bytes(cert, advert.signed_bytes(), advert.signature, "key advertisement")
    if advert.mask_public == advert.share_public:
        raise AdvertisementError("advertisement reuses one key for mask agreement and share encryption")
    return advert


@dataclass(frozen=True)
class Roster:
    """The verified advertisements of one round, ordered by fingerprint (the public order of signs and x)."""

    context: RoundContext
    adverts: tuple[Advertisement, ...]

    @classmethod
    def build(cls, context: RoundContext, verified: Iterable[Advertisement]) -> Roster:
        """From advertisements already passed through verify_advertisement; refuses duplicates."""
        adverts = tuple(sorted(verified, key=lambda a: a.sender))
        senders = [a.sender for a in adverts]
        if len(set(senders)) != len(senders):
            raise AdvertisementError("two advertisements from one silo in one round; refused")
        keys = [a.mask_public for a in adverts] + [a.share_public for a in adverts]
        if len(set(keys)) != len(keys):
            raise AdvertisementError("two silos advertised the same public key (copied key); refused")
        if any(a.context != context for a in adverts):
            raise AdvertisementError("roster mixes advertisements of different rounds")
        return cls(context, adverts)

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(a.sender for a in self.adverts)

    def advert(self, fingerprint: str) -> Advertisement:
        return self.adverts[self.x_of(fingerprint) - 1]

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {a.sender: i for i, a in enumerate(self.adverts)}

    def x_of(self, fingerprint: str) -> int:
        """The public Shamir x coordinate of a silo: 1 + its index in fingerprint order."""
        if fingerprint not in self._index:
            raise AdvertisementError(f"silo {fingerprint[:16]}… has no advertisement in this round")
        return 1 + self._index[fingerprint]


def pairwise_seed(
    context: RoundContext, my_private: X25519PrivateKey, me: str, my_public: bytes, peer: Advertisement
) -> bytes:
    """HKDF-SHA256 of the X25519 agreement, bound to the round and both identities and keys (ordered)."""
    if peer.sender == me:
        raise AdvertisementError("a silo has no pairwise mask with itself")
    try:
        shared = my_private.exchange(X25519PublicKey.from_public_bytes(peer.mask_public))
    except ValueError:
        raise AdvertisementError("peer's mask key is a low-order point (all-zero agreement); refused") from None
    (lo, lo_key), (hi, hi_key) = sorted([(me, my_public), (peer.sender, peer.mask_public)])
    info = encode_fields(PAIR_TAG, context.encode(), bytes.fromhex(lo), bytes.fromhex(hi), lo_key, hi_key)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)
