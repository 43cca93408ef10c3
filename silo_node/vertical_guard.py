"""What a passive party checks before and after it releases products of its features (vertical jobs).

The active party holds the secret key, chooses the encrypted residual d, decrypts every masked
per-slot product d_i * x_ij + r_ij and returns the masked sums. Honest residuals are p - y with
p in (0, 1), so |d_i| < 1. A party that scales d (or crafts a ciphertext) reads x through a mask of
bounded width, and can steer the passive's weights by lying about the sums. So, per batch:

1. **Decoy probe, before release.** The passive multiplies the *same* residual ciphertext by
   ``PROBES`` fresh secret Gaussian decoy matrices laid out like its features, masks (real and
   imaginary parts: CKKS slots are complex) and sends them; the active party returns one masked
   complex total per decoy. The passive unmasks and requires |Re sum_ij d_i c_ij| <=
   sum_i |sum_j c_ij| and Im ~ 0 (+ tolerance), which every real residual with identical tiles and
   |d_i| <= 1 meets. Only then are the real feature products computed from that ciphertext.
2. **Gradient bound, after release.** Each unmasked per-column sum must satisfy
   |sum_i d_i x_ij| <= sum_i |x_ij| (+ tolerance): a lie about the masked sums cannot move the
   weights further than some honest residual could.

Any failure ends this party's part in the job with the reason (see docs/security.md, "Vertical
jobs", for the probability bound).

The active party, in turn, cannot see the decoys it answers, and decoys of the passive's choosing
(indicators of entities) would read the labels. So the decoys and masks derive from a fresh per-batch
seed (ChaCha20 keystream, Box-Muller: still N(0, 1)); the passive sends SHA-256 over the probe's
context and seed with the products and reveals the seed after the batch's gradient exchange; the
active party answers exactly ``PROBES`` decoys and, on the reveal, re-derives them and checks every
total it returned. A cheat is caught after one batch. No I/O here: the relay and the audit stay with
the parties.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

PROBES = 8  # decoys per batch, exactly: the active party answers this many and no other number
SEED_BYTES = 32  # a probe's seed: the ChaCha20 key its decoys and masks are derived from
MASK_BOUND = 2.0**17  # per-slot masks uniform in [-2^17, 2^17]: 4x below the 2^19 CKKS value range
# CKKS error: <= 3.5e-7 per slot at every mask size up to 2^18 (measured), so a sum of n slots is
# off by at most ~n * 3.5e-7; the tolerance is about three times that, plus rounding of doubles.
SLOT_TOLERANCE = 1e-6
ABS_TOLERANCE = 1e-3


class ExchangeRefused(Exception):
    """The active party's residual or reply failed a check; no further products may be sent."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(reason)
        self.check = check


def draw_decoys(rng: np.random.Generator, columns: int, batch: int, probes: int = PROBES) -> np.ndarray:
    """Fresh secret decoy matrices, laid out like ``columns_side_by_side``: shape (probes, columns*batch).

    Gaussian, not signs: against a huge scale s the active party reads s*c to within the mask
    width either way, but a discrete c would then be known exactly (and the probe passed).
    """
    return rng.standard_normal((probes, columns * batch))


def draw_masks(rng: np.random.Generator, slots: int, complex_slots: bool) -> np.ndarray:
    """Per-slot masks, uniform in [-MASK_BOUND, MASK_BOUND] in the real part and (CKKS) the imaginary part.

    A CKKS slot is a complex number: an active party that puts i*t in its residual reads t*x in
    the imaginary part of every product, so that part is masked too (a plaintext run has none).
    """
    real = rng.uniform(-MASK_BOUND, MASK_BOUND, slots)
    imag = rng.uniform(-MASK_BOUND, MASK_BOUND, slots) if complex_slots else np.zeros(slots)
    return real + 1j * imag


def probe_context(job_id: str, passive: str, step: int, columns: int, batch: int) -> bytes:
    """What a probe's commitment binds its seed to: one passive's probe of one batch of one job."""
    return f"cipherfed-probe/v1|{job_id}|{passive}|{step}|{columns}|{batch}".encode()


def probe_commitment(seed: bytes, context: bytes) -> bytes:
    """SHA-256 over the context and the seed (length-prefixed): sent with the decoy products, opened later."""
    return hashlib.sha256(len(context).to_bytes(4, "big") + context + seed).digest()


def _uniforms(seed: bytes, count: int) -> np.ndarray:
    """``count`` doubles uniform on [0, 1) from the ChaCha20 keystream under ``seed`` (53 bits each)."""
    stream = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None).encryptor().update(b"\x00" * (8 * count))
    return (np.frombuffer(stream, dtype="<u8") >> np.uint64(11)).astype(np.float64) * 2.0**-53


def derive_probe(seed: bytes, columns: int, batch: int, complex_slots: bool) -> tuple[np.ndarray, np.ndarray]:
    """The decoys (N(0, 1), Box-Muller) and masks (as :func:`draw_masks`) of one probe, from its seed alone.

    Both sides run this: the passive before the probe, the active party after the seed is revealed,
    to check that the decoys it answered were Gaussian and not chosen (e.g. indicators of entities).
    """
    if len(seed) != SEED_BYTES:
        raise ExchangeRefused("probe seed", f"a probe seed has {SEED_BYTES} bytes, not {len(seed)}")
    n = PROBES * columns * batch
    half = (n + 1) // 2
    u = _uniforms(seed, 2 * half + 2 * n)
    radius = np.sqrt(-2.0 * np.log1p(-u[:half]))  # 1 - u in (0, 1]: the log is finite
    angle = 2.0 * np.pi * u[half : 2 * half]
    decoys = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n].reshape(PROBES, columns * batch)
    real = MASK_BOUND * (2.0 * u[2 * half : 2 * half + n] - 1.0)
    imag = MASK_BOUND * (2.0 * u[2 * half + n :] - 1.0) if complex_slots else np.zeros(n)
    return decoys, (real + 1j * imag).reshape(PROBES, columns * batch)


def check_revealed_probe(
    seed: bytes,
    commitment: bytes,
    context: bytes,
    answered: np.ndarray,
    residual: np.ndarray,
    columns: int,
    batch: int,
    complex_slots: bool,
) -> None:
    """The active party's check of a passive's probe once its seed is revealed, or :class:`ExchangeRefused`.

    ``answered`` are the masked totals this party decrypted and returned, ``residual`` the tiled residual
    it encrypted: the seed must open the commitment, and its decoys and masks must reproduce every total.
    """
    if not hmac.compare_digest(probe_commitment(seed, context), commitment):
        raise ExchangeRefused("probe seed", "the revealed seed does not open the commitment sent with the decoys")
    decoys, masks = derive_probe(seed, columns, batch, complex_slots)
    expected = decoys @ residual + masks.sum(axis=1)
    tolerance = _tolerance(decoy_bounds(decoys, columns, batch), decoys.shape[1])
    if answered.shape != expected.shape:
        raise ExchangeRefused("probe seed", f"{answered.size} decoy totals answered, {PROBES} expected")
    off = (np.abs(answered.real - expected.real) > tolerance) | (np.abs(answered.imag - expected.imag) > tolerance)
    if off.any():
        raise ExchangeRefused(
            "probe seed",
            f"{int(np.sum(off))} of {PROBES} decoy totals differ from the decoys the revealed seed derives: "
            "the passive party sent decoys it chose (e.g. to read labels), not its committed Gaussian ones",
        )


def decoy_bounds(decoys: np.ndarray, columns: int, batch: int) -> np.ndarray:
    """Per decoy, the largest |sum_ij d_i c_ij| over residuals with identical tiles and |d_i| <= 1."""
    per_entity = decoys.reshape(len(decoys), columns, batch).sum(axis=1)  # sum_j c_ij, per i
    return np.abs(per_entity).sum(axis=1)


def _tolerance(bounds: np.ndarray, slots: int) -> np.ndarray:
    return ABS_TOLERANCE + SLOT_TOLERANCE * (slots + np.abs(bounds))


def check_probe(
    masked_totals: np.ndarray, masks: np.ndarray, decoys: np.ndarray, columns: int, batch: int
) -> np.ndarray:
    """The unmasked decoy totals, or :class:`ExchangeRefused` if any exceeds what |d| <= 1 permits.

    ``masked_totals`` are complex: an honest residual is real, so the imaginary part of every total
    must vanish (up to CKKS error) and the real part must stay within the decoy's bound.
    """
    if masked_totals.shape != (len(decoys),) or not np.isfinite(masked_totals).all():
        raise ExchangeRefused(
            "probe", f"decoy reply has {masked_totals.size} values, {len(decoys)} finite complex values expected"
        )
    totals = masked_totals - masks.sum(axis=1)
    bounds = decoy_bounds(decoys, columns, batch)
    tolerance = _tolerance(bounds, decoys.shape[1])
    over = (np.abs(totals.real) > bounds + tolerance) | (np.abs(totals.imag) > tolerance)
    if over.any():
        k = int(np.argmax(over))
        raise ExchangeRefused(
            "probe",
            f"the active party's residual failed {int(over.sum())} of {len(decoys)} decoy checks "
            f"(total {totals[k].real:.4g}{totals[k].imag:+.4g}i, while residuals with |d| <= 1 allow a real "
            f"total within ±{bounds[k]:.4g}): residuals scaled or crafted to unmask features; no feature "
            "products were sent",
        )
    return totals


def check_gradient(masked_sums: np.ndarray, mask_sums: np.ndarray, x_batch: np.ndarray) -> np.ndarray:
    """The unmasked per-column sums sum_i d_i x_ij, or :class:`ExchangeRefused` beyond sum_i |x_ij|."""
    columns = x_batch.shape[1]
    if masked_sums.shape != (columns,) or not np.isfinite(masked_sums).all():
        raise ExchangeRefused(
            "gradient", f"masked sums reply has {masked_sums.size} values, {columns} finite values expected"
        )
    sums = masked_sums - mask_sums
    bounds = np.abs(x_batch).sum(axis=0)
    over = np.abs(sums) > bounds + _tolerance(bounds, len(x_batch))
    if over.any():
        j = int(np.argmax(np.abs(sums) - bounds))
        raise ExchangeRefused(
            "gradient",
            f"the active party's masked sums imply a gradient beyond any residual with |d| <= 1 "
            f"(column {j}: |{sums[j]:.4g}| > {bounds[j]:.4g}); the update was not applied",
        )
    return sums
