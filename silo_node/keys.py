"""The node's CKKS key sets, found by fingerprint.

A key set comes from (in this order) a local secret export (at the key custodian), a blob wrapped
to this node's certificate on disk, or the aggregator, which relays the blob the custodian wrapped
for this node (and cannot open it). Fetched blobs are cached in ``state/keys``; secrets are never
written anywhere but the custodian's own key file.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from crypto.engine import SumEncryptor
from crypto.errors import CryptoError, KeyMaterialError
from crypto.keys import SecretKeySet, load_secret_key_set
from crypto.wrapping import unwrap_key
from silo_node.config import HEKeys

Fetch = Callable[[str], tuple[str, bytes]]  # key fingerprint -> (scope, blob wrapped to this node)


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
    ) -> None:
        self._settings = settings
        self._name = name
        self._consortium = consortium
        self._private_key = private_key
        self._certificate = certificate
        self._cache_dir = cache_dir
        self.fetch = fetch
        self._sets: dict[str, SecretKeySet] = {}
        self._encryptors: dict[str, SumEncryptor] = {}
        self._lock = threading.Lock()
        self.on_unwrap: Callable[[str, str], None] | None = None

    def _unwrap(self, blob: bytes, scope: str) -> SecretKeySet:
        secret = unwrap_key(
            blob, self._private_key, self._certificate, consortium=self._consortium, job=scope, recipient=self._name
        )
        keys = load_secret_key_set(secret)
        if self.on_unwrap is not None:
            self.on_unwrap(keys.fingerprint, scope)
        return keys

    def _load_local(self) -> None:
        """Secret exports and wrapped blobs already on this node."""
        settings = self._settings
        secrets = [settings.secret_key] if settings.secret_key is not None else []
        secrets += sorted(self._cache_dir.glob("*.key")) if self._cache_dir.exists() else []
        for path in secrets:
            if path is not None and path.exists():
                keys = load_secret_key_set(path.read_bytes())
                self._sets.setdefault(keys.fingerprint, keys)
        wrapped: list[tuple[Path, str]] = []
        if settings.wrapped_key is not None and settings.wrapped_key.exists():
            wrapped.append((settings.wrapped_key, settings.scope))
        if self._cache_dir.exists():
            for path in sorted(self._cache_dir.glob("*.wrapped")):
                scope_file = path.with_suffix(".scope")
                wrapped.append((path, scope_file.read_text() if scope_file.exists() else settings.scope))
        for path, scope in wrapped:
            keys = self._unwrap(path.read_bytes(), scope)
            self._sets.setdefault(keys.fingerprint, keys)

    def key_set(self, fingerprint: str) -> SecretKeySet:
        with self._lock:
            if fingerprint not in self._sets:
                self._load_local()
            if fingerprint not in self._sets and self.fetch is not None:
                scope, blob = self.fetch(fingerprint)
                keys = self._unwrap(blob, scope)
                self._cache_dir.mkdir(parents=True, exist_ok=True)
                (self._cache_dir / f"{keys.fingerprint}.wrapped").write_bytes(blob)  # opaque: useless without our key
                (self._cache_dir / f"{keys.fingerprint}.scope").write_text(scope)
                self._sets[keys.fingerprint] = keys
            if fingerprint not in self._sets:
                known = ", ".join(sorted(self._sets)) or "none"
                raise KeyMaterialError(
                    f"this node has no HE key {fingerprint} (it holds: {known}); ask the key "
                    f"custodian to run `cipherfed keys create` including this node"
                )
            return self._sets[fingerprint]

    def encryptor(self, profile: str, fingerprint: str | None) -> SumEncryptor:
        if profile == "none":
            return SumEncryptor(None)
        if not fingerprint:
            raise KeyMaterialError("the job names no key fingerprint")
        with self._lock:
            cached = self._encryptors.get(fingerprint)
        if cached is not None:
            return cached
        encryptor = SumEncryptor(self.key_set(fingerprint))
        with self._lock:
            self._encryptors[fingerprint] = encryptor
        return encryptor

    def fingerprints(self) -> list[str]:
        """Key sets available without contacting the aggregator."""
        with self._lock:
            with contextlib.suppress(CryptoError, OSError, ValueError):  # doctor reports unreadable keys
                self._load_local()
            return sorted(self._sets)
