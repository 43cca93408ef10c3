"""One signed upload: what a silo vouches for, built in one place and verified in one place.

A silo signs (job, round, key fingerprint, manifest digest, its audit head) with its certificate key;
the manifest lists every ciphertext chunk's SHA-256, so the signature covers every byte that follows
the header. The silo builds a ``SignedUpload`` with :meth:`SignedUpload.sign`, the aggregator parses
the wire header with :meth:`SignedUpload.from_proto` and checks it with :meth:`SignedUpload.verify`
against the caller's mTLS certificate (never against a name in the message), and tests build hostile
variants from the same class. The wire form is ``pb.UploadHeader``; this class is the only code that
fills one in or reads one.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from crypto.packing import Manifest
from crypto.signing import sign_digest, update_digest, verify_digest
from protocol import cipherfed_pb2 as pb
from protocol.messages import manifest_from_proto, manifest_to_proto


@dataclass(frozen=True)
class SignedUpload:
    job_id: str
    round: int
    manifest: Manifest
    audit_head: str
    signature: bytes

    @classmethod
    def sign(
        cls,
        private_key: ec.EllipticCurvePrivateKey,
        job_id: str,
        round_index: int,
        manifest: Manifest,
        audit_head: str = "",
    ) -> SignedUpload:
        """The silo's side: sign what it is about to send."""
        digest = update_digest(job_id, round_index, manifest.fingerprint, manifest.digest(), audit_head)
        return cls(job_id, round_index, manifest, audit_head, sign_digest(private_key, digest))

    @property
    def digest(self) -> bytes:
        """What the signature covers."""
        return update_digest(
            self.job_id, self.round, self.manifest.fingerprint, self.manifest.digest(), self.audit_head
        )

    def verify(self, certificate: x509.Certificate) -> None:
        """The aggregator's side: raises ``SignatureError`` unless the caller's certificate signed this."""
        verify_digest(certificate, self.digest, self.signature)

    def to_proto(self) -> pb.UploadHeader:
        return pb.UploadHeader(
            job_id=self.job_id,
            round=self.round,
            manifest=manifest_to_proto(self.manifest),
            audit_head=self.audit_head,
            signature=self.signature,
        )

    @classmethod
    def from_proto(cls, header: pb.UploadHeader) -> SignedUpload:
        """Parse (and bound, via ``manifest_from_proto``) a wire header; raises ``CryptoError`` subtypes."""
        return cls(
            str(header.job_id),
            int(header.round),
            manifest_from_proto(header.manifest),
            str(header.audit_head),
            bytes(header.signature),
        )
