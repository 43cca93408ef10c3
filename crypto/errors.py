"""Typed errors of the crypto core.

Every failure that can be caused by bad input (bytes from the network, a file handed over by a
person) is raised as one of these, with a message that says what is wrong, so that callers can
answer with a precise status and keep running instead of crashing.
"""


class CryptoError(Exception):
    """Base of every error raised by ``crypto``."""


class InsecureParametersError(CryptoError):
    """Encryption parameters below the 128-bit security level or otherwise unusable."""


class KeyMaterialError(CryptoError):
    """A key export of the wrong kind (secret where public was expected, or vice versa) or corrupted."""


class CiphertextError(CryptoError):
    """Ciphertext bytes that cannot be accepted: malformed, truncated, or under other parameters."""


class FingerprintMismatchError(CiphertextError):
    """Ciphertexts announced under a key set other than the expected one."""


class ManifestError(CiphertextError):
    """A manifest that does not describe the chunks received (count, order, layout, size)."""


class ValueRangeError(CryptoError):
    """Plaintext values too large for the profile's scale: encrypting them would silently wrap."""


class PKIError(CryptoError):
    """Certificate problems; the subclasses say which."""


class UntrustedCertificateError(PKIError):
    """Not issued by the consortium CA."""


class ExpiredCertificateError(PKIError):
    """Outside its validity period."""


class WrongRoleError(PKIError):
    """The certificate's role does not allow what was asked."""


class RevokedCertificateError(PKIError):
    """The certificate's serial is on the consortium revocation list."""


class UnwrapError(CryptoError):
    """A wrapped key blob that cannot be opened by this recipient (other key, other context, tampered)."""


class SignatureError(CryptoError):
    """A signature that does not verify against the signer's certificate."""
