"""Who masks with whom: the complete graph, or a SecAgg+ style sparse k-regular graph.

The sparse graph is a Harary graph on a pseudo-random ring (Bell et al. CCS 2020): members are
shuffled by a PRG keyed by the public round seed, and each is joined to the k/2 nearest members on
either side. Every silo derives the same graph from public inputs, so the aggregator cannot pick a
silo's neighbours. The members must be the job's fixed membership (from the signed job manifest),
not whoever advertised keys this round, and the seed comes from the round context only, so the
aggregator cannot grind graphs by choosing whose advertisements to relay.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from crypto.secagg.encoding import RoundContext, check_fingerprint, encode_fields
from crypto.secagg.errors import SecAggPolicyError

GRAPH_TAG = b"cipherfed-secagg-graph-v1"

Graph = dict[str, frozenset[str]]


def round_graph_seed(context: RoundContext) -> bytes:
    """The public seed of a round's neighbour graph: a hash of the round context."""
    return hashlib.sha256(encode_fields(GRAPH_TAG, context.encode())).digest()


def _shuffled(members: Sequence[str], seed: bytes) -> list[str]:
    """Fisher-Yates with unbiased draws (rejection sampling) from an AES-256-CTR stream keyed by ``seed``."""
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    order = list(members)
    for i in range(len(order) - 1, 0, -1):
        bound = i + 1
        limit = (1 << 64) - (1 << 64) % bound
        while True:
            draw = int.from_bytes(encryptor.update(bytes(8)), "big")
            if draw < limit:
                break
        j = draw % bound
        order[i], order[j] = order[j], order[i]
    return order


def neighbour_graph(members: Sequence[str], seed: bytes, k: int | None = None) -> Graph:
    """Each member's neighbours (never itself): complete when ``k`` is None or k >= n - 1, else k-regular."""
    ordered = sorted(check_fingerprint(m, "member") for m in members)
    if len(set(ordered)) != len(ordered):
        raise SecAggPolicyError("members", "a member is listed twice")
    n = len(ordered)
    if k is None or k >= n - 1:
        return {m: frozenset(ordered) - {m} for m in ordered}
    if k < 2 or k % 2:
        raise SecAggPolicyError("neighbours", f"a sparse graph needs an even k >= 2, got {k}")
    if len(seed) != 32:
        raise SecAggPolicyError("graph seed", "must be 32 bytes (use round_graph_seed)")
    ring = _shuffled(ordered, seed)
    half = k // 2
    graph: dict[str, set[str]] = {m: set() for m in ordered}
    for position, member in enumerate(ring):
        for step in range(1, half + 1):
            other = ring[(position + step) % n]
            graph[member].add(other)
            graph[other].add(member)
    return {m: frozenset(v) for m, v in graph.items()}
