"""Public contexts the aggregator knows, by fingerprint. Only public exports load here: a secret
export is refused by ``crypto.keys.load_public_context``, so there is no path to a secret key."""

from __future__ import annotations

import threading
from pathlib import Path

from crypto.keys import PublicContext, load_public_context


class PublicKeyring:
    def __init__(self, keys_dir: Path | None = None, stored: list[bytes] | None = None) -> None:
        self._contexts: dict[str, PublicContext] = {}
        self._lock = threading.Lock()
        if keys_dir is not None and keys_dir.exists():
            for path in sorted(keys_dir.glob("*.ctx")):
                self.add(path.read_bytes())
        for data in stored or []:
            self.add(data)

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
