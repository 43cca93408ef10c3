"""CKKS key sets: generation, secret and public exports, fingerprints.

Two kinds of export exist and they are not interchangeable. A *secret* export holds the secret
key and goes only to member silos (wrapped to each silo's certificate). A *public* export holds
what the aggregator needs to load and add ciphertexts — the parameters (and for the vertical
profile the public key) — and nothing that decrypts. Each export is tagged with its kind, and
loading one kind where the other is expected is an error, so that a secret key cannot end up on
the aggregator through a mix-up of files.

Fingerprint v2 commits to the key material: it hashes the profile, the public parameters (and,
for the vertical profile, the public key), the random key id and a *commitment* to the exact
serialized secret: SHA-256(domain, key id, secret bytes). The commitment travels in both export
headers; it hides the secret (the secret has full entropy and the key id is random) yet binds it,
so nobody who lacks the custodian's secret can produce a different secret with the same
fingerprint. A silo that opens a secret export recomputes the commitment from the bytes it holds
and refuses any mismatch (``load_secret_key_set``).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
from dataclasses import dataclass, field
from typing import Literal

import tenseal as ts
import tenseal.sealapi as seal

from crypto.errors import KeyMaterialError
from crypto.profiles import Profile, get_profile
from crypto.seal_io import load_object, load_parameters, save_bytes

_MAGIC = b"CFKEY"
_VERSION = 2  # 2: fingerprint v2 (key commitment in the header); 1 is refused with a clear reason
_FINGERPRINT_DOMAIN = b"cipherfed-key-fingerprint-v2"
_COMMITMENT_DOMAIN = b"cipherfed-key-commitment-v2"
_KIND_SECRET = b"S"
_KIND_PUBLIC = b"P"
ExportKind = Literal["secret", "public"]


def _seal_parameters(profile: Profile) -> seal.EncryptionParameters:
    params = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    params.set_poly_modulus_degree(profile.poly_modulus_degree)
    params.set_coeff_modulus(seal.CoeffModulus.Create(profile.poly_modulus_degree, list(profile.coeff_modulus_bits)))
    return params


def _seal_context(params: seal.EncryptionParameters) -> seal.SEALContext:
    context = seal.SEALContext(params, True, seal.SEC_LEVEL_TYPE.TC128)
    if not context.parameters_set():
        raise KeyMaterialError(f"encryption parameters rejected by SEAL: {context.parameters_error_message()}")
    return context


def _framed_sha256(parts: tuple[bytes, ...]) -> bytes:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(struct.pack(">I", len(part)))
        digest.update(part)
    return digest.digest()


def compute_commitment(key_id: bytes, secret_bytes: bytes) -> bytes:
    """SHA-256 commitment to the exact serialized secret (hiding: the key id is random, the secret
    has full entropy; binding: SHA-256 collision resistance)."""
    return _framed_sha256((_COMMITMENT_DOMAIN, key_id, secret_bytes))


def compute_fingerprint(profile_name: str, public_parameters: bytes, key_id: bytes, commitment: bytes) -> str:
    """The name every ciphertext batch carries: a hash of everything that defines the key set.

    ``public_parameters`` is the SEAL parameter export (``sum``) or the serialized public TenSEAL
    context including its public key (``vertical``); ``commitment`` is ``compute_commitment``.
    """
    if len(commitment) != 32:
        raise KeyMaterialError("key commitment must be 32 bytes (SHA-256)")
    return _framed_sha256((_FINGERPRINT_DOMAIN, profile_name.encode(), public_parameters, key_id, commitment)).hex()[
        :32
    ]


def _encode_export(kind: bytes, header: dict[str, object], parts: list[bytes]) -> bytes:
    header = {**header, "parts": [len(p) for p in parts]}
    header_bytes = json.dumps(header, sort_keys=True).encode()
    return b"".join([_MAGIC, bytes([_VERSION]), kind, struct.pack(">I", len(header_bytes)), header_bytes, *parts])


def _decode_export(data: bytes, expected: ExportKind) -> tuple[dict[str, object], list[bytes]]:
    if len(data) < 11 or not data.startswith(_MAGIC):
        raise KeyMaterialError("not a cipherfed key export (bad magic); was this file produced by `cipherfed keys`?")
    if data[5] == 1:
        raise KeyMaterialError(
            "key export format 1 predates key commitments (its fingerprint does not bind the key); "
            "ask the key custodian to re-run `cipherfed keys create`"
        )
    if data[5] != _VERSION:
        raise KeyMaterialError(f"unsupported key export version {data[5]}")
    kind = data[6:7]
    if kind not in (_KIND_SECRET, _KIND_PUBLIC):
        raise KeyMaterialError("key export has an unknown kind tag")
    actual: ExportKind = "secret" if kind == _KIND_SECRET else "public"
    if actual != expected:
        if actual == "secret":
            raise KeyMaterialError(
                "this is a SECRET key export; only the public context may be loaded here "
                "(the aggregator and coordinator must never hold a secret key)"
            )
        raise KeyMaterialError("this is a PUBLIC context export; a secret key export is required to decrypt")
    (header_len,) = struct.unpack(">I", data[7:11])
    try:
        header = json.loads(data[11 : 11 + header_len])
        lengths = [int(n) for n in header["parts"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyMaterialError(f"key export header is corrupted: {exc}") from None
    parts: list[bytes] = []
    offset = 11 + header_len
    for length in lengths:
        parts.append(data[offset : offset + length])
        offset += length
    if offset != len(data) or any(len(p) != n for p, n in zip(parts, lengths, strict=True)):
        raise KeyMaterialError("key export is truncated or has trailing bytes")
    return header, parts


@dataclass
class PublicContext:
    """What the aggregator holds: enough to load and add ciphertexts, nothing that decrypts."""

    profile: Profile
    key_id: bytes
    fingerprint: str
    parameters: bytes
    commitment: bytes
    seal_context: seal.SEALContext | None = field(default=None, repr=False)
    tenseal_context: ts.Context | None = field(default=None, repr=False)

    @property
    def reals_per_ciphertext(self) -> int:
        """Reals one ciphertext carries with complex packing (two per slot): the poly modulus degree."""
        return self.profile.poly_modulus_degree

    def header(self) -> dict[str, object]:
        return {"profile": self.profile.name, "key_id": self.key_id.hex(), "commitment": self.commitment.hex()}

    def export(self) -> bytes:
        header = self.header()
        if self.tenseal_context is not None:
            return _encode_export(_KIND_PUBLIC, header, [self.tenseal_context.serialize(save_secret_key=False)])
        return _encode_export(_KIND_PUBLIC, header, [self.parameters])


@dataclass
class SecretKeySet:
    """A silo's full key set. Exists only at silos; never constructed by the aggregator."""

    public: PublicContext
    secret_key: seal.SecretKey | None = field(default=None, repr=False)
    secret_bytes: bytes = field(default=b"", repr=False)  # the exact committed serialization

    @property
    def fingerprint(self) -> str:
        return self.public.fingerprint

    @property
    def profile(self) -> Profile:
        return self.public.profile

    def export_secret(self) -> bytes:
        header = self.public.header()
        if self.public.tenseal_context is not None:
            return _encode_export(_KIND_SECRET, header, [self.secret_bytes])
        return _encode_export(_KIND_SECRET, header, [self.public.parameters, self.secret_bytes])

    def export_public(self) -> bytes:
        return self.public.export()


def generate_key_set(profile_name: str = "sum") -> SecretKeySet:
    """Generate a fresh key set for a profile (at the key-custodian silo)."""
    profile = get_profile(profile_name)
    key_id = secrets.token_bytes(16)
    if profile.engine == "seal-seeded":
        params = _seal_parameters(profile)
        context = _seal_context(params)
        secret_key = seal.KeyGenerator(context).secret_key()
        parameters = save_bytes(params)
        secret_bytes = save_bytes(secret_key)
        commitment = compute_commitment(key_id, secret_bytes)
        fingerprint = compute_fingerprint(profile.name, parameters, key_id, commitment)
        public = PublicContext(profile, key_id, fingerprint, parameters, commitment, context)
        return SecretKeySet(public, secret_key, secret_bytes)
    if profile.engine == "tenseal-public":
        context_ts = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=profile.poly_modulus_degree,
            coeff_mod_bit_sizes=list(profile.coeff_modulus_bits),
        )
        context_ts.global_scale = 2.0**profile.scale_bits
        if profile.galois_keys:
            context_ts.generate_galois_keys()
        parameters = _tenseal_public_bytes(context_ts)
        secret_bytes = bytes(context_ts.serialize(save_secret_key=True))
        commitment = compute_commitment(key_id, secret_bytes)
        fingerprint = compute_fingerprint(profile.name, parameters, key_id, commitment)
        public = PublicContext(profile, key_id, fingerprint, parameters, commitment, None, context_ts)
        return SecretKeySet(public, None, secret_bytes)
    raise KeyMaterialError(f"profile {profile.name!r} has no keys")


def _tenseal_public_bytes(context_ts: ts.Context) -> bytes:
    public_copy = ts.context_from(context_ts.serialize(save_secret_key=False))
    return bytes(public_copy.serialize(save_secret_key=False))


def load_public_context(data: bytes) -> PublicContext:
    """Load a public export; a secret export is refused."""
    header, parts = _decode_export(data, "public")
    profile, key_id, commitment = _header_profile(header)
    if len(parts) != 1:
        raise KeyMaterialError("public export must hold exactly one part")
    if profile.engine == "seal-seeded":
        try:
            params = load_parameters(parts[0])
        except ValueError as exc:
            raise KeyMaterialError(str(exc)) from None
        _check_matches_profile(params, profile)
        context = _seal_context(params)
        fingerprint = compute_fingerprint(profile.name, parts[0], key_id, commitment)
        return PublicContext(profile, key_id, fingerprint, parts[0], commitment, context)
    context_ts = _load_tenseal(parts[0])
    if context_ts.has_secret_key():
        raise KeyMaterialError("public export unexpectedly contains a secret key; refusing it")
    parameters = _tenseal_public_bytes(context_ts)
    fingerprint = compute_fingerprint(profile.name, parameters, key_id, commitment)
    return PublicContext(profile, key_id, fingerprint, parameters, commitment, None, context_ts)


def load_secret_key_set(data: bytes) -> SecretKeySet:
    """Load a secret export (at a silo); a public export is refused."""
    header, parts = _decode_export(data, "secret")
    profile, key_id, commitment = _header_profile(header)
    secret_bytes = parts[-1] if parts else b""
    if compute_commitment(key_id, secret_bytes) != commitment:
        raise KeyMaterialError(
            "the secret key does not match the commitment in its fingerprint: this key was not made by "
            "the custodian that published the fingerprint (or was altered); refuse it and ask the key "
            "custodian to re-run `cipherfed keys create`"
        )
    if profile.engine == "seal-seeded":
        if len(parts) != 2:
            raise KeyMaterialError("secret export must hold parameters and a secret key")
        try:
            params = load_parameters(parts[0])
        except ValueError as exc:
            raise KeyMaterialError(str(exc)) from None
        _check_matches_profile(params, profile)
        context = _seal_context(params)
        secret_key = seal.SecretKey()
        try:
            load_object(secret_key, context, parts[1])
        except ValueError as exc:
            raise KeyMaterialError(str(exc)) from None
        fingerprint = compute_fingerprint(profile.name, parts[0], key_id, commitment)
        public = PublicContext(profile, key_id, fingerprint, parts[0], commitment, context)
        return SecretKeySet(public, secret_key, secret_bytes)
    if len(parts) != 1:
        raise KeyMaterialError("secret export must hold exactly one part")
    context_ts = _load_tenseal(parts[0])
    if not context_ts.has_secret_key():
        raise KeyMaterialError("secret export holds no secret key")
    parameters = _tenseal_public_bytes(context_ts)
    fingerprint = compute_fingerprint(profile.name, parameters, key_id, commitment)
    public = PublicContext(profile, key_id, fingerprint, parameters, commitment, None, context_ts)
    return SecretKeySet(public, None, secret_bytes)


def _header_profile(header: dict[str, object]) -> tuple[Profile, bytes, bytes]:
    try:
        profile = get_profile(str(header["profile"]))
        key_id = bytes.fromhex(str(header["key_id"]))
        commitment = bytes.fromhex(str(header["commitment"]))
    except (KeyError, ValueError) as exc:
        raise KeyMaterialError(f"key export header is missing or has a bad field: {exc}") from None
    if len(key_id) != 16 or len(commitment) != 32:
        raise KeyMaterialError("key export header: key_id must be 16 bytes and commitment 32 bytes")
    return profile, key_id, commitment


def _check_matches_profile(params: seal.EncryptionParameters, profile: Profile) -> None:
    if params.poly_modulus_degree() != profile.poly_modulus_degree:
        raise KeyMaterialError(
            f"key export parameters (N={params.poly_modulus_degree()}) do not match profile {profile.name!r}"
        )
    bits = tuple(m.bit_count() for m in params.coeff_modulus())
    if bits != profile.coeff_modulus_bits:
        raise KeyMaterialError(f"key export coefficient modulus {bits} does not match profile {profile.name!r}")


def _load_tenseal(data: bytes) -> ts.Context:
    try:
        return ts.context_from(data)
    except Exception as exc:  # TenSEAL raises bare exceptions from C++ for corrupt protobufs
        raise KeyMaterialError(f"TenSEAL could not load the context: {exc}") from None
