"""Share transport: each silo's two Shamir shares for one holder, encrypted to that holder.

AES-256-GCM under a key from the X25519 agreement of the two silos' (signed) share-encryption keys,
derived per direction with HKDF bound to the round and both identities; the associated data binds
consortium, job, round, sender and recipient again. The envelope is also signed by the sender's
certificate key, so an audit can later show who sent what. The aggregator relays envelopes and can
neither read, alter, reroute nor replay them into another round: every such attempt fails closed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.secagg.encoding import RoundContext, decode_fields, encode_fields
from crypto.secagg.errors import AdvertisementError, EncodingError, ShareTransportError
from crypto.secagg.keys import Advertisement, RoundKeys, sign_bytes, verify_bytes
from crypto.secagg.shamir import Share

KEY_TAG = b"cipherfed-secagg-share-key-v1"
AD_TAG = b"cipherfed-secagg-share-ad-v1"
PAYLOAD_TAG = b"cipherfed-secagg-share-payload-v1"
ENVELOPE_TAG = b"cipherfed-secagg-share-envelope-v1"


@dataclass(frozen=True)
class ShareBundle:
    """What a holder keeps from one sender: its share of the sender's self seed and of its mask key."""

    sender: str
    self_share: Share
    mask_share: Share


@dataclass(frozen=True)
class ShareEnvelope:
    context: RoundContext
    sender: str
    recipient: str
    nonce: bytes
    ciphertext: bytes
    signature: bytes = b""

    def associated_data(self) -> bytes:
        return encode_fields(AD_TAG, self.context.encode(), bytes.fromhex(self.sender), bytes.fromhex(self.recipient))

    def signed_bytes(self) -> bytes:
        return encode_fields(ENVELOPE_TAG, self.associated_data(), self.nonce, self.ciphertext)

    def to_bytes(self) -> bytes:
        return encode_fields(ENVELOPE_TAG + b"/signed", self.signed_bytes(), self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> ShareEnvelope:
        body, signature = decode_fields(data, ENVELOPE_TAG + b"/signed", 2)
        ad, nonce, ciphertext = decode_fields(body, ENVELOPE_TAG, 3)
        context, sender, recipient = decode_fields(ad, AD_TAG, 3)
        if len(sender) != 32 or len(recipient) != 32 or len(nonce) != 12 or len(ciphertext) > 4096:
            raise EncodingError("share envelope fields have the wrong size")
        return cls(RoundContext.decode(context), sender.hex(), recipient.hex(), nonce, ciphertext, signature)


def _share_key(context: RoundContext, keys: RoundKeys, peer: Advertisement, sender: str, recipient: str) -> bytes:
    try:
        shared = keys.share_private.exchange(X25519PublicKey.from_public_bytes(peer.share_public))
    except ValueError:
        raise ShareTransportError("peer's share key is a low-order point; refused") from None
    info = encode_fields(KEY_TAG, context.encode(), bytes.fromhex(sender), bytes.fromhex(recipient))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def seal_shares(
    context: RoundContext,
    keys: RoundKeys,
    me: str,
    recipient: Advertisement,
    self_share: Share,
    mask_share: Share,
    signing_key: ec.EllipticCurvePrivateKey,
) -> ShareEnvelope:
    """Encrypt one holder's pair of shares to it, and sign the envelope."""
    key = _share_key(context, keys, recipient, me, recipient.sender)
    payload = encode_fields(PAYLOAD_TAG, self_share.to_bytes(), mask_share.to_bytes())
    nonce = os.urandom(12)
    unsigned = ShareEnvelope(context, me, recipient.sender, nonce, b"")
    ciphertext = AESGCM(key).encrypt(nonce, payload, unsigned.associated_data())
    envelope = ShareEnvelope(context, me, recipient.sender, nonce, ciphertext)
    signature = sign_bytes(signing_key, envelope.signed_bytes())
    return ShareEnvelope(context, me, recipient.sender, nonce, ciphertext, signature)


def open_shares(
    envelope: ShareEnvelope,
    context: RoundContext,
    keys: RoundKeys,
    me: str,
    my_x: int,
    sender: Advertisement,
    sender_cert: x509.Certificate,
) -> ShareBundle:
    """Open an envelope addressed to ``me`` in this round from ``sender``; anything else is refused."""
    if envelope.context != context:
        raise ShareTransportError(f"share envelope is for {envelope.context}, this is {context}: replay refused")
    if envelope.recipient != me:
        raise ShareTransportError("share envelope is addressed to another silo: misrouted, refused")
    if envelope.sender != sender.sender or sender.context != context:
        raise ShareTransportError("share envelope's sender does not match the advertisement it is opened with")
    try:
        if verify_bytes(sender_cert, envelope.signed_bytes(), envelope.signature, "share envelope") != sender.sender:
            raise ShareTransportError("share envelope is signed by a certificate other than its sender's")
    except AdvertisementError as exc:
        raise ShareTransportError(str(exc)) from None
    key = _share_key(context, keys, sender, envelope.sender, me)
    try:
        payload = AESGCM(key).decrypt(envelope.nonce, envelope.ciphertext, envelope.associated_data())
    except InvalidTag:
        raise ShareTransportError("share envelope does not authenticate (tampered, or keys of another round)") from None
    self_bytes, mask_bytes = decode_fields(payload, PAYLOAD_TAG, 2)
    self_share, mask_share = Share.from_bytes(self_bytes), Share.from_bytes(mask_bytes)
    if self_share.x != my_x or mask_share.x != my_x:
        raise ShareTransportError(f"shares carry x = {self_share.x}/{mask_share.x}, this holder's x is {my_x}")
    return ShareBundle(envelope.sender, self_share, mask_share)
