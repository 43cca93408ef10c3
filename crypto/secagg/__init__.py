"""Secure aggregation (Bonawitz et al. CCS 2017; SecAgg+ graphs, Bell et al. CCS 2020) on integer vectors mod 2^w.

A library: the round protocol, relay and audit wiring live in the role packages. It knows nothing
of lanes or CKKS; callers mask quantized integers (each in [0, 2^w)) before packing and encryption.

Round, per silo: ``RoundKeys.generate`` -> ``advertise`` (signed) -> ``verify_advertisement`` for each
peer, ``Roster.build`` -> ``share_secrets`` (AEAD envelopes via the aggregator) -> ``open_shares`` ->
``mask_vector`` -> upload -> ``ShareResponder.sign_statement`` -> ``ShareResponder.respond``.
Aggregator: relay, ``make_request``, then ``unmask`` for the correction to add to the masked sum.
"""

from crypto.secagg.encoding import RoundContext
from crypto.secagg.errors import (
    AdvertisementError,
    BothSharesRefused,
    NotEnoughSurvivors,
    ReconstructionError,
    SecAggError,
    SecAggPolicyError,
    ShareTransportError,
    SplitViewRefused,
    UnmaskRefused,
)
from crypto.secagg.graph import neighbour_graph, round_graph_seed
from crypto.secagg.keys import Advertisement, Roster, RoundKeys, advertise, pairwise_seed, verify_advertisement
from crypto.secagg.masking import mask_vector, share_secrets
from crypto.secagg.policy import SecAggPolicy, tolerated_coalition, validate_policy
from crypto.secagg.prg import expand
from crypto.secagg.transport import ShareBundle, ShareEnvelope, open_shares, seal_shares
from crypto.secagg.unmask import (
    ContributorStatement,
    RoundMaterial,
    ShareResponder,
    UnmaskRequest,
    UnmaskResponse,
    apply_correction,
    make_request,
    unmask,
)

__all__ = [
    "Advertisement",
    "AdvertisementError",
    "BothSharesRefused",
    "ContributorStatement",
    "NotEnoughSurvivors",
    "ReconstructionError",
    "Roster",
    "RoundContext",
    "RoundKeys",
    "RoundMaterial",
    "SecAggError",
    "SecAggPolicy",
    "SecAggPolicyError",
    "ShareBundle",
    "ShareEnvelope",
    "ShareResponder",
    "ShareTransportError",
    "SplitViewRefused",
    "UnmaskRefused",
    "UnmaskRequest",
    "UnmaskResponse",
    "advertise",
    "apply_correction",
    "expand",
    "make_request",
    "mask_vector",
    "neighbour_graph",
    "open_shares",
    "pairwise_seed",
    "round_graph_seed",
    "seal_shares",
    "share_secrets",
    "tolerated_coalition",
    "unmask",
    "validate_policy",
    "verify_advertisement",
]
