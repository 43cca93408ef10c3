"""Cost of secure aggregation's cryptography at n simulated silos (crypto only, no processes, one core).

For each consortium size: every silo generates and signs its round keys, verifies everyone's
advertisement, Shamir-shares its self seed and mask key to its holders in signed AEAD envelopes
and opens the envelopes addressed to it (all silos simulated, tiny vectors); then, at the full
vector length, one silo's mask (self mask + one pairwise mask per neighbour, key agreement
included), the aggregator's unmasking with ``--dropouts`` silos gone (Shamir reconstruction and
checks against the advertisements: ``reveal``) and one silo's removal of the masks from the released
sum (the secrets checked again, every contributor's self mask and the dropped silos' pairwise masks
expanded: ``mask_correction``). Per-silo numbers are the all-silo totals divided by n. Compare
with the HE cost per silo for the same vector (docs/benchmarks.md).

    python -m benchmarks.secagg_cost --silos 16,64 --params 1000000 --neighbours 16 --json OUT
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.common import emit, machine
from crypto.secagg.encoding import RoundContext
from crypto.secagg.keys import pairwise_seed
from crypto.secagg.masking import mask_vector
from crypto.secagg.policy import tolerated_coalition, validate_policy
from crypto.secagg.simulation import finish_round, make_members, setup_round
from crypto.secagg.unmask import Revealed, mask_correction, reveal


def _median(repeats: int, fn: Callable[[], object]) -> float:
    """Median wall time of ``repeats`` calls (the machine is shared: one run is noisy)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _measure(n: int, params: int, width: int, neighbours: int | None, dropouts: int, repeats: int) -> dict[str, Any]:
    policy = validate_policy(n, ((n - 1 if neighbours is None else neighbours) // 2) + 1, neighbours=neighbours)
    t = policy.threshold
    context = RoundContext("benchmark", "secagg-cost", 1)
    members = make_members(n)
    aggregator = make_members(1, "aggregator")[0]
    tiny = {m.fingerprint: np.zeros(1, dtype=np.uint64) for m in members}
    dropped = {m.fingerprint for m in members[:dropouts]}
    sim = setup_round(members, context, tiny, width, t, k=policy.neighbours, drop_before_upload=dropped)
    finish_round(sim, aggregator, 1)
    assert sim.statement is not None
    timings = sim.timings

    me = next(fp for fp in sim.roster.members if fp not in dropped)
    silo = sim.silos[me]
    assert silo.material is not None
    peers = sorted(silo.material.mask_set)

    def agree() -> None:
        for peer in peers:
            pairwise_seed(context, silo.keys.mask_private, me, silo.keys.mask_public(), sim.roster.advert(peer))

    values = np.random.default_rng(0).integers(0, 1 << (width - 8), params, dtype=np.uint64)
    agreement = _median(repeats, agree)
    masking = _median(repeats, lambda: mask_vector(values, width, context, silo.keys, me, sim.roster, peers, t))
    statement = sim.statement
    results: list[Revealed] = []
    revealing = _median(
        repeats, lambda: results.append(reveal(statement, sim.responses, sim.roster, t, sim.certificates))
    )
    revealed = results[-1]
    assert not revealed.rejected_responses and not revealed.wrong_shares
    removal = _median(repeats, lambda: mask_correction(revealed.secrets, sim.roster, sim.graph, width, params))

    contributors = n - dropouts
    per_silo = {
        "verify_advertisements": timings["verify_adverts"],  # each silo verifies all n
        "shamir_share_and_seal": timings["share_secrets"] / n,
        "open_shares": timings["open_shares"] / n,
        "key_agreement": agreement,
        "mask_expansion_incl_agreement": masking,
        "sign_and_respond": timings["respond"] / contributors,
        "remove_masks": removal,  # from the released sum, after decryption
    }
    per_silo["total"] = sum(v for k, v in per_silo.items() if k != "key_agreement")
    envelope = sim.envelopes[0].to_bytes()
    answer = next(r for r in sim.responses if r.responder == me)
    return {
        "silos": n,
        "graph": "complete" if policy.neighbours is None else f"k={policy.neighbours}",
        "threshold": t,
        "dropouts": dropouts,
        "mask_peers_per_silo": len(peers),
        "tolerates": tolerated_coalition(n, t) if policy.neighbours is None else "per neighbourhood (Bell et al.)",
        "per_silo_seconds": {k: round(v, 4) for k, v in per_silo.items()},
        "aggregator_unmask_seconds": round(revealing, 4),  # reconstruct and check the secrets (no masks)
        "bytes_per_silo": {
            "advertisement": len(silo.advert.to_bytes()),
            "share_envelopes_out": len(envelope) * len(peers),
            "unmask_response": len(answer.signed_bytes()) + len(answer.signature),
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--silos", default="16,64", help="comma-separated consortium sizes")
    parser.add_argument("--params", type=int, default=1_000_000, help="values per update vector")
    parser.add_argument("--width", type=int, default=24, help="mask modulus 2^w")
    parser.add_argument("--neighbours", type=int, default=16, help="k of the sparse graph also measured (0: none)")
    parser.add_argument("--dropouts", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs of the vector phases")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.silos.split(",") if s]
    results = []
    for n in sizes:
        results.append(_measure(n, args.params, args.width, None, args.dropouts, args.repeats))
        if args.neighbours and args.neighbours < n - 1:
            results.append(_measure(n, args.params, args.width, args.neighbours, args.dropouts, args.repeats))
    out = {
        "benchmark": "secagg_cost",
        "machine": machine(),
        "params": args.params,
        "width": args.width,
        "results": results,
    }
    emit(out, args.json_path)
    return out


if __name__ == "__main__":
    main()
