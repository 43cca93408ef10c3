"""Public contexts the aggregator knows, by fingerprint. Only public exports load here: a secret
export is refused by ``crypto.keys.load_public_context``, so there is no path to a secret key."""

from __future__ import annotations

import threading
from pathlib import Path

from crypto.errors import KeyMaterialError
from crypto.keys import PublicContext, load_public_context


class PublicKeyring:
    def __init__(self, keys_dir: Path | None = None, stored: list[bytes] | None = None) -> None:
        self._contexts: dict[str, PublicContext] = {}
        self._lock = threading.Lock()
        self.unloadable: list[str] = []  # stored contexts of an older format: reported, never fatal at startup
        if keys_dir is not None and keys_dir.exists():
            for path in sorted(keys_dir.glob("*.ctx")):
                self._add_stored(path.read_bytes(), path.name)
        for i, data in enumerate(stored or []):
            self._add_stored(data, f"stored context #{i + 1}")

    def _add_stored(self, data: bytes, what: str) -> None:
        try:
            self.add(data)
        except KeyMaterialError as exc:
            self.unloadable.append(f"{what}: {exc}")

    def add(self, public_export: bytes) -> PublicContext:
        return self.put(load_public_context(public_export))

    def put(self, context: PublicContext) -> PublicContext:
        """Register an already-loaded (and checked) public context."""
        with self._lock:
            self._contexts[context.fingerprint] = context
        return context

    def get(self, fingerprint: str) -> PublicContext | None:
        with self._lock:
            return self._contexts.get(fingerprint)

    def fingerprints(self) -> list[str]:
        with self._lock:
            return sorted(self._contexts)
