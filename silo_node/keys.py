"""The node's CKKS key set: from a local secret export, from a blob wrapped to this node's
certificate, or fetched (wrapped) from the aggregator; checked against the job's fingerprint."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from crypto.engine import SumEncryptor
from crypto.errors import KeyMaterialError
from crypto.keys import SecretKeySet, load_secret_key_set
from crypto.wrapping import unwrap_key
from silo_node.config import HEKeys


class NodeKeys:
    def __init__(
        self,
        settings: HEKeys,
        name: str,
        consortium: str,
        private_key: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate,
        fetch_wrapped: object | None = None,
    ) -> None:
        self._settings = settings
        self._name = name
        self._consortium = consortium
        self._private_key = private_key
        self._certificate = certificate
        self._fetch = fetch_wrapped  # callable(scope) -> (fingerprint, wrapped blob) once key distribution is relayed
        self._encryptors: dict[str, SumEncryptor] = {}
        self.on_unwrap: Callable[[str, str], None] | None = None
        self._lock = threading.Lock()

    def _load(self) -> SecretKeySet:
        settings = self._settings
        if settings.secret_key is not None and settings.secret_key.exists():
            return load_secret_key_set(settings.secret_key.read_bytes())
        blob: bytes | None = None
        if settings.wrapped_key is not None and settings.wrapped_key.exists():
            blob = Path(settings.wrapped_key).read_bytes()
        elif callable(self._fetch):
            blob = self._fetch(settings.scope)
        if not blob:
            raise KeyMaterialError(
                "this node has no HE key: set [keys].secret_key or [keys].wrapped_key in node.toml, "
                "or ask the key custodian to run `cipherfed keys create`"
            )
        secret = unwrap_key(
            blob,
            self._private_key,
            self._certificate,
            consortium=self._consortium,
            job=settings.scope,
            recipient=self._name,
        )
        keys = load_secret_key_set(secret)
        if self.on_unwrap is not None:
            self.on_unwrap(keys.fingerprint, settings.scope)
        return keys

    def encryptor(self, profile: str, fingerprint: str | None) -> SumEncryptor:
        if profile == "none":
            return SumEncryptor(None)
        with self._lock:
            cached = self._encryptors.get(fingerprint or "")
            if cached is not None:
                return cached
            keys = self._load()
            if keys.fingerprint != fingerprint:
                raise KeyMaterialError(f"this node holds HE key {keys.fingerprint}; the job uses {fingerprint}")
            encryptor = SumEncryptor(keys)
            self._encryptors[keys.fingerprint] = encryptor
            return encryptor

    def fingerprint(self) -> str | None:
        try:
            return self._load().fingerprint
        except (KeyMaterialError, OSError):
            return None
