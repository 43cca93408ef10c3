import numpy as np
import pytest
import tenseal.sealapi as seal

from crypto.engine import SumEncryptor
from crypto.errors import InsecureParametersError, KeyMaterialError
from crypto.keys import PublicContext, generate_key_set, load_public_context, load_secret_key_set
from crypto.profiles import HE_STANDARD_128_MAX_BITS, Profile, get_profile, validate_parameters


def test_profiles_are_within_the_128_bit_table():
    for name in ("sum", "vertical"):
        p = get_profile(name)
        assert sum(p.coeff_modulus_bits) <= HE_STANDARD_128_MAX_BITS[p.poly_modulus_degree]
        # SEAL's own table agrees with ours
        assert sum(p.coeff_modulus_bits) <= seal.CoeffModulus.MaxBitCount(
            p.poly_modulus_degree, seal.SEC_LEVEL_TYPE.TC128
        )
    assert get_profile("sum").values_per_ciphertext == 8192


@pytest.mark.parametrize(
    ("profile", "needle"),
    [
        (Profile("weak", 8192, (60, 60, 60, 60), 40, "seal-seeded"), "exceeds the 218-bit"),
        (Profile("odd", 3000, (30, 30), 20, "seal-seeded"), "poly_modulus_degree 3000"),
        (Profile("one", 8192, (60,), 40, "seal-seeded"), "at least two primes"),
        (Profile("scale", 8192, (40, 40), 40, "seal-seeded"), "no room"),
    ],
)
def test_insecure_profiles_are_refused_with_reason(profile, needle):
    with pytest.raises(InsecureParametersError, match=needle):
        validate_parameters(profile)


def test_unknown_profile_names_known_ones():
    with pytest.raises(InsecureParametersError, match="known profiles: none, sum, vertical"):
        get_profile("fast")


def test_exports_are_not_interchangeable_and_fingerprints_survive():
    keys = generate_key_set("sum")
    secret, public = keys.export_secret(), keys.export_public()
    assert load_public_context(public).fingerprint == keys.fingerprint
    assert load_secret_key_set(secret).fingerprint == keys.fingerprint
    with pytest.raises(KeyMaterialError, match="SECRET key export"):
        load_public_context(secret)
    with pytest.raises(KeyMaterialError, match="PUBLIC context"):
        load_secret_key_set(public)
    with pytest.raises(KeyMaterialError, match="bad magic"):
        load_public_context(b"garbage" * 10)
    with pytest.raises(KeyMaterialError, match="truncated"):
        load_secret_key_set(secret[:-10])
    # a new key set has a new fingerprint even with identical parameters
    assert generate_key_set("sum").fingerprint != keys.fingerprint


def test_public_export_contains_no_secret_key_bytes():
    keys = generate_key_set("sum")
    from crypto.seal_io import save_bytes

    sk = save_bytes(keys.secret_key)
    assert sk[64:128] not in keys.export_public()
    assert len(keys.export_public()) < 1000


def test_aggregator_context_cannot_decrypt():
    keys = generate_key_set("sum")
    public = load_public_context(keys.export_public())
    assert isinstance(public, PublicContext)
    assert not hasattr(public, "secret_key")
    values = np.random.default_rng(0).normal(0, 0.05, 8192)
    chunk = SumEncryptor(keys).encrypt(values)[0]
    # No secret key object can be built from the public context: an empty key is rejected by SEAL...
    with pytest.raises(ValueError):
        seal.Decryptor(public.seal_context, seal.SecretKey())
    # ...and a freshly generated key under the same parameters decrypts to noise, not the data.
    from crypto.seal_io import load_ciphertext

    guess = seal.KeyGenerator(public.seal_context).secret_key()
    plain = seal.Plaintext()
    seal.Decryptor(public.seal_context, guess).decrypt(load_ciphertext(public.seal_context, chunk), plain)
    decoded = np.asarray(seal.CKKSEncoder(public.seal_context).decode_complex(plain))
    recovered = np.empty(8192)
    recovered[0::2], recovered[1::2] = decoded.real, decoded.imag
    assert np.abs(recovered - values).max() > 1e3


def test_vertical_profile_key_set_has_no_galois_keys_and_public_is_public():
    keys = generate_key_set("vertical")
    public = load_public_context(keys.export_public())
    assert public.tenseal_context is not None and not public.tenseal_context.has_secret_key()
    assert not public.tenseal_context.has_galois_keys()
    assert len(keys.export_public()) < 2_000_000
    assert load_secret_key_set(keys.export_secret()).public.tenseal_context.has_secret_key()
