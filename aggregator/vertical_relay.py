"""The aggregator's part in vertical jobs: relay opaque messages, and sum the passive parties'
partial scores so the active party only ever sees their sum.

Partial scores are addressed to "aggregator". When every passive party has sent its part for a step,
the parts are added (as CKKS ciphertexts under the active party's public key, which the aggregator
cannot decrypt, or as plain vectors in a plaintext comparison run) and the sum is delivered to the
active party. Individual parts are deleted once summed.
"""

from __future__ import annotations

import threading

from aggregator.keyring import PublicKeyring
from aggregator.store import StateStore
from crypto.keys import load_public_context
from crypto.vertical_codec import VectorCodec
from protocol.jobspec import JobSpec

AGGREGATOR = "aggregator"
SUMMED = {"u": "U", "p": "P"}  # partial scores for training steps / for predictions -> their sums


class VerticalRelay:
    def __init__(self, store: StateStore, keyring: PublicKeyring) -> None:
        self.store = store
        self.keyring = keyring
        self._codecs: dict[str, VectorCodec] = {}
        self._lock = threading.Lock()

    def codec(self, job_id: str, spec: JobSpec) -> VectorCodec:
        with self._lock:
            codec = self._codecs.get(job_id)
            if codec is None:
                if spec.he_profile == "none":
                    codec = VectorCodec(None)
                else:
                    found = self.store.key_material(job_id)
                    if found is None:
                        raise LookupError(f"job {job_id} has no public context yet")
                    public = load_public_context(found[1])  # refuses anything holding a secret key
                    codec = VectorCodec(public.tenseal_context)
                self._codecs[job_id] = codec
            return codec

    def maybe_sum(self, job_id: str, spec: JobSpec, kind: str, seq: int) -> bool:
        """Sum and forward once every passive party's part for (kind, seq) is in. True if forwarded."""
        assert spec.vertical is not None
        passives = spec.vertical.passive
        parts = [self.store.relay_peek(job_id, AGGREGATOR, kind, seq, p) for p in passives]
        if any(not part for part in parts):
            return False
        total = self.codec(job_id, spec).add(parts)
        with self.store.transaction():
            for p in passives:
                self.store.relay_take(job_id, AGGREGATOR, kind, seq, p)
            for chunk in total:
                self.store.relay_put(job_id, AGGREGATOR, spec.vertical.active, SUMMED[kind], seq, chunk)
        return True
