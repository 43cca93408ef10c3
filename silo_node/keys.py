"""The node's CKKS key sets, found by fingerprint, used only when their custodian vouches for them.

A key set comes from (in this order) a local secret export (at the key custodian), a blob wrapped
to this node's certificate on disk, or the aggregator, which relays the blob the custodian wrapped
for this node (and cannot open it). Fetched blobs are cached in ``state/keys``; secrets are never
written anywhere but the custodian's own key file.

The aggregator may lie: it can mint a key of its own and wrap it to this node. So a wrapped key is
used only with the custodian's endorsement (``crypto.endorsement``; a ``<file>.endorsement``
sidecar next to a blob on disk, relayed with the blob otherwise), checked every time before use:
the custodian's certificate chains to the consortium CA with role silo, is current and not revoked,
is allowed by the site policy's ``key_custodians``; its signature verifies; this node is a
recipient under its own certificate and the blob is the one endorsed; the unwrapped secret matches
its fingerprint's commitment and the endorsed fingerprint; and no recipient has been revoked since
(rotation: a key shared with a revoked member is never used for a new job).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from crypto import pki
from crypto.compact import CompactEncryptor, CompactParams
from crypto.endorsement import (
    RECREATE,
    Endorsement,
    EndorsementError,
    TrustAnchors,
    check_my_blob,
    check_recipients_current,
    decode_bundle,
    encode_bundle,
    load_custodian_cert,
    verify_endorsement,
)
from crypto.engine import SumEncryptor, UnencryptedSumForComparisonOnly, UpdateEncryptor
from crypto.errors import CryptoError, KeyMaterialError
from crypto.keys import SecretKeySet, load_secret_key_set
from crypto.wrapping import unwrap_key
from policies.schema import load_site_policy
from silo_node.config import HEKeys, NodeConfig

ENDORSEMENT_SUFFIX = ".endorsement"


@dataclass(frozen=True)
class FetchedKey:
    """What the aggregator relays for this node: the blob and the custodian's endorsement, as stored."""

    scope: str
    blob: bytes
    endorsement: bytes
    custodian_cert: bytes


Fetch = Callable[[str], FetchedKey]  # key fingerprint -> material relayed for this node


def sidecar(path: Path) -> Path:
    """Where the endorsement of a wrapped blob or a secret export lives on disk."""
    return path.with_name(path.name + ENDORSEMENT_SUFFIX)


def key_trust(config: NodeConfig) -> TrustAnchors:
    """The node's anchors for key endorsements: CA, CRL (if configured) and the site policy's pins."""
    ca = pki.load_certificate(config.tls.ca)
    revocation = (
        pki.RevocationList(config.tls.crl, ca, state_path=config.state_dir / "crl_state.json")
        if config.tls.crl is not None
        else None
    )
    policy = load_site_policy(config.site_policy) if config.site_policy else None
    pins = frozenset(policy.key_custodians) if policy is not None and policy.key_custodians is not None else None
    return TrustAnchors(ca, revocation, pins)


class NodeKeys:
    def __init__(
        self,
        settings: HEKeys,
        name: str,
        consortium: str,
        private_key: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate,
        cache_dir: Path,
        fetch: Fetch | None = None,
        *,
        trust: TrustAnchors,
    ) -> None:
        self._settings = settings
        self._name = name
        self._consortium = consortium
        self._private_key = private_key
        self._certificate = certificate
        self._cache_dir = cache_dir
        self._trust = trust
        self.fetch = fetch
        self._sets: dict[str, SecretKeySet] = {}
        self._endorsed: dict[str, tuple[Endorsement, x509.Certificate, bool]] = {}  # fp -> (.., .., custodian pin)
        self._refused: dict[str, str] = {}  # fingerprint or file name -> why it is not used
        self._encryptors: dict[str, UpdateEncryptor] = {}
        self._lock = threading.Lock()
        self.on_unwrap: Callable[[str, str], None] | None = None
        self.on_refused: Callable[[str, str], None] | None = None

    # ------------------------------------------------------------------ verification
    def _verify(self, endorsement: Endorsement, cert: x509.Certificate, scope: str | None, own: bool) -> None:
        """Custodian, signature and recipients' revocation; ``own``: this node's own secret export
        (it is its own custodian, so the site policy's custodian pins do not apply)."""
        anchors = TrustAnchors(self._trust.ca_cert, self._trust.revocation, None) if own else self._trust
        verify_endorsement(endorsement, cert, anchors, consortium=self._consortium, scope=scope)
        check_recipients_current(endorsement, self._trust.revocation)

    def _open(self, blob: bytes, scope: str, endorsement: Endorsement, cert: x509.Certificate) -> SecretKeySet:
        self._verify(endorsement, cert, scope, own=False)
        check_my_blob(endorsement, self._name, self._certificate, blob)
        secret = unwrap_key(
            blob, self._private_key, self._certificate, consortium=self._consortium, job=scope, recipient=self._name
        )
        keys = load_secret_key_set(secret)  # refuses a secret that does not match its commitment
        if keys.fingerprint != endorsement.fingerprint or keys.profile.name != endorsement.profile:
            raise EndorsementError(
                f"the unwrapped key is {keys.fingerprint} ({keys.profile.name}), but the custodian endorsed "
                f"{endorsement.fingerprint} ({endorsement.profile}): the endorsement belongs to another key; {RECREATE}"
            )
        self._endorsed[keys.fingerprint] = (endorsement, cert, False)
        if self.on_unwrap is not None:
            self.on_unwrap(keys.fingerprint, scope)
        return keys

    def _refuse(self, what: str, reason: str) -> None:
        if self._refused.get(what) != reason and self.on_refused is not None:
            self.on_refused(what, reason)
        self._refused[what] = reason

    # ------------------------------------------------------------------ loading
    def _load_secret_file(self, path: Path) -> None:
        keys = load_secret_key_set(path.read_bytes())
        bundle = sidecar(path)
        if bundle.exists():
            endorsement, cert = decode_bundle(bundle.read_bytes())
            if endorsement.fingerprint != keys.fingerprint:
                raise EndorsementError(f"{bundle.name} endorses {endorsement.fingerprint}, not {keys.fingerprint}")
            self._endorsed[keys.fingerprint] = (endorsement, cert, True)
        self._sets.setdefault(keys.fingerprint, keys)

    def _load_wrapped_file(self, path: Path, scope: str) -> None:
        bundle = sidecar(path)
        if not bundle.exists():
            raise EndorsementError(f"{path.name} has no custodian endorsement ({bundle.name}); {RECREATE}")
        endorsement, cert = decode_bundle(bundle.read_bytes())
        if endorsement.fingerprint in self._sets:
            return
        try:
            keys = self._open(path.read_bytes(), scope, endorsement, cert)
        except CryptoError as exc:
            self._refuse(endorsement.fingerprint, str(exc))
            return
        self._refused.pop(endorsement.fingerprint, None)
        self._sets.setdefault(keys.fingerprint, keys)

    def _load_local(self) -> None:
        """Secret exports and wrapped blobs already on this node; a file that fails is noted, not fatal."""
        settings = self._settings
        secrets = [settings.secret_key] if settings.secret_key is not None else []
        secrets += sorted(self._cache_dir.glob("*.key")) if self._cache_dir.exists() else []
        for path in secrets:
            if path is not None and path.exists():
                try:
                    self._load_secret_file(path)
                except CryptoError as exc:
                    self._refuse(path.name, str(exc))
        wrapped: list[tuple[Path, str]] = []
        if settings.wrapped_key is not None and settings.wrapped_key.exists():
            wrapped.append((settings.wrapped_key, settings.scope))
        if self._cache_dir.exists():
            for path in sorted(self._cache_dir.glob("*.wrapped")):
                scope_file = path.with_suffix(".scope")
                wrapped.append((path, scope_file.read_text() if scope_file.exists() else settings.scope))
        for path, scope in wrapped:
            try:
                self._load_wrapped_file(path, scope)
            except CryptoError as exc:
                self._refuse(path.name, str(exc))

    def _fetch(self, fingerprint: str) -> None:
        assert self.fetch is not None
        fetched = self.fetch(fingerprint)
        try:
            endorsement = Endorsement.decode(fetched.endorsement)
            cert = load_custodian_cert(fetched.custodian_cert)
            if endorsement.fingerprint != fingerprint:
                raise EndorsementError(
                    f"the relayed endorsement is for key {endorsement.fingerprint}, not {fingerprint}; {RECREATE}"
                )
            keys = self._open(fetched.blob, fetched.scope, endorsement, cert)
        except CryptoError as exc:
            self._refuse(fingerprint, str(exc))
            return
        self._refused.pop(fingerprint, None)
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        blob_path = self._cache_dir / f"{keys.fingerprint}.wrapped"
        blob_path.write_bytes(fetched.blob)  # opaque: useless without our key
        sidecar(blob_path).write_bytes(encode_bundle(endorsement, cert))
        (self._cache_dir / f"{keys.fingerprint}.scope").write_text(fetched.scope)
        self._sets[keys.fingerprint] = keys

    def _check_current(self, fingerprint: str) -> None:
        """Before every new job: the custodian and every recipient are still current members."""
        endorsed = self._endorsed.get(fingerprint)
        if endorsed is None:
            return  # this node's own secret export without a sidecar: made here, nobody else vouches for it
        endorsement, cert, own = endorsed
        try:
            self._verify(endorsement, cert, None, own)
        except CryptoError as exc:
            self._refuse(fingerprint, str(exc))
            raise KeyMaterialError(f"HE key {fingerprint} refused: {exc}") from None

    def key_set(self, fingerprint: str) -> SecretKeySet:
        with self._lock:
            if fingerprint not in self._sets:
                self._load_local()
            if fingerprint not in self._sets and self.fetch is not None:
                self._fetch(fingerprint)
            if fingerprint in self._sets:
                self._check_current(fingerprint)
                return self._sets[fingerprint]
            if fingerprint in self._refused:
                raise KeyMaterialError(f"HE key {fingerprint} refused: {self._refused[fingerprint]}")
            known = ", ".join(sorted(self._sets)) or "none"
            problems = "; ".join(f"{k}: {v}" for k, v in sorted(self._refused.items()))
            raise KeyMaterialError(
                f"this node has no HE key {fingerprint} (it holds: {known}"
                + (f"; refused: {problems}" if problems else "")
                + "); ask the key custodian to run `cipherfed keys create` including this node"
            )

    def encryptor(
        self, profile: str, fingerprint: str | None, compact: CompactParams | None = None
    ) -> UpdateEncryptor | CompactEncryptor:
        """The encryptor of a job: ``compact`` (the job's quantization) is required for profile compact."""
        if profile == "none":
            return UnencryptedSumForComparisonOnly()
        if not fingerprint:
            raise KeyMaterialError("the job names no key fingerprint")
        keys = self.key_set(fingerprint)  # verified again for every new job
        if keys.profile.name != profile:
            raise KeyMaterialError(
                f"key {fingerprint} is a {keys.profile.name!r} key but the job uses he_profile {profile!r}; "
                f"the custodian creates one with `cipherfed keys create --profile {profile}`"
            )
        if profile == "compact":
            if compact is None:
                raise KeyMaterialError("a compact job needs its quantization parameters")
            return CompactEncryptor(keys, compact)  # per job: the quantization is the job's
        with self._lock:
            cached = self._encryptors.get(fingerprint)
            if cached is None:
                cached = self._encryptors[fingerprint] = SumEncryptor(keys)
            return cached

    def fingerprints(self) -> list[str]:
        """Key sets available without contacting the aggregator."""
        with self._lock:
            with contextlib.suppress(CryptoError, OSError, ValueError):  # doctor reports unreadable keys
                self._load_local()
            return sorted(self._sets)

    def refused(self) -> dict[str, str]:
        """Key files or fingerprints this node will not use, with the reason (for the doctor)."""
        with self._lock:
            return dict(self._refused)
