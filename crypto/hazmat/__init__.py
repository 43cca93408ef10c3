"""HAZARDOUS MATERIALS: raw CKKS and plaintext-chunk primitives with NO safety checks.

Everything in this package does exactly what it is told, and nothing else:

- a ciphertext encrypted or decrypted here is never matched against a key fingerprint, so a
  *wrong key* produces noise (or a foreign contribution) without any error;
- values are never bounded or checked for NaN/infinity, so an *unbounded value* wraps around the
  data prime silently and the sum is garbage;
- bytes are never compared with the digests of a signed manifest and a ciphertext's scale (which
  decoding divides by) is never compared with the manifest's, so *unverified bytes* from a relay
  pass straight through into a sum or a decryption.

The recipes in :mod:`crypto.engine` (``encrypt_weighted_update``, ``ChunkVerifier`` /
``Accumulator`` / ``accumulate_batches``, ``decrypt_weighted_mean``) add those checks; use them.
Nothing outside ``crypto/`` may import this package (``tests/test_crypto_hazmat.py`` enforces it),
in the spirit of ``cryptography.hazmat``: if you need something from here, you need a new recipe.
"""
